//! §6: deals, grants, extensions, revocations, cancellations.

use super::*;

#[test]
fn deal_signed_books_cash_and_derives_the_price_of_the_credits() {
    let mut ledger = Ledger::new();
    let outputs = ledger.feed(Topic::Deals, deal("d1", "2025-01-01T00:00:00Z", 400, 1_000, 1_150));
    let entries = journal(&outputs);
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].debit.as_str(), entries[0].credit.as_str(), entries[0].amount),
        ("equity_investment", "cash", 400)
    );
    assert_eq!(entries[0].cause, "deal.signed");
    assert_eq!(ledger.startup("acme").deals["d1"].transaction_price, 750);
    // TP_d never goes below zero.
    ledger.feed(Topic::Deals, deal("d2", "2025-01-01T00:00:00Z", 900, 1_000, 100));
    assert_eq!(ledger.startup("acme").deals["d2"].transaction_price, 0);
    // RPO counts the deal's ungranted price.
    assert_eq!(ledger.usd("acme").rpo, 750);
}

#[test]
fn a_reused_deal_id_is_an_invalid_transition() {
    let mut ledger = Ledger::new();
    ledger.feed(Topic::Deals, deal("d1", "2025-01-01T00:00:00Z", 0, 1_000, 500));
    let mut again = deal("d1", "2025-01-02T00:00:00Z", 0, 2_000, 500);
    again["id"] = json!("other-id");
    expect_reason(&ledger.feed(Topic::Deals, again), Reason::InvalidTransition);
}

#[test]
fn grants_under_a_deal_share_its_price_exactly() {
    let mut ledger = Ledger::new();
    ledger.feed(Topic::Deals, deal("d1", "2025-01-01T00:00:00Z", 0, 3, 10));
    let mut prices = Vec::new();
    for id in ["g1", "g2", "g3"] {
        let outputs =
            ledger.feed(Topic::Deals, grant(id, "2025-01-01T00:00:00Z", json!({"deal_id": "d1", "face_amount": 1})));
        assert_eq!(dead_reason(&outputs), None);
        prices.push(ledger.startup("acme").grants[id].transaction_price);
    }
    // round(10/3)=3, round(20/3)=7, 10: 3, 4, 3
    assert_eq!(prices, vec![3, 4, 3]);
    assert_eq!(prices.iter().sum::<i64>(), 10);
    assert_eq!(ledger.usd("acme").rpo, 10);
    assert_eq!(ledger.usd("acme").contract_liability, 10);
}

#[test]
fn equity_grant_journal_and_cash_and_promotional_prices() {
    let mut ledger = Ledger::new();
    ledger.feed(Topic::Deals, deal("d1", "2025-01-01T00:00:00Z", 0, 1_000, 800));
    let outputs =
        ledger.feed(Topic::Deals, grant("g1", "2025-01-01T00:00:00Z", json!({"deal_id": "d1", "face_amount": 1_000})));
    let entries = journal(&outputs);
    assert_eq!(
        (entries[0].debit.as_str(), entries[0].credit.as_str(), entries[0].amount),
        ("equity_investment", "contract_liability", 800)
    );
    let outputs = ledger.feed(
        Topic::Deals,
        grant("cash", "2025-01-01T00:00:00Z", json!({"face_amount": 500, "consideration": "cash"})),
    );
    let entries = journal(&outputs);
    assert_eq!((entries[0].debit.as_str(), entries[0].amount), ("cash", 500));
    let outputs = ledger.feed(
        Topic::Deals,
        grant(
            "priced",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 500, "consideration": "cash", "transaction_price": 450}),
        ),
    );
    assert_eq!(journal(&outputs)[0].amount, 450);
    let outputs = ledger.feed(
        Topic::Deals,
        grant("promo", "2025-01-01T00:00:00Z", json!({"face_amount": 500, "consideration": "promotional"})),
    );
    assert!(journal(&outputs).is_empty(), "promotional grants write no entries");
    assert_eq!(ledger.startup("acme").grants["promo"].transaction_price, 0);
    let outputs = ledger.feed(
        Topic::Deals,
        grant(
            "eq",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 500, "consideration": "equity", "transaction_price": 300}),
        ),
    );
    assert_eq!(journal(&outputs)[0].debit, "equity_investment");
    assert_eq!(ledger.usd("acme").granted_face, 3_000);
}

#[test]
fn grant_rejections_come_in_the_spec_order() {
    let mut ledger = Ledger::new();
    let at = "2025-01-01T00:00:00Z";
    ledger.feed(Topic::Deals, deal("d1", at, 0, 1_000, 800));
    ledger.feed(Topic::Deals, grant("g1", at, json!({"deal_id": "d1", "face_amount": 600})));
    // unknown deal beats everything else
    expect_reason(
        &ledger.feed(
            Topic::Deals,
            with_id(grant("g1", at, json!({"deal_id": "nope", "face_amount": 9_999, "currency": "EUR"})), "e1"),
        ),
        Reason::UnknownDeal,
    );
    // duplicate grant beats currency and commitment
    expect_reason(
        &ledger.feed(
            Topic::Deals,
            with_id(grant("g1", at, json!({"deal_id": "d1", "face_amount": 9_999, "currency": "EUR"})), "e2"),
        ),
        Reason::DuplicateGrant,
    );
    let mut no_deal = grant("g1", at, json!({"face_amount": 1, "consideration": "cash"}));
    no_deal["id"] = json!("g1-again");
    expect_reason(&ledger.feed(Topic::Deals, no_deal), Reason::DuplicateGrant);
    // currency before commitment
    expect_reason(
        &ledger.feed(Topic::Deals, grant("g2", at, json!({"deal_id": "d1", "face_amount": 9_999, "currency": "EUR"}))),
        Reason::CurrencyMismatch,
    );
    expect_reason(
        &ledger.feed(Topic::Deals, grant("g2", at, json!({"deal_id": "d1", "face_amount": 401}))),
        Reason::OverCommitment,
    );
    assert_eq!(
        dead_reason(&ledger.feed(Topic::Deals, grant("g3", at, json!({"deal_id": "d1", "face_amount": 400})))),
        None
    );
}

#[test]
fn over_commitment_counts_revoked_faces_and_cancelled_deals_refuse_grants() {
    let mut ledger = Ledger::new();
    let at = "2025-01-01T00:00:00Z";
    ledger.feed(Topic::Deals, deal("d1", at, 0, 1_000, 800));
    ledger.feed(Topic::Deals, grant("g1", at, json!({"deal_id": "d1", "face_amount": 1_000})));
    ledger.feed(Topic::Deals, deal_event("rev", "gpuledger.grant.revoked", at, json!({"grant_id": "g1"})));
    expect_reason(
        &ledger.feed(Topic::Deals, grant("g2", at, json!({"deal_id": "d1", "face_amount": 1}))),
        Reason::OverCommitment,
    );
    ledger.feed(Topic::Deals, deal_event("cancel", "gpuledger.deal.cancelled", at, json!({"deal_id": "d1"})));
    expect_reason(
        &ledger.feed(Topic::Deals, grant("g3", at, json!({"deal_id": "d1", "face_amount": 1}))),
        Reason::InvalidTransition,
    );
}

#[test]
fn revocation_reverses_what_is_unearned() {
    let mut ledger = Ledger::with_rate();
    let at = "2025-01-01T00:00:00Z";
    ledger.feed(Topic::Deals, deal("d1", at, 0, 3_600_000, 1_800_000));
    ledger.feed(Topic::Deals, grant("g1", at, json!({"deal_id": "d1", "face_amount": 3_600_000})));
    // one GPU-hour: cost 3,600,000 would use it all; use 10 minutes = 600,000
    ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:10:00Z", 1));
    let outputs = ledger.feed(
        Topic::Deals,
        deal_event("rev", "gpuledger.grant.revoked", "2025-01-01T01:00:00Z", json!({"grant_id": "g1"})),
    );
    let entries = journal(&outputs);
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].cause.as_str(), entries[0].debit.as_str(), entries[0].credit.as_str()),
        ("revocation", "contract_liability", "equity_investment")
    );
    assert_eq!(entries[0].amount, 1_800_000 - 300_000);
    let grant = &ledger.startup("acme").grants["g1"];
    assert_eq!((grant.revoked_face, grant.revocation_reversal, grant.revenue_compute), (3_000_000, 1_500_000, 300_000));
    assert_eq!(ledger.usd("acme").contract_liability, 0);
    // A final grant cannot be revoked again.
    let mut again = deal_event("rev2", "gpuledger.grant.revoked", "2025-01-01T02:00:00Z", json!({"grant_id": "g1"}));
    expect_reason(&ledger.feed(Topic::Deals, again.take()), Reason::InvalidTransition);
    expect_reason(
        &ledger.feed(
            Topic::Deals,
            deal_event("rev3", "gpuledger.grant.revoked", "2025-01-01T02:00:00Z", json!({"grant_id": "zz"})),
        ),
        Reason::UnknownGrant,
    );
}

#[test]
fn cash_revocation_credits_refund_liability() {
    let mut ledger = Ledger::new();
    let at = "2025-01-01T00:00:00Z";
    ledger.feed(Topic::Deals, grant("c1", at, json!({"face_amount": 700, "consideration": "cash"})));
    let outputs =
        ledger.feed(Topic::Deals, deal_event("rev", "gpuledger.grant.revoked", at, json!({"grant_id": "c1"})));
    assert_eq!(journal(&outputs)[0].credit, "refund_liability");
    assert_eq!(journal(&outputs)[0].amount, 700);
}

#[test]
fn cancelling_a_deal_revokes_its_open_grants_in_grant_id_order() {
    let mut ledger = Ledger::new();
    let at = "2025-01-01T00:00:00Z";
    ledger.feed(Topic::Deals, deal("d1", at, 0, 1_000, 1_000));
    ledger.feed(Topic::Deals, grant("gb", at, json!({"deal_id": "d1", "face_amount": 300})));
    ledger.feed(Topic::Deals, grant("ga", at, json!({"deal_id": "d1", "face_amount": 300})));
    ledger.feed(Topic::Deals, grant("gc", at, json!({"deal_id": "d1", "face_amount": 300})));
    ledger.feed(Topic::Deals, deal_event("rev", "gpuledger.grant.revoked", at, json!({"grant_id": "gc"})));
    assert_eq!(ledger.usd("acme").rpo, 700, "100 of the deal's price is not granted yet");
    let outputs =
        ledger.feed(Topic::Deals, deal_event("cancel", "gpuledger.deal.cancelled", at, json!({"deal_id": "d1"})));
    let revoked: Vec<_> = journal(&outputs).iter().map(|entry| entry.grant_id.clone().unwrap()).collect();
    assert_eq!(revoked, vec!["ga", "gb"]);
    // Positions 0 and 1 of the cancel event make distinct entry ids.
    assert_ne!(journal(&outputs)[0].entry_id, journal(&outputs)[1].entry_id);
    assert_eq!(ledger.usd("acme").rpo, 0, "a cancelled deal's ungranted price leaves the RPO");
    expect_reason(
        &ledger.feed(Topic::Deals, deal_event("cancel2", "gpuledger.deal.cancelled", at, json!({"deal_id": "d1"}))),
        Reason::InvalidTransition,
    );
    expect_reason(
        &ledger.feed(Topic::Deals, deal_event("cancel3", "gpuledger.deal.cancelled", at, json!({"deal_id": "zz"}))),
        Reason::UnknownDeal,
    );
}

#[test]
fn extensions_must_be_strictly_later_on_open_grants_with_an_expiry() {
    let mut ledger = Ledger::new();
    let at = "2025-01-01T00:00:00Z";
    ledger.feed(
        Topic::Deals,
        grant("g1", at, json!({"face_amount": 10, "consideration": "cash", "expires_at": "2025-03-01T00:00:00Z"})),
    );
    ledger.feed(Topic::Deals, grant("forever", at, json!({"face_amount": 10, "consideration": "cash"})));
    let extend = |id: &str, grant_id: &str, expires: &str| {
        deal_event(id, "gpuledger.grant.extended", at, json!({"grant_id": grant_id, "expires_at": expires}))
    };
    expect_reason(&ledger.feed(Topic::Deals, extend("e1", "g1", "2025-03-01T00:00:00Z")), Reason::InvalidTransition);
    expect_reason(
        &ledger.feed(Topic::Deals, extend("e2", "forever", "2025-03-01T00:00:00Z")),
        Reason::InvalidTransition,
    );
    expect_reason(&ledger.feed(Topic::Deals, extend("e3", "nope", "2025-03-01T00:00:00Z")), Reason::UnknownGrant);
    assert_eq!(dead_reason(&ledger.feed(Topic::Deals, extend("e4", "g1", "2025-04-01T00:00:00Z"))), None);
    assert_eq!(ledger.startup("acme").grants["g1"].expires_at, Some(t("2025-04-01T00:00:00Z")));
}

#[test]
fn an_extension_arriving_after_the_expiry_became_due_is_refused() {
    let mut ledger = Ledger::new();
    ledger.feed(
        Topic::Deals,
        grant(
            "g1",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 10, "consideration": "cash", "expires_at": "2025-03-01T00:00:00Z"}),
        ),
    );
    // Its own time moves the clock past expires_at + 1 h grace: the expiry
    // fires first, then the extension is judged against an expired grant.
    ledger.feed(Topic::Metering, tick("2025-02-28T12:00:00Z"));
    let outputs = ledger.feed(
        Topic::Deals,
        deal_event(
            "e1",
            "gpuledger.grant.extended",
            "2025-03-01T01:00:00Z",
            json!({"grant_id": "g1", "expires_at": "2025-06-01T00:00:00Z"}),
        ),
    );
    assert_eq!(journal(&outputs)[0].cause, "expiry");
    expect_reason(&outputs, Reason::InvalidTransition);
}
