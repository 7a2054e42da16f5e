//! §5 decoding (reasons in the spec's order) and §10 balances.

use super::*;

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
