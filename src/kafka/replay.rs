//! `gpuledger replay`: the fold over the input topics from offset 0 into a
//! fresh state directory, for ops (rebuild, as-of balances, verification,
//! what-if pricing), without disturbing the live processor.
//!
//! Each task reads its three inputs with its own consumers (assigned, no
//! group: nothing is committed) up to the end it finds. It follows the order
//! the live processor recorded in the progress topic for the committed part
//! of the history (spec §4) and the merge rule after it, exactly as a
//! recovering processor does, so a full replay reproduces the live
//! processor's outputs and output digest. Tasks are independent and run on
//! up to one thread per core; the fold's changes go to RocksDB every 50,000
//! records and at the end, as in batch mode. Output files are written per
//! task and joined in task order, so they never depend on thread timing.
//!
//! `--until T` folds exactly the records whose `time` is at or before T
//! (records without a readable time are left out too), so the state is the
//! ledger as of T. `--what-if-rates` folds the same deals and usage a second
//! time with other rate cards, taken by the merge rule among the actual
//! order of deals and usage, and compares the two.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::BaseProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::processor::{close_in_background, committed_plan, to_input};
use super::produce::{bulk_producer, flush_checked, send, Deliveries};
use super::QuietEof;
use crate::batch::{write_balances, OutputFiles};
use crate::config::Config;
use crate::events::avro::SchemaRegistry;
use crate::events::{decode_record, Decoded, InputRecord, Limits, Topic};
use crate::fold::merge::{choose, Choice, Head};
use crate::fold::state::TaskState;
use crate::fold::{Poisoned, Task, TopicNames};
use crate::progress::Progress;
use crate::records::{Balances, Output, Stream};
use crate::store::rocks::RocksStore;
use crate::store::{self, KvStore};
use crate::units::Millis;
use crate::whatif::{Comparison, Side};

/// Records a task buffers per input before the merge takes them.
const BUFFER_CAP: usize = 20_000;
/// Records folded between two writes of the state to RocksDB.
const COMMIT_EVERY: u64 = 50_000;
/// How long an input may give neither a record nor its end.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Where replayed outputs go.
#[derive(Clone, Debug)]
pub enum Sink {
    /// Nowhere: only the state (and its digest) is rebuilt.
    Suppressed,
    /// JSONL files in a directory, as batch mode writes them, with `balances.json`.
    Files(PathBuf),
    /// Topics `<prefix>.usage-rated`, `<prefix>.journal`, … and `<prefix>.balances`.
    Topics(String),
}

#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub state_dir: PathBuf,
    /// Fold only records with `time <= until`.
    pub until: Option<Millis>,
    /// Only these tasks (default: all).
    pub partitions: Option<Vec<u32>>,
    pub sink: Sink,
    /// Alternative rate cards (JSONL, as the rates topic carries them).
    pub what_if_rates: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub partitions: Vec<u32>,
    /// Input records read (rates once per task).
    pub records_read: u64,
    pub records_folded: u64,
    /// Records `--until` left out: later than T, or without a readable time.
    pub records_after_until: u64,
    /// Records taken in the order the progress topic recorded.
    pub records_in_recorded_order: u64,
    pub outputs: u64,
    pub seconds: f64,
    /// Input records read per second.
    pub records_per_second: f64,
    #[serde(skip)]
    pub what_if: Option<Comparison>,
}

/// One input of a task, read by its own consumer so that its end of
/// partition is unambiguous.
struct Input {
    topic: Topic,
    consumer: BaseConsumer<QuietEof>,
    buffer: VecDeque<(InputRecord, Decoded)>,
    next: i64,
    /// The consumer reported the end; what is appended later is not replayed.
    ended: bool,
    last_heard: Instant,
}

impl Input {
    fn open(config: &Config, topic: Topic, name: &str, partition: u32) -> crate::Result<Input> {
        let consumer: BaseConsumer<QuietEof> = super::client_config(
            config,
            &[
                ("group.id", &format!("{}-replay", config.group_id)),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("isolation.level", "read_committed"),
                ("enable.partition.eof", "true"),
                // History is fetched in full batches; only the end waits.
                ("fetch.wait.max.ms", "100"),
            ],
        )
        .create_with_context(QuietEof)
        .context("creating a replay consumer")?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(name, partition as i32, Offset::Beginning)?;
        consumer.assign(&list).with_context(|| format!("assigning {name}[{partition}]"))?;
        Ok(Input { topic, consumer, buffer: VecDeque::new(), next: 0, ended: false, last_heard: Instant::now() })
    }

    /// Moves fetched records into the buffer, waiting up to `wait` for the first.
    fn fill(&mut self, wait: Duration, registry: &SchemaRegistry, limits: &Limits) -> crate::Result<()> {
        let mut timeout = wait;
        while !self.ended && self.buffer.len() < BUFFER_CAP {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    tracing::debug!(topic = self.topic.name(), end = self.next, "input at its end");
                    self.ended = true;
                    self.last_heard = Instant::now();
                }
                Some(Err(error)) => tracing::warn!(topic = self.topic.name(), %error, "replay consumer error"),
                Some(Ok(message)) => {
                    timeout = Duration::ZERO;
                    self.last_heard = Instant::now();
                    if message.offset() < self.next {
                        continue;
                    }
                    let record = to_input(self.topic, &message);
                    self.next = record.offset + 1;
                    let decoded = decode_record(self.topic, &record.value, registry, limits);
                    self.buffer.push_back((record, decoded));
                }
            }
        }
        if !self.ended && self.buffer.is_empty() && self.last_heard.elapsed() > STALL_LIMIT {
            bail!(
                "replay: the {} input gave no record and no end of partition for {} s",
                self.topic.name(),
                STALL_LIMIT.as_secs()
            );
        }
        Ok(())
    }

    fn head(&self) -> Head {
        match self.buffer.front() {
            Some((_, decoded)) => Head::Ready(decoded.time),
            None if self.ended => Head::CaughtUp,
            None => Head::Pending,
        }
    }
}

/// The what-if fold of one task: the alternative rate cards, fed by the
/// merge rule in front of the actual deals and usage.
struct WhatIf {
    task: Task,
    rates: Vec<(InputRecord, Decoded)>,
    next_rate: usize,
}

impl WhatIf {
    /// Folds the alternative rate cards the merge rule takes before a
    /// record at `before` (all that remain for `None`); with `--until`,
    /// cards later than it are left out like every other record.
    fn take_rates(
        &mut self,
        before: Option<Millis>,
        until: Option<Millis>,
        outputs: &mut Vec<Output>,
    ) -> Result<(), Poisoned> {
        while let Some((record, decoded)) = self.rates.get(self.next_rate) {
            if let (Some(time), Some(before)) = (decoded.time, before) {
                if time > before {
                    break;
                }
            }
            self.next_rate += 1;
            if until.is_some_and(|until| decoded.time.is_none_or(|time| time > until)) {
                continue;
            }
            self.task.fold(record, decoded.clone(), outputs)?;
        }
        Ok(())
    }
}

/// Records that failed inside the fold, for the actual and the what-if task.
#[derive(Debug, Default)]
struct Poisons {
    actual: Vec<Poisoned>,
    what_if: Vec<Poisoned>,
}

/// Where outputs go, shared by the tasks (which run on parallel threads).
enum Writer {
    Suppressed,
    /// Each task writes its own files in `dir/.replay-task-<p>`; `finish`
    /// joins them in task order, so the files do not depend on timing.
    Files {
        dir: PathBuf,
        balances: Mutex<Vec<Balances>>,
    },
    Topics {
        prefix: String,
        producer: BaseProducer<Deliveries>,
        sent: AtomicU64,
    },
}

/// One task's end of the [`Writer`].
enum TaskOutput<'w> {
    Suppressed,
    Files(OutputFiles),
    Topics { prefix: &'w str, producer: &'w BaseProducer<Deliveries>, sent: &'w AtomicU64 },
}

impl Writer {
    fn open(config: &Config, sink: &Sink, partitions: u32) -> crate::Result<Writer> {
        Ok(match sink {
            Sink::Suppressed => Writer::Suppressed,
            Sink::Files(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
                Writer::Files { dir: dir.clone(), balances: Mutex::new(Vec::new()) }
            }
            Sink::Topics(prefix) => {
                let plans = emit_topics(config, prefix, partitions)?;
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                for (topic, outcome) in runtime.block_on(super::admin::create_planned(config, &plans, 1))? {
                    tracing::info!(topic, outcome, "replay output topic");
                }
                Writer::Topics { prefix: prefix.clone(), producer: bulk_producer(config)?, sent: AtomicU64::new(0) }
            }
        })
    }

    fn task_dir(dir: &Path, partition: u32) -> PathBuf {
        dir.join(format!(".replay-task-{partition}"))
    }

    fn for_task(&self, partition: u32) -> crate::Result<TaskOutput<'_>> {
        Ok(match self {
            Writer::Suppressed => TaskOutput::Suppressed,
            Writer::Files { dir, .. } => TaskOutput::Files(OutputFiles::create(&Self::task_dir(dir, partition))?),
            Writer::Topics { prefix, producer, sent } => TaskOutput::Topics { prefix, producer, sent },
        })
    }

    fn balances(&self, partition: u32, balances: Vec<Balances>) -> crate::Result<()> {
        match self {
            Writer::Suppressed => {}
            Writer::Files { balances: all, .. } => all.lock().expect("balances lock").extend(balances),
            Writer::Topics { prefix, producer, sent } => {
                let topic = format!("{prefix}.balances");
                for balance in balances {
                    let value = serde_json::to_vec(&balance)?;
                    send(producer, &topic, partition as i32, Some(balance.startup.as_bytes()), &value)?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    fn finish(self, tasks: &[u32]) -> crate::Result<()> {
        match self {
            Writer::Suppressed => Ok(()),
            Writer::Files { dir, balances } => {
                for stream in Stream::ALL {
                    let name = format!("{}.jsonl", stream.name());
                    let path = dir.join(&name);
                    let mut joined = std::io::BufWriter::new(
                        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                    );
                    for task in tasks {
                        let part = Self::task_dir(&dir, *task).join(&name);
                        let mut file =
                            std::fs::File::open(&part).with_context(|| format!("opening {}", part.display()))?;
                        std::io::copy(&mut file, &mut joined)?;
                    }
                    std::io::Write::flush(&mut joined)?;
                }
                for task in tasks {
                    std::fs::remove_dir_all(Self::task_dir(&dir, *task))?;
                }
                let mut balances = balances.into_inner().expect("balances lock");
                balances.sort_by(|left, right| left.startup.cmp(&right.startup));
                write_balances(&dir.join("balances.json"), &balances)
            }
            Writer::Topics { producer, sent, .. } => {
                flush_checked(&producer, sent.into_inner())?;
                close_in_background(producer);
                Ok(())
            }
        }
    }
}

impl TaskOutput<'_> {
    fn write(&mut self, partition: u32, outputs: &mut Vec<Output>, encoded: &mut Vec<Vec<u8>>) -> crate::Result<()> {
        match self {
            TaskOutput::Suppressed => {}
            TaskOutput::Files(files) => files.write(outputs, encoded)?,
            TaskOutput::Topics { prefix, producer, sent } => {
                for (output, bytes) in outputs.iter().zip(encoded.iter()) {
                    let topic = format!("{prefix}.{}", output.stream().name());
                    send(producer, &topic, partition as i32, output.key(), bytes)?;
                }
                sent.fetch_add(outputs.len() as u64, Ordering::Relaxed);
            }
        }
        outputs.clear();
        encoded.clear();
        Ok(())
    }

    fn finish(self) -> crate::Result<()> {
        if let TaskOutput::Files(files) = self {
            files.finish()?;
        }
        Ok(())
    }
}

/// The topics `--emit-prefix` writes to: never a live topic.
fn emit_topics(config: &Config, prefix: &str, partitions: u32) -> crate::Result<Vec<super::admin::TopicPlan>> {
    anyhow::ensure!(!prefix.is_empty(), "--emit-prefix must not be empty");
    let live: Vec<&str> = config.topics.outputs().iter().map(|(_, name)| *name).collect();
    let mut plans = Vec::new();
    for role in Stream::ALL.iter().map(|stream| stream.name()).chain(["balances"]) {
        let name = format!("{prefix}.{role}");
        if live.contains(&name.as_str())
            || [&config.topics.rates, &config.topics.deals, &config.topics.metering].contains(&&name)
        {
            bail!("--emit-prefix {prefix}: {name} is a topic of the live processor; choose another prefix");
        }
        let config = if role == "balances" { vec![("cleanup.policy", "compact")] } else { Vec::new() };
        plans.push(super::admin::TopicPlan { name, partitions, config });
    }
    Ok(plans)
}

/// Reads an alternative rate card file: one rates-topic record per line,
/// judged by the fold as the rates topic's records are (a rejected line
/// becomes a dead letter of the what-if world). Fails when no line is a
/// rate card at all.
fn read_rates(path: &Path, limits: &Limits) -> crate::Result<Vec<(InputRecord, Decoded)>> {
    let text = std::fs::read(path).with_context(|| format!("reading what-if rates {}", path.display()))?;
    let registry = SchemaRegistry::builtin();
    let mut rates = Vec::new();
    let mut rejected = Vec::new();
    for (index, line) in text.split(|byte| *byte == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let decoded = decode_record(Topic::Rates, line, &registry, limits);
        if let Err(rejection) = &decoded.event {
            rejected.push(format!("line {}: {rejection}", index + 1));
        }
        let record = InputRecord {
            topic: Topic::Rates,
            partition: 0,
            offset: rates.len() as i64,
            // The key a producer would give it, as on the rates topic.
            key: crate::events::json::parse(line).ok().and_then(|value| crate::batch::record_key(Topic::Rates, &value)),
            value: line.to_vec(),
            headers: Vec::new(),
        };
        rates.push((record, decoded));
    }
    if rejected.len() == rates.len() {
        bail!(
            "what-if rates {} has no valid rate card ({})",
            path.display(),
            rejected.first().map_or("empty", String::as_str)
        );
    }
    if !rejected.is_empty() {
        tracing::warn!(file = %path.display(), rejected = rejected.len(), first = %rejected[0], "what-if rate lines rejected; they are dead letters of the what-if run");
    }
    Ok(rates)
}

pub fn replay(config: &Config, options: &ReplayOptions) -> crate::Result<ReplaySummary> {
    let started = Instant::now();
    let metadata = super::metadata_consumer(config)?;
    let partitions = super::check_copartitioned(config, &metadata)?;
    let tasks: Vec<u32> = match &options.partitions {
        None => (0..partitions).collect(),
        Some(list) => {
            let mut list = list.clone();
            list.sort_unstable();
            list.dedup();
            if let Some(bad) = list.iter().find(|partition| **partition >= partitions) {
                bail!("--partitions: there is no partition {bad}; the inputs have partitions 0..{}", partitions - 1);
            }
            list
        }
    };
    close_in_background(metadata);
    let total = input_total(config, &tasks)?;
    let what_if_rates =
        options.what_if_rates.as_deref().map(|path| read_rates(path, &config.fold.limits)).transpose()?;

    let mut store = RocksStore::open(&options.state_dir)?;
    let existing = store::task_partitions(&store)?;
    if !existing.is_empty() {
        bail!(
            "{} already holds state of tasks {existing:?}: replay builds a fresh state directory; give a new one",
            options.state_dir.display()
        );
    }
    store::check_layout(&mut store, partitions)?;
    let committed = super::group_offsets(config, &tasks)?;
    let writer = Writer::open(config, &options.sink, partitions)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(tasks.len()).max(1);
    tracing::info!(
        tasks = ?tasks,
        threads,
        until = ?options.until.map(crate::units::format_millis),
        state_dir = %options.state_dir.display(),
        "replay starting"
    );
    let shared = Shared {
        config,
        options,
        store: Mutex::new(store),
        writer,
        progress: Mutex::new(Progress::new("replay", total, tasks.len() as u32)),
        queue: Mutex::new(tasks.iter().copied().collect()),
        committed,
        what_if_rates,
    };
    // Tasks are independent: up to one thread per core takes them in turn.
    let results: Vec<crate::Result<Vec<TaskSummary>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(|| shared.work())).collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a replay thread panicked"))))
            .collect()
    });
    let mut summary = ReplaySummary { partitions: tasks.clone(), ..ReplaySummary::default() };
    let mut comparison = shared.what_if_rates.as_ref().map(|_| Comparison::default());
    for result in results {
        for task in result? {
            summary.records_read += task.records_read;
            summary.records_folded += task.records_folded;
            summary.records_after_until += task.records_after_until;
            summary.records_in_recorded_order += task.records_in_recorded_order;
            summary.outputs += task.outputs;
            if let (Some(all), Some(one)) = (comparison.as_mut(), task.comparison) {
                all.rows.extend(one.rows);
            }
        }
    }
    let Shared { progress, writer, .. } = shared;
    progress.into_inner().expect("progress lock").finish();
    writer.finish(&tasks)?;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_second = summary.records_read as f64 / summary.seconds.max(1e-9);
    summary.what_if = comparison;
    Ok(summary)
}

/// The number of input records the tasks will read, for the ETA (`None`
/// when the broker does not say).
fn input_total(config: &Config, tasks: &[u32]) -> crate::Result<Option<u64>> {
    let topics = &config.topics;
    let mut partitions = vec![(topics.rates.as_str(), 0)];
    for task in tasks {
        partitions.push((topics.deals.as_str(), *task));
        partitions.push((topics.metering.as_str(), *task));
    }
    let Some(ends) = super::end_offsets(config, &partitions)? else { return Ok(None) };
    let rates = ends[0].max(0) as u64;
    Ok(Some(ends[1..].iter().map(|end| end.max(&0).unsigned_abs()).sum::<u64>() + rates * tasks.len() as u64))
}

/// What the replay threads share.
struct Shared<'a> {
    config: &'a Config,
    options: &'a ReplayOptions,
    store: Mutex<RocksStore>,
    writer: Writer,
    progress: Mutex<Progress>,
    /// Tasks not yet taken by a thread.
    queue: Mutex<VecDeque<u32>>,
    committed: std::collections::BTreeMap<u32, [i64; 2]>,
    what_if_rates: Option<Vec<(InputRecord, Decoded)>>,
}

/// One task's counts (and what-if rows: start-ups belong to one task, so
/// the tasks' rows never overlap).
#[derive(Default)]
struct TaskSummary {
    records_read: u64,
    records_folded: u64,
    records_after_until: u64,
    records_in_recorded_order: u64,
    outputs: u64,
    comparison: Option<Comparison>,
}

impl Shared<'_> {
    /// Takes tasks from the queue until it is empty.
    fn work(&self) -> crate::Result<Vec<TaskSummary>> {
        let mut done = Vec::new();
        loop {
            let Some(partition) = self.queue.lock().expect("queue lock").pop_front() else { return Ok(done) };
            let committed = self.committed.get(&partition).copied().unwrap_or([0, 0]);
            match self.replay_task(partition, committed) {
                Ok(summary) => done.push(summary),
                Err(error) => {
                    // The other threads stop after their current task.
                    self.queue.lock().expect("queue lock").clear();
                    return Err(error.context(format!("replaying task {partition}")));
                }
            }
            self.progress.lock().expect("progress lock").partition_done();
        }
    }

    /// Replays one task. A record that fails inside the fold (spec §5,
    /// v1.1): the task starts again from offset 0 with the record marked, so
    /// it becomes an `internal_error` dead letter as the live processor made
    /// it; outputs sent to topics before are not sent twice.
    fn replay_task(&self, partition: u32, committed: [i64; 2]) -> crate::Result<TaskSummary> {
        let mut poisoned = Poisons::default();
        let mut written = 0u64;
        loop {
            match self.replay_attempt(partition, committed, &poisoned, &mut written)? {
                Ok(summary) => return Ok(summary),
                Err((what_if, poison)) => {
                    tracing::warn!(partition, error = %poison, "replaying the task again to dead-letter the record");
                    if what_if {
                        poisoned.what_if.push(poison);
                    } else {
                        poisoned.actual.push(poison);
                    }
                }
            }
        }
    }

    fn replay_attempt(
        &self,
        partition: u32,
        committed: [i64; 2],
        poisoned: &Poisons,
        written: &mut u64,
    ) -> crate::Result<Result<TaskSummary, (bool, Poisoned)>> {
        // Files are written anew by each attempt; topics keep what was sent.
        let mut to_skip = if matches!(self.writer, Writer::Topics { .. }) { *written } else { 0 };
        let mut summary = TaskSummary {
            comparison: self.what_if_rates.as_ref().map(|_| Comparison::default()),
            ..TaskSummary::default()
        };
        let mut output = self.writer.for_task(partition)?;
        let topics = &self.config.topics;
        let mut plan: VecDeque<(Topic, i64, i64)> = if committed == [0, 0] {
            VecDeque::new()
        } else {
            let plan = committed_plan(self.config, partition, [0, 0, 0], committed)?;
            match plan.segments {
                Some(segments) => segments.into(),
                None => {
                    tracing::warn!(
                        partition,
                        "the progress records do not chain back to offset 0; replaying by the merge rule"
                    );
                    VecDeque::new()
                }
            }
        };
        let mut inputs = [
            Input::open(self.config, Topic::Rates, &topics.rates, 0)?,
            Input::open(self.config, Topic::Deals, &topics.deals, partition)?,
            Input::open(self.config, Topic::Metering, &topics.metering, partition)?,
        ];
        let registry = SchemaRegistry::builtin();
        let fresh = || TaskState { partition, ..TaskState::default() };
        let mut actual = Task::new(self.config.fold.clone(), fresh());
        for poison in &poisoned.actual {
            actual.poison(poison);
        }
        let mut what_if = self.what_if_rates.clone().map(|rates| {
            let mut task = Task::new(self.config.fold.clone(), fresh());
            for poison in &poisoned.what_if {
                task.poison(poison);
            }
            WhatIf { task, rates, next_rate: 0 }
        });
        let (mut outputs, mut encoded) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
        let mut alternative = Vec::new();
        let mut since_commit = 0u64;
        let mut read_since_report = 0u64;
        loop {
            let topic = if let Some(&(topic, from, _)) = plan.front() {
                let input = &mut inputs[topic.index()];
                match input.buffer.front() {
                    None if input.ended => {
                        tracing::warn!(
                            partition,
                            expected = from,
                            "recorded order reaches past the input's end; replaying by the merge rule"
                        );
                        plan.clear();
                        continue;
                    }
                    None => {
                        input.fill(Duration::from_millis(100), &registry, &self.config.fold.limits)?;
                        continue;
                    }
                    Some((record, _)) if record.offset != from => {
                        tracing::warn!(
                            partition,
                            expected = from,
                            found = record.offset,
                            "recorded order does not match the input; replaying by the merge rule"
                        );
                        plan.clear();
                        continue;
                    }
                    Some(_) => {}
                }
                let front = plan.front_mut().expect("checked above");
                front.1 += 1;
                if front.1 >= front.2 {
                    plan.pop_front();
                }
                summary.records_in_recorded_order += 1;
                topic
            } else {
                let heads = [inputs[0].head(), inputs[1].head(), inputs[2].head()];
                match choose(heads) {
                    Choice::Take(topic) => topic,
                    Choice::Idle => break,
                    Choice::Wait => {
                        for (input, head) in inputs.iter_mut().zip(heads) {
                            if head == Head::Pending {
                                input.fill(Duration::from_millis(100), &registry, &self.config.fold.limits)?;
                            }
                        }
                        continue;
                    }
                }
            };
            let (record, decoded) = inputs[topic.index()].buffer.pop_front().expect("a head");
            summary.records_read += 1;
            read_since_report += 1;
            if read_since_report >= 4096 {
                self.progress.lock().expect("progress lock").advance(read_since_report);
                read_since_report = 0;
            }
            if let Some(until) = self.options.until {
                if decoded.time.is_none_or(|time| time > until) {
                    summary.records_after_until += 1;
                    continue;
                }
            }
            summary.records_folded += 1;
            match what_if.as_mut() {
                None => {
                    if let Err(poison) = actual.fold_encoded(&record, decoded, &mut outputs, &mut encoded) {
                        return Ok(Err((false, poison)));
                    }
                }
                Some(what_if) => {
                    if let Err(poison) = actual.fold(&record, decoded.clone(), &mut alternative) {
                        return Ok(Err((false, poison)));
                    }
                    if let Some(comparison) = summary.comparison.as_mut() {
                        comparison.absorb(Side::Actual, &alternative);
                    }
                    alternative.clear();
                    if topic != Topic::Rates {
                        // A record without a time is taken at once (spec §4): no rate goes first.
                        if let Some(time) = decoded.time {
                            if let Err(poison) = what_if.take_rates(Some(time), self.options.until, &mut outputs) {
                                return Ok(Err((true, poison)));
                            }
                        }
                        if let Err(poison) = what_if.task.fold(&record, decoded, &mut outputs) {
                            return Ok(Err((true, poison)));
                        }
                        if let Some(comparison) = summary.comparison.as_mut() {
                            comparison.absorb(Side::WhatIf, &outputs);
                        }
                        for output in &outputs {
                            let mut bytes = Vec::with_capacity(512);
                            output.write_json(&mut bytes)?;
                            encoded.push(bytes);
                        }
                    }
                }
            }
            summary.outputs += outputs.len() as u64;
            if to_skip > 0 {
                // Sent by an earlier attempt.
                to_skip -= 1;
                outputs.clear();
                encoded.clear();
            } else {
                output.write(partition, &mut outputs, &mut encoded)?;
                *written += 1;
            }
            since_commit += 1;
            if since_commit >= COMMIT_EVERY {
                since_commit = 0;
                let persisted = what_if.as_mut().map_or(&mut actual, |what_if| &mut what_if.task);
                persist(&self.store, persisted)?;
            }
            if inputs[topic.index()].buffer.is_empty() {
                inputs[topic.index()].fill(Duration::ZERO, &registry, &self.config.fold.limits)?;
            }
        }
        if let Some(what_if) = what_if.as_mut() {
            // Rate cards after the last event: folded for a complete state.
            if let Err(poison) = what_if.take_rates(None, self.options.until, &mut outputs) {
                return Ok(Err((true, poison)));
            }
            if let Some(comparison) = summary.comparison.as_mut() {
                comparison.absorb(Side::WhatIf, &outputs);
            }
            outputs.clear();
        }
        self.progress.lock().expect("progress lock").advance(read_since_report);
        let mut persisted = what_if.map_or(actual, |what_if| what_if.task);
        persist(&self.store, &mut persisted)?;
        output.finish()?;
        let names =
            TopicNames { rates: topics.rates.clone(), deals: topics.deals.clone(), metering: topics.metering.clone() };
        let balances: Vec<Balances> =
            persisted.state().startups.keys().filter_map(|startup| persisted.balances(startup, &names)).collect();
        self.writer.balances(partition, balances)?;
        tracing::info!(partition, offsets = ?persisted.state().offsets, digest = %persisted.state().digest.hex(), "task replayed");
        tracing::debug!(partition, "closing the task's consumers");
        for input in inputs {
            close_in_background(input.consumer);
        }
        tracing::debug!(partition, "task's consumers closed");
        Ok(Ok(summary))
    }
}

fn persist(store: &Mutex<RocksStore>, task: &mut Task) -> crate::Result<()> {
    let changes = task.take_changes();
    if !changes.is_empty() {
        let ops = store::commit_ops(task.state(), &changes);
        store.lock().expect("store lock").write(ops)?;
    }
    Ok(())
}
