//! §7 rating and §8 burn-down.

use super::*;

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
