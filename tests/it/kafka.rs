//! End to end against a real Kafka-API broker (Tansu, started by
//! `scripts/broker.sh` on a free loopback port) and real RocksDB: produce the
//! generator's workload to 4 partitions, run the processor until caught up,
//! export the output topics, and compare with `gpuledger fold --partitions 4`
//! over the same files, record for record.

use std::process::Command;

use serde_json::Value;

use super::common::{lines, STREAMS};
use super::harness::*;

#[test]
fn live_processing_equals_batch_mode_and_restarts_resume_without_refolding() {
    let (broker, dir, inputs) = loaded_broker(200, 30 * gpuledger::units::MINUTE_MS, 4);

    let state = dir.join("state");
    let first = run_until_caught_up(&broker, &state);
    assert!(first["records_folded"].as_u64().unwrap() > 1_000, "{first}");
    assert_eq!(first["records_refolded"], 0);
    // Every cycle settled is counted, with one transaction per task in it,
    // and the wait splits into its two broker calls.
    let stat = |name: &str| first[name].as_u64().unwrap_or_else(|| panic!("no {name} in {first}"));
    assert!(stat("cycles") >= 1 && stat("transactions_committed") >= stat("cycles"), "{first}");
    assert!(stat("transactions_committed") <= 4 * stat("cycles"), "{first}");
    assert_eq!(stat("transaction_wait_millis"), stat("offsets_millis") + stat("end_transaction_millis"), "{first}");
    assert_exported_equals_fold(&broker, &inputs, &dir, "first");

    // The live state and a batch run over the same logs: same offsets and
    // the same output digests, task by task.
    let mut batch = super::common::options(&inputs, &dir.join("batch-out"));
    batch.partitions = 4;
    batch.state_dir = Some(dir.join("batch-state"));
    super::common::fold(&batch);
    let verify = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .args(["verify", "--state-dir", path(&state), "--against", path(&dir.join("batch-state"))])
        .output()
        .unwrap();
    assert!(verify.status.success(), "live and batch differ: {}", String::from_utf8_lossy(&verify.stdout));

    // Poison records of every reason went to the dead-letter topic with
    // their source offsets, and the partitions kept moving (the equality
    // above covers every later record).
    let exported = dir.join("export-first");
    let reasons: std::collections::BTreeSet<String> = lines(&exported, "dead-letter")
        .iter()
        .map(|line| {
            let letter: Value = serde_json::from_str(line).unwrap();
            assert!(letter["offset"].as_i64().unwrap() >= 0 && letter["partition"].as_u64().unwrap() < 4);
            letter["reason"].as_str().unwrap().to_owned()
        })
        .collect();
    for reason in gpuledger::events::Reason::OF_INPUT {
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
    assert_exported_equals_fold(&broker, &inputs, &dir, "rebuilt");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let (broker, dir, inputs) = loaded_broker(1_500, 5 * gpuledger::units::MINUTE_MS, 4);
    let state = dir.join("state");
    // Kill moments after the tasks started, from a fixed seed so a failure
    // can be replayed: 0.05 s to 2 s (a clean run folds this workload in
    // about 2 s, so kills land while folding, committing and re-folding).
    let mut seed = 0x5eed_u64;
    for kill in 0..5 {
        let mut instance = Instance::start(&broker, &state, &[]);
        instance.wait_for("task starting", 4);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = std::time::Duration::from_millis(50 + (seed >> 33) % 1_950);
        std::thread::sleep(delay); // the chaos, not a synchronisation
        instance.child.kill().unwrap(); // SIGKILL
        instance.child.wait().unwrap();
        eprintln!("kill {kill}: after {delay:?}");
    }
    let last = run_until_caught_up(&broker, &state);
    eprintln!("final run: {last}");
    assert_exported_equals_fold(&broker, &inputs, &dir, "crash");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_instances_share_the_partitions_and_one_takes_over_when_the_other_stops() {
    let (broker, dir, inputs) = loaded_broker(1_500, 5 * gpuledger::units::MINUTE_MS, 4);
    let (state_a, state_b) = (dir.join("state-a"), dir.join("state-b"));
    let mut first = Instance::start(&broker, &state_a, &[]);
    first.wait_for("task starting", 4);
    let mut second = Instance::start(&broker, &state_b, &[]);
    // The group rebalances: the second instance takes some partitions.
    second.wait_for("task starting", 1);
    // A graceful stop (SIGTERM): finish the cycle, commit, leave, exit 0.
    let exit = first.terminate();
    assert!(exit.success(), "SIGTERM must exit 0, got {exit:?}");
    // The survivor takes over every partition, rebuilding those it has no state for.
    second.wait_for("owned=[0, 1, 2, 3]", 1);
    let exit = second.terminate();
    assert!(exit.success());
    let last = run_until_caught_up(&broker, &state_b);
    eprintln!("final run: {last}");
    assert_exported_equals_fold(&broker, &inputs, &dir, "two-instances");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_processor_publishes_ticks_into_the_log_when_asked() {
    let (broker, dir, _) = loaded_broker(100, 30 * gpuledger::units::MINUTE_MS, 2);
    let state = dir.join("state");
    let args = ["run", "--exit-when-caught-up", "--state-dir", path(&state)];
    gpuledger_with(&broker, &args, &[("GPULEDGER_CLOCK__TICK_INTERVAL", "1s")]);
    // The ticks are records of the metering log (so replays see them); a
    // second run folds any the first did not: their wall-clock time closes
    // every month up to last month.
    gpuledger(&broker, &args);
    let exported = dir.join("export-ticks");
    gpuledger(&broker, &["export", "--out", path(&exported), "--topics", "statements"]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let month = gpuledger::units::Month::of(now - 4 * gpuledger::units::DAY_MS).0 - 1;
    let wanted = gpuledger::units::Month(month).to_string();
    let periods: Vec<String> = lines(&exported, "statements")
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["period"].as_str().unwrap().to_owned())
        .collect();
    assert!(periods.contains(&wanted), "no statement for {wanted} (closed by wall-clock ticks) in {periods:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Spec §4: a late record can arrive after the task took a later-timed
/// record of another input, so live order is not the rule's order. A
/// rebuild must follow the order recorded in the progress topic, or its state
/// would differ from what was published.
#[test]
fn a_rebuild_follows_the_recorded_order_of_a_late_record() {
    let (broker, dir) = small_broker();
    let write = |name: &str, lines: &[String]| write_lines(dir.path(), name, lines);
    let rates = write("rates.jsonl", &[h800_rate(3_600_000)]);
    let first = write("usage-1.jsonl", &[acme_usage("u1", "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z")]);
    // A grant timed before u1 that arrives after u1 was taken.
    let grant = write("deals.jsonl", &[acme_grant()]);
    let second = write("usage-2.jsonl", &[acme_usage("u2", "2025-01-01T11:00:00Z", "2025-01-01T11:30:00Z")]);
    let state = dir.path().join("state");

    gpuledger(&broker, &["produce", "--rates", path(&rates), "--metering", path(&first)]);
    run_until_caught_up(&broker, &state); // u1 finds no grant: overage
    gpuledger(&broker, &["produce", "--deals", path(&grant)]);
    run_until_caught_up(&broker, &state); // the grant arrives late, untouched by u1

    // Lose the state: the rebuild re-folds rates, u1, grant from the log.
    // By the merge rule the grant (09:00) would come before u1 (11:00) and u1
    // would use it up; the recorded order keeps it whole, as published.
    std::fs::remove_dir_all(&state).unwrap();
    gpuledger(&broker, &["produce", "--metering", path(&second)]);
    let rebuilt = run_until_caught_up(&broker, &state);
    assert_eq!(
        (rebuilt["records_refolded"].as_u64(), rebuilt["records_folded"].as_u64()),
        (Some(3), Some(1)),
        "{rebuilt}"
    );

    let exported = dir.path().join("export");
    gpuledger(&broker, &["export", "--out", path(&exported), "--topics", "usage-rated"]);
    let records: Vec<Value> =
        lines(&exported, "usage-rated").iter().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(records.len(), 2);
    assert_eq!((records[0]["id"].as_str(), records[0]["overage"].as_i64()), (Some("u1"), Some(3_600_000)));
    assert_eq!(records[1]["id"], "u2");
    assert_eq!(
        records[1]["draws"][0]["grant_id"], "g1",
        "u2 must draw from the grant u1 never touched live: {}",
        records[1]
    );
    assert_eq!(records[1]["overage"], 0);
}

/// Abortable failures: every third transaction is aborted after its records
/// were sent (fault injection); the task drops its uncommitted state, is
/// rebuilt from RocksDB with a new producer, rewinds and goes on.
#[test]
fn aborted_transactions_are_redone_from_the_committed_state() {
    let (broker, dir, inputs) = loaded_broker(600, 30 * gpuledger::units::MINUTE_MS, 4);
    let state = dir.join("state");
    let output = gpuledger_with(
        &broker,
        &["run", "--exit-when-caught-up", "--state-dir", path(&state)],
        &[("GPULEDGER_PROCESSOR__INJECT_ABORT_EVERY", "3"), ("GPULEDGER_PROCESSOR__COMMIT_INTERVAL", "10ms")],
    );
    let stats: Value = serde_json::from_str(String::from_utf8(output.stdout).unwrap().lines().last().unwrap()).unwrap();
    eprintln!("run with injected aborts: {stats}");
    assert!(stats["transactions_aborted"].as_u64().unwrap() >= 1, "{stats}");
    assert_exported_equals_fold(&broker, &inputs, &dir, "aborts");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `produce --event-timestamps` gives each record its event `time` as Kafka
/// timestamp (Quix Streams aligns topics by it); without it, the produce time.
#[test]
fn produce_can_stamp_records_with_their_event_time() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let (broker, dir) = small_broker();
    let grant = write_lines(dir.path(), "deals.jsonl", &[acme_grant()]);
    let usage =
        write_lines(dir.path(), "metering.jsonl", &[acme_usage("u1", "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z")]);
    gpuledger(&broker, &["produce", "--deals", path(&grant), "--event-timestamps"]);
    gpuledger(&broker, &["produce", "--metering", path(&usage)]);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", "timestamps")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset("gpuledger.deals", 0, rdkafka::Offset::Beginning).unwrap();
    list.add_partition_offset("gpuledger.metering", 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&list).unwrap();
    let mut stamps = std::collections::BTreeMap::new();
    while stamps.len() < 2 {
        let message = consumer.poll(std::time::Duration::from_secs(30)).expect("a record within 30 s").unwrap();
        stamps.insert(message.topic().to_owned(), message.timestamp().to_millis().unwrap());
    }
    let event_time = gpuledger::units::parse_rfc3339("2025-01-01T09:00:00Z").unwrap();
    assert_eq!(stamps["gpuledger.deals"], event_time, "the grant's event time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let produced = stamps["gpuledger.metering"];
    assert!((now - 600_000..=now).contains(&produced), "produce time expected, got {produced}");
}

/// Spec §5 v1.1: a record whose fold panics (fault injection: metering
/// offset 40 of every partition) becomes an `internal_error` dead letter,
/// the task is rebuilt from its committed state and goes on, and what the
/// topics hold equals batch mode with the same injected panics.
#[test]
fn a_record_that_panics_live_is_dead_lettered_and_the_partition_goes_on() {
    let (broker, dir, inputs) = loaded_broker(300, 30 * gpuledger::units::MINUTE_MS, 4);
    let state = dir.join("state");
    let output = gpuledger_with(
        &broker,
        &["run", "--exit-when-caught-up", "--state-dir", path(&state)],
        &[("GPULEDGER_PROCESSOR__INJECT_PANIC_AT", "metering:40"), ("GPULEDGER_PROCESSOR__COMMIT_INTERVAL", "10ms")],
    );
    let stats: Value = serde_json::from_str(String::from_utf8(output.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(stats["internal_errors"], 4, "{stats}");
    let exported = dir.join("export-panics");
    gpuledger(&broker, &["export", "--out", path(&exported)]);
    let folded = dir.join("fold-panics");
    let mut options = super::common::options(&inputs, &folded);
    options.partitions = 4;
    options.fold.inject_panic_at = Some((gpuledger::events::Topic::Metering, 40));
    super::common::fold(&options);
    for stream in STREAMS {
        assert_same_records(&lines(&exported, stream), &lines(&folded, stream), &format!("panics: {stream}"), &dir);
    }
    let internal: Vec<Value> = lines(&exported, "dead-letter")
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|letter| letter["reason"] == "internal_error")
        .collect();
    assert_eq!(internal.len(), 4);
    assert!(internal.iter().all(|letter| letter["offset"] == 40 && letter["topic"] == "metering"));
    let report = gpuledger::audit::audit(&exported, false).unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The bad-input catalogue (`catalogue.rs`) produced to a live broker at
/// once, after a base world: the processor reaches caught-up and exits 0,
/// and every bad record is in the dead-letter topic with its reason.
#[test]
fn the_bad_input_catalogue_reaches_the_dead_letter_topic_live() {
    let (broker, dir) = small_broker();
    let cases = super::catalogue::catalogue();
    let mut inputs = super::catalogue::base();
    let mut expected = std::collections::BTreeMap::new();
    for case in &cases {
        let lines = &mut inputs[case.topic.index()];
        expected.insert((case.topic.name().to_owned(), lines.len() as i64), (case.name, case.reason));
        lines.push(case.bytes.clone());
    }
    let input_dir = dir.path().join("inputs");
    super::catalogue::write_inputs(&input_dir, &inputs);
    produce(&broker, &input_dir);
    let state = dir.path().join("state");
    let limit = super::catalogue::limits().max_record_bytes.to_string();
    gpuledger_with(
        &broker,
        &["run", "--exit-when-caught-up", "--state-dir", path(&state)],
        &[("GPULEDGER_LIMITS__MAX_RECORD_BYTES", &limit)],
    );
    let exported = dir.path().join("export");
    gpuledger(&broker, &["export", "--out", path(&exported), "--topics", "dead-letter"]);
    let mut found = std::collections::BTreeMap::new();
    for line in lines(&exported, "dead-letter") {
        let letter: Value = serde_json::from_str(&line).unwrap();
        let position = (letter["topic"].as_str().unwrap().to_owned(), letter["offset"].as_i64().unwrap());
        found.insert(position, letter["reason"].as_str().unwrap().to_owned());
    }
    let mut wrong = Vec::new();
    for (position, (name, reason)) in &expected {
        match found.get(position) {
            Some(actual) if actual == reason => {}
            other => wrong.push(format!("{name}: expected {reason}, dead letter {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(found.len(), expected.len(), "only the catalogue's records are dead letters");
}

/// An output the broker (here: the producer's own size limit, as a broker's
/// `max.message.bytes` would) refuses for good stops the processor with an
/// error naming the topic and the inputs, not an endless abort-and-retry.
#[test]
fn an_output_refused_for_good_is_a_named_fatal_error() {
    let (broker, dir) = small_broker();
    let bad = write_lines(dir.path(), "metering.jsonl", &[format!("{{\"pad\":\"{}\"}}", "x".repeat(5_000))]);
    let rates = write_lines(dir.path(), "rates.jsonl", &[h800_rate(3_600_000)]);
    gpuledger(&broker, &["produce", "--rates", path(&rates), "--metering", path(&bad)]);
    let output = gpuledger_output(
        &broker,
        &["run", "--exit-when-caught-up", "--state-dir", path(&dir.path().join("state"))],
        &[("GPULEDGER_KAFKA__PROPERTIES__MESSAGE_MAX_BYTES", "2000")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused an output of task 0 to topic gpuledger.dead-letter for good"), "{stderr}");
    assert!(stderr.contains("MessageSizeTooLarge") && stderr.contains("metering partition 0 offsets 0..1"), "{stderr}");
}

/// A RocksDB write that fails after a re-fold stops the processor with an
/// error naming it (the re-fold's changes were taken: going on would write
/// later deltas onto a store that lacks them); a restart re-folds again.
#[test]
fn a_failed_store_write_after_a_refold_is_fatal_and_a_restart_recovers() {
    let (broker, dir) = small_broker();
    let rates = write_lines(dir.path(), "rates.jsonl", &[h800_rate(3_600_000)]);
    let deals = write_lines(dir.path(), "deals.jsonl", &[acme_grant()]);
    let usage =
        write_lines(dir.path(), "usage.jsonl", &[acme_usage("u1", "2025-01-01T10:00:00Z", "2025-01-01T10:30:00Z")]);
    gpuledger(&broker, &["produce", "--rates", path(&rates), "--deals", path(&deals), "--metering", path(&usage)]);
    let state = dir.path().join("state");
    run_until_caught_up(&broker, &state);
    std::fs::remove_dir_all(&state).unwrap();
    let failed = gpuledger_output(
        &broker,
        &["run", "--exit-when-caught-up", "--state-dir", path(&state)],
        &[("GPULEDGER_PROCESSOR__INJECT_REFOLD_WRITE_FAILURE", "true")],
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing the re-folded state of task 0 to RocksDB"), "{stderr}");
    let recovered = run_until_caught_up(&broker, &state);
    assert_eq!(
        (recovered["records_refolded"].as_u64(), recovered["records_folded"].as_u64()),
        (Some(3), Some(0)),
        "{recovered}"
    );
    let exported = dir.path().join("export");
    gpuledger(&broker, &["export", "--out", path(&exported), "--topics", "usage-rated"]);
    assert_eq!(lines(&exported, "usage-rated").len(), 1, "published once, whatever the restarts");
}

#[test]
fn logs_are_json_lines_with_the_task_on_request() {
    let (broker, dir, _) = loaded_broker(5, 30 * gpuledger::units::MINUTE_MS, 2);
    let state = dir.join("state");
    let output = gpuledger_with(
        &broker,
        &["run", "--exit-when-caught-up", "--state-dir", path(&state)],
        &[("GPULEDGER_LOG__FORMAT", "json"), ("GPULEDGER_LOG", "info")],
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}")))
        .collect();
    let starting: Vec<&Value> = lines.iter().filter(|line| line["fields"]["message"] == "task starting").collect();
    assert_eq!(starting.len(), 2, "{stderr}");
    for line in starting {
        assert!(line["fields"]["partition"].is_u64(), "{line}");
        assert_eq!(line["level"], "INFO");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
