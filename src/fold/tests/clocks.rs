//! §4 clocks and §5 duplicates.

use super::*;

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
