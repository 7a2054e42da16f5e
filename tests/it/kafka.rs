//! End to end against a real Kafka-API broker (Tansu, started by
//! `scripts/broker.sh` on a free loopback port) and real RocksDB: produce the
//! generator's workload to 4 partitions, run the processor until caught up,
//! export the output topics, and compare with `gpuledger fold --partitions 4`
//! over the same files, record for record.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::common::{lines, workload, STREAMS};

/// A broker for one test; stopped on drop.
struct Broker {
    dir: tempfile::TempDir,
    address: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh")
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(script()).arg("start").arg(dir.path()).output().unwrap();
        assert!(output.status.success(), "broker did not start: {}", String::from_utf8_lossy(&output.stderr));
        let address = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        Broker { dir, address }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}

fn gpuledger(broker: &Broker, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .args(args)
        .args(["--bootstrap-servers", &broker.address])
        .env("GPULEDGER_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gpuledger {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `run --exit-when-caught-up`; returns its counters.
fn run_until_caught_up(broker: &Broker, state: &Path) -> Value {
    let output = gpuledger(broker, &["run", "--exit-when-caught-up", "--state-dir", state.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn produce(broker: &Broker, inputs: &Path) {
    gpuledger(
        broker,
        &[
            "produce",
            "--rates",
            path(&inputs.join("rates.jsonl")),
            "--deals",
            path(&inputs.join("deals.jsonl")),
            "--metering",
            path(&inputs.join("metering.jsonl")),
        ],
    );
}

fn assert_exported_equals_fold(broker: &Broker, inputs: &Path, dir: &Path, name: &str) {
    let exported = dir.join(format!("export-{name}"));
    gpuledger(broker, &["export", "--out", path(&exported)]);
    let folded = dir.join(format!("fold-{name}"));
    let mut options = super::common::options(inputs, &folded);
    options.partitions = 4;
    super::common::fold(&options);
    for stream in STREAMS {
        assert_eq!(
            lines(&exported, stream),
            lines(&folded, stream),
            "{name}: {stream} differs from fold --partitions 4"
        );
    }
    let report = gpuledger::audit::audit(&exported, false).unwrap();
    assert!(report.violations.is_empty(), "{name}: {:#?}", report.violations);
}

#[test]
fn live_processing_equals_batch_mode_and_restarts_resume_without_refolding() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 200, 30 * gpuledger::units::MINUTE_MS);
    gpuledger(&broker, &["topics", "create", "--partitions", "4"]);
    produce(&broker, &inputs);

    let state = dir.path().join("state");
    let first = run_until_caught_up(&broker, &state);
    assert!(first["records_folded"].as_u64().unwrap() > 1_000, "{first}");
    assert_eq!(first["records_refolded"], 0);
    assert_exported_equals_fold(&broker, &inputs, dir.path(), "first");

    // Poison records of every reason went to the dead-letter topic with
    // their source offsets, and the partitions kept moving (the equality
    // above covers every later record).
    let exported = dir.path().join("export-first");
    let reasons: std::collections::BTreeSet<String> = lines(&exported, "dead-letter")
        .iter()
        .map(|line| {
            let letter: Value = serde_json::from_str(line).unwrap();
            assert!(letter["offset"].as_i64().unwrap() >= 0 && letter["partition"].as_u64().unwrap() < 4);
            letter["reason"].as_str().unwrap().to_owned()
        })
        .collect();
    for reason in gpuledger::events::Reason::ALL {
        assert!(reasons.contains(reason.as_str()), "no {reason} dead letter: {reasons:?}");
    }

    // A restart with the state kept folds nothing again.
    let second = run_until_caught_up(&broker, &state);
    assert_eq!(
        (second["records_folded"].as_u64(), second["records_refolded"].as_u64()),
        (Some(0), Some(0)),
        "{second}"
    );

    // A partition without local state is rebuilt from its history, outputs suppressed.
    std::fs::remove_dir_all(&state).unwrap();
    let rebuilt = run_until_caught_up(&broker, &state);
    assert_eq!(rebuilt["records_folded"], 0, "{rebuilt}");
    assert_eq!(rebuilt["records_refolded"], first["records_folded"], "{rebuilt}");
    assert_exported_equals_fold(&broker, &inputs, dir.path(), "rebuilt");
}
