//! Unit tests of the ledger rules, one or more per rule and reason code.
//! Pure: events go through the real decoder and the fold, no I/O.
//!
//! `Ledger` is the given/when/then helper: `feed` folds one record (in the
//! order given, which is the merge order) and returns what it wrote.

use serde_json::{json, Value};

use super::*;
use crate::events::decode::decode_value;
use crate::records::{AlertKind, CurrencyBalance, JournalEntry, Statement, UsageRated};
use crate::units::{parse_rfc3339, Month};

struct Ledger {
    task: Task,
    next_offset: [i64; 3],
}

fn t(text: &str) -> Millis {
    parse_rfc3339(text).unwrap_or_else(|| panic!("bad test time {text}"))
}

impl Ledger {
    fn new() -> Ledger {
        Ledger::with(FoldConfig::default(), 0)
    }

    fn with(config: FoldConfig, partition: u32) -> Ledger {
        Ledger { task: Task::new(config, TaskState { partition, ..TaskState::default() }), next_offset: [0; 3] }
    }

    fn feed(&mut self, topic: Topic, event: Value) -> Vec<Output> {
        let value = serde_json::to_vec(&event).unwrap();
        self.feed_bytes(topic, value)
    }

    fn feed_bytes(&mut self, topic: Topic, value: Vec<u8>) -> Vec<Output> {
        let offset = self.next_offset[topic.index()];
        self.next_offset[topic.index()] += 1;
        let decoded = match crate::events::json::parse(&value) {
            Ok(parsed) => decode_value(topic, &parsed),
            Err(rejection) => Decoded { time: None, event: Err(rejection) },
        };
        let record =
            InputRecord { topic, partition: self.task.state().partition, offset, key: None, value, headers: vec![] };
        let mut outputs = Vec::new();
        self.task.fold(&record, decoded, &mut outputs).expect("no internal error");
        outputs
    }

    fn startup(&self, id: &str) -> &Startup {
        &self.task.state().startups[id]
    }

    fn balances(&self, id: &str) -> Balances {
        self.task.balances(id, &TopicNames::default()).unwrap()
    }

    fn usd(&self, id: &str) -> CurrencyBalance {
        self.balances(id).currencies.into_iter().find(|currency| currency.currency == "USD").unwrap()
    }

    /// A standard world: an H800 rate of $3.60/GPU-hour from 2025-01-01.
    fn with_rate() -> Ledger {
        let mut ledger = Ledger::new();
        assert!(ledger.feed(Topic::Rates, rate("H800", 3_600_000, "2025-01-01T00:00:00Z", 0)).is_empty());
        ledger
    }
}

fn envelope(id: &str, type_name: &str, subject: Option<&str>, time: &str, data: Value) -> Value {
    let mut event =
        json!({"specversion": "1.0", "id": id, "source": "test", "type": type_name, "time": time, "data": data});
    if let Some(subject) = subject {
        event["subject"] = json!(subject);
    }
    event
}

fn rate(model: &str, price: i64, from: &str, min_billable_seconds: i64) -> Value {
    envelope(
        &format!("rate-{model}-{from}-{price}"),
        "gpuledger.rate.published",
        None,
        from,
        json!({"gpu_model": model, "region": "r1", "tier": "on_demand", "currency": "USD",
               "price_per_gpu_hour": price, "effective_from": from, "min_billable_seconds": min_billable_seconds}),
    )
}

fn deal(id: &str, time: &str, cash: i64, face: i64, fair_value: i64) -> Value {
    envelope(
        &format!("signed-{id}"),
        "gpuledger.deal.signed",
        Some("acme"),
        time,
        json!({"deal_id": id, "investor": "inv", "cash_amount": cash, "credit_face_amount": face,
               "currency": "USD", "equity_fair_value": fair_value}),
    )
}

fn grant(id: &str, time: &str, data: Value) -> Value {
    let mut data = data;
    data["grant_id"] = json!(id);
    if data.get("currency").is_none() {
        data["currency"] = json!("USD");
    }
    if data.get("effective_at").is_none() {
        data["effective_at"] = json!("2025-01-01T00:00:00Z");
    }
    envelope(&format!("grant-{id}"), "gpuledger.credit.granted", Some("acme"), time, data)
}

fn usage_for(startup: &str, id: &str, start: &str, end: &str, gpus: i64) -> Value {
    envelope(
        id,
        "gpuledger.gpu.usage",
        Some(startup),
        end,
        json!({"cluster_id": "c1", "region": "r1", "gpu_model": "H800", "tier": "on_demand",
               "gpu_count": gpus, "started_at": start, "ended_at": end}),
    )
}

fn usage(id: &str, start: &str, end: &str, gpus: i64) -> Value {
    usage_for("acme", id, start, end, gpus)
}

fn tick(time: &str) -> Value {
    json!({"specversion": "1.0", "id": format!("tick-{time}"), "source": "sched", "type": "gpuledger.clock.tick", "time": time})
}

fn with_id(mut event: Value, id: &str) -> Value {
    event["id"] = json!(id);
    event
}

fn deal_event(id: &str, type_name: &str, time: &str, data: Value) -> Value {
    envelope(id, type_name, Some("acme"), time, data)
}

fn dead_reason(outputs: &[Output]) -> Option<String> {
    outputs.iter().find_map(|output| match output {
        Output::DeadLetter(letter) => Some(letter.reason.clone()),
        _ => None,
    })
}

fn journal(outputs: &[Output]) -> Vec<&JournalEntry> {
    outputs.iter().filter_map(|output| if let Output::Journal(entry) = output { Some(entry) } else { None }).collect()
}

fn rated(outputs: &[Output]) -> &UsageRated {
    outputs
        .iter()
        .find_map(|output| if let Output::UsageRated(usage) = output { Some(usage) } else { None })
        .expect("a usage-rated record")
}

fn statements(outputs: &[Output]) -> Vec<&Statement> {
    outputs
        .iter()
        .filter_map(|output| if let Output::Statement(statement) = output { Some(statement) } else { None })
        .collect()
}

fn alerts(outputs: &[Output]) -> Vec<(AlertKind, Option<String>, Option<u32>)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Alert(alert) => Some((alert.kind, alert.grant_id.clone(), alert.threshold)),
            _ => None,
        })
        .collect()
}

fn expect_reason(outputs: &[Output], reason: Reason) {
    assert_eq!(dead_reason(outputs).as_deref(), Some(reason.as_str()), "outputs: {outputs:#?}");
}

// ---------------------------------------------------------------- §6 deals

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

// ---------------------------------------------------------------- §7 rating

#[test]
fn rating_picks_the_latest_effective_rate_and_applies_minimum_seconds() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(Topic::Rates, rate("H800", 7_200_000, "2025-02-01T00:00:00Z", 120));
    // Started before the second card: first card, 30 minutes on 2 GPUs.
    let outputs = ledger.feed(Topic::Metering, usage("u1", "2025-01-31T23:50:00Z", "2025-02-01T00:20:00Z", 2));
    let first = rated(&outputs);
    assert_eq!((first.billable_ms, first.gpu_ms, first.cost), (1_800_000, 3_600_000, 3_600_000));
    assert_eq!(first.rate.key, "H800/r1/on_demand");
    // After: second card, 30 s billed as its 120 s minimum.
    let outputs = ledger.feed(Topic::Metering, usage("u2", "2025-02-01T00:20:00Z", "2025-02-01T00:20:30Z", 1));
    let second = rated(&outputs);
    assert_eq!((second.billable_ms, second.cost), (120_000, 240_000));
    assert_eq!(second.rate.price_per_gpu_hour, 7_200_000);
}

#[test]
fn the_later_taken_rate_wins_for_the_same_key_and_start() {
    let mut ledger = Ledger::with_rate();
    let mut newer = rate("H800", 36_000, "2025-01-01T00:00:00Z", 0);
    newer["id"] = json!("rate-correction");
    ledger.feed(Topic::Rates, newer);
    let outputs = ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z", 1));
    assert_eq!(rated(&outputs).cost, 36_000);
}

#[test]
fn cost_rounds_half_to_even() {
    let mut ledger = Ledger::new();
    // 1,000 micros per GPU-hour; 1.8 s = 0.5 micro → 0; 5.4 s = 1.5 → 2
    ledger.feed(Topic::Rates, rate("H800", 1_000, "2025-01-01T00:00:00Z", 0));
    let outputs = ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01.800Z", 1));
    assert_eq!(rated(&outputs).cost, 0);
    let outputs = ledger.feed(Topic::Metering, usage("u2", "2025-01-01T00:00:00Z", "2025-01-01T00:00:05.400Z", 1));
    assert_eq!(rated(&outputs).cost, 2);
}

#[test]
fn usage_without_a_rate_is_no_rate_and_overflow_is_invalid() {
    let mut ledger = Ledger::with_rate();
    expect_reason(
        &ledger.feed(Topic::Metering, usage("u0", "2024-12-31T00:00:00Z", "2024-12-31T01:00:00Z", 1)),
        Reason::NoRate,
    );
    ledger.feed(Topic::Rates, rate("H800", i64::MAX, "2025-01-02T00:00:00Z", 0));
    expect_reason(
        &ledger.feed(Topic::Metering, usage("u1", "2025-01-02T00:00:00Z", "2025-01-03T00:00:00Z", 1_000)),
        Reason::InvalidField,
    );
    ledger.feed(Topic::Rates, rate("H800", 1, "2025-01-04T00:00:00Z", i64::MAX / 10));
    expect_reason(
        &ledger.feed(Topic::Metering, usage("u2", "2025-01-04T00:00:00Z", "2025-01-04T00:00:01Z", 1)),
        Reason::InvalidField,
    );
}

// ---------------------------------------------------------------- §8 burn-down

#[test]
fn burn_down_follows_priority_expiry_effective_and_id() {
    let mut ledger = Ledger::with_rate();
    let at = "2025-01-01T00:00:00Z";
    let cash = |face: i64, extra: Value| {
        let mut data = json!({"face_amount": face, "consideration": "cash"});
        for (key, value) in extra.as_object().unwrap() {
            data[key] = value.clone();
        }
        data
    };
    ledger.feed(Topic::Deals, grant("z-low", at, cash(100, json!({"priority": 10}))));
    ledger.feed(Topic::Deals, grant("b-noexp", at, cash(100, json!({}))));
    ledger.feed(Topic::Deals, grant("c-exp", at, cash(100, json!({"expires_at": "2025-06-01T00:00:00Z"}))));
    ledger.feed(Topic::Deals, grant("a-late", at, cash(100, json!({"effective_at": "2025-01-01T00:30:00Z"}))));
    ledger.feed(Topic::Deals, grant("d-eur", at, cash(100, json!({"currency": "EUR", "priority": 0}))));
    ledger.feed(
        Topic::Deals,
        grant(
            "e-exp",
            at,
            cash(100, json!({"expires_at": "2025-06-01T00:00:00Z", "effective_at": "2024-12-01T00:00:00Z"})),
        ),
    );
    ledger.feed(
        Topic::Deals,
        grant(
            "f-exp",
            at,
            cash(100, json!({"expires_at": "2025-06-01T00:00:00Z", "effective_at": "2024-12-01T00:00:00Z"})),
        ),
    );
    // 600 micros of cost: 0.6 s of one GPU at $3.60/h.
    let outputs = ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:00.600Z", 1));
    let order: Vec<_> = rated(&outputs).draws.iter().map(|draw| (draw.grant_id.as_str(), draw.face)).collect();
    // a-late is not yet effective at u.time; d-eur has another currency.
    assert_eq!(order, vec![("z-low", 100), ("e-exp", 100), ("f-exp", 100), ("c-exp", 100), ("b-noexp", 100)]);
    assert_eq!(rated(&outputs).overage, 100);
    let entries = journal(&outputs);
    assert_eq!(entries.last().unwrap().cause, "overage");
    assert_eq!(
        (entries.last().unwrap().debit.as_str(), entries.last().unwrap().credit.as_str()),
        ("accounts_receivable", "revenue_overage")
    );
}

#[test]
fn expired_windows_do_not_draw() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(
        Topic::Deals,
        grant(
            "g1",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 1_000_000, "consideration": "cash", "expires_at": "2025-01-01T01:00:00Z"}),
        ),
    );
    // u.time == expires_at: not eligible (strict), though the grant is still open (grace).
    let outputs = ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:59:00Z", "2025-01-01T01:00:00Z", 1));
    assert!(rated(&outputs).draws.is_empty());
    assert_eq!(rated(&outputs).overage, 60_000);
}

#[test]
fn revenue_uses_cumulative_rounding_so_a_grant_earns_exactly_its_price() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(
        Topic::Deals,
        grant(
            "g1",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 3_000, "consideration": "cash", "transaction_price": 1_000}),
        ),
    );
    let mut revenues = Vec::new();
    for index in 0..3 {
        // 1 s of one GPU = 1,000 micros
        let start = format!("2025-01-01T00:00:0{index}Z");
        let end = format!("2025-01-01T00:00:0{}Z", index + 1);
        let outputs = ledger.feed(Topic::Metering, usage(&format!("u{index}"), &start, &end, 1));
        revenues.push(rated(&outputs).draws[0].revenue);
    }
    // round(1000/3)=333, round(2000/3)=667 → 334, 1000 → 333
    assert_eq!(revenues, vec![333, 334, 333]);
    assert_eq!(ledger.startup("acme").grants["g1"].revenue_compute, 1_000);
}

#[test]
fn promotional_draws_are_listed_with_zero_revenue_and_no_entry() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(
        Topic::Deals,
        grant("p", "2025-01-01T00:00:00Z", json!({"face_amount": 10_000, "consideration": "promotional"})),
    );
    let outputs = ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1));
    assert_eq!(rated(&outputs).draws[0].revenue, 0);
    assert_eq!(rated(&outputs).draws[0].face, 1_000);
    assert!(journal(&outputs).is_empty());
}

// ---------------------------------------------------------------- §9 journal, expiry, close

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

// ---------------------------------------------------------------- §4 clocks

#[test]
fn clocks_are_per_startup_and_ticks_move_them_all() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(
        Topic::Deals,
        grant(
            "g1",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 10, "consideration": "cash", "expires_at": "2025-01-02T00:00:00Z"}),
        ),
    );
    // Another start-up's late usage does not expire acme's grant.
    let outputs =
        ledger.feed(Topic::Metering, usage_for("other", "o1", "2025-01-05T00:00:00Z", "2025-01-05T00:00:01Z", 1));
    assert!(journal(&outputs).iter().all(|entry| entry.cause != "expiry"));
    assert_eq!(ledger.startup("acme").clock, t("2025-01-01T00:00:00Z"));
    let outputs = ledger.feed(Topic::Metering, tick("2025-01-03T00:00:00Z"));
    assert_eq!(journal(&outputs)[0].cause, "expiry");
    assert_eq!(ledger.startup("acme").clock, t("2025-01-03T00:00:00Z"));
    assert_eq!(ledger.startup("other").clock, t("2025-01-05T00:00:01Z"), "clocks never go back");
    // A start-up first seen after ticks starts at the latest tick.
    ledger.feed(Topic::Deals, envelope("n1", "gpuledger.deal.signed", Some("newco"), "2025-01-01T00:00:00Z",
        json!({"deal_id": "d", "investor": "i", "cash_amount": 0, "credit_face_amount": 1, "currency": "USD", "equity_fair_value": 0})));
    assert_eq!(ledger.startup("newco").clock, t("2025-01-03T00:00:00Z"));
}

#[test]
fn records_refused_before_the_business_rules_move_no_clock_but_refused_by_them_do() {
    let mut ledger = Ledger::with_rate();
    ledger.feed(Topic::Deals, deal("d0", "2025-01-01T00:00:00Z", 0, 1, 0));
    let mut bad = usage("u1", "2025-01-01T02:00:00Z", "2025-01-01T02:00:01Z", 0);
    bad["id"] = json!("bad");
    expect_reason(&ledger.feed(Topic::Metering, bad), Reason::InvalidField);
    assert_eq!(ledger.startup("acme").clock, t("2025-01-01T00:00:00Z"));
    let mut no_rate = usage("u2", "2025-01-01T03:00:00Z", "2025-01-01T03:00:01Z", 1);
    no_rate["data"]["gpu_model"] = json!("V100");
    expect_reason(&ledger.feed(Topic::Metering, no_rate), Reason::NoRate);
    assert_eq!(ledger.startup("acme").clock, t("2025-01-01T03:00:01Z"));
}

#[test]
fn max_future_is_judged_against_the_clock_or_latest_tick() {
    let mut ledger = Ledger::with_rate();
    // Neither clock nor tick: no check.
    assert_eq!(dead_reason(&ledger.feed(Topic::Deals, deal("d0", "2030-01-01T00:00:00Z", 0, 1, 0))), None);
    let mut fresh = Ledger::with_rate();
    fresh.feed(Topic::Metering, tick("2025-01-01T00:00:00Z"));
    expect_reason(&fresh.feed(Topic::Deals, deal("d1", "2025-01-02T00:00:00.001Z", 0, 1, 0)), Reason::InvalidField);
    assert_eq!(dead_reason(&fresh.feed(Topic::Deals, deal("d2", "2025-01-02T00:00:00Z", 0, 1, 0))), None);
}

// ---------------------------------------------------------------- §5 dedup

#[test]
fn equal_repeats_are_dropped_and_counted_different_ones_conflict() {
    let mut ledger = Ledger::with_rate();
    let mut event = usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1);
    event["weight"] = json!(10);
    assert_eq!(dead_reason(&ledger.feed(Topic::Metering, event.clone())), None);
    // Same content, other key order and number spelling: equal.
    let respelled = serde_json::to_string(&event).unwrap().replace("\"weight\":10", "\"weight\":1.0e1");
    let body = respelled.replacen("\"specversion\":\"1.0\",", "", 1);
    let reordered = format!("{},\"specversion\":\"1.0\"}}", &body[..body.len() - 1]);
    assert_ne!(reordered, respelled);
    assert!(respelled.contains("1.0e1"));
    assert!(ledger.feed_bytes(Topic::Metering, reordered.into_bytes()).is_empty());
    assert_eq!(ledger.startup("acme").duplicates_dropped, 1);
    assert_eq!(ledger.balances("acme").duplicates_dropped, 1);
    let mut different = event.clone();
    different["data"]["gpu_count"] = json!(2);
    expect_reason(&ledger.feed(Topic::Metering, different), Reason::ConflictingDuplicate);
    // An extension attribute is part of the event.
    let mut extended = event;
    extended["weight"] = json!(11);
    expect_reason(&ledger.feed(Topic::Metering, extended), Reason::ConflictingDuplicate);
}

#[test]
fn a_rejected_event_may_be_sent_again_once_fixed() {
    let mut ledger = Ledger::with_rate();
    let mut broken = usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1);
    broken["data"]["gpu_model"] = json!("V100");
    expect_reason(&ledger.feed(Topic::Metering, broken), Reason::NoRate);
    let outputs = ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1));
    assert_eq!(rated(&outputs).id, "u1");
}

#[test]
fn usage_identities_live_for_the_dedup_window_then_usage_is_too_old() {
    let mut ledger = Ledger::with_rate();
    let event = usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1);
    ledger.feed(Topic::Metering, event.clone());
    // Clock exactly window after: still remembered (time >= clock - window).
    ledger.feed(Topic::Metering, tick("2025-02-05T00:00:01Z"));
    assert!(ledger.feed(Topic::Metering, event.clone()).is_empty());
    ledger.feed(Topic::Metering, tick("2025-02-05T00:00:01.001Z"));
    expect_reason(&ledger.feed(Topic::Metering, event), Reason::TooOld);
    assert!(ledger.startup("acme").dedup.remembered.is_empty(), "forgotten identities leave memory");
}

#[test]
fn deal_identities_are_remembered_forever() {
    let mut ledger = Ledger::new();
    let event = deal("d1", "2025-01-01T00:00:00Z", 0, 1, 0);
    ledger.feed(Topic::Deals, event.clone());
    ledger.feed(Topic::Metering, tick("2027-01-01T00:00:00Z"));
    assert!(ledger.feed(Topic::Deals, event).is_empty());
    assert_eq!(ledger.startup("acme").duplicates_dropped, 1);
}

#[test]
fn rate_duplicates_are_dropped_and_only_partition_zero_writes_rate_dead_letters() {
    let mut zero = Ledger::with_rate();
    assert!(zero.feed(Topic::Rates, rate("H800", 3_600_000, "2025-01-01T00:00:00Z", 0)).is_empty());
    assert_eq!(zero.task.state().rates.duplicates_dropped, 1);
    let mut conflicting = rate("H800", 1, "2025-01-01T00:00:00Z", 0);
    conflicting["id"] = json!("rate-H800-2025-01-01T00:00:00Z-3600000");
    expect_reason(&zero.feed(Topic::Rates, conflicting.clone()), Reason::ConflictingDuplicate);
    let mut one = Ledger::with(FoldConfig::default(), 1);
    one.feed(Topic::Rates, rate("H800", 3_600_000, "2025-01-01T00:00:00Z", 0));
    assert!(one.feed(Topic::Rates, conflicting).is_empty());
    assert!(one.feed_bytes(Topic::Rates, b"{oops".to_vec()).is_empty());
}

#[test]
fn ticks_are_not_deduplicated() {
    let mut ledger = Ledger::new();
    ledger.feed(
        Topic::Deals,
        grant(
            "g1",
            "2025-01-01T00:00:00Z",
            json!({"face_amount": 10, "consideration": "cash", "expires_at": "2025-01-02T00:00:00Z"}),
        ),
    );
    // The same tick id twice with a later time still moves the clock.
    let mut later = tick("2025-01-03T00:00:00Z");
    later["id"] = json!("tick-2025-01-01T00:00:00Z");
    ledger.feed(Topic::Metering, tick("2025-01-01T00:00:00Z"));
    assert_eq!(journal(&ledger.feed(Topic::Metering, later))[0].cause, "expiry");
}

// ---------------------------------------------------------------- §5 decoding

fn reason_of(topic: Topic, value: Value) -> Option<Reason> {
    let decoded = decode_value(topic, &value);
    decoded.event.err().map(|rejection| rejection.reason)
}

#[test]
fn envelope_and_schema_violations() {
    let good = usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1);
    assert_eq!(reason_of(Topic::Metering, good.clone()), None);
    let mutate = |path: &[&str], value: Option<Value>| {
        let mut event = good.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut target = &mut event;
        for part in parents {
            target = &mut target[*part];
        }
        match value {
            Some(value) => target[*last] = value,
            None => {
                target.as_object_mut().unwrap().remove(*last);
            }
        }
        event
    };
    for (path, value) in [
        (&["specversion"][..], Some(json!("0.3"))),
        (&["id"][..], None),
        (&["source"][..], Some(json!(5))),
        (&["subject"][..], None),
        (&["time"][..], Some(json!("2016-12-31T23:59:60Z"))),
        (&["data"][..], None),
        (&["data", "gpu_count"][..], Some(json!("1"))),
        (&["data", "gpu_count"][..], Some(json!(1.5))),
        (&["data", "gpu_count"][..], Some(json!(null))),
        (&["data", "tier"][..], Some(json!("premium"))),
        (&["data", "started_at"][..], Some(json!("yesterday"))),
    ] {
        assert_eq!(
            reason_of(Topic::Metering, mutate(path, value.clone())),
            Some(Reason::SchemaViolation),
            "{path:?} = {value:?}"
        );
    }
    let huge: Value = serde_json::from_str(
        &serde_json::to_string(&good).unwrap().replace("\"gpu_count\":1", "\"gpu_count\":18446744073709551616"),
    )
    .unwrap();
    assert_eq!(reason_of(Topic::Metering, huge), Some(Reason::SchemaViolation));
    assert_eq!(reason_of(Topic::Metering, json!([1, 2])), Some(Reason::SchemaViolation));
    assert_eq!(
        reason_of(
            Topic::Deals,
            grant("g", "2025-01-01T00:00:00Z", json!({"face_amount": 1, "consideration": "equity"}))
        ),
        Some(Reason::SchemaViolation)
    );
    assert_eq!(
        reason_of(Topic::Deals, grant("g", "2025-01-01T00:00:00Z", json!({"face_amount": 1}))),
        Some(Reason::SchemaViolation)
    );
}

#[test]
fn unknown_types_and_undecodable_bytes() {
    let good = usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1);
    assert_eq!(reason_of(Topic::Deals, good.clone()), Some(Reason::UnknownType), "usage on the deals topic");
    let mut renamed = good;
    renamed["type"] = json!("gpuledger.gpu.usage.v2");
    assert_eq!(reason_of(Topic::Metering, renamed), Some(Reason::UnknownType));
    let mut ledger = Ledger::new();
    expect_reason(&ledger.feed_bytes(Topic::Metering, b"{\"specversion\":".to_vec()), Reason::Undecodable);
}

#[test]
fn invalid_fields() {
    let good = usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z", 1);
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut zero_gpus = good.clone();
    zero_gpus["data"]["gpu_count"] = json!(0);
    cases.push(("gpu_count 0", zero_gpus));
    let mut time_mismatch = good.clone();
    time_mismatch["time"] = json!("2025-01-01T00:00:02Z");
    cases.push(("time != ended_at", time_mismatch));
    cases.push(("ended <= started", usage("u", "2025-01-01T00:00:01Z", "2025-01-01T00:00:01Z", 1)));
    cases.push(("over 31 days", usage("u", "2025-01-01T00:00:00Z", "2025-02-01T00:00:00.001Z", 1)));
    let mut reserved = good.clone();
    reserved["source"] = json!("gpuledger:meter");
    cases.push(("reserved source", reserved));
    let at = "2025-01-01T00:00:00Z";
    cases.push(("negative cash", deal("d", at, -1, 1, 0)));
    cases.push(("zero face", deal("d", at, 0, 0, 0)));
    let mut bad_currency = deal("d", at, 0, 1, 0);
    bad_currency["data"]["currency"] = json!("usd");
    cases.push(("currency", bad_currency));
    cases.push(("priority", grant("g", at, json!({"face_amount": 1, "consideration": "cash", "priority": 101}))));
    cases.push((
        "cash under a deal",
        grant("g", at, json!({"face_amount": 1, "deal_id": "d", "consideration": "cash"})),
    ));
    cases.push((
        "price under a deal",
        grant("g", at, json!({"face_amount": 1, "deal_id": "d", "transaction_price": 1})),
    ));
    cases.push((
        "promotional with price",
        grant("g", at, json!({"face_amount": 1, "consideration": "promotional", "transaction_price": 0})),
    ));
    cases.push((
        "expires before effective",
        grant("g", at, json!({"face_amount": 1, "consideration": "cash", "expires_at": "2024-12-31T00:00:00Z"})),
    ));
    for (name, event) in cases {
        let topic = if event["type"] == "gpuledger.gpu.usage" { Topic::Metering } else { Topic::Deals };
        assert_eq!(reason_of(topic, event), Some(Reason::InvalidField), "{name}");
    }
    assert_eq!(
        reason_of(Topic::Metering, usage("u", "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z", 1)),
        None,
        "exactly 31 days is allowed"
    );
    let mut negative_price = rate("H800", -1, "2025-01-01T00:00:00Z", 0);
    negative_price["data"]["min_billable_seconds"] = json!(0);
    assert_eq!(reason_of(Topic::Rates, negative_price), Some(Reason::InvalidField));
}

// ---------------------------------------------------------------- §10 balances

#[test]
fn balances_carry_liability_rpo_and_escrow() {
    let mut ledger = Ledger::with_rate();
    let at = "2025-01-01T00:00:00Z";
    ledger.feed(Topic::Deals, deal("d1", at, 1_000_000, 10_000_000, 9_000_000));
    ledger.feed(Topic::Deals, grant("t1", at, json!({"deal_id": "d1", "face_amount": 4_000_000})));
    ledger.feed(
        Topic::Deals,
        grant("t2", at, json!({"deal_id": "d1", "face_amount": 4_000_000, "escrow": true, "priority": 90})),
    );
    // 2 GPU-hours at $3.60 = 7.2M: t1 (4M, price 3.2M) then 3.2M of t2.
    ledger.feed(Topic::Metering, usage("u1", "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z", 2));
    let usd = ledger.usd("acme");
    assert_eq!((usd.granted_face, usd.consumed_face, usd.remaining_face), (8_000_000, 7_200_000, 800_000));
    assert_eq!(usd.escrow_remaining_face, 800_000);
    assert_eq!(usd.revenue_compute, 3_200_000 + 2_560_000);
    assert_eq!(usd.contract_liability, 6_400_000 - 5_760_000);
    assert_eq!(usd.rpo, usd.contract_liability + 1_600_000);
    let grants: Vec<_> =
        usd.grants.iter().map(|grant| (grant.grant_id.as_str(), grant.state.as_str(), grant.remaining_face)).collect();
    assert_eq!(grants, vec![("t1", "open", 0), ("t2", "open", 800_000)]);
}

// ------------------------------------------------ v1.1 robustness (spec §5)

mod robust;
