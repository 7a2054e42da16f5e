//! `gpuledger run`: the fold, live on Kafka, exactly once.
//!
//! # Shape
//! One process joins the consumer group on the deals and metering topics
//! (co-partitioned). Each assigned partition p is a task: the fold's
//! [`Task`], its own transactional producer (`transactional.id` =
//! `<prefix>-<p>`, so a new owner of p fences the old one), and its own
//! consumer of the whole rates topic. Records are merged by event time
//! (spec §4) and folded; every `commit_interval` a task's outputs, its
//! balances and progress records and its input offsets go out in one Kafka
//! transaction, and only after the commit is its state written to RocksDB.
//! A cycle's transactions and RocksDB writes run on a thread of their own
//! while the loop folds the next cycle (whose state stays in memory until
//! its own transaction commits); a cycle starts only when the previous one
//! has settled, and a rebalance waits for the cycle under way.
//!
//! # Recovery
//! On assignment of p the task loads its state and stored offsets o_r from
//! RocksDB and reads the group's committed offsets o_k (o_r <= o_k: RocksDB
//! is written after the commit). It re-folds [o_r, o_k) with outputs
//! suppressed — they were published already — then goes on. A partition
//! with no local state is rebuilt from offset 0 the same way. An aborted or
//! failed transaction drops the task's uncommitted state: the task is
//! rebuilt from RocksDB and its inputs rewound.
//!
//! The re-fold follows the order the committed cycles recorded in the
//! progress topic (spec §4), so it reproduces live processing even where a
//! late record arrived after a later-timed record of another input was
//! taken; where no chain of progress records exists it merges by the rule.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::{Config, OutputFormat};
use crate::events::avro::{OutputEncoder, SchemaRegistry};
use crate::events::{decode_record, Decoded, InputRecord, Topic};
use crate::fold::merge::{choose, Choice, Head};
use crate::fold::{Poisoned, Task, TopicNames};
use crate::records::{InputOffset, Output};
use crate::store::rocks::RocksStore;
use crate::store::{self, KvStore};

const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the high watermark of an input without a buffered head is
/// asked for, to tell "caught up" from "not fetched yet".
const WATERMARK_REFRESH: Duration = Duration::from_millis(200);

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub exit_when_caught_up: bool,
}

/// Counters a run reports (and tests read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Records folded with their outputs published.
    pub records_folded: u64,
    /// Records re-folded with outputs suppressed (recovery).
    pub records_refolded: u64,
    pub transactions_committed: u64,
    pub transactions_aborted: u64,
    pub partitions_assigned: u64,
    /// Records that failed inside the fold, dead-lettered as `internal_error`.
    pub internal_errors: u64,
    /// Wall time the fold loop spent on commit cycles (preparing one,
    /// waiting for the previous one to settle), in milliseconds; the
    /// transactions themselves run beside the fold.
    pub commit_millis: u64,
    /// Time the tasks' transactions waited for the broker to take the
    /// offsets and commit, summed over tasks, in milliseconds.
    pub transaction_wait_millis: u64,
    /// Commit cycles settled, and their wall time from the cut to the last
    /// task's RocksDB write, summed, in milliseconds: the cycle period that
    /// bounds latency.
    pub cycles: u64,
    pub cycle_millis: u64,
    /// Of the transactions' wait: `send_offsets_to_transaction` and
    /// `commit_transaction` (which first waits for the outputs' acks),
    /// summed over tasks, in milliseconds; and the RocksDB writes after.
    pub offsets_millis: u64,
    pub end_transaction_millis: u64,
    pub store_write_millis: u64,
}

/// Where one task's transaction spent its time, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
struct TaskTimes {
    offsets: u64,
    end_transaction: u64,
    store_write: u64,
}

/// A partition assigned by the group, with its offsets.
#[derive(Clone, Debug)]
struct Assigned {
    partition: u32,
    /// Group-committed offsets of deals and metering (o_k).
    committed: [i64; 2],
}

#[derive(Debug)]
enum GroupEvent {
    Assigned(Vec<Assigned>),
    Revoked(Vec<u32>),
}

/// Rebalances: assign from the offsets stored in RocksDB (not the group's),
/// and tell the loop what changed.
struct GroupContext {
    store: Arc<Mutex<RocksStore>>,
    deals: String,
    metering: String,
    events: Mutex<Vec<GroupEvent>>,
    /// The commit cycle under way, if any. A rebalance waits for it before
    /// giving partitions up or reading the offsets of new ones, so the
    /// offsets it reads are the ones that cycle left.
    in_flight: Mutex<Option<InFlight>>,
    /// Outcomes of finished cycles not yet counted by the loop.
    finished: Mutex<Vec<CycleOutcome>>,
}

impl ClientContext for GroupContext {}

impl GroupContext {
    /// Waits for the commit cycle under way (or only takes it when it has
    /// finished, with `wait` false) and keeps its outcomes for the loop.
    fn finish_in_flight(&self, wait: bool) {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        if !wait && !in_flight.as_ref().is_some_and(|cycle| cycle.handle.is_finished()) {
            return;
        }
        let Some(cycle) = in_flight.take() else { return };
        // Should the thread itself have died, each of its tasks failed.
        let partitions = cycle.partitions;
        let outcomes = cycle.handle.join().unwrap_or_else(|_| CycleOutcome {
            wall_millis: 0,
            tasks: partitions
                .into_iter()
                .map(|partition| (partition, Err(anyhow::anyhow!("the commit thread panicked"))))
                .collect(),
        });
        self.finished.lock().expect("finished lock").push(outcomes);
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, list: &mut TopicPartitionList) -> crate::Result<Vec<Assigned>> {
        let committed = consumer.committed_offsets(list.clone(), super::METADATA_TIMEOUT)?;
        let mut by_partition: BTreeMap<u32, Assigned> = BTreeMap::new();
        for element in committed.elements() {
            let partition = element.partition() as u32;
            let offset = element.offset().to_raw().filter(|offset| *offset >= 0).unwrap_or(0);
            let entry = by_partition.entry(partition).or_insert(Assigned { partition, committed: [0, 0] });
            let slot = if element.topic() == self.deals { 0 } else { 1 };
            entry.committed[slot] = offset;
        }
        let store = self.store.lock().expect("store lock");
        for assigned in by_partition.values() {
            let stored = store::load_task_meta(&*store, assigned.partition)?.offsets;
            for (slot, topic) in [(0usize, &self.deals), (1, &self.metering)] {
                let from = stored[slot + 1];
                if from > assigned.committed[slot] {
                    bail!(
                        "partition {}: local state is at {topic} offset {from}, beyond the group's committed {}; \
                         the group's offsets were reset: move the state directory away to rebuild",
                        assigned.partition,
                        assigned.committed[slot]
                    );
                }
                list.set_partition_offset(topic, assigned.partition as i32, Offset::Offset(from))?;
            }
        }
        consumer.assign(list)?;
        Ok(by_partition.into_values().collect())
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, list: &mut TopicPartitionList) {
        self.finish_in_flight(true);
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => match self.assign(consumer, list) {
                Ok(assigned) => {
                    tracing::info!(partitions = ?assigned.iter().map(|a| a.partition).collect::<Vec<_>>(), "partitions assigned");
                    self.events.lock().expect("events lock").push(GroupEvent::Assigned(assigned));
                }
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "cannot take the assigned partitions");
                    let _ = consumer.unassign();
                    self.events.lock().expect("events lock").push(GroupEvent::Revoked(Vec::new()));
                }
            },
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions: Vec<u32> = list.elements().iter().map(|element| element.partition() as u32).collect();
                tracing::info!(?partitions, "partitions revoked");
                let _ = consumer.unassign();
                self.events.lock().expect("events lock").push(GroupEvent::Revoked(partitions));
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

/// One assigned partition's task.
struct TaskRunner {
    partition: u32,
    task: Task,
    /// Shared with the commit thread while a cycle of this task is in flight.
    producer: Arc<BaseProducer>,
    rates: BaseConsumer<super::QuietEof>,
    rates_caught_up: bool,
    buffers: [VecDeque<(InputRecord, Decoded)>; 3],
    /// Next offset expected per input (rates, deals, metering).
    expected: [i64; 3],
    high_watermarks: [i64; 3],
    watermarks_at: Instant,
    /// Offsets reached by the last committed cycle (o_k), per input: the
    /// group's for deals and metering, the last progress record's for rates.
    /// Below them the outputs were published already.
    suppress_below: [i64; 3],
    pending: Vec<Output>,
    /// The JSON bytes of `pending`, one entry per output.
    pending_json: Vec<Vec<u8>>,
    segments: Vec<(Topic, i64, i64)>,
    /// While re-folding: the recorded order of the committed cycles.
    plan: VecDeque<(Topic, i64, i64)>,
    folded_since_commit: u64,
}

impl TaskRunner {
    /// Whether the folded position is still below the committed offsets.
    fn refolding(&self) -> bool {
        let folded = self.task.state().offsets;
        (0..3).any(|input| folded[input] < self.suppress_below[input])
    }

    fn head(&mut self, topic: Topic, consumer: &BaseConsumer<GroupContext>, config: &Config) -> Head {
        let refolding = self.refolding();
        let committed = self.suppress_below[topic.index()];
        if let Some((record, decoded)) = self.buffers[topic.index()].front() {
            // While re-folding, an input at its committed offset waits for the others.
            if refolding && record.offset >= committed {
                return Head::CaughtUp;
            }
            return Head::Ready(decoded.time);
        }
        if refolding && self.expected[topic.index()] >= committed {
            return Head::CaughtUp;
        }
        if topic == Topic::Rates {
            return if self.rates_caught_up { Head::CaughtUp } else { Head::Pending };
        }
        if self.watermarks_at.elapsed() >= WATERMARK_REFRESH {
            self.watermarks_at = Instant::now();
            for input in [Topic::Deals, Topic::Metering] {
                let name = if input == Topic::Deals { &config.topics.deals } else { &config.topics.metering };
                if let Some(high) = cached_end_offset(consumer, name, self.partition) {
                    self.high_watermarks[input.index()] = high;
                }
            }
        }
        if self.expected[topic.index()] >= self.high_watermarks[topic.index()] {
            Head::CaughtUp
        } else {
            Head::Pending
        }
    }

    fn caught_up(&self) -> bool {
        self.buffers.iter().all(VecDeque::is_empty)
            && self.rates_caught_up
            && self.expected[1] >= self.high_watermarks[1]
            && self.expected[2] >= self.high_watermarks[2]
            && self.pending.is_empty()
            && self.folded_since_commit == 0
    }
}

/// What the progress topic says about task `partition`'s committed cycles.
#[derive(Debug, Default)]
pub(crate) struct CommittedPlan {
    /// Rates offset reached by the last committed cycle.
    pub(crate) rates_offset: Option<i64>,
    /// The input segments the committed cycles took after the stored
    /// offsets, in order; `None` when the chain of progress records from the
    /// stored offsets to the committed ones cannot be followed.
    pub(crate) segments: Option<Vec<(Topic, i64, i64)>>,
}

/// One parsed progress record: where its cycle started and ended, what it
/// took in between, and when it was written (the record's Kafka timestamp).
pub(crate) struct ProgressEntry {
    pub(crate) start: [i64; 3],
    pub(crate) end: [i64; 3],
    pub(crate) segments: Vec<(Topic, i64, i64)>,
    pub(crate) timestamp: Option<i64>,
}

/// Reads task `partition`'s progress records, in log order (records of
/// aborted cycles included where a broker shows them).
pub(crate) fn read_progress(config: &Config, partition: u32) -> crate::Result<Vec<ProgressEntry>> {
    let consumer: BaseConsumer<super::QuietEof> = super::client_config(
        config,
        &[
            ("group.id", &format!("{}-progress", config.group_id)),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("fetch.wait.max.ms", "100"),
        ],
    )
    .create_with_context(super::QuietEof)
    .context("creating the progress reader")?;
    let topic_of = |name: &str| {
        if name == config.topics.rates {
            Some(Topic::Rates)
        } else if name == config.topics.deals {
            Some(Topic::Deals)
        } else if name == config.topics.metering {
            Some(Topic::Metering)
        } else {
            None
        }
    };
    let mut entries: Vec<ProgressEntry> = Vec::new();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&config.topics.progress, partition as i32, Offset::Beginning)?;
    consumer.assign(&list)?;
    let mut last_record = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_record = Instant::now();
                let Ok(record) = serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default())
                else {
                    continue;
                };
                if record["task"] != partition {
                    continue;
                }
                let mut end = [-1i64; 3];
                for offset in record["offsets"].as_array().into_iter().flatten() {
                    if let (Some(topic), Some(value)) =
                        (offset["topic"].as_str().and_then(topic_of), offset["offset"].as_i64())
                    {
                        end[topic.index()] = value;
                    }
                }
                let mut segments = Vec::new();
                for segment in record["segments"].as_array().into_iter().flatten() {
                    if let (Some(topic), Some(from), Some(to)) =
                        (segment["topic"].as_str().and_then(topic_of), segment["from"].as_i64(), segment["to"].as_i64())
                    {
                        segments.push((topic, from, to));
                    }
                }
                let mut start = end;
                for (topic, from, _) in segments.iter().rev() {
                    start[topic.index()] = *from;
                }
                if end.iter().all(|offset| *offset >= 0) {
                    entries.push(ProgressEntry { start, end, segments, timestamp: message.timestamp().to_millis() });
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(error).context("reading the progress topic"),
            None if last_record.elapsed() > Duration::from_secs(30) => {
                bail!("reading the progress topic: no record and no end of partition for 30 s")
            }
            None => {}
        }
    }
    close_in_background(consumer);
    Ok(entries)
}

/// The committed cycles from `stored` to `committed` (deals, metering), as
/// indices into `entries` in order. Working backwards from the committed
/// end skips records of aborted cycles that a broker may show: the latest
/// record ending where the chain needs one is the committed one. `None`
/// when no record ends at the committed offsets or the chain breaks.
pub(crate) fn committed_chain(entries: &[ProgressEntry], stored: [i64; 3], committed: [i64; 2]) -> Option<Vec<usize>> {
    let last = entries.iter().rposition(|entry| entry.end[1] == committed[0] && entry.end[2] == committed[1])?;
    let mut chain = vec![last];
    let mut at = entries[last].start;
    while at != stored {
        let previous = entries[..*chain.last().expect("non-empty")].iter().rposition(|entry| entry.end == at)?;
        at = entries[previous].start;
        chain.push(previous);
    }
    chain.reverse();
    Some(chain)
}

/// What the progress topic says about task `partition`'s committed cycles
/// after the stored offsets (spec §4: a re-fold follows the recorded order
/// wherever it exists).
pub(crate) fn committed_plan(
    config: &Config,
    partition: u32,
    stored: [i64; 3],
    committed: [i64; 2],
) -> crate::Result<CommittedPlan> {
    let entries = read_progress(config, partition)?;
    let mut plan = CommittedPlan::default();
    let Some(last) = entries.iter().rposition(|entry| entry.end[1] == committed[0] && entry.end[2] == committed[1])
    else {
        return Ok(plan);
    };
    plan.rates_offset = Some(entries[last].end[0]);
    plan.segments = committed_chain(&entries, stored, committed)
        .map(|chain| chain.iter().flat_map(|index| entries[*index].segments.iter().copied()).collect());
    Ok(plan)
}

/// The end of a partition as the consumer last saw it in a fetch response
/// (librdkafka's cached watermark: the last stable offset for a
/// `read_committed` consumer), without a network round trip. A broker query
/// (`fetch_watermarks`) would block the loop, and with `read_committed` the
/// local test broker does not answer it at all.
pub(crate) fn cached_end_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: u32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, the
    // topic is a NUL-terminated string, and the out-parameters are plain i64s.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition as i32,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

pub(crate) fn to_input(topic: Topic, message: &rdkafka::message::BorrowedMessage<'_>) -> InputRecord {
    let headers = message
        .headers()
        .map(|headers| headers.iter().map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default();
    InputRecord {
        topic,
        partition: message.partition() as u32,
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// Drops a Kafka client on another thread and waits for it at most 10 s:
/// librdkafka's teardown can hang right after a transactional cycle.
pub fn close_in_background<T: Send + 'static>(client: T) {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(client);
        let _ = done.send(());
    });
    if wait.recv_timeout(Duration::from_secs(10)).is_err() {
        tracing::warn!("a Kafka client did not close within 10 s; leaving it behind");
    }
}

struct Processor<'a> {
    config: &'a Config,
    partitions: u32,
    /// Publishes ticks when `clock.tick_interval` is set.
    ticker: Option<BaseProducer>,
    last_tick: Instant,
    names: TopicNames,
    store: Arc<Mutex<RocksStore>>,
    consumer: BaseConsumer<GroupContext>,
    runners: BTreeMap<u32, TaskRunner>,
    registry: SchemaRegistry,
    encoder: OutputEncoder,
    stats: RunStats,
    /// Transactions begun, for `processor.inject_abort_every`.
    transactions_begun: u64,
    destinations: Destinations,
    /// Records that failed inside the fold, per task: a rebuilt task folds
    /// them as `internal_error` dead letters.
    poisoned: BTreeMap<u32, Vec<Poisoned>>,
}

/// The output topics' names, shared with the commit thread.
struct Destinations {
    usage_rated: Arc<str>,
    journal: Arc<str>,
    statements: Arc<str>,
    alerts: Arc<str>,
    dead_letter: Arc<str>,
    balances: Arc<str>,
    progress: Arc<str>,
}

impl Destinations {
    fn new(topics: &crate::config::Topics) -> Self {
        Destinations {
            usage_rated: topics.usage_rated.as_str().into(),
            journal: topics.journal.as_str().into(),
            statements: topics.statements.as_str().into(),
            alerts: topics.alerts.as_str().into(),
            dead_letter: topics.dead_letter.as_str().into(),
            balances: topics.balances.as_str().into(),
            progress: topics.progress.as_str().into(),
        }
    }
}

/// A commit cycle on its way: each task's transaction, then (once it has
/// committed) its RocksDB write, on a thread of its own while the fold goes
/// on with the next cycle.
struct InFlight {
    handle: std::thread::JoinHandle<CycleOutcome>,
    /// The tasks in the cycle.
    partitions: Vec<u32>,
}

/// Each task's outcome of a commit cycle: where its time went, or why it
/// failed.
type Outcomes = Vec<(u32, crate::Result<TaskTimes>)>;

/// A settled cycle: its wall time and each task's outcome.
struct CycleOutcome {
    wall_millis: u64,
    tasks: Outcomes,
}

impl<'a> Processor<'a> {
    fn new_runner(&self, assigned: &Assigned) -> crate::Result<TaskRunner> {
        let partition = assigned.partition;
        let state = store::load_task(&*self.store.lock().expect("store lock"), partition)?;
        let offsets = state.offsets;
        let behind = assigned.committed[0] > offsets[1] || assigned.committed[1] > offsets[2];
        let plan = if behind {
            committed_plan(self.config, partition, offsets, assigned.committed)?
        } else {
            CommittedPlan { rates_offset: Some(offsets[0]), segments: Some(Vec::new()) }
        };
        let rates_committed = match plan.rates_offset {
            Some(offset) => offset,
            None => {
                tracing::warn!(
                    partition,
                    "no progress record matches the committed offsets; re-folding rates from the stored offset"
                );
                offsets[0]
            }
        };
        if behind && plan.segments.is_none() {
            tracing::warn!(
                partition,
                "the progress records do not chain back to the stored offsets; re-folding by the merge rule"
            );
        }
        let producer: BaseProducer = super::client_config(
            self.config,
            &[
                ("transactional.id", &format!("{}-{partition}", self.config.transactional_id_prefix)),
                ("enable.idempotence", "true"),
                ("transaction.timeout.ms", "60000"),
                // Below the transaction timeout, as librdkafka requires.
                ("message.timeout.ms", "50000"),
                ("linger.ms", "5"),
            ],
        )
        .create()
        .context("creating a transactional producer")?;
        producer.init_transactions(TRANSACTION_TIMEOUT).context("initialising transactions")?;
        let rates: BaseConsumer<super::QuietEof> = super::client_config(
            self.config,
            &[
                ("group.id", &format!("{}-rates", self.config.group_id)),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
                ("enable.partition.eof", "true"),
            ],
        )
        .create_with_context(super::QuietEof)
        .context("creating the rates consumer")?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.config.topics.rates, 0, Offset::Offset(offsets[0]))?;
        rates.assign(&list)?;
        tracing::info!(partition, stored = ?offsets, committed = ?assigned.committed, "task starting");
        if assigned.committed[0] > offsets[1] || assigned.committed[1] > offsets[2] {
            tracing::info!(partition, "re-folding from the stored offsets to the committed ones, outputs suppressed");
        }
        Ok(TaskRunner {
            partition,
            task: {
                let mut task = Task::new(self.config.fold.clone(), state);
                for poison in self.poisoned.get(&partition).into_iter().flatten() {
                    task.poison(poison);
                }
                task
            },
            producer: Arc::new(producer),
            rates,
            rates_caught_up: false,
            buffers: Default::default(),
            expected: offsets,
            // Unknown until asked: not caught up.
            high_watermarks: [i64::MAX; 3],
            watermarks_at: Instant::now() - WATERMARK_REFRESH,
            suppress_below: [rates_committed.max(offsets[0]), assigned.committed[0], assigned.committed[1]],
            pending: Vec::new(),
            pending_json: Vec::new(),
            segments: Vec::new(),
            plan: plan.segments.unwrap_or_default().into(),
            folded_since_commit: 0,
        })
    }

    /// The tick publisher (spec §3): the owner of partition 0 sends a tick
    /// with its wall-clock time to every metering partition. The time is
    /// written into the log, so the fold itself never reads a clock.
    fn publish_ticks(&mut self) -> crate::Result<()> {
        let Some(interval) = self.config.tick_interval else { return Ok(()) };
        if self.last_tick.elapsed() < Duration::from_millis(interval as u64) || !self.runners.contains_key(&0) {
            return Ok(());
        }
        self.last_tick = Instant::now();
        if self.ticker.is_none() {
            let producer: BaseProducer = super::client_config(self.config, &[("enable.idempotence", "true")])
                .create()
                .context("creating the tick producer")?;
            self.ticker = Some(producer);
        }
        let ticker = self.ticker.as_ref().expect("created above");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the wall clock is before 1970")?
            .as_millis() as i64;
        let tick = format!(
            "{{\"specversion\":\"1.0\",\"id\":\"tick-{now}\",\"source\":\"gpuledger:clock\",\"type\":\"gpuledger.clock.tick\",\"time\":\"{}\"}}",
            crate::units::format_millis(now)
        );
        for partition in 0..self.partitions {
            let record = BaseRecord::<[u8], [u8]>::to(&self.config.topics.metering)
                .partition(partition as i32)
                .payload(tick.as_bytes());
            if let Err((error, _)) = ticker.send(record) {
                tracing::warn!(partition, %error, "could not publish a tick");
            }
        }
        ticker.poll(Duration::ZERO);
        tracing::debug!(time = now, "ticks published");
        Ok(())
    }

    fn handle_group_events(&mut self) -> crate::Result<()> {
        let events: Vec<GroupEvent> = std::mem::take(&mut *self.consumer.context().events.lock().expect("events lock"));
        if !events.is_empty() {
            // The rebalance waited for the cycle in flight; count it now.
            let mut leaving: Vec<u32> = Vec::new();
            for event in &events {
                match event {
                    GroupEvent::Revoked(partitions) if partitions.is_empty() => leaving.extend(self.runners.keys()),
                    GroupEvent::Revoked(partitions) => leaving.extend(partitions),
                    GroupEvent::Assigned(assigned) => leaving.extend(assigned.iter().map(|entry| entry.partition)),
                }
            }
            self.settle(false, &leaving)?;
        }
        for event in events {
            match event {
                GroupEvent::Revoked(partitions) => {
                    // Uncommitted work is dropped: the next owner redoes it.
                    let revoked: Vec<u32> =
                        if partitions.is_empty() { self.runners.keys().copied().collect() } else { partitions };
                    for partition in revoked {
                        if let Some(runner) = self.runners.remove(&partition) {
                            close_in_background(runner.producer);
                            close_in_background(runner.rates);
                        }
                    }
                }
                GroupEvent::Assigned(assigned) => {
                    for entry in assigned {
                        let runner = self.new_runner(&entry)?;
                        self.stats.partitions_assigned += 1;
                        self.runners.insert(entry.partition, runner);
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves fetched records into the tasks' buffers.
    fn poll_inputs(&mut self) -> crate::Result<bool> {
        let mut received = false;
        for _ in 0..10_000 {
            let (topic, record) = {
                let Some(result) = self.consumer.poll(Duration::ZERO) else { break };
                let message = match result {
                    Ok(message) => message,
                    Err(KafkaError::PartitionEOF(_)) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "consumer error");
                        continue;
                    }
                };
                let topic = if message.topic() == self.config.topics.deals { Topic::Deals } else { Topic::Metering };
                (topic, to_input(topic, &message))
            };
            let partition = record.partition;
            if !self.runners.contains_key(&partition) {
                // This very poll may have run the rebalance callback: take
                // the new partitions before routing their first records.
                self.handle_group_events()?;
            }
            let Some(runner) = self.runners.get_mut(&partition) else {
                // A revoked partition: its new owner reads it from the committed offsets.
                continue;
            };
            if record.offset < runner.expected[topic.index()] {
                continue;
            }
            runner.expected[topic.index()] = record.offset + 1;
            let decoded = decode_record(topic, &record.value, &self.registry, &self.config.fold.limits);
            runner.buffers[topic.index()].push_back((record, decoded));
            received = true;
        }
        for runner in self.runners.values_mut() {
            for _ in 0..10_000 {
                match runner.rates.poll(Duration::ZERO) {
                    None => break,
                    Some(Err(KafkaError::PartitionEOF(_))) => runner.rates_caught_up = true,
                    Some(Err(error)) => tracing::warn!(%error, "rates consumer error"),
                    Some(Ok(message)) => {
                        if message.offset() < runner.expected[0] {
                            continue;
                        }
                        let record = to_input(Topic::Rates, &message);
                        runner.expected[0] = record.offset + 1;
                        runner.rates_caught_up = false;
                        let decoded =
                            decode_record(Topic::Rates, &record.value, &self.registry, &self.config.fold.limits);
                        runner.buffers[0].push_back((record, decoded));
                        received = true;
                    }
                }
            }
        }
        Ok(received)
    }

    /// Folds what the merge allows; returns the number of records taken.
    /// Folds what the tasks' buffers hold. A record that fails inside the
    /// fold (spec §5, v1.1 `internal_error`): its task is rebuilt from its
    /// committed state and folds again, the record now a dead letter.
    fn fold(&mut self) -> crate::Result<u64> {
        let mut taken = 0;
        let partitions: Vec<u32> = self.runners.keys().copied().collect();
        for partition in partitions {
            match self.fold_task(partition)? {
                Ok(count) => taken += count,
                Err(poison) => {
                    self.stats.internal_errors += 1;
                    tracing::warn!(partition, error = %poison, "rebuilding the task to dead-letter the record");
                    // The cycle in flight may hold this task's last commit.
                    self.settle(true, &[])?;
                    self.poisoned.entry(partition).or_default().push(poison);
                    self.rebuild(partition)?;
                }
            }
        }
        Ok(taken)
    }

    /// Folds one task's buffered records: how many, or the record that
    /// failed inside the fold; an error is fatal (the store could not take
    /// the re-folded state).
    fn fold_task(&mut self, partition: u32) -> crate::Result<Result<u64, Poisoned>> {
        let mut taken = 0;
        {
            let runner = self.runners.get_mut(&partition).expect("listed");
            loop {
                let refolding = runner.refolding();
                let topic = if let (true, Some(&(topic, from, _))) = (refolding, runner.plan.front()) {
                    // Re-folding: take what the committed cycles took, in their order.
                    match runner.buffers[topic.index()].front() {
                        None => break,
                        Some((record, _)) if record.offset == from => topic,
                        Some((record, _)) => {
                            tracing::warn!(
                                partition,
                                expected = from,
                                found = record.offset,
                                "recorded order does not match the input; re-folding by the merge rule"
                            );
                            runner.plan.clear();
                            continue;
                        }
                    }
                } else {
                    let mut heads = [Head::CaughtUp; 3];
                    for topic in Topic::ALL {
                        heads[topic.index()] = runner.head(topic, &self.consumer, self.config);
                    }
                    match choose(heads) {
                        Choice::Take(topic) => topic,
                        Choice::Wait | Choice::Idle => break,
                    }
                };
                if refolding {
                    if let Some(front) = runner.plan.front_mut() {
                        front.1 += 1;
                        if front.1 >= front.2 {
                            runner.plan.pop_front();
                        }
                    }
                }
                let (record, decoded) = runner.buffers[topic.index()].pop_front().expect("a head");
                match runner.segments.last_mut() {
                    Some((last, _, to)) if *last == topic && *to == record.offset => *to = record.offset + 1,
                    _ => runner.segments.push((topic, record.offset, record.offset + 1)),
                }
                if refolding {
                    let mut discarded = Vec::new();
                    if let Err(poison) = runner.task.fold(&record, decoded, &mut discarded) {
                        return Ok(Err(poison));
                    }
                    self.stats.records_refolded += 1;
                    if !runner.refolding() {
                        // Caught up with what Kafka has: persist, no transaction.
                        let changes = runner.task.take_changes();
                        let ops = store::commit_ops(runner.task.state(), &changes);
                        // The changes are taken: a state that missed them
                        // would take later deltas wrongly, so this is fatal
                        // (a restart re-folds from what the store holds).
                        let written = if self.config.inject_refold_write_failure {
                            Err(anyhow::anyhow!("injected failure (processor.inject_refold_write_failure)"))
                        } else {
                            self.store.lock().expect("store lock").write(ops)
                        };
                        written
                            .with_context(|| format!("writing the re-folded state of task {partition} to RocksDB"))?;
                        runner.segments.clear();
                        runner.plan.clear();
                        tracing::info!(partition, "re-fold done; processing live");
                    }
                } else {
                    let folded =
                        runner.task.fold_encoded(&record, decoded, &mut runner.pending, &mut runner.pending_json);
                    if let Err(poison) = folded {
                        return Ok(Err(poison));
                    }
                    runner.folded_since_commit += 1;
                    self.stats.records_folded += 1;
                }
                taken += 1;
                if runner.folded_since_commit >= 50_000 {
                    break;
                }
            }
        }
        Ok(Ok(taken))
    }

    /// Starts a commit cycle for each task with work: outputs, balances and
    /// progress and the input offsets in one transaction, then RocksDB. The
    /// previous cycle is settled first (a task's producer runs one
    /// transaction at a time); this one runs on a thread while the fold goes
    /// on, so folding overlaps the broker's round trips.
    fn commit(&mut self) -> crate::Result<()> {
        let started = Instant::now();
        // Rebalances first, so a revoked task is not rebuilt.
        self.handle_group_events()?;
        self.settle(true, &[])?;
        let ready: Vec<u32> = self
            .runners
            .iter()
            .filter(|(_, runner)| runner.folded_since_commit > 0 && !runner.refolding())
            .map(|(partition, _)| *partition)
            .collect();
        if !ready.is_empty() {
            let group_metadata = self.consumer.group_metadata().context("no consumer group metadata")?;
            let records: u64 = ready.iter().map(|partition| self.runners[partition].folded_since_commit).sum();
            tracing::debug!(tasks = ready.len(), records, "commit cycle cut");
            let mut cycles = Vec::with_capacity(ready.len());
            for &partition in &ready {
                cycles.push(self.prepare_cycle(partition)?);
            }
            let store = Arc::clone(&self.store);
            let handle = std::thread::Builder::new()
                .name("commit".to_owned())
                .spawn(move || commit_cycles(cycles, &group_metadata, &store))
                .context("starting the commit thread")?;
            *self.consumer.context().in_flight.lock().expect("in-flight lock") =
                Some(InFlight { handle, partitions: ready });
        }
        self.stats.commit_millis += started.elapsed().as_millis() as u64;
        Ok(())
    }

    /// Counts the outcomes of the cycle in flight once it has finished (or
    /// waits for it, with `wait`). A task whose transaction or RocksDB write
    /// failed is rebuilt from its committed state, unless it is among
    /// `leaving` (revoked or reassigned: it starts again from RocksDB anyway).
    fn settle(&mut self, wait: bool, leaving: &[u32]) -> crate::Result<()> {
        self.consumer.context().finish_in_flight(wait);
        let cycles = std::mem::take(&mut *self.consumer.context().finished.lock().expect("finished lock"));
        let outcomes: Outcomes = cycles
            .into_iter()
            .flat_map(|cycle| {
                tracing::debug!(wall_millis = cycle.wall_millis, tasks = cycle.tasks.len(), "commit cycle settled");
                self.stats.cycles += 1;
                self.stats.cycle_millis += cycle.wall_millis;
                cycle.tasks
            })
            .collect();
        for (partition, outcome) in outcomes {
            match outcome {
                Ok(times) => {
                    self.stats.transactions_committed += 1;
                    self.stats.transaction_wait_millis += times.offsets + times.end_transaction;
                    self.stats.offsets_millis += times.offsets;
                    self.stats.end_transaction_millis += times.end_transaction;
                    self.stats.store_write_millis += times.store_write;
                }
                Err(error) if error.downcast_ref::<RefusedOutput>().is_some() => {
                    self.stats.transactions_aborted += 1;
                    return Err(error);
                }
                Err(error) => {
                    self.stats.transactions_aborted += 1;
                    if leaving.contains(&partition) || !self.runners.contains_key(&partition) {
                        tracing::warn!(partition, error = %format!("{error:#}"), "commit failed for a task given up; it starts again from its committed state");
                    } else {
                        tracing::warn!(partition, error = %format!("{error:#}"), "commit failed; rebuilding the task from its committed state");
                        self.rebuild(partition)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What one task's cycle publishes: its outputs, balances and progress
    /// records, and the input offsets it reached; and the RocksDB write of
    /// the state at its end, taken now since the fold goes on meanwhile.
    fn prepare_cycle(&mut self, partition: u32) -> crate::Result<Cycle> {
        let destinations = &self.destinations;
        let runner = self.runners.get_mut(&partition).expect("committing a known task");
        let changes = runner.task.take_changes();
        let mut records: Vec<Publication> = Vec::with_capacity(runner.pending.len() + 8);
        let outputs = std::mem::take(&mut runner.pending);
        let encoded = std::mem::take(&mut runner.pending_json);
        debug_assert_eq!(outputs.len(), encoded.len());
        for (output, json) in outputs.iter().zip(encoded) {
            let topic = match output {
                Output::UsageRated(_) => &destinations.usage_rated,
                Output::Journal(_) => &destinations.journal,
                Output::Statement(_) => &destinations.statements,
                Output::Alert(_) => &destinations.alerts,
                Output::DeadLetter(_) => &destinations.dead_letter,
            };
            let value = match self.config.output_format {
                OutputFormat::Json => json,
                OutputFormat::Avro => output.to_avro(&self.encoder)?,
            };
            records.push((Arc::clone(topic), output.key().map(<[u8]>::to_vec), value));
        }
        for startup in &changes.balances {
            if let Some(balances) = runner.task.balances(startup, &self.names) {
                let value = serde_json::to_vec(&balances)?;
                records.push((Arc::clone(&destinations.balances), Some(startup.as_bytes().to_vec()), value));
            }
        }
        let offsets = runner.task.offsets(&self.names);
        let progress = Progress {
            task: partition,
            offsets: offsets.clone(),
            digest: runner.task.state().digest.hex(),
            segments: runner
                .segments
                .iter()
                .map(|(topic, from, to)| Segment { topic: self.names.name(*topic).to_owned(), from: *from, to: *to })
                .collect(),
            records: runner.folded_since_commit,
        };
        records.push((
            Arc::clone(&destinations.progress),
            Some(format!("task-{partition}").into_bytes()),
            serde_json::to_vec(&progress)?,
        ));

        let mut consumed = TopicPartitionList::new();
        for (topic, offset) in [
            (&self.config.topics.deals, runner.task.state().offsets[1]),
            (&self.config.topics.metering, runner.task.state().offsets[2]),
        ] {
            consumed.add_partition_offset(topic, partition as i32, Offset::Offset(offset))?;
        }
        let ops = store::commit_ops(runner.task.state(), &changes);
        let inputs = runner
            .segments
            .iter()
            .map(|(topic, from, to)| format!("{} partition {partition} offsets {from}..{to}", self.names.name(*topic)))
            .collect::<Vec<_>>()
            .join(", ");
        runner.segments.clear();
        runner.folded_since_commit = 0;
        self.transactions_begun += 1;
        let every = self.config.inject_abort_every;
        let inject_abort = (every > 0 && self.transactions_begun.is_multiple_of(every)).then_some(every);
        Ok(Cycle { partition, producer: Arc::clone(&runner.producer), records, consumed, ops, inject_abort, inputs })
    }

    /// Drops a task's uncommitted state: reload it and rewind its inputs.
    fn rebuild(&mut self, partition: u32) -> crate::Result<()> {
        let Some(old) = self.runners.remove(&partition) else { return Ok(()) };
        close_in_background(old.producer);
        close_in_background(old.rates);
        let committed = {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.config.topics.deals, partition as i32);
            list.add_partition(&self.config.topics.metering, partition as i32);
            let committed = self.consumer.committed_offsets(list, super::METADATA_TIMEOUT)?;
            let read = |topic: &str| {
                committed
                    .find_partition(topic, partition as i32)
                    .and_then(|entry| entry.offset().to_raw())
                    .filter(|offset| *offset >= 0)
                    .unwrap_or(0)
            };
            [read(&self.config.topics.deals), read(&self.config.topics.metering)]
        };
        let assigned = Assigned { partition, committed };
        let runner = self.new_runner(&assigned)?;
        for (topic, offset) in
            [(&self.config.topics.deals, runner.expected[1]), (&self.config.topics.metering, runner.expected[2])]
        {
            self.consumer.seek(topic, partition as i32, Offset::Offset(offset), Duration::from_secs(10))?;
        }
        self.runners.insert(partition, runner);
        Ok(())
    }
}

/// (topic, key, value) of a record a cycle publishes.
type Publication = (Arc<str>, Option<Vec<u8>>, Vec<u8>);

/// One task's commit cycle, ready to go out in a transaction.
struct Cycle {
    partition: u32,
    /// The input segments the cycle's outputs came from, for errors.
    inputs: String,
    producer: Arc<BaseProducer>,
    records: Vec<Publication>,
    /// The next offsets of deals and metering, committed with the transaction.
    consumed: TopicPartitionList,
    /// The task's state at the end of the cycle, written once it has committed.
    ops: Vec<store::Op>,
    /// `processor.inject_abort_every`, when this cycle is to be aborted.
    inject_abort: Option<u64>,
}

/// Runs the tasks' transactions of one cycle at once (each task has its own
/// producer, so the waits for the broker overlap), and writes each
/// committed task's state to RocksDB; returns the cycle's wall time and
/// each task's outcome.
fn commit_cycles(
    cycles: Vec<Cycle>,
    group_metadata: &ConsumerGroupMetadata,
    store: &Mutex<RocksStore>,
) -> CycleOutcome {
    let started = Instant::now();
    let tasks = std::thread::scope(|scope| {
        let handles: Vec<_> = cycles
            .into_iter()
            .map(|cycle| {
                let partition = cycle.partition;
                let handle = scope.spawn(move || {
                    let mut times = transact(&cycle, group_metadata)?;
                    // Only now: the state and offsets the transaction published.
                    let writing = Instant::now();
                    store
                        .lock()
                        .expect("store lock")
                        .write(cycle.ops)
                        .context("writing the committed state to RocksDB")?;
                    times.store_write = writing.elapsed().as_millis() as u64;
                    Ok(times)
                });
                (partition, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(partition, handle)| {
                (partition, handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a commit thread panicked"))))
            })
            .collect()
    });
    CycleOutcome { wall_millis: started.elapsed().as_millis() as u64, tasks }
}

/// Sends a cycle's records and offsets in one transaction and commits it;
/// returns the time spent waiting for the offsets and the commit.
/// Any failure aborts the transaction.
fn transact(cycle: &Cycle, group_metadata: &ConsumerGroupMetadata) -> crate::Result<TaskTimes> {
    let producer = &cycle.producer;
    producer.begin_transaction().context("beginning a transaction")?;
    for (topic, key, value) in &cycle.records {
        loop {
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(cycle.partition as i32).payload(value);
            if let Some(key) = key {
                record = record.key(key);
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => {
                    let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
                    if let Some(code) = error.rdkafka_error_code().filter(|code| is_permanent(*code)) {
                        return Err(RefusedOutput {
                            task: cycle.partition,
                            topic: topic.to_string(),
                            detail: format!("{code:?} for a record of {} bytes", value.len()),
                            inputs: cycle.inputs.clone(),
                        }
                        .into());
                    }
                    return Err(error).context("producing an output record");
                }
            }
        }
    }
    if let Some(every) = cycle.inject_abort {
        let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
        bail!("injected abort (processor.inject_abort_every = {every})");
    }
    let mut times = TaskTimes::default();
    let waiting = Instant::now();
    let sent =
        producer.send_offsets_to_transaction(&cycle.consumed, group_metadata, TRANSACTION_TIMEOUT).and_then(|()| {
            times.offsets = waiting.elapsed().as_millis() as u64;
            producer.commit_transaction(TRANSACTION_TIMEOUT)
        });
    times.end_transaction = (waiting.elapsed().as_millis() as u64).saturating_sub(times.offsets);
    if let Err(error) = sent {
        let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
        // A delivery the broker refused for good fails the commit with its
        // code: retrying the same records would fail the same way.
        if let Some(code) = error.rdkafka_error_code().filter(|code| is_permanent(*code)) {
            let (topic, largest) = cycle
                .records
                .iter()
                .map(|(topic, key, value)| (topic, key.as_ref().map_or(0, Vec::len) + value.len()))
                .max_by_key(|(_, size)| *size)
                .map(|(topic, size)| (topic.to_string(), size))
                .unwrap_or_default();
            return Err(RefusedOutput {
                task: cycle.partition,
                topic,
                detail: format!("{code:?} committing the transaction (its largest record: {largest} bytes)"),
                inputs: cycle.inputs.clone(),
            }
            .into());
        }
        return Err(error).context("committing the transaction");
    }
    Ok(times)
}

/// Broker refusals that no retry can cure: the same records would be
/// refused again, so the processor stops rather than abort and retry
/// forever.
fn is_permanent(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::MessageBatchTooLarge
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::TransactionalIdAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::InvalidRecord
    )
}

/// An output the broker refused for good: fatal, named by the task, the
/// output topic and the input offsets of the cycle that produced it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the broker refused an output of task {task} to topic {topic} for good ({detail}); \
     the outputs came from inputs {inputs}; stopping (fix the broker's limits or permissions, then restart)"
)]
pub struct RefusedOutput {
    pub task: u32,
    pub topic: String,
    pub detail: String,
    /// The cycle's input segments, e.g. `deals 10..12, metering 40..90`.
    pub inputs: String,
}

#[derive(Serialize)]
struct Segment {
    topic: String,
    from: i64,
    to: i64,
}

/// A progress record: per commit and task, the input offsets reached and
/// the input segments taken, in order (spec §4, §10).
#[derive(Serialize)]
struct Progress {
    task: u32,
    offsets: Vec<InputOffset>,
    /// The task's output digest at these offsets.
    digest: String,
    segments: Vec<Segment>,
    records: u64,
}

pub fn run(config: &Config, options: &RunOptions, shutdown: Arc<AtomicBool>) -> crate::Result<RunStats> {
    tracing::info!(config = %config.describe(), "starting");
    let metadata = super::metadata_consumer(config)?;
    let partitions = super::check_copartitioned(config, &metadata)?;
    close_in_background(metadata);
    let store = Arc::new(Mutex::new(RocksStore::open(&config.state_dir)?));
    let context = GroupContext {
        store: Arc::clone(&store),
        deals: config.topics.deals.clone(),
        metering: config.topics.metering.clone(),
        events: Mutex::new(Vec::new()),
        in_flight: Mutex::new(None),
        finished: Mutex::new(Vec::new()),
    };
    let consumer: BaseConsumer<GroupContext> = super::group_client_config(
        config,
        &[
            ("group.id", &config.group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
        ],
    )
    .create_with_context(context)
    .context("creating the group consumer")?;
    consumer.subscribe(&[&config.topics.deals, &config.topics.metering]).context("subscribing")?;
    let names = TopicNames {
        rates: config.topics.rates.clone(),
        deals: config.topics.deals.clone(),
        metering: config.topics.metering.clone(),
    };
    let mut processor = Processor {
        config,
        partitions,
        ticker: None,
        last_tick: Instant::now(),
        names,
        store,
        consumer,
        runners: BTreeMap::new(),
        registry: SchemaRegistry::builtin(),
        encoder: OutputEncoder::default(),
        stats: RunStats::default(),
        transactions_begun: 0,
        destinations: Destinations::new(&config.topics),
        poisoned: BTreeMap::new(),
    };
    tracing::info!(partitions, group = %config.group_id, "joined; waiting for partitions");
    let commit_interval = Duration::from_millis(config.commit_interval as u64);
    let mut last_commit = Instant::now();
    let mut last_report = Instant::now();
    loop {
        // Every poll of the group consumer goes through poll_inputs, which
        // routes each record it returns (a poll here would swallow one).
        processor.handle_group_events()?;
        processor.publish_ticks()?;
        let received = processor.poll_inputs()?;
        let taken = processor.fold()?;
        processor.handle_group_events()?;
        processor.settle(false, &[])?;
        if last_commit.elapsed() >= commit_interval {
            processor.commit()?;
            last_commit = Instant::now();
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(
                folded = processor.stats.records_folded,
                refolded = processor.stats.records_refolded,
                commits = processor.stats.transactions_committed,
                "progress"
            );
        }
        let stopping = shutdown.load(Ordering::Relaxed);
        let caught_up = options.exit_when_caught_up
            && !processor.runners.is_empty()
            && processor.runners.values().all(TaskRunner::caught_up);
        if stopping || caught_up {
            processor.commit()?;
            processor.settle(true, &[])?;
            tracing::info!(stats = ?processor.stats, reason = if stopping { "signal" } else { "caught up" }, "stopping");
            break;
        }
        if !received && taken == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let stats = processor.stats.clone();
    if let Some(ticker) = processor.ticker.take() {
        let _ = ticker.flush(Duration::from_secs(10));
        close_in_background(ticker);
    }
    for (_, runner) in std::mem::take(&mut processor.runners) {
        close_in_background(runner.producer);
        close_in_background(runner.rates);
    }
    let Processor { consumer, .. } = processor;
    consumer.unsubscribe();
    close_in_background(consumer);
    Ok(stats)
}
