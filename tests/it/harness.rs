//! What the tests against a real broker share: the broker (Tansu, started
//! by `scripts/broker.sh` on a free loopback port), the `gpuledger` binary
//! run against it, loaded workloads, processors in the background read by
//! their log lines, and the comparison of exported topics with batch mode.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::common::{lines, workload, STREAMS};

/// A broker for one test; stopped on drop.
pub(super) struct Broker {
    dir: tempfile::TempDir,
    pub(super) address: String,
}

pub(super) fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh")
}

impl Broker {
    pub(super) fn start() -> Broker {
        Broker::start_with(&["start"])
    }

    /// The broker behind a TLS terminator with `cert` and `key`; with
    /// `client_ca`, clients must present a certificate it signed.
    pub(super) fn start_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Broker {
        Broker::start_tls_with(cert, key, client_ca, false)
    }

    /// [`Broker::start_tls`], the broker requiring SASL when `authentication`.
    pub(super) fn start_tls_with(cert: &Path, key: &Path, client_ca: Option<&Path>, authentication: bool) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(script())
            .env("BROKER_AUTHENTICATION", if authentication { "1" } else { "" })
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

pub(super) fn gpuledger(broker: &Broker, args: &[&str]) -> Output {
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
pub(super) fn run_until_caught_up(broker: &Broker, state: &Path) -> Value {
    let output = gpuledger(broker, &["run", "--exit-when-caught-up", "--state-dir", state.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

pub(super) fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub(super) fn produce(broker: &Broker, inputs: &Path) {
    produce_files(broker, &inputs.join("rates.jsonl"), &inputs.join("deals.jsonl"), &inputs.join("metering.jsonl"));
}

pub(super) fn produce_files(broker: &Broker, rates: &Path, deals: &Path, metering: &Path) {
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
pub(super) fn loaded_broker(jobs: usize, slice_ms: i64, partitions: u32) -> (Broker, PathBuf, PathBuf) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let inputs = workload(&dir, jobs, slice_ms);
    gpuledger(&broker, &["topics", "create", "--partitions", &partitions.to_string()]);
    produce(&broker, &inputs);
    (broker, dir, inputs)
}

/// Equal record lists, or a short account of where they part (the lists are
/// tens of thousands of lines).
pub(super) fn assert_same_records(actual: &[String], expected: &[String], what: &str, dir: &Path) {
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
pub(super) fn assert_exported_equals_fold(broker: &Broker, inputs: &Path, dir: &Path, name: &str) {
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
    assert_exported_equals_fold_in(broker, inputs, dir, name, 4, environment);
}

/// [`assert_exported_equals_fold_with`] against `fold --partitions N`.
pub(super) fn assert_exported_equals_fold_in(
    broker: &Broker,
    inputs: &Path,
    dir: &Path,
    name: &str,
    partitions: u32,
    environment: &[(&str, &str)],
) {
    let exported = dir.join(format!("export-{name}"));
    let output = gpuledger_with(broker, &["export", "--out", path(&exported)], environment);
    eprintln!("export ({name}):\n{}", String::from_utf8_lossy(&output.stdout));
    let folded = dir.join(format!("fold-{name}"));
    let mut options = super::common::options(inputs, &folded);
    options.partitions = partitions;
    super::common::fold(&options);
    for stream in STREAMS {
        assert_same_records(&lines(&exported, stream), &lines(&folded, stream), &format!("{name}: {stream}"), dir);
    }
    let report = gpuledger::audit::audit(&exported, false).unwrap();
    assert!(report.violations.is_empty(), "{name}: {:#?}", report.violations);
}

/// Exports the output topics and compares them, record for record, with a
/// `replay` of the same history, which follows the order the live cycles
/// recorded: what a run whose input arrived in stretches must equal (batch
/// mode's merge sees every input complete, so it may order a late record
/// differently, spec §4). Then audits the export.
pub(super) fn assert_exported_equals_replay(broker: &Broker, dir: &Path, name: &str) {
    let exported = dir.join(format!("export-{name}"));
    gpuledger(broker, &["export", "--out", path(&exported)]);
    let replayed = dir.join(format!("replay-{name}"));
    let state = dir.join(format!("replay-state-{name}"));
    gpuledger(broker, &["replay", "--state-dir", path(&state), "--out", path(&replayed)]);
    for stream in STREAMS {
        let (actual, expected) =
            (super::common::sorted(lines(&exported, stream)), super::common::sorted(lines(&replayed, stream)));
        assert_same_records(&actual, &expected, &format!("{name}: {stream} (exported vs replayed)"), dir);
    }
    let report = gpuledger::audit::audit(&exported, false).unwrap();
    assert!(report.violations.is_empty(), "{name}: {:#?}", report.violations);
}

/// A processor started in the background whose log is read line by line,
/// so tests synchronise on what it says, not on time.
pub(super) struct Instance {
    pub(super) child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    /// What it printed on stdout (its counters, at exit).
    stdout: std::thread::JoinHandle<String>,
}

impl Instance {
    pub(super) fn start(broker: &Broker, state: &Path, extra: &[&str]) -> Instance {
        Instance::start_with(broker, state, extra, &[])
    }

    /// [`Instance::start`] with `environment`.
    pub(super) fn start_with(broker: &Broker, state: &Path, extra: &[&str], environment: &[(&str, &str)]) -> Instance {
        use std::io::{BufRead, Read};
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpuledger"))
            .args(["run", "--state-dir", path(state), "--bootstrap-servers", &broker.address])
            .args(extra)
            .env("GPULEDGER_LOG", "info")
            .envs(environment.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
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
        Instance { child, lines, seen: Vec::new(), stdout }
    }

    /// The first log line that contains `text` (waiting for it).
    pub(super) fn line_with(&mut self, text: &str) -> String {
        self.wait_for(text, 1);
        self.seen.iter().find(|line| line.contains(text)).expect("seen").clone()
    }

    /// Waits until `count` log lines (since start) contain `text`.
    pub(super) fn wait_for(&mut self, text: &str, count: usize) {
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

    /// Takes the log lines that arrived, waiting at most `wait` for the first.
    pub(super) fn take_lines(&mut self, wait: std::time::Duration) {
        if let Ok(line) = self.lines.recv_timeout(wait) {
            self.seen.push(line);
        }
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The log lines so far.
    pub(super) fn seen(&self) -> &[String] {
        &self.seen
    }

    /// SIGTERM, then the exit status and the counters it printed.
    pub(super) fn terminate_with_stats(self) -> (std::process::ExitStatus, Option<Value>) {
        let (exit, stdout) = self.stop();
        let stats = stdout.lines().last().and_then(|line| serde_json::from_str(line).ok());
        (exit, stats)
    }

    /// SIGTERM, then the exit status.
    pub(super) fn terminate(self) -> std::process::ExitStatus {
        self.stop().0
    }

    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(5)) {
            self.seen.push(line);
        }
        assert!(self.seen.iter().any(|line| line.contains("stopping")), "no clean stop in:\n{}", self.seen.join("\n"));
        if !exit.success() {
            let tail = &self.seen[self.seen.len().saturating_sub(20)..];
            eprintln!("the processor exited with {exit:?}; its last log lines:\n{}", tail.join("\n"));
        }
        (exit, self.stdout.join().unwrap_or_default())
    }
}

/// A broker with one-partition topics and a scratch directory, for
/// hand-made inputs (start-up `acme`, one H800 rate key).
pub(super) fn small_broker() -> (Broker, tempfile::TempDir) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    gpuledger(&broker, &["topics", "create", "--partitions", "1"]);
    (broker, dir)
}

pub(super) fn write_lines(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file
}

pub(super) fn h800_rate(price: i64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"r1","source":"p","type":"gpuledger.rate.published","time":"2025-01-01T00:00:00Z","data":{{"gpu_model":"H800","region":"r","tier":"spot","currency":"USD","price_per_gpu_hour":{price},"effective_from":"2025-01-01T00:00:00Z"}}}}"#
    )
}

/// A cash grant g1 of 3.60 to acme, timed 09:00.
pub(super) fn acme_grant() -> String {
    r#"{"specversion":"1.0","id":"g","source":"crm","type":"gpuledger.credit.granted","subject":"acme","time":"2025-01-01T09:00:00Z","data":{"grant_id":"g1","face_amount":3600000,"currency":"USD","effective_at":"2025-01-01T00:00:00Z","consideration":"cash"}}"#.to_owned()
}

pub(super) fn acme_usage(id: &str, start: &str, end: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"m","type":"gpuledger.gpu.usage","subject":"acme","time":"{end}","data":{{"cluster_id":"c","region":"r","gpu_model":"H800","tier":"spot","gpu_count":1,"started_at":"{start}","ended_at":"{end}"}}}}"#
    )
}

/// An S3-compatible server (moto, by `scripts/s3.sh`) with one bucket, for
/// checkpoints; stopped on drop.
pub(super) struct S3 {
    dir: tempfile::TempDir,
    pub(super) endpoint: String,
    pub(super) bucket: String,
}

impl S3 {
    pub(super) fn start() -> S3 {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3.sh");
        let bucket = "gpuledger-checkpoints".to_owned();
        let output = Command::new(script).arg("start").arg(dir.path()).arg(&bucket).output().unwrap();
        assert!(output.status.success(), "s3 did not start: {}", String::from_utf8_lossy(&output.stderr));
        let endpoint = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        S3 { dir, endpoint, bucket }
    }

    /// The processor's settings for checkpoints under `prefix` in the bucket.
    pub(super) fn environment(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("GPULEDGER_CHECKPOINTS__STORE", format!("s3://{}/{prefix}", self.bucket)),
            ("GPULEDGER_CHECKPOINTS__OPTIONS__ENDPOINT", self.endpoint.clone()),
            ("GPULEDGER_CHECKPOINTS__OPTIONS__ALLOW_HTTP", "true".to_owned()),
            ("GPULEDGER_CHECKPOINTS__OPTIONS__REGION", "us-east-1".to_owned()),
            ("GPULEDGER_CHECKPOINTS__OPTIONS__ACCESS_KEY_ID", "test".to_owned()),
            ("GPULEDGER_CHECKPOINTS__OPTIONS__SECRET_ACCESS_KEY", "test".to_owned()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3.sh");
        let _ = Command::new(script).arg("stop").arg(self.dir.path()).status();
    }
}

/// `(name, value)` pairs as the `&str` pairs the helpers take.
pub(super) fn borrowed<'a>(environment: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    environment.iter().map(|(name, value)| (*name, value.as_str())).collect()
}

/// The checkpoints' manifests (`checkpoint list --json`), complete ones only.
pub(super) fn manifests(environment: &[(&str, &str)]) -> Vec<Value> {
    let output = checkpoint_command(&["list", "--json"], environment);
    assert!(output.status.success(), "checkpoint list: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|manifest| manifest.get("unusable").is_none())
        .collect()
}

/// `gpuledger checkpoint ARGS` (no broker needed), whatever its exit.
pub(super) fn checkpoint_command(args: &[&str], environment: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuledger"))
        .arg("checkpoint")
        .args(args)
        .env("GPULEDGER_LOG", "warn")
        .envs(environment.iter().copied())
        .output()
        .unwrap()
}
