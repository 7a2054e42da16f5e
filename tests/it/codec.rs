//! Codecs: the CloudEvents examples of `schemas/examples`, Avro in both
//! framings, and the Avro encoding of every output record.

use std::path::Path;

use gpuledger::events::avro::{SchemaRegistry, INPUT_SCHEMAS};
use gpuledger::events::{decode_record, Limits, Reason, Topic};
use gpuledger::records::avro::OutputEncoder;
use serde_json::Value;

fn examples() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples");
    let mut found: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .map(|path| {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap())
        })
        .collect();
    found.sort_by(|left, right| left.0.cmp(&right.0));
    found
}

fn topic_of(stem: &str) -> Topic {
    match stem {
        "rate_published" => Topic::Rates,
        "gpu_usage" | "clock_tick" => Topic::Metering,
        _ => Topic::Deals,
    }
}

#[test]
fn every_input_type_has_an_example_that_decodes() {
    let registry = SchemaRegistry::builtin();
    let examples = examples();
    let stems: Vec<&str> = examples.iter().map(|(stem, _)| stem.as_str()).collect();
    let mut expected: Vec<&str> = INPUT_SCHEMAS.iter().map(|(stem, _)| *stem).collect();
    expected.sort();
    assert_eq!(stems, expected, "one example per input schema");
    for (stem, value) in &examples {
        let bytes = serde_json::to_vec(value).unwrap();
        let decoded = decode_record(topic_of(stem), &bytes, &registry, &Limits::default());
        let event = decoded.event.unwrap_or_else(|rejection| panic!("{stem}: {rejection}"));
        assert_eq!(event.payload.type_name(), value["type"].as_str().unwrap(), "{stem}");
        assert!(decoded.time.is_some());
    }
}

#[test]
fn avro_single_object_and_confluent_decode_to_the_same_event_as_json() {
    let registry = SchemaRegistry::builtin();
    for (stem, value) in &examples() {
        let topic = topic_of(stem);
        let json =
            decode_record(topic, &serde_json::to_vec(value).unwrap(), &registry, &Limits::default()).event.unwrap();
        let single = registry.encode_single_object(stem, value).unwrap();
        assert_eq!(&single[..2], &[0xC3, 0x01]);
        let from_single = decode_record(topic, &single, &registry, &Limits::default()).event.unwrap();
        let schema_id = INPUT_SCHEMAS.iter().position(|(name, _)| name == stem).unwrap() as u32 + 1;
        let confluent = registry.encode_confluent(schema_id, value).unwrap();
        assert_eq!(confluent[0], 0);
        let from_confluent = decode_record(topic, &confluent, &registry, &Limits::default()).event.unwrap();
        // Same parsed content (times compare as instants): the same event,
        // duplicate digest included, whatever the wire format.
        assert_eq!(from_single, json, "{stem}");
        assert_eq!(from_confluent, json, "{stem}");
    }
}

#[test]
fn broken_avro_is_undecodable() {
    let registry = SchemaRegistry::builtin();
    let (stem, value) = &examples()[0];
    let mut single = registry.encode_single_object(stem, value).unwrap();
    single.truncate(single.len() - 3);
    let rejection = decode_record(topic_of(stem), &single, &registry, &Limits::default()).event.unwrap_err();
    assert_eq!(rejection.reason, Reason::Undecodable);
    let unknown_id = [0u8, 0, 0, 0, 99, 1, 2];
    assert_eq!(
        decode_record(Topic::Deals, &unknown_id, &registry, &Limits::default()).event.unwrap_err().reason,
        Reason::Undecodable
    );
    let unknown_print = [0xC3u8, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0];
    let rejection = decode_record(Topic::Deals, &unknown_print, &registry, &Limits::default()).event.unwrap_err();
    assert!(rejection.detail.contains("fingerprint"), "{}", rejection.detail);
}

#[test]
fn every_output_record_round_trips_through_avro() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = super::common::workload(dir.path(), 300, 30 * gpuledger::units::MINUTE_MS);
    let out = dir.path().join("out");
    super::common::fold(&super::common::options(&inputs, &out));
    let encoder = OutputEncoder::default();
    for (stream, schema) in [
        ("usage-rated", "usage_rated"),
        ("journal", "journal_entry"),
        ("statements", "statement"),
        ("alerts", "alert"),
        ("dead-letter", "dead_letter"),
    ] {
        let records = super::common::lines(&out, stream);
        assert!(!records.is_empty(), "{stream} has records to check");
        for line in records.iter().take(200) {
            let json: Value = serde_json::from_str(line).unwrap();
            let bytes = encoder.encode(schema, &json).unwrap_or_else(|error| panic!("{stream}: {error}: {line}"));
            assert_eq!(encoder.decode(schema, &bytes).unwrap(), json, "{stream}");
        }
    }
    let balances: Vec<Value> = serde_json::from_slice(&std::fs::read(out.join("balances.json")).unwrap()).unwrap();
    for record in balances {
        let bytes = encoder.encode("balances", &record).unwrap();
        assert_eq!(encoder.decode("balances", &bytes).unwrap(), record);
    }
}

/// Inputs the fuzz targets (`fuzz/`) found crashing the process, framed as
/// their target frames them: each must be an `undecodable` dead letter. The
/// first ones made the Avro library reserve 43 GB for a block count.
#[test]
fn fuzz_regressions_are_undecodable_not_a_crash() {
    let registry = SchemaRegistry::builtin();
    // The order of fuzz/targets/support.rs, which the single-object target
    // indexes by its first byte.
    let single_object_order = [
        "rate_published",
        "deal_signed",
        "credit_granted",
        "grant_extended",
        "grant_revoked",
        "deal_cancelled",
        "gpu_usage",
        "clock_tick",
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(&path).unwrap();
        let (selector, body) = bytes.split_first().unwrap();
        let (topic, value) = if name.starts_with("avro_single_object") {
            let stem = single_object_order[usize::from(*selector) % single_object_order.len()];
            let schema = registry.schema(stem).unwrap();
            let mut framed = vec![0xc3, 0x01];
            framed.extend_from_slice(&gpuledger::events::avro::fingerprint(schema));
            framed.extend_from_slice(body);
            (topic_of(stem), framed)
        } else if name.starts_with("avro_confluent") {
            let mut framed = vec![0u8];
            framed.extend_from_slice(&u32::from(selector & 0x0f).to_be_bytes());
            framed.extend_from_slice(body);
            (Topic::ALL[usize::from(selector >> 4) % 3], framed)
        } else {
            panic!("no framing known for {name}");
        };
        let rejection = decode_record(topic, &value, &registry, &Limits::default()).event.unwrap_err();
        assert_eq!(rejection.reason, Reason::Undecodable, "{name}: {rejection}");
        seen += 1;
    }
    assert!(seen >= 3);
}
