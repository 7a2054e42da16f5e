//! Avro with libraries no one here wrote (Python fastavro and
//! confluent-kafka, installed by `scripts/interop.sh`), against the real
//! broker: the examples of `schemas/examples/` encoded by fastavro in both
//! framings fold exactly as their JSON twins, and every output stream that
//! `run` writes as Avro (both framings) decodes with fastavro from the
//! `.avsc` files alone and equals the JSON run's, record for record.

use std::path::Path;
use std::process::Command;

use super::harness::{gpuledger_with, Broker};

const OUTPUTS: [(&str, &str); 6] = [
    ("usage_rated", "usage-rated"),
    ("journal", "journal"),
    ("statements", "statements"),
    ("alerts", "alerts"),
    ("dead_letter", "dead-letter"),
    ("balances", "balances"),
];

/// The schema of each output stream.
fn schema_of(stream: &str) -> &'static str {
    match stream {
        "usage-rated" => "usage_rated",
        "journal" => "journal_entry",
        "statements" => "statement",
        "alerts" => "alert",
        "dead-letter" => "dead_letter",
        _ => "balances",
    }
}

pub(super) fn python() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/interop.sh");
    let output = Command::new(script).arg("python").output().unwrap();
    assert!(
        output.status.success(),
        "installing the interop Python packages: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `tests/interop/interop.py ARGS` must succeed; returns what it printed.
fn interop(python: &str, broker: &Broker, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/interop.py");
    let output = Command::new(python).arg(script).arg(args[0]).arg(&broker.address).args(&args[1..]).output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "interop.py {args:?}: {printed}{}", String::from_utf8_lossy(&output.stderr));
    printed
}

/// One processor setup: its input topics `<inputs>.{rates,deals,metering}`,
/// its output topics `<outputs>.<stream>`, its own group, state and format;
/// with `fold_all`, a `max_future` long enough for every example (their
/// dates span a year) so that none is a dead letter.
fn environment(inputs: &str, outputs: &str, format: &str, fold_all: bool) -> Vec<(String, String)> {
    let max_future = if fold_all { "3650d" } else { "24h" };
    let mut environment = vec![
        ("GPULEDGER_LEDGER__MAX_FUTURE".to_owned(), max_future.to_owned()),
        ("GPULEDGER_KAFKA__GROUP_ID".to_owned(), format!("group-{outputs}")),
        ("GPULEDGER_KAFKA__TRANSACTIONAL_ID_PREFIX".to_owned(), format!("tx-{outputs}")),
        ("GPULEDGER_PROCESSOR__OUTPUT_FORMAT".to_owned(), format.to_owned()),
        ("GPULEDGER_TOPICS__PROGRESS".to_owned(), format!("{outputs}.progress")),
    ];
    for input in ["rates", "deals", "metering"] {
        environment.push((format!("GPULEDGER_TOPICS__{}", input.to_uppercase()), format!("{inputs}.{input}")));
    }
    for (setting, stream) in OUTPUTS {
        environment.push((format!("GPULEDGER_TOPICS__{}", setting.to_uppercase()), format!("{outputs}.{stream}")));
    }
    environment
}

fn run(broker: &Broker, state: &Path, environment: &[(String, String)]) {
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    gpuledger_with(broker, &["topics", "create", "--partitions", "1"], &environment);
    gpuledger_with(broker, &["run", "--exit-when-caught-up", "--state-dir", state.to_str().unwrap()], &environment);
}

#[test]
fn fastavro_and_confluent_kafka_read_and_write_what_gpuledger_does() {
    let python = python();
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // The same examples as JSON, and as fastavro encodes them in each
    // framing: the same outputs (dead letters would differ: they carry the
    // input's bytes, so every example is made to fold).
    for framing in ["json", "single", "confluent"] {
        let setup = environment(framing, &format!("out-{framing}"), "json", true);
        let environment: Vec<(&str, &str)> =
            setup.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        gpuledger_with(&broker, &["topics", "create", "--partitions", "1"], &environment);
        let topic = |input: &str| format!("{framing}.{input}");
        interop(&python, &broker, &["produce", framing, &topic("rates"), &topic("deals"), &topic("metering")]);
        run(&broker, &dir.path().join(format!("state-{framing}")), &setup);
    }
    for framing in ["single", "confluent"] {
        for (_, stream) in OUTPUTS {
            let (json, avro) = (format!("out-json.{stream}"), format!("out-{framing}.{stream}"));
            interop(&python, &broker, &["same", &json, &avro, "json", framing]);
        }
    }
    let printed = interop(&python, &broker, &["same", "out-json.dead-letter", "out-json.dead-letter"]);
    assert!(printed.contains(": 0 records"), "an example was dead-lettered: {printed}");
    // The JSON inputs with the default max_future (three examples are too
    // far ahead of the clock: dead letters), as JSON and as Avro in each framing.
    run(&broker, &dir.path().join("state-baseline"), &environment("json", "baseline", "json", false));
    let printed = interop(&python, &broker, &["same", "baseline.dead-letter", "baseline.dead-letter"]);
    assert!(printed.contains(": 3 records"), "the baseline has three dead letters: {printed}");
    for (framing, format) in [("single", "avro"), ("confluent", "avro-confluent")] {
        let outputs = format!("avro-{framing}");
        run(&broker, &dir.path().join(format!("state-{outputs}")), &environment("json", &outputs, format, false));
        for (_, stream) in OUTPUTS {
            let (json, avro) = (format!("baseline.{stream}"), format!("{outputs}.{stream}"));
            interop(&python, &broker, &["decode", framing, schema_of(stream), &avro, &json]);
        }
    }
    // The examples make a ledger: usage rated, journal entries, balances.
    for stream in ["usage-rated", "journal", "balances"] {
        let printed =
            interop(&python, &broker, &["same", &format!("out-json.{stream}"), &format!("out-json.{stream}")]);
        assert!(!printed.contains(": 0 records"), "no {stream} records from the examples: {printed}");
    }
}
