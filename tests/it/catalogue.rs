//! The bad-input catalogue (spec §5): every class of malformed or hostile
//! record a producer can send, each with the reason it must earn. For each
//! class alone, batch mode must dead-letter it with that reason, keep the
//! audit clean and leave every other start-up's outputs untouched; and the
//! whole catalogue produced to a live broker must reach the dead-letter
//! topic while the processor reaches caught-up and exits 0.

use std::path::Path;

use gpuledger::events::{Limits, Topic};
use serde_json::{json, Value};

use super::common::{fold, lines, options};

/// The start-up every keyed bad record names; its own outputs may change
/// (a record refused by a business rule first moves its clock).
pub const VICTIM: &str = "victim";
/// The victim's clock in the base world: bad keyed records are timed here,
/// so no refused record moves a clock.
const T0: &str = "2025-01-01T10:00:00Z";
/// Limits of the catalogue runs: small enough that an oversize record can
/// go through a broker.
pub fn limits() -> Limits {
    Limits { max_record_bytes: 100_000, ..Limits::default() }
}

fn event(type_name: &str, subject: Option<&str>, id: &str, time: &str, data: Value) -> Value {
    let mut event = json!({"specversion": "1.0", "id": id, "source": "crm", "type": type_name, "time": time});
    if let Some(subject) = subject {
        event["subject"] = json!(subject);
    }
    if !data.is_null() {
        event["data"] = data;
    }
    event
}

fn rate(id: &str, price: i64) -> Value {
    event(
        "gpuledger.rate.published",
        None,
        id,
        "2025-01-01T00:00:00Z",
        json!({"gpu_model": "H800", "region": "r", "tier": "spot", "currency": "USD",
               "price_per_gpu_hour": price, "effective_from": "2025-01-01T00:00:00Z"}),
    )
}

fn deal(subject: &str, id: &str, time: &str, face: i64, fair_value: i64) -> Value {
    event(
        "gpuledger.deal.signed",
        Some(subject),
        &format!("signed-{id}"),
        time,
        json!({"deal_id": id, "investor": "fund", "cash_amount": 0, "credit_face_amount": face,
               "currency": "USD", "equity_fair_value": fair_value}),
    )
}

fn grant(subject: &str, id: &str, time: &str, data: Value) -> Value {
    let mut data = data;
    data["grant_id"] = json!(id);
    data["effective_at"] = data.get("effective_at").cloned().unwrap_or(json!("2025-01-01T00:00:00Z"));
    data["currency"] = data.get("currency").cloned().unwrap_or(json!("USD"));
    event("gpuledger.credit.granted", Some(subject), &format!("grant-{id}"), time, data)
}

fn usage(subject: &str, id: &str, start: &str, end: &str) -> Value {
    event(
        "gpuledger.gpu.usage",
        Some(subject),
        id,
        end,
        json!({"cluster_id": "c", "region": "r", "gpu_model": "H800", "tier": "spot", "gpu_count": 1,
               "started_at": start, "ended_at": end}),
    )
}

/// A huge exponent: an extension attribute of an accepted usage, so a
/// repeat with `1` in its place must be a conflicting duplicate.
fn huge_number() -> String {
    format!("1e{}", "9".repeat(42))
}

/// The base world: start-up `acme` (deal, grant, usage) and the victim
/// (deal dv with grant gv, a revoked cash grant gr, usages v1 and v2).
pub fn base() -> [Vec<Vec<u8>>; 3] {
    let line = |value: Value| serde_json::to_vec(&value).unwrap();
    let rates = vec![line(rate("r1", 3_600_000))];
    let deals = vec![
        line(deal("acme", "d1", "2025-01-01T00:00:00Z", 100_000_000, 90_000_000)),
        line(grant("acme", "ga", "2025-01-01T01:00:00Z", json!({"deal_id": "d1", "face_amount": 50_000_000}))),
        line(deal(VICTIM, "dv", "2025-01-01T00:00:00Z", 10_000_000, 9_000_000)),
        line(grant(VICTIM, "gv", "2025-01-01T01:00:00Z", json!({"deal_id": "dv", "face_amount": 4_000_000}))),
        line(grant(VICTIM, "gr", "2025-01-01T01:00:00Z", json!({"face_amount": 1_000_000, "consideration": "cash"}))),
        line(event(
            "gpuledger.grant.revoked",
            Some(VICTIM),
            "revoke-gr",
            "2025-01-01T02:00:00Z",
            json!({"grant_id": "gr"}),
        )),
    ];
    let mut v1 = usage(VICTIM, "v1", "2025-01-01T03:00:00Z", "2025-01-01T04:00:00Z");
    v1["ext"] = serde_json::from_str(&huge_number()).unwrap();
    let metering = vec![
        line(usage("acme", "a1", "2025-01-01T03:00:00Z", "2025-01-01T04:00:00Z")),
        line(v1),
        line(usage("acme", "a2", "2025-01-01T04:00:00Z", "2025-01-01T05:00:00Z")),
        line(usage(VICTIM, "v2", "2025-01-01T04:00:00Z", T0)),
        line(usage("acme", "a3", "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z")),
    ];
    [rates, deals, metering]
}

/// One class of bad input.
pub struct Case {
    pub name: &'static str,
    pub topic: Topic,
    pub bytes: Vec<u8>,
    pub reason: &'static str,
}

fn victim_usage() -> Value {
    usage(VICTIM, "bad", "2025-01-01T09:00:00Z", T0)
}

fn victim_grant(data: Value) -> Value {
    grant(VICTIM, "gbad", T0, data)
}

fn with(mut value: Value, pointer: &str, replacement: Value) -> Value {
    *value.pointer_mut(pointer).unwrap_or_else(|| panic!("no {pointer}")) = replacement;
    value
}

fn without(mut value: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = if parent.is_empty() { &mut value } else { value.pointer_mut(parent).unwrap() };
    parent.as_object_mut().unwrap().remove(key);
    value
}

pub fn catalogue() -> Vec<Case> {
    use Topic::{Deals, Metering, Rates};
    let json = |value: Value| serde_json::to_vec(&value).unwrap();
    let usage = victim_usage;
    let cash = || json!({"face_amount": 1_000, "consideration": "cash"});
    let mut cases: Vec<(&'static str, Topic, Vec<u8>, &'static str)> = vec![
        // ---- bytes and JSON
        ("not json", Metering, b"this is not json".to_vec(), "undecodable"),
        ("invalid utf-8", Metering, vec![0xff, 0xfe, b'{', 0x80], "undecodable"),
        ("truncated json", Metering, b"{\"specversion\":\"1.0\",\"id\":".to_vec(), "undecodable"),
        ("two documents", Metering, b"{} {}".to_vec(), "undecodable"),
        ("byte order mark", Metering, [&b"\xef\xbb\xbf"[..], &json(usage())].concat(), "undecodable"),
        ("nan literal", Metering, b"{\"x\": NaN}".to_vec(), "undecodable"),
        ("control characters (bounded dead letter)", Metering, vec![1u8; 90_000], "undecodable"),
        (
            "oversize record",
            Metering,
            {
                let mut big = usage();
                big["pad"] = Value::String("x".repeat(120_000));
                json(big)
            },
            "undecodable",
        ),
        (
            "nested 70 deep (over max_json_depth)",
            Metering,
            { format!("{{\"x\":{}1{}}}", "[".repeat(70), "]".repeat(70)).into_bytes() },
            "undecodable",
        ),
        (
            "nested 300 deep (parser limit)",
            Metering,
            { format!("{}1{}", "[".repeat(300), "]".repeat(300)).into_bytes() },
            "undecodable",
        ),
        ("avro magic then junk", Metering, vec![0xc3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9], "undecodable"),
        ("confluent framing then junk", Metering, vec![0, 0, 0, 0, 42, 1, 2, 3], "undecodable"),
        ("avro magic, too short", Metering, vec![0xc3, 0x01, 7], "undecodable"),
        // ---- the envelope
        ("a json array", Metering, b"[1,2,3]".to_vec(), "schema_violation"),
        ("a json string", Metering, b"\"usage\"".to_vec(), "schema_violation"),
        ("a json number", Metering, b"42".to_vec(), "schema_violation"),
        ("specversion 0.3", Metering, json(with(usage(), "/specversion", json!("0.3"))), "schema_violation"),
        ("specversion missing", Metering, json(without(usage(), "/specversion")), "schema_violation"),
        ("id missing", Metering, json(without(usage(), "/id")), "schema_violation"),
        ("id a number", Metering, json(with(usage(), "/id", json!(7))), "schema_violation"),
        ("id empty", Metering, json(with(usage(), "/id", json!(""))), "schema_violation"),
        ("source missing", Metering, json(without(usage(), "/source")), "schema_violation"),
        ("type missing", Metering, json(without(usage(), "/type")), "schema_violation"),
        ("time missing", Metering, json(without(usage(), "/time")), "schema_violation"),
        ("time not rfc 3339", Metering, json(with(usage(), "/time", json!("yesterday"))), "schema_violation"),
        (
            "time a leap second",
            Metering,
            json(with(usage(), "/time", json!("2016-12-31T23:59:60Z"))),
            "schema_violation",
        ),
        (
            "time on 30 february",
            Metering,
            json(with(usage(), "/time", json!("2025-02-30T00:00:00Z"))),
            "schema_violation",
        ),
        ("subject missing", Metering, json(without(usage(), "/subject")), "schema_violation"),
        ("subject empty", Metering, json(with(usage(), "/subject", json!(""))), "schema_violation"),
        ("subject an object", Metering, json(with(usage(), "/subject", json!({"a": 1}))), "schema_violation"),
        ("data missing", Metering, json(without(usage(), "/data")), "schema_violation"),
        ("data a string", Metering, json(with(usage(), "/data", json!("gpu"))), "schema_violation"),
        // ---- data fields: types
        ("gpu_count a string", Metering, json(with(usage(), "/data/gpu_count", json!("1"))), "schema_violation"),
        (
            "gpu_count 1.0",
            Metering,
            json(with(usage(), "/data/gpu_count", serde_json::from_str("1.0").unwrap())),
            "schema_violation",
        ),
        (
            "gpu_count beyond 64 bits",
            Metering,
            json(with(usage(), "/data/gpu_count", serde_json::from_str("18446744073709551616").unwrap())),
            "schema_violation",
        ),
        ("tier not an enum value", Metering, json(with(usage(), "/data/tier", json!("gold"))), "schema_violation"),
        ("started_at missing", Metering, json(without(usage(), "/data/started_at")), "schema_violation"),
        ("cluster_id null", Metering, json(with(usage(), "/data/cluster_id", Value::Null)), "schema_violation"),
        (
            "equity grant without deal or price",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "consideration": "equity"}))),
            "schema_violation",
        ),
        (
            "consideration not an enum value",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "consideration": "shares"}))),
            "schema_violation",
        ),
        (
            "escrow a string",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "consideration": "cash", "escrow": "yes"}))),
            "schema_violation",
        ),
        (
            "rate price a float",
            Rates,
            json(with(rate("rbad", 1), "/data/price_per_gpu_hour", serde_json::from_str("3.5").unwrap())),
            "schema_violation",
        ),
        // ---- types for the topic
        ("unknown type", Metering, json(with(usage(), "/type", json!("gpuledger.gpu.usage.v2"))), "unknown_type"),
        ("a deal on the metering topic", Metering, json(deal(VICTIM, "dx", T0, 5, 5)), "unknown_type"),
        ("a rate on the deals topic", Deals, json(rate("rx", 5)), "unknown_type"),
        ("usage on the rates topic", Rates, json(usage()), "unknown_type"),
        // ---- data fields: ranges and rules of section 3
        ("gpu_count 0", Metering, json(with(usage(), "/data/gpu_count", json!(0))), "invalid_field"),
        (
            "currency lower case",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "consideration": "cash", "currency": "usd"}))),
            "invalid_field",
        ),
        (
            "time differs from ended_at",
            Metering,
            json(with(usage(), "/time", json!("2025-01-01T09:30:00Z"))),
            "invalid_field",
        ),
        (
            "ended_at before started_at",
            Metering,
            json(with(usage(), "/data/started_at", json!("2025-01-01T10:00:01Z"))),
            "invalid_field",
        ),
        (
            "usage longer than 31 days",
            Metering,
            json(with(usage(), "/data/started_at", json!("2024-11-30T09:59:59Z"))),
            "invalid_field",
        ),
        ("reserved source", Metering, json(with(usage(), "/source", json!("gpuledger:clock"))), "invalid_field"),
        (
            "priority 101",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "consideration": "cash", "priority": 101}))),
            "invalid_field",
        ),
        (
            "face_amount 0",
            Deals,
            json(victim_grant(json!({"face_amount": 0, "consideration": "cash"}))),
            "invalid_field",
        ),
        (
            "negative cash_amount",
            Deals,
            json(with(deal(VICTIM, "dn", T0, 5, 5), "/data/cash_amount", json!(-1))),
            "invalid_field",
        ),
        (
            "promotional with a price",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "consideration": "promotional", "transaction_price": 1}))),
            "invalid_field",
        ),
        (
            "cash grant under a deal",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "consideration": "cash", "deal_id": "dv"}))),
            "invalid_field",
        ),
        (
            "expiry before effect",
            Deals,
            json(victim_grant(
                json!({"face_amount": 5, "consideration": "cash", "expires_at": "2024-12-31T00:00:00Z"}),
            )),
            "invalid_field",
        ),
        ("negative rate price", Rates, json(rate("rneg", -1)), "invalid_field"),
        (
            "beyond max_future",
            Metering,
            json(usage_at("2025-01-03T09:00:00Z", "2025-01-03T10:00:00Z")),
            "invalid_field",
        ),
        (
            "before the calendar (1969)",
            Deals,
            json(victim_grant(
                json!({"face_amount": 5, "consideration": "cash", "effective_at": "1969-12-31T23:59:59Z"}),
            )),
            "invalid_field",
        ),
        (
            "offset out of year 0",
            Deals,
            json(with(deal(VICTIM, "d0", T0, 5, 5), "/time", json!("0000-01-01T00:00:00+00:01"))),
            "invalid_field",
        ),
        (
            "a string over max_string_bytes",
            Metering,
            json({
                let mut long = usage();
                long["data"]["job_id"] = json!("j".repeat(70_000));
                long
            }),
            "invalid_field",
        ),
        // ---- state: window and identity
        (
            "older than the dedup window",
            Metering,
            json(usage_at("2024-11-20T09:00:00Z", "2024-11-20T10:00:00Z")),
            "too_old",
        ),
        (
            "repeat with another gpu_count",
            Metering,
            json(with(usage_of("v2", "2025-01-01T04:00:00Z", T0), "/data/gpu_count", json!(2))),
            "conflicting_duplicate",
        ),
        (
            "repeat whose huge exponent became 1",
            Metering,
            {
                let mut repeat = usage_of("v1", "2025-01-01T03:00:00Z", "2025-01-01T04:00:00Z");
                repeat["ext"] = json!(1);
                json(repeat)
            },
            "conflicting_duplicate",
        ),
        ("rate repeat with another price", Rates, json(rate("r1", 7_200_000)), "conflicting_duplicate"),
        // ---- business rules
        ("no rate for the gpu", Metering, json(with(usage(), "/data/gpu_model", json!("A800"))), "no_rate"),
        (
            "grant under an unknown deal",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "deal_id": "nope"}))),
            "unknown_deal",
        ),
        (
            "cancel an unknown deal",
            Deals,
            json(event("gpuledger.deal.cancelled", Some(VICTIM), "cancel-x", T0, json!({"deal_id": "nope"}))),
            "unknown_deal",
        ),
        (
            "extend an unknown grant",
            Deals,
            json(event(
                "gpuledger.grant.extended",
                Some(VICTIM),
                "extend-x",
                T0,
                json!({"grant_id": "nope", "expires_at": "2026-01-01T00:00:00Z"}),
            )),
            "unknown_grant",
        ),
        (
            "grant id reused",
            Deals,
            json(with(grant(VICTIM, "gv", T0, cash()), "/id", json!("grant-gv-again"))),
            "duplicate_grant",
        ),
        (
            "grant currency differs from the deal's",
            Deals,
            json(victim_grant(json!({"face_amount": 5, "deal_id": "dv", "currency": "EUR"}))),
            "currency_mismatch",
        ),
        (
            "grants beyond the deal's commitment",
            Deals,
            json(victim_grant(json!({"face_amount": 6_000_001, "deal_id": "dv"}))),
            "over_commitment",
        ),
        (
            "revoke a revoked grant",
            Deals,
            json(event("gpuledger.grant.revoked", Some(VICTIM), "revoke-again", T0, json!({"grant_id": "gr"}))),
            "invalid_transition",
        ),
        (
            "deal id reused",
            Deals,
            json(with(deal(VICTIM, "dv", T0, 5, 5), "/id", json!("signed-dv-again"))),
            "invalid_transition",
        ),
        (
            "extend a grant without expiry",
            Deals,
            json(event(
                "gpuledger.grant.extended",
                Some(VICTIM),
                "extend-gv",
                T0,
                json!({"grant_id": "gv", "expires_at": "2026-01-01T00:00:00Z"}),
            )),
            "invalid_transition",
        ),
        // ---- sums beyond 64 bits
        (
            "usage cost beyond 64 bits",
            Metering,
            json(with(usage(), "/data/gpu_count", json!(i64::MAX))),
            "invalid_field",
        ),
        ("deal prices beyond 64 bits", Deals, json(deal(VICTIM, "dmax", T0, 5, i64::MAX)), "invalid_field"),
        (
            "granted faces beyond 64 bits",
            Deals,
            json(victim_grant(json!({"face_amount": i64::MAX, "consideration": "promotional"}))),
            "invalid_field",
        ),
    ];
    // A grant whose price would overflow the rpo next to dv's price.
    cases.push((
        "a cash price beyond the rpo's 64 bits",
        Deals,
        json(victim_grant(json!({"face_amount": 5, "consideration": "cash", "transaction_price": i64::MAX - 1}))),
        "invalid_field",
    ));
    cases.into_iter().map(|(name, topic, bytes, reason)| Case { name, topic, bytes, reason }).collect()
}

fn usage_at(start: &str, end: &str) -> Value {
    usage(VICTIM, "bad", start, end)
}

fn usage_of(id: &str, start: &str, end: &str) -> Value {
    usage(VICTIM, id, start, end)
}

pub fn write_inputs(dir: &Path, inputs: &[Vec<Vec<u8>>; 3]) {
    std::fs::create_dir_all(dir).unwrap();
    for (topic, name) in [(0, "rates.jsonl"), (1, "deals.jsonl"), (2, "metering.jsonl")] {
        let mut bytes = Vec::new();
        for line in &inputs[topic] {
            bytes.extend_from_slice(line);
            bytes.push(b'\n');
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn index(topic: Topic) -> usize {
    topic.index()
}

/// Records of a stream that are not about the victim.
fn others(dir: &Path, stream: &str) -> Vec<String> {
    lines(dir, stream).into_iter().filter(|line| !line.contains(&format!("\"startup\":\"{VICTIM}\""))).collect()
}

fn other_balances(dir: &Path) -> Vec<Value> {
    gpuledger::batch::read_balances(&dir.join("balances.json"))
        .unwrap()
        .into_iter()
        .filter(|balances| balances.startup != VICTIM)
        .map(|balances| {
            let mut value = serde_json::to_value(balances).unwrap();
            let object = value.as_object_mut().unwrap();
            object.remove("offsets");
            object.remove("digest");
            value
        })
        .collect()
}

#[test]
fn every_class_of_bad_input_earns_its_reason_and_touches_no_other_start_up() {
    let cases = catalogue();
    let names: std::collections::BTreeSet<&str> = cases.iter().map(|case| case.name).collect();
    assert!(cases.len() >= 60 && names.len() == cases.len(), "{} classes, names unique", cases.len());
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, inputs: &[Vec<Vec<u8>>; 3]| {
        let input_dir = dir.path().join(format!("in-{name}"));
        write_inputs(&input_dir, inputs);
        let out = dir.path().join(format!("out-{name}"));
        let mut batch = options(&input_dir, &out);
        batch.fold.limits = limits();
        fold(&batch);
        out
    };
    let base_out = run("base", &base());
    assert!(lines(&base_out, "dead-letter").is_empty(), "{:?}", lines(&base_out, "dead-letter"));
    assert_eq!(lines(&base_out, "usage-rated").len(), 5);
    let mut failures = Vec::new();
    for (number, case) in cases.iter().enumerate() {
        let mut inputs = base();
        inputs[index(case.topic)].push(case.bytes.clone());
        let offset = inputs[index(case.topic)].len() as i64 - 1;
        let out = run(&number.to_string(), &inputs);
        let letters: Vec<Value> =
            lines(&out, "dead-letter").iter().map(|line| serde_json::from_str(line).unwrap()).collect();
        let reasons: Vec<&str> = letters.iter().map(|letter| letter["reason"].as_str().unwrap()).collect();
        if reasons != [case.reason] {
            failures.push(format!(
                "{}: expected [{}], got {reasons:?} {:?}",
                case.name,
                case.reason,
                letters.iter().map(|letter| letter["detail"].as_str().unwrap_or("")).collect::<Vec<_>>()
            ));
            continue;
        }
        let letter = &letters[0];
        assert_eq!(
            (letter["topic"].as_str(), letter["offset"].as_i64()),
            (Some(case.topic.name()), Some(offset)),
            "{}",
            case.name
        );
        let size = lines(&out, "dead-letter")[0].len();
        assert!(size < 512 * 1024, "{}: a dead letter of {size} bytes", case.name);
        for stream in ["usage-rated", "journal", "statements", "alerts"] {
            assert_eq!(others(&out, stream), others(&base_out, stream), "{}: {stream} of other start-ups", case.name);
        }
        assert_eq!(other_balances(&out), other_balances(&base_out), "{}: other start-ups' balances", case.name);
        let report = gpuledger::audit::audit(&out, false).unwrap();
        assert!(report.violations.is_empty(), "{}: {:#?}", case.name, report.violations);
    }
    assert!(failures.is_empty(), "{} classes earned another reason:\n{}", failures.len(), failures.join("\n"));
}
