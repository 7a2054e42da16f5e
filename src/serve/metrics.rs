//! The processor's metrics, in the Prometheus text format (the Prometheus
//! project's Rust client encodes them): what the loop counts, the tasks'
//! lag, commit cycle latency, the state directory's size and the process's
//! own figures (RSS, CPU, open files), read from `/proc` at each scrape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::kafka::live::RunStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    topic: String,
    partition: u32,
}

/// The process's own figures.
#[derive(Default)]
struct Process {
    resident: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    start_seconds: Gauge<f64, AtomicU64>,
}

/// Every metric gpuledger exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    folded: Family<TopicLabel, Counter>,
    dead_letters: Family<ReasonLabel, Counter>,
    lag: Family<PartitionLabel, Gauge>,
    transactions: Family<OutcomeLabel, Counter>,
    cycle_seconds: Histogram,
    refolded: Counter,
    restored: Counter,
    checkpoints: Family<OutcomeLabel, Counter>,
    checkpoint_bytes: Counter,
    committed: Counter,
    partitions_assigned: Gauge,
    rebuilds: Counter,
    state_disk_bytes: Gauge,
    process: Process,
    state_dir: Option<PathBuf>,
    /// The counts last published, so counters advance by the difference.
    published: Mutex<RunStats>,
    /// Input names by [`crate::events::Topic`] index, for the `topic` label.
    input_names: [String; 3],
}

impl Metrics {
    /// The metrics of a processor whose inputs are called `input_names`
    /// (rates, deals, metering) and whose state lives in `state_dir`.
    pub fn new(input_names: [String; 3], state_dir: Option<&Path>) -> Metrics {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("gpuledger");
        let folded = Family::<TopicLabel, Counter>::default();
        registry.register("records_folded", "Input records folded with their outputs published", folded.clone());
        let dead_letters = Family::<ReasonLabel, Counter>::default();
        registry.register("dead_letters", "Dead letters published (committed), by reason", dead_letters.clone());
        let lag = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "consumer_lag_records",
            "Records of an input partition not folded yet (end offset - position; 0 when caught up)",
            lag.clone(),
        );
        let transactions = Family::<OutcomeLabel, Counter>::default();
        registry.register("transactions", "Commit-cycle transactions, by outcome", transactions.clone());
        let cycle_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "commit_cycle_seconds",
            "Wall time of a commit cycle, from its cut to the last task's RocksDB write",
            cycle_seconds.clone(),
        );
        let refolded = Counter::default();
        registry.register("records_refolded", "Records re-folded with outputs suppressed (recovery)", refolded.clone());
        let restored = Counter::default();
        registry.register(
            "records_restored",
            "Records folded before a checkpoint a task was restored from (not re-folded)",
            restored.clone(),
        );
        let checkpoints = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "checkpoints",
            "Task checkpoints written to the checkpoint store, by outcome",
            checkpoints.clone(),
        );
        let checkpoint_bytes = Counter::default();
        registry.register("checkpoint_bytes", "Bytes of the checkpoints written", checkpoint_bytes.clone());
        let committed = Counter::default();
        registry.register(
            "records_committed",
            "Input records whose outputs a committed transaction published",
            committed.clone(),
        );
        let partitions_assigned = Gauge::default();
        registry.register(
            "partitions_assigned",
            "Tasks (partitions) this instance owns now",
            partitions_assigned.clone(),
        );
        let rebuilds = Counter::default();
        registry.register(
            "task_rebuilds",
            "Tasks rebuilt from their committed state (aborted transaction or internal error)",
            rebuilds.clone(),
        );
        let state_disk_bytes = Gauge::default();
        registry.register("state_disk_bytes", "Bytes of the RocksDB state directory on disk", state_disk_bytes.clone());
        // The process metrics go by their conventional, unprefixed names.
        let process = Process::default();
        register_process(&mut root, &process);
        Metrics {
            registry: root,
            folded,
            dead_letters,
            lag,
            transactions,
            cycle_seconds,
            refolded,
            restored,
            checkpoints,
            checkpoint_bytes,
            committed,
            partitions_assigned,
            rebuilds,
            state_disk_bytes,
            process,
            state_dir: state_dir.map(Path::to_path_buf),
            published: Mutex::new(RunStats::default()),
            input_names,
        }
    }

    /// Advances the counters to the run's counts (they only grow).
    pub fn publish(&self, stats: &RunStats) {
        let mut last = self.published.lock().expect("metrics lock");
        for (index, name) in self.input_names.iter().enumerate() {
            let delta = stats.records_folded_by_topic[index].saturating_sub(last.records_folded_by_topic[index]);
            self.folded.get_or_create(&TopicLabel { topic: name.clone() }).inc_by(delta);
        }
        for (reason, count) in &stats.dead_letters {
            let before = last.dead_letters.get(reason).copied().unwrap_or(0);
            if *count > before {
                self.dead_letters.get_or_create(&ReasonLabel { reason: reason.clone() }).inc_by(count - before);
            }
        }
        let committed = stats.transactions_committed.saturating_sub(last.transactions_committed);
        let aborted = stats.transactions_aborted.saturating_sub(last.transactions_aborted);
        self.transactions.get_or_create(&OutcomeLabel { outcome: "committed" }).inc_by(committed);
        self.transactions.get_or_create(&OutcomeLabel { outcome: "aborted" }).inc_by(aborted);
        self.refolded.inc_by(stats.records_refolded.saturating_sub(last.records_refolded));
        self.rebuilds.inc_by(stats.task_rebuilds.saturating_sub(last.task_rebuilds));
        self.restored.inc_by(stats.records_restored.saturating_sub(last.records_restored));
        let taken = stats.checkpoints_taken.saturating_sub(last.checkpoints_taken);
        let failed = stats.checkpoints_failed.saturating_sub(last.checkpoints_failed);
        self.checkpoints.get_or_create(&OutcomeLabel { outcome: "taken" }).inc_by(taken);
        self.checkpoints.get_or_create(&OutcomeLabel { outcome: "failed" }).inc_by(failed);
        self.checkpoint_bytes.inc_by(stats.checkpoint_bytes.saturating_sub(last.checkpoint_bytes));
        self.committed.inc_by(stats.records_committed.saturating_sub(last.records_committed));
        *last = stats.clone();
    }

    /// One settled commit cycle's wall time.
    pub fn observe_cycle(&self, millis: u64) {
        self.cycle_seconds.observe(millis as f64 / 1000.0);
    }

    /// The tasks owned now and each input partition's lag; partitions no
    /// longer owned are dropped from the lag family.
    pub fn set_tasks(&self, owned: usize, lag: &BTreeMap<(String, u32), i64>) {
        self.partitions_assigned.set(owned as i64);
        self.lag.clear();
        for ((topic, partition), records) in lag {
            self.lag.get_or_create(&PartitionLabel { topic: topic.clone(), partition: *partition }).set(*records);
        }
    }

    /// The Prometheus text exposition of every metric, as of now.
    pub fn render(&self) -> String {
        if let Some(dir) = &self.state_dir {
            self.state_disk_bytes.set(directory_bytes(dir) as i64);
        }
        self.read_process();
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    fn read_process(&self) {
        let process = &self.process;
        if let Some(stat) = ProcStat::read() {
            process.resident.set(stat.resident_bytes as i64);
            process.virtual_bytes.set(stat.virtual_bytes as i64);
            let seen = process.cpu_seconds.get();
            if stat.cpu_seconds > seen {
                process.cpu_seconds.inc_by(stat.cpu_seconds - seen);
            }
            process.start_seconds.set(stat.start_seconds);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            process.open_fds.set(entries.count() as i64);
        }
    }
}

fn register_process(registry: &mut Registry, process: &Process) {
    registry.register("process_resident_memory_bytes", "Resident set size", process.resident.clone());
    registry.register("process_virtual_memory_bytes", "Virtual memory size", process.virtual_bytes.clone());
    registry.register("process_open_fds", "Open file descriptors", process.open_fds.clone());
    registry.register("process_cpu_seconds", "User and system CPU time", process.cpu_seconds.clone());
    registry.register(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch",
        process.start_seconds.clone(),
    );
}

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The figures of `/proc/self/stat` the process metrics need.
#[derive(Debug, PartialEq)]
struct ProcStat {
    cpu_seconds: f64,
    start_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
}

/// Clock ticks per second and page size as Linux reports them to
/// processes on every architecture gpuledger runs on.
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_BYTES: u64 = 4096;

impl ProcStat {
    fn read() -> Option<ProcStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let boot_time = boot.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse::<f64>().ok()?;
        ProcStat::parse(&stat, boot_time)
    }

    /// Fields after the command name (which may hold spaces and
    /// parentheses): utime 14, stime 15, starttime 22, vsize 23, rss 24.
    fn parse(stat: &str, boot_time: f64) -> Option<ProcStat> {
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3).and_then(|value| value.parse::<u64>().ok());
        Some(ProcStat {
            cpu_seconds: (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND,
            start_seconds: boot_time + field(22)? as f64 / TICKS_PER_SECOND,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * PAGE_BYTES,
        })
    }
}

/// Bytes of the files under `dir` (not following links).
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        let line = "4242 (gpu ledger) (x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1000 \
                    123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = ProcStat::parse(line, 1_700_000_000.0).expect("a valid line");
        assert_eq!(stat.cpu_seconds, 3.0);
        assert_eq!(stat.start_seconds, 1_700_000_010.0);
        assert_eq!(stat.virtual_bytes, 123_456_789);
        assert_eq!(stat.resident_bytes, 2048 * 4096);
    }

    #[test]
    fn counters_advance_by_what_the_run_counted_since_the_last_publication() {
        let metrics = Metrics::new(["rates".into(), "deals".into(), "metering".into()], None);
        let mut stats = RunStats { transactions_committed: 3, ..RunStats::default() };
        stats.records_folded_by_topic = [1, 2, 40];
        stats.dead_letters.insert("unknown_startup".into(), 2);
        metrics.publish(&stats);
        stats.records_folded_by_topic[2] = 45;
        stats.dead_letters.insert("unknown_startup".into(), 5);
        stats.transactions_committed = 4;
        metrics.publish(&stats);
        metrics.observe_cycle(12);
        let text = metrics.render();
        for line in [
            "gpuledger_records_folded_total{topic=\"metering\"} 45",
            "gpuledger_records_folded_total{topic=\"deals\"} 2",
            "gpuledger_dead_letters_total{reason=\"unknown_startup\"} 5",
            "gpuledger_transactions_total{outcome=\"committed\"} 4",
            "gpuledger_transactions_total{outcome=\"aborted\"} 0",
            "gpuledger_commit_cycle_seconds_count 1",
        ] {
            assert!(text.lines().any(|candidate| candidate == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
