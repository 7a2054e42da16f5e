//! §9 journal entries, expiry and month close; §10 alerts.

use super::*;

#[test]
fn entry_ids_hash_topic_startup_source_id_and_position() {
    let mut ledger = Ledger::with_rate();
    ledger
        .feed(Topic::Deals, grant("g1", "2025-01-01T00:00:00Z", json!({"face_amount": 500, "consideration": "cash"})));
    let outputs = ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1));
    let entries = journal(&outputs);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].entry_id, crate::records::identity_hash(&["metering", "acme", "test", "u1", "0"]));
    assert_eq!(entries[1].entry_id, crate::records::identity_hash(&["metering", "acme", "test", "u1", "1"]));
    assert_eq!(entries[0].event_time, crate::units::Ts(t("2025-01-01T00:00:01Z")));
    assert_eq!(entries[0].period, Month::parse("2025-01").unwrap());
}

#[test]
fn expiry_fires_after_the_grace_and_books_breakage() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(Topic::Deals, grant("g1", "2025-01-01T00:00:00Z", json!({"face_amount": 10_000, "consideration": "cash", "transaction_price": 5_000, "expires_at": "2025-01-10T00:00:00Z"})));
    ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:02Z", 1));
    // Within the grace: nothing yet.
    assert!(journal(&ledger.feed(Topic::Metering, tick("2025-01-10T00:59:59.999Z"))).is_empty());
    let outputs = ledger.feed(Topic::Metering, tick("2025-01-10T01:00:00Z"));
    let entries = journal(&outputs);
    assert_eq!(entries.len(), 1);
    let entry = entries[0];
    assert_eq!(
        (entry.cause.as_str(), entry.debit.as_str(), entry.credit.as_str(), entry.amount),
        ("expiry", "contract_liability", "revenue_breakage", 4_000)
    );
    assert_eq!((entry.source.as_str(), entry.id.as_str(), entry.topic.as_str()), ("gpuledger:expiry", "g1", "deals"));
    assert_eq!(entry.event_time, crate::units::Ts(t("2025-01-10T00:00:00Z")));
    let grant = &ledger.startup("acme").grants["g1"];
    assert_eq!((grant.state, grant.expired_face, grant.revenue_breakage), (state::GrantState::Expired, 8_000, 4_000));
    assert_eq!(grant.revenue_compute + grant.revenue_breakage + grant.revocation_reversal, grant.transaction_price);
}

#[test]
fn a_grant_accepted_after_its_expiry_expires_right_after_it() {
    let mut ledger = Ledger::new();
    ledger.feed(Topic::Metering, tick("2025-03-01T00:00:00Z"));
    ledger.feed(Topic::Deals, deal("d0", "2025-03-01T00:00:00Z", 0, 1, 0));
    let outputs = ledger.feed(
        Topic::Deals,
        grant(
            "old",
            "2025-03-01T00:00:00Z",
            json!({"face_amount": 10, "consideration": "cash", "expires_at": "2025-02-01T00:00:00Z"}),
        ),
    );
    let causes: Vec<_> = journal(&outputs).iter().map(|entry| entry.cause.clone()).collect();
    assert_eq!(causes, vec!["credit.granted", "expiry"]);
}

#[test]
fn months_close_after_the_close_grace_with_empty_months_and_adjustments() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(
        Topic::Deals,
        grant("g1", "2025-01-05T00:00:00Z", json!({"face_amount": 100_000_000, "consideration": "cash"})),
    );
    ledger.feed(Topic::Metering, usage("u1", "2025-01-05T00:00:00Z", "2025-01-05T01:00:00Z", 1));
    // February + 72 h: January closes; March + 72 h: February (empty) closes.
    assert!(statements(&ledger.feed(Topic::Metering, tick("2025-02-03T23:59:59.999Z"))).is_empty());
    let outputs = ledger.feed(Topic::Metering, tick("2025-03-04T00:00:00Z"));
    let closed = statements(&outputs);
    assert_eq!(
        closed.iter().map(|statement| statement.period.to_string()).collect::<Vec<_>>(),
        vec!["2025-01", "2025-02"]
    );
    let january = &closed[0].currencies[0];
    assert_eq!((january.opening_remaining_face, january.closing_remaining_face), (0, 96_400_000));
    assert_eq!(
        (january.figures.usage_cost, january.figures.consumed_face, january.figures.granted_face),
        (3_600_000, 3_600_000, 100_000_000)
    );
    assert_eq!(closed[0].closed_at, crate::units::Ts(t("2025-02-04T00:00:00Z")));
    let february = &closed[1].currencies[0];
    assert_eq!(
        (february.opening_remaining_face, february.closing_remaining_face, february.figures.usage_count),
        (96_400_000, 96_400_000, 0)
    );
    // Late January usage, within the dedup window: booked in March, adjusting January.
    let outputs = ledger.feed(Topic::Metering, usage("late", "2025-01-31T22:00:00Z", "2025-01-31T23:00:00Z", 1));
    let late = rated(&outputs);
    assert_eq!(
        (late.period.to_string(), late.adjusts_period.map(|month| month.to_string())),
        ("2025-03".to_owned(), Some("2025-01".to_owned()))
    );
    assert!(journal(&outputs).iter().all(|entry| entry.adjusts_period == Some(Month::parse("2025-01").unwrap())));
    let outputs = ledger.feed(Topic::Metering, tick("2025-04-04T00:00:00Z"));
    let march = &statements(&outputs)[0].currencies[0];
    assert_eq!(march.adjustments.len(), 1);
    assert_eq!(
        (march.adjustments[0].period.to_string(), march.adjustments[0].figures.usage_cost),
        ("2025-01".to_owned(), 3_600_000)
    );
    assert_eq!(march.figures.usage_cost, 3_600_000, "the adjustment is part of the month it is booked in");
}

#[test]
fn effects_at_one_instant_fire_alert_then_expiry_then_close() {
    let config = FoldConfig { expiry_grace: 0, close_grace: 0, ..FoldConfig::default() };
    let mut ledger = Ledger::with(config, 0);
    // g1 expires at 2025-02-01 (= close of January); g2's expiring alert is due then too.
    ledger.feed(
        Topic::Deals,
        grant(
            "g1",
            "2025-01-05T00:00:00Z",
            json!({"face_amount": 100, "consideration": "cash", "expires_at": "2025-02-01T00:00:00Z"}),
        ),
    );
    ledger.feed(
        Topic::Deals,
        grant(
            "g2",
            "2025-01-05T00:00:00Z",
            json!({"face_amount": 100, "consideration": "cash", "expires_at": "2025-03-03T00:00:00Z"}),
        ),
    );
    let outputs = ledger.feed(Topic::Metering, tick("2025-02-01T00:00:00Z"));
    let kinds: Vec<&str> = outputs
        .iter()
        .map(|output| match output {
            Output::Alert(_) => "alert",
            Output::Journal(_) => "expiry",
            Output::Statement(_) => "close",
            _ => "other",
        })
        .collect();
    // g1's expiring alert was due on Jan 2 (before the grant existed: fired when it was accepted).
    assert_eq!(kinds, vec!["alert", "expiry", "close"]);
}

// ---------------------------------------------------------------- §10 alerts

#[test]
fn consumption_alerts_fire_once_per_threshold_and_overage_once_per_currency() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(
        Topic::Deals,
        grant("g1", "2025-01-01T00:00:00Z", json!({"face_amount": 10_000, "consideration": "cash"})),
    );
    let second = |ledger: &mut Ledger, id: &str, from: u32, seconds: u32| {
        let start = format!("2025-01-01T00:{:02}:{:02}Z", from / 60, from % 60);
        let end = format!("2025-01-01T00:{:02}:{:02}Z", (from + seconds) / 60, (from + seconds) % 60);
        ledger.feed(Topic::Metering, usage(id, &start, &end, 1))
    };
    // 1 s = 1,000 of the 10,000 face.
    assert!(alerts(&second(&mut ledger, "u1", 0, 4)).is_empty());
    assert_eq!(alerts(&second(&mut ledger, "u2", 4, 1)), vec![(AlertKind::GrantConsumed, Some("g1".into()), Some(50))]);
    assert_eq!(alerts(&second(&mut ledger, "u3", 5, 3)), vec![(AlertKind::GrantConsumed, Some("g1".into()), Some(80))]);
    assert_eq!(
        alerts(&second(&mut ledger, "u4", 8, 3)),
        vec![(AlertKind::GrantConsumed, Some("g1".into()), Some(100)), (AlertKind::FirstOverage, None, None)]
    );
    assert!(alerts(&second(&mut ledger, "u5", 12, 3)).is_empty(), "each alert once");
}

#[test]
fn expiring_alert_fires_thirty_days_ahead_once_per_expiry_value() {
    let mut ledger = Ledger::new();
    ledger.feed(
        Topic::Deals,
        grant(
            "g1",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 10, "consideration": "cash", "expires_at": "2025-03-31T00:00:00Z"}),
        ),
    );
    ledger.feed(
        Topic::Deals,
        grant(
            "empty",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 10, "consideration": "cash", "expires_at": "2025-03-31T00:00:00Z"}),
        ),
    );
    // 'empty' is revoked: no face remains, no alert.
    ledger.feed(
        Topic::Deals,
        deal_event("rev", "gpuledger.grant.revoked", "2025-01-01T00:00:00Z", json!({"grant_id": "empty"})),
    );
    assert!(alerts(&ledger.feed(Topic::Metering, tick("2025-02-28T23:59:59.999Z"))).is_empty());
    assert_eq!(
        alerts(&ledger.feed(Topic::Metering, tick("2025-03-01T00:00:00Z"))),
        vec![(AlertKind::GrantExpiring, Some("g1".into()), None)]
    );
    assert!(alerts(&ledger.feed(Topic::Metering, tick("2025-03-02T00:00:00Z"))).is_empty());
    ledger.feed(
        Topic::Deals,
        deal_event(
            "ext",
            "gpuledger.grant.extended",
            "2025-03-02T00:00:00Z",
            json!({"grant_id": "g1", "expires_at": "2025-04-30T00:00:00Z"}),
        ),
    );
    assert_eq!(
        alerts(&ledger.feed(Topic::Metering, tick("2025-03-31T00:00:00Z"))),
        vec![(AlertKind::GrantExpiring, Some("g1".into()), None)]
    );
}
