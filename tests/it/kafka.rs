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
pub(super) struct Broker {
    dir: tempfile::TempDir,
    pub(super) address: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh")
}

impl Broker {
    pub(super) fn start() -> Broker {
        Broker::start_with(&["start"])
    }

    /// The broker behind a TLS terminator with `cert` and `key`; with
    /// `client_ca`, clients must present a certificate it signed.
    pub(super) fn start_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(script())
            .arg("start-tls")
            .arg(dir.path())
            .arg(cert)
            .arg(key)
            .args(client_ca)
            .output()
            .unwrap();
        assert!(output.status.success(), "broker did not start: {}", String::from_utf8_lossy(&output.stderr));
        let address = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        Broker { dir, address }
    }

    fn start_with(command: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(script()).args(command).arg(dir.path()).output().unwrap();
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
    gpuledger_with(broker, args, &[])
}

/// `gpuledger ARGS --bootstrap-servers …` with `environment`, whatever its exit.
pub(super) fn gpuledger_output(broker: &Broker, args: &[&str], environment: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .args(args)
        .args(["--bootstrap-servers", &broker.address])
        .env("GPULEDGER_LOG", "warn")
        .envs(environment.iter().copied())
        .output()
        .unwrap()
}

pub(super) fn gpuledger_with(broker: &Broker, args: &[&str], environment: &[(&str, &str)]) -> Output {
    let output = gpuledger_output(broker, args, environment);
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
    produce_files(broker, &inputs.join("rates.jsonl"), &inputs.join("deals.jsonl"), &inputs.join("metering.jsonl"));
}

fn produce_files(broker: &Broker, rates: &Path, deals: &Path, metering: &Path) {
    produce_files_with(broker, rates, deals, metering, &[]);
}

pub(super) fn produce_files_with(
    broker: &Broker,
    rates: &Path,
    deals: &Path,
    metering: &Path,
    environment: &[(&str, &str)],
) {
    let args = ["produce", "--rates", path(rates), "--deals", path(deals), "--metering", path(metering)];
    gpuledger_with(broker, &args, environment);
}

/// A broker with the topics (`partitions` each) and a Philly workload of
/// `jobs` jobs produced; the directory is kept until the test removes it, so
/// a failure leaves its files to look at.
fn loaded_broker(jobs: usize, slice_ms: i64, partitions: u32) -> (Broker, PathBuf, PathBuf) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let inputs = workload(&dir, jobs, slice_ms);
    gpuledger(&broker, &["topics", "create", "--partitions", &partitions.to_string()]);
    produce(&broker, &inputs);
    (broker, dir, inputs)
}

/// Equal record lists, or a short account of where they part (the lists are
/// tens of thousands of lines).
fn assert_same_records(actual: &[String], expected: &[String], what: &str, dir: &Path) {
    if actual == expected {
        return;
    }
    let first =
        actual.iter().zip(expected).position(|(left, right)| left != right).unwrap_or(actual.len().min(expected.len()));
    let keep = dir.to_owned();
    panic!(
        "{what}: {} records exported, {} folded; first difference at record {first}:\n exported: {}\n folded:   {}\n(files kept in {})",
        actual.len(),
        expected.len(),
        actual.get(first).map_or("<none>", |line| &line[..line.len().min(300)]),
        expected.get(first).map_or("<none>", |line| &line[..line.len().min(300)]),
        keep.display()
    );
}

/// Exports the output topics and compares them with `fold --partitions 4`
/// over the same inputs, then audits them. Prints what export dropped:
/// records of aborted or re-sent cycles that this broker shows to
/// read_committed readers (export fails on an identity with two contents).
fn assert_exported_equals_fold(broker: &Broker, inputs: &Path, dir: &Path, name: &str) {
    assert_exported_equals_fold_with(broker, inputs, dir, name, &[]);
}

/// [`assert_exported_equals_fold`] with the clients' `environment` (TLS settings).
pub(super) fn assert_exported_equals_fold_with(
    broker: &Broker,
    inputs: &Path,
    dir: &Path,
    name: &str,
    environment: &[(&str, &str)],
) {
    let exported = dir.join(format!("export-{name}"));
    let output = gpuledger_with(broker, &["export", "--out", path(&exported)], environment);
    eprintln!("export ({name}):\n{}", String::from_utf8_lossy(&output.stdout));
    let folded = dir.join(format!("fold-{name}"));
    let mut options = super::common::options(inputs, &folded);
    options.partitions = 4;
    super::common::fold(&options);
    for stream in STREAMS {
        assert_same_records(&lines(&exported, stream), &lines(&folded, stream), &format!("{name}: {stream}"), dir);
    }
    let report = gpuledger::audit::audit(&exported, false).unwrap();
    assert!(report.violations.is_empty(), "{name}: {:#?}", report.violations);
}

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

/// A processor started in the background whose log is read line by line,
/// so tests synchronise on what it says, not on time.
struct Instance {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Instance {
    fn start(broker: &Broker, state: &Path, extra: &[&str]) -> Instance {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
            .args(["run", "--state-dir", path(state), "--bootstrap-servers", &broker.address])
            .args(extra)
            .env("GPULEDGER_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Instance { child, lines, seen: Vec::new() }
    }

    /// Waits until `count` log lines (since start) contain `text`.
    fn wait_for(&mut self, text: &str, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if self.seen.iter().filter(|line| line.contains(text)).count() >= count {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no {count}× {text:?} within 120 s; log:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(5)) {
            self.seen.push(line);
        }
        assert!(self.seen.iter().any(|line| line.contains("stopping")), "no clean stop in:\n{}", self.seen.join("\n"));
        exit
    }
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
    second.wait_for("partitions assigned partitions=[0, 1, 2, 3]", 1);
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

/// A broker with one-partition topics and a scratch directory, for
/// hand-made inputs (start-up `acme`, one H800 rate key).
fn small_broker() -> (Broker, tempfile::TempDir) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    gpuledger(&broker, &["topics", "create", "--partitions", "1"]);
    (broker, dir)
}

fn write_lines(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file
}

fn h800_rate(price: i64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"r1","source":"p","type":"gpuledger.rate.published","time":"2025-01-01T00:00:00Z","data":{{"gpu_model":"H800","region":"r","tier":"spot","currency":"USD","price_per_gpu_hour":{price},"effective_from":"2025-01-01T00:00:00Z"}}}}"#
    )
}

/// A cash grant g1 of 3.60 to acme, timed 09:00.
fn acme_grant() -> String {
    r#"{"specversion":"1.0","id":"g","source":"crm","type":"gpuledger.credit.granted","subject":"acme","time":"2025-01-01T09:00:00Z","data":{"grant_id":"g1","face_amount":3600000,"currency":"USD","effective_at":"2025-01-01T00:00:00Z","consideration":"cash"}}"#.to_owned()
}

fn acme_usage(id: &str, start: &str, end: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"m","type":"gpuledger.gpu.usage","subject":"acme","time":"{end}","data":{{"cluster_id":"c","region":"r","gpu_model":"H800","tier":"spot","gpu_count":1,"started_at":"{start}","ended_at":"{end}"}}}}"#
    )
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
    let output = gpuledger(&broker, &["replay", "--state-dir", path(&replayed), "--out", path(&out)]);
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
