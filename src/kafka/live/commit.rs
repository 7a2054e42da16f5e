//! Commit cycles: every `commit_interval`, each task with work publishes its
//! outputs, balances and progress record and its input offsets in one Kafka
//! transaction; only after the commit is its state written to RocksDB. A
//! cycle runs on a thread of its own while the loop folds the next one.
//!
//! A transaction's failure is classified ([`CommitError`]): retriable calls
//! are retried in place; an abortable failure drops the task's uncommitted
//! state (it is rebuilt from RocksDB and its inputs rewound); a fatal one —
//! the broker refusing an output for good — stops the processor.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::Processor;
use crate::config::{OutputFormat, Topics};
use crate::drive::Segment;
use crate::kafka::client::TRANSACTION_TIMEOUT;
use crate::kafka::progress::{ProgressRecord, SegmentRecord};
use crate::records::avro::Framing;
use crate::records::Output;
use crate::store::rocks::RocksStore;
use crate::store::{self, KvStore};

/// How often a retriable failure of a transaction's offsets or commit is
/// retried before the transaction is aborted.
const RETRIES: u32 = 3;

/// Where one task's transaction spent its time, in milliseconds, and the
/// dead letters it published, by reason.
#[derive(Clone, Debug, Default)]
pub(super) struct TaskTimes {
    pub(super) offsets: u64,
    pub(super) end_transaction: u64,
    pub(super) store_write: u64,
    pub(super) dead_letters: BTreeMap<String, u64>,
    /// Input records whose outputs the transaction published.
    pub(super) records: u64,
}

/// Why a task's commit failed, and so what the loop does about it.
#[derive(Debug)]
pub(super) enum CommitError {
    /// The transaction was aborted or never committed: the task's
    /// uncommitted state is dropped and rebuilt from RocksDB (with a new
    /// producer, so a producer librdkafka calls fatal is replaced too).
    Abortable(anyhow::Error),
    /// No retry can cure it (the broker refuses an output for good): the
    /// processor stops with the error.
    Fatal(anyhow::Error),
}

impl CommitError {
    fn abortable(error: impl Into<anyhow::Error>, context: &'static str) -> CommitError {
        CommitError::Abortable(error.into().context(context))
    }
}

/// Whether a failed transactional call may simply be made again
/// (librdkafka's classification).
fn is_retriable(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(error) if error.is_retriable() && !error.txn_requires_abort())
}

/// Broker refusals that no retry can cure: the same records would be
/// refused again, so the processor stops rather than abort and retry
/// forever.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as Code;
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

/// The output topics' names, shared with the commit thread.
pub(super) struct Destinations {
    usage_rated: Arc<str>,
    journal: Arc<str>,
    statements: Arc<str>,
    alerts: Arc<str>,
    dead_letter: Arc<str>,
    balances: Arc<str>,
    progress: Arc<str>,
}

impl Destinations {
    pub(super) fn new(topics: &Topics) -> Self {
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

    fn of(&self, output: &Output) -> &Arc<str> {
        match output {
            Output::UsageRated(_) => &self.usage_rated,
            Output::Journal(_) => &self.journal,
            Output::Statement(_) => &self.statements,
            Output::Alert(_) => &self.alerts,
            Output::DeadLetter(_) => &self.dead_letter,
        }
    }
}

/// (topic, key, value) of a record a cycle publishes.
type Publication = (Arc<str>, Option<Vec<u8>>, Vec<u8>);

/// One task's commit cycle, ready to go out in a transaction.
pub(super) struct Cycle {
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
    /// The dead letters among the outputs, by reason (counted once committed).
    dead_letters: BTreeMap<String, u64>,
    /// Input records folded in the cycle.
    records_folded: u64,
}

/// A commit cycle on its way: each task's transaction, then (once it has
/// committed) its RocksDB write, on a thread of its own while the fold goes
/// on with the next cycle.
pub(super) struct InFlight {
    pub(super) handle: std::thread::JoinHandle<CycleOutcome>,
    /// The tasks in the cycle.
    pub(super) partitions: Vec<u32>,
}

/// A settled cycle: its wall time and each task's outcome.
pub(super) struct CycleOutcome {
    pub(super) wall_millis: u64,
    pub(super) tasks: Vec<(u32, Result<TaskTimes, CommitError>)>,
}

impl Processor<'_> {
    /// Starts a commit cycle for each task with work: outputs, balances and
    /// progress and the input offsets in one transaction, then RocksDB. The
    /// previous cycle is settled first (a task's producer runs one
    /// transaction at a time); this one runs on a thread while the fold goes
    /// on, so folding overlaps the broker's round trips.
    pub(super) fn start_cycle(&mut self) -> crate::Result<()> {
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
    /// `leaving` (revoked or reassigned: it starts again from RocksDB
    /// anyway); a fatal failure stops the processor.
    pub(super) fn settle(&mut self, wait: bool, leaving: &[u32]) -> crate::Result<()> {
        self.consumer.context().finish_in_flight(wait);
        let mut outcomes = Vec::new();
        for cycle in self.consumer.context().take_finished() {
            tracing::debug!(wall_millis = cycle.wall_millis, tasks = cycle.tasks.len(), "commit cycle settled");
            if let Some(service) = &self.service {
                service.metrics.observe_cycle(cycle.wall_millis);
            }
            self.stats.cycles += 1;
            self.stats.cycle_millis += cycle.wall_millis;
            outcomes.extend(cycle.tasks);
        }
        for (partition, outcome) in outcomes {
            match outcome {
                Ok(times) => {
                    self.stats.transactions_committed += 1;
                    self.stats.transaction_wait_millis += times.offsets + times.end_transaction;
                    self.stats.offsets_millis += times.offsets;
                    self.stats.end_transaction_millis += times.end_transaction;
                    self.stats.store_write_millis += times.store_write;
                    self.stats.records_committed += times.records;
                    if let Some((_, committed)) = self.checkpoint_due.get_mut(&partition) {
                        *committed += times.records;
                    }
                    for (reason, count) in times.dead_letters {
                        *self.stats.dead_letters.entry(reason).or_default() += count;
                    }
                }
                Err(CommitError::Fatal(error)) => {
                    self.stats.transactions_aborted += 1;
                    return Err(error);
                }
                Err(CommitError::Abortable(error)) => {
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
        let mut dead_letters: BTreeMap<String, u64> = BTreeMap::new();
        for (output, json) in outputs.iter().zip(encoded) {
            if let Output::DeadLetter(letter) = output {
                *dead_letters.entry(letter.reason.clone()).or_default() += 1;
            }
            let value = match self.config.output_format {
                OutputFormat::Json => json,
                OutputFormat::Avro => output.to_avro_framed(&self.encoder, Framing::SingleObject)?,
                OutputFormat::AvroConfluent => output.to_avro_framed(&self.encoder, Framing::Confluent)?,
            };
            records.push((Arc::clone(destinations.of(output)), output.key().map(<[u8]>::to_vec), value));
        }
        for startup in &changes.balances {
            if let Some(balances) = runner.task.balances(startup, &self.names) {
                let value = match self.config.output_format {
                    OutputFormat::Json => serde_json::to_vec(&balances)?,
                    OutputFormat::Avro => self.encoder.encode_framed(
                        "balances",
                        &serde_json::to_value(&balances)?,
                        Framing::SingleObject,
                    )?,
                    OutputFormat::AvroConfluent => {
                        self.encoder.encode_framed("balances", &serde_json::to_value(&balances)?, Framing::Confluent)?
                    }
                };
                records.push((Arc::clone(&destinations.balances), Some(startup.as_bytes().to_vec()), value));
            }
        }
        let progress = ProgressRecord {
            task: partition,
            offsets: runner.task.offsets(&self.names),
            digest: runner.task.state().digest.hex(),
            segments: runner.segments.iter().map(|segment| SegmentRecord::of(segment, &self.names)).collect(),
            records: runner.folded_since_commit,
        };
        records.push((
            Arc::clone(&destinations.progress),
            Some(format!("task-{partition}").into_bytes()),
            serde_json::to_vec(&progress)?,
        ));

        let mut consumed = TopicPartitionList::new();
        let reached = runner.task.state().offsets.keyed();
        for (topic, offset) in
            [(&self.config.topics.deals, reached.deals), (&self.config.topics.metering, reached.metering)]
        {
            consumed.add_partition_offset(topic, partition as i32, Offset::Offset(offset))?;
        }
        let ops = store::commit_ops(runner.task.state(), &changes);
        let inputs = runner
            .segments
            .iter()
            .map(|Segment { topic, from, to }| {
                format!("{} partition {partition} offsets {from}..{to}", self.names.name(*topic))
            })
            .collect::<Vec<_>>()
            .join(", ");
        runner.segments.clear();
        let records_folded = std::mem::take(&mut runner.folded_since_commit);
        self.transactions_begun += 1;
        let every = self.config.inject_abort_every;
        let inject_abort = (every > 0 && self.transactions_begun.is_multiple_of(every)).then_some(every);
        Ok(Cycle {
            partition,
            producer: Arc::clone(&runner.producer),
            records,
            consumed,
            ops,
            inject_abort,
            inputs,
            dead_letters,
            records_folded,
        })
    }
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
                        .map_err(|error| CommitError::abortable(error, "writing the committed state to RocksDB"))?;
                    times.store_write = writing.elapsed().as_millis() as u64;
                    times.dead_letters = cycle.dead_letters;
                    times.records = cycle.records_folded;
                    Ok(times)
                });
                (partition, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(partition, handle)| {
                let outcome = handle
                    .join()
                    .unwrap_or_else(|_| Err(CommitError::Abortable(anyhow::anyhow!("a commit thread panicked"))));
                (partition, outcome)
            })
            .collect()
    });
    CycleOutcome { wall_millis: started.elapsed().as_millis() as u64, tasks }
}

/// Makes a transactional call, again while librdkafka says it may be retried.
fn retrying(mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    let mut attempt = 1;
    loop {
        match call() {
            Err(error) if attempt < RETRIES && is_retriable(&error) => {
                tracing::debug!(%error, attempt, "retrying a transactional call");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Sends a cycle's records and offsets in one transaction and commits it;
/// returns the time spent waiting for the offsets and the commit. Any
/// failure aborts the transaction.
fn transact(cycle: &Cycle, group_metadata: &ConsumerGroupMetadata) -> Result<TaskTimes, CommitError> {
    let producer = &cycle.producer;
    producer.begin_transaction().map_err(|error| CommitError::abortable(error, "beginning a transaction"))?;
    for (topic, key, value) in &cycle.records {
        loop {
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(cycle.partition as i32).payload(value);
            if let Some(key) = key {
                record = record.key(key);
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => {
                    let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
                    if let Some(code) = error.rdkafka_error_code().filter(|code| is_permanent(*code)) {
                        return Err(CommitError::Fatal(
                            RefusedOutput {
                                task: cycle.partition,
                                topic: topic.to_string(),
                                detail: format!("{code:?} for a record of {} bytes", value.len()),
                                inputs: cycle.inputs.clone(),
                            }
                            .into(),
                        ));
                    }
                    return Err(CommitError::abortable(error, "producing an output record"));
                }
            }
        }
    }
    if let Some(every) = cycle.inject_abort {
        let _ = producer.abort_transaction(TRANSACTION_TIMEOUT);
        return Err(CommitError::Abortable(anyhow::anyhow!("injected abort (processor.inject_abort_every = {every})")));
    }
    let mut times = TaskTimes::default();
    let waiting = Instant::now();
    let sent = retrying(|| producer.send_offsets_to_transaction(&cycle.consumed, group_metadata, TRANSACTION_TIMEOUT))
        .and_then(|()| {
            times.offsets = waiting.elapsed().as_millis() as u64;
            retrying(|| producer.commit_transaction(TRANSACTION_TIMEOUT))
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
            return Err(CommitError::Fatal(
                RefusedOutput {
                    task: cycle.partition,
                    topic,
                    detail: format!("{code:?} committing the transaction (its largest record: {largest} bytes)"),
                    inputs: cycle.inputs.clone(),
                }
                .into(),
            ));
        }
        return Err(CommitError::abortable(error, "committing the transaction"));
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_for_good_are_permanent_and_others_are_not() {
        assert!(is_permanent(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(is_permanent(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!is_permanent(RDKafkaErrorCode::RequestTimedOut));
        assert!(!is_permanent(RDKafkaErrorCode::NotCoordinator));
    }

    #[test]
    fn only_transaction_errors_librdkafka_calls_retriable_are_retried() {
        let mut calls = 0;
        let outcome = retrying(|| {
            calls += 1;
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut))
        });
        assert!(outcome.is_err());
        assert_eq!(calls, 1, "not a transaction error: not retried");
        assert!(retrying(|| Ok(())).is_ok());
    }
}
