//! Ops commands against a real broker and real RocksDB: replay (as-of,
//! what-if, partial, into other topics), verify and reset.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::common::{lines, workload, STREAMS};
use super::harness::*;

/// `gpuledger verify A B`: exit code and report.
fn verify(left: &Path, right: &Path) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .args(["verify", "--state-dir", path(left), "--against", path(right)])
        .output()
        .unwrap();
    (output.status.code(), String::from_utf8(output.stdout).unwrap())
}

/// A balances file's figures without the run-specific offsets and digest.
fn figures(file: &Path) -> Vec<Value> {
    let balances: Vec<Value> = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    balances
        .into_iter()
        .map(|mut balance| {
            let object = balance.as_object_mut().unwrap();
            object.remove("offsets");
            object.remove("digest");
            balance
        })
        .collect()
}

fn column_sum(csv: &str, column: &str) -> i64 {
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let index = header.iter().position(|name| *name == column).unwrap();
    rows.map(|row| row.split(',').nth(index).unwrap().parse::<i64>().unwrap()).sum()
}

fn usage_cost(dir: &Path) -> i64 {
    lines(dir, "usage-rated")
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["cost"].as_i64().unwrap())
        .sum()
}

/// Replay of a finished live run: the same state (digest) and outputs;
/// `--until T` = batch mode over the events up to T; `--what-if-rates` =
/// batch mode with the other rate cards, compared with the actual history;
/// `--partitions` and `--emit-prefix` replay some tasks into other topics.
#[test]
fn replay_rebuilds_the_live_state_and_answers_as_of_and_what_if_questions() {
    let (broker, dir, inputs) = loaded_broker(300, 30 * gpuledger::units::MINUTE_MS, 4);
    let live = dir.join("live");
    run_until_caught_up(&broker, &live);
    let batch_until = |inputs: &Path, name: &str, until: Option<&str>| {
        let mut options = super::common::options(inputs, &dir.join(name));
        options.partitions = 4;
        options.until = until.map(|until| gpuledger::units::parse_rfc3339(until).unwrap());
        super::common::fold(&options);
        dir.join(name)
    };
    let batch = |inputs: &Path, name: &str| batch_until(inputs, name, None);
    let full = batch(&inputs, "batch");

    // A full replay reproduces the live state, digest for digest, and the outputs.
    let (replayed, out) = (dir.join("replay"), dir.join("replay-out"));
    // With metrics and health served while it runs (the figures must not change).
    let args = ["replay", "--state-dir", path(&replayed), "--out", path(&out), "--http-listen", "127.0.0.1:0"];
    let output = gpuledger(&broker, &args);
    let summary: Value = serde_json::from_slice(output.stdout.split(|b| *b == b'\n').rev().nth(1).unwrap()).unwrap();
    assert!(summary["records_in_recorded_order"].as_u64().unwrap() > 1_000, "{summary}");
    let (code, text) = verify(&live, &replayed);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("identical through record").count(), 4, "{text}");
    for stream in STREAMS {
        assert_same_records(&lines(&out, stream), &lines(&full, stream), &format!("replay: {stream}"), &dir);
    }
    // Replay builds a fresh state directory, never on top of one.
    let again = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .args(["replay", "--state-dir", path(&replayed), "--bootstrap-servers", &broker.address])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds state"));

    // As of T: exactly the records up to T, in the order they were taken,
    // as batch mode folds them (`fold --until`).
    let until = "2025-10-01T00:00:00Z";
    let as_of = dir.join("until-out");
    gpuledger(&broker, &["replay", "--state-dir", path(&dir.join("until")), "--until", until, "--out", path(&as_of)]);
    let expected = batch_until(&inputs, "until-batch", Some(until));
    let limit = gpuledger::units::parse_rfc3339(until).unwrap();
    for line in lines(&as_of, "usage-rated") {
        let time = serde_json::from_str::<Value>(&line).unwrap()["time"].as_str().map(str::to_owned).unwrap();
        assert!(gpuledger::units::parse_rfc3339(&time).unwrap() <= limit, "{line}");
    }
    for stream in ["usage-rated", "journal", "statements", "alerts"] {
        assert_same_records(&lines(&as_of, stream), &lines(&expected, stream), &format!("until: {stream}"), &dir);
    }
    assert!(!lines(&as_of, "usage-rated").is_empty());
    assert_eq!(figures(&as_of.join("balances.json")), figures(&expected.join("balances.json")));
    assert_ne!(figures(&as_of.join("balances.json")), figures(&full.join("balances.json")));

    // What-if: every price doubled. The what-if world is batch mode with
    // those rate cards; the comparison's columns are the two worlds' sums.
    let alternative = dir.join("alt-inputs");
    std::fs::create_dir_all(&alternative).unwrap();
    let doubled: Vec<String> = std::fs::read_to_string(inputs.join("rates.jsonl"))
        .unwrap()
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(mut rate) if rate["data"]["price_per_gpu_hour"].is_i64() => {
                let price = rate["data"]["price_per_gpu_hour"].as_i64().unwrap();
                rate["data"]["price_per_gpu_hour"] = (price * 2).into();
                rate.to_string()
            }
            _ => line.to_owned(),
        })
        .collect();
    std::fs::write(alternative.join("rates.jsonl"), doubled.join("\n") + "\n").unwrap();
    for name in ["deals.jsonl", "metering.jsonl"] {
        std::fs::copy(inputs.join(name), alternative.join(name)).unwrap();
    }
    let (what_if_out, csv) = (dir.join("what-if-out"), dir.join("what-if.csv"));
    let output = gpuledger(
        &broker,
        &[
            "replay",
            "--state-dir",
            path(&dir.join("what-if")),
            "--what-if-rates",
            path(&alternative.join("rates.jsonl")),
            "--what-if-csv",
            path(&csv),
            "--out",
            path(&what_if_out),
        ],
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("total (all currencies)"));
    let alternative_batch = batch(&alternative, "what-if-batch");
    for stream in STREAMS {
        let what: &str = &format!("what-if: {stream}");
        assert_same_records(&lines(&what_if_out, stream), &lines(&alternative_batch, stream), what, &dir);
    }
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(column_sum(&csv, "usage_cost_actual"), usage_cost(&full));
    assert_eq!(column_sum(&csv, "usage_cost_what_if"), usage_cost(&alternative_batch));
    assert_eq!(column_sum(&csv, "usage_cost_delta"), usage_cost(&alternative_batch) - usage_cost(&full));
    assert!(usage_cost(&alternative_batch) > usage_cost(&full));
    // The live and the what-if state part at the first usage the new prices
    // touch; with a broker, verify prints the input records of that window.
    let output = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .args(["verify", "--state-dir", path(&live), "--against", path(&dir.join("what-if"))])
        .args(["--bootstrap-servers", &broker.address])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{text}");
    let records = text.lines().filter(|line| line.starts_with("  gpuledger.")).count();
    let diverged = text.matches("diverged after record").count();
    assert!(diverged >= 1 && (1..=256 * diverged).contains(&records), "{records} input records listed:\n{text}");
    assert!(text.contains("gpuledger.gpu.usage"), "{text}");

    // Some tasks, to other topics: exactly their share of the records.
    let emitted = dir.join("emitted-state");
    gpuledger(&broker, &["replay", "--state-dir", path(&emitted), "--partitions", "1,3", "--emit-prefix", "replayed"]);
    let exported = dir.join("export-emitted");
    gpuledger_with(
        &broker,
        &["export", "--out", path(&exported), "--topics", "usage-rated"],
        &[("GPULEDGER_TOPICS__USAGE_RATED", "replayed.usage-rated")],
    );
    let ours = |line: &String| {
        let startup = serde_json::from_str::<Value>(line).unwrap()["startup"].as_str().unwrap().to_owned();
        [1, 3].contains(&gpuledger::partitioner::partition_for_key(startup.as_bytes(), 4))
    };
    let share: Vec<String> = lines(&full, "usage-rated").into_iter().filter(ours).collect();
    assert!(!share.is_empty());
    assert_eq!(super::common::sorted(lines(&exported, "usage-rated")), super::common::sorted(share));
    let (code, text) = verify(&emitted, &live);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(text.matches("only the second directory has state").count(), 2, "{text}");
    assert_eq!(text.matches("identical through record").count(), 2, "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What-if by hand: one hour on an H800 at 3.60/h against a 3.60 grant;
/// at 7.20/h the grant covers half and the rest is overage (spec §7), so
/// cost, overage and revenue each rise by exactly 3.60 (3,600,000 micros).
#[test]
fn what_if_rates_change_the_figures_by_the_expected_amount() {
    let (broker, dir) = small_broker();
    let write = |name: &str, line: String| write_lines(dir.path(), name, &[line]);
    let rates = write("rates.jsonl", h800_rate(3_600_000));
    let alternative = write("alt.jsonl", h800_rate(7_200_000));
    let grant = write("deals.jsonl", acme_grant());
    let usage = write("metering.jsonl", acme_usage("u1", "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z"));
    gpuledger(&broker, &["produce", "--rates", path(&rates), "--deals", path(&grant), "--metering", path(&usage)]);
    run_until_caught_up(&broker, &dir.path().join("live"));
    let csv = dir.path().join("what-if.csv");
    let output = gpuledger(
        &broker,
        &[
            "replay",
            "--state-dir",
            path(&dir.path().join("what-if")),
            "--what-if-rates",
            path(&alternative),
            "--what-if-csv",
            path(&csv),
        ],
    );
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("acme"), "{table}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    let fields: Vec<&str> = rows[1].split(',').collect();
    assert_eq!(&fields[..3], ["acme", "2025-01", "USD"]);
    let number = |index: usize| fields[index].parse::<i64>().unwrap();
    // usage cost: actual, what-if, delta
    assert_eq!((number(3), number(4), number(5)), (3_600_000, 7_200_000, 3_600_000), "{csv}");
    // revenue: the grant's 3.60 either way, plus the overage's 3.60 in the what-if
    assert_eq!(number(8), 3_600_000, "{csv}");
    assert_eq!(number(7) - number(6), 3_600_000, "{csv}");
    // overage: none, then 3.60
    assert_eq!((number(9), number(10), number(11)), (0, 3_600_000, 3_600_000), "{csv}");
    // The what-if state is in the state directory: its balance shows the overage.
    let balance = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .args(["balance", "--json", "--startup", "acme", "--state-dir", path(&dir.path().join("what-if"))])
        .output()
        .unwrap();
    let balance: Value = serde_json::from_slice(&balance.stdout).unwrap();
    assert_eq!(balance["currencies"][0]["overage"], 3_600_000, "{balance}");
}

/// `gpuledger reset` with its exit status and both outputs.
fn reset(broker: &Broker, state: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .args(["reset", "--state-dir", path(state), "--bootstrap-servers", &broker.address])
        .args(args)
        .env("GPULEDGER_LOG", "warn")
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code(), text(output.stdout), text(output.stderr))
}

/// Reset refuses while a processor is in the group; `--dry-run` changes
/// nothing; `--to-datetime T` goes back to the commits made by T (state
/// moved aside, rebuilt in the recorded order, the rest processed again);
/// `--to-earliest` processes everything again. The outputs published twice
/// are the same records, so the exported topics still equal batch mode.
#[test]
fn reset_refuses_a_live_group_and_rewinds_to_a_commit_or_the_start() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let inputs = workload(&dir, 300, 30 * gpuledger::units::MINUTE_MS);
    gpuledger(&broker, &["topics", "create", "--partitions", "4"]);
    let metering = std::fs::read_to_string(inputs.join("metering.jsonl")).unwrap();
    let metering: Vec<&str> = metering.lines().collect();
    let (first_half, second_half) = (dir.join("metering-1.jsonl"), dir.join("metering-2.jsonl"));
    std::fs::write(&first_half, metering[..metering.len() / 2].join("\n") + "\n").unwrap();
    std::fs::write(&second_half, metering[metering.len() / 2..].join("\n") + "\n").unwrap();
    let state = dir.join("state");

    produce_files(&broker, &inputs.join("rates.jsonl"), &inputs.join("deals.jsonl"), &first_half);
    let first = run_until_caught_up(&broker, &state);
    let between = gpuledger::units::format_millis(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
    );
    gpuledger(&broker, &["produce", "--metering", path(&second_half)]);
    let second = run_until_caught_up(&broker, &state);
    assert!(second["records_folded"].as_u64().unwrap() > 0, "{second}");

    // A processor in the group: refused, nothing touched.
    let mut instance = Instance::start(&broker, &dir.join("other-state"), &[]);
    instance.wait_for("task starting", 4);
    let (code, _, stderr) = reset(&broker, &state, &["--to-earliest"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("live member"), "{stderr}");
    assert!(instance.terminate().success());

    // A dry run shows the plan and changes nothing: the next run has nothing to do.
    let (code, stdout, stderr) = reset(&broker, &state, &["--to-datetime", &between, "--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("would be moved to") && stdout.contains("dry run: nothing changed"), "{stdout}");
    let idle = run_until_caught_up(&broker, &state);
    assert_eq!((idle["records_folded"].as_u64(), idle["records_refolded"].as_u64()), (Some(0), Some(0)), "{idle}");

    // Back to the commits made before the second half was produced.
    let (code, stdout, stderr) = reset(&broker, &state, &["--to-datetime", &between]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!state.exists(), "the invalidated state must be moved aside: {stdout}");
    let moved = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().starts_with("state.before-reset-"))
        .count();
    assert_eq!(moved, 1, "{stdout}");
    let rewound = run_until_caught_up(&broker, &state);
    assert_eq!(rewound["records_refolded"], first["records_folded"], "{rewound}");
    assert_eq!(rewound["records_folded"], second["records_folded"], "{rewound}");
    assert_exported_equals_fold(&broker, &inputs, &dir, "reset-datetime");

    // Back to the start: everything is processed again.
    let (code, _, stderr) = reset(&broker, &state, &["--to-earliest"]);
    assert_eq!(code, Some(0), "{stderr}");
    let again = run_until_caught_up(&broker, &state);
    assert_eq!(again["records_refolded"], 0, "{again}");
    assert_eq!(
        again["records_folded"].as_u64(),
        Some(first["records_folded"].as_u64().unwrap() + second["records_folded"].as_u64().unwrap()),
        "{again}"
    );
    assert_exported_equals_fold(&broker, &inputs, &dir, "reset-earliest");
    std::fs::remove_dir_all(&dir).unwrap();
}
