//! `gpuledger run`: the fold, live on Kafka, exactly once.
//!
//! The rooms: [`group`] (rebalances), [`runner`] (one partition's task and
//! its inputs as the driver sees them), [`commit`] (commit cycles and their
//! transactions), [`ticks`] (the clock tick publisher); the loop is here.
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

mod commit;
mod group;
mod restore;
mod runner;
mod ticks;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use self::commit::Destinations;
pub use self::commit::RefusedOutput;
pub use self::group::StateAheadOfGroup;
use self::group::{Assigned, GroupContext, GroupEvent};
use self::runner::{LiveInputs, LiveSink, TaskRunner};
use self::ticks::Ticker;
use crate::checkpoint::worker::{CheckpointStats, Checkpointer};
use crate::config::Config;
use crate::drive::{Stop, TaskStep};
use crate::events::avro::SchemaRegistry;
use crate::events::{decode_record, Topic};
use crate::fold::{Poisoned, TopicNames};
use crate::kafka::client::{self, close_in_background, to_input, METADATA_TIMEOUT};
use crate::kafka::cluster::{check_copartitioned, keyed_offsets};
use crate::kafka::topics::{input_names, input_of, name_of};
use crate::records::avro::OutputEncoder;
use crate::serve::routing::{self, Announcer, Directory};
use crate::serve::{QueryState, Service, Tasks};
use crate::store::rocks::RocksStore;

/// How often the loop tells the HTTP endpoints where it stands.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How long an instance may sit in its group with no partition before it warns.
const UNASSIGNED_WARNING: Duration = Duration::from_secs(60);

/// The members topic must exist before instances can announce themselves.
fn check_members_topic(config: &Config, metadata: &BaseConsumer) -> crate::Result<()> {
    let topic = &config.topics.members;
    let found = metadata
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let exists = found.topics().iter().any(|entry| entry.error().is_none() && !entry.partitions().is_empty());
    anyhow::ensure!(
        exists,
        "topic {topic} (topics.members) does not exist; HTTP queries route through it: \
         run `gpuledger topics create` (it creates only what is missing)"
    );
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub exit_when_caught_up: bool,
}

/// Counters a run reports (and tests read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Records folded with their outputs published.
    pub records_folded: u64,
    /// Of those, per input: rates, deals, metering.
    pub records_folded_by_topic: [u64; 3],
    /// Records whose outputs a committed transaction published.
    pub records_committed: u64,
    /// Dead letters published in committed transactions, by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Tasks rebuilt from their committed state (an aborted transaction or
    /// a record that failed inside the fold).
    pub task_rebuilds: u64,
    /// Records re-folded with outputs suppressed (recovery).
    pub records_refolded: u64,
    /// Records folded before the checkpoints tasks were restored from:
    /// recovery did not re-fold them.
    pub records_restored: u64,
    /// Checkpoints written (and failed), their bytes, and the time spent
    /// exporting and uploading them off the folding thread, in ms.
    pub checkpoints_taken: u64,
    pub checkpoints_failed: u64,
    pub checkpoint_bytes: u64,
    pub checkpoint_millis: u64,
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

impl RunStats {
    /// Takes the checkpoint thread's counts.
    fn note_checkpoints(&mut self, taken: &CheckpointStats) {
        self.checkpoints_taken = taken.taken;
        self.checkpoints_failed = taken.failed;
        self.checkpoint_bytes = taken.bytes;
        self.checkpoint_millis = taken.export_millis + taken.upload_millis;
    }
}

struct Processor<'a> {
    config: &'a Config,
    partitions: u32,
    /// Publishes ticks when `clock.tick_interval` is set.
    ticker: Option<Ticker>,
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
    /// Metrics, health and queries over HTTP, when on.
    service: Option<Arc<Service>>,
    /// Announces this instance's tasks for query routing (HTTP on).
    announcer: Option<Announcer>,
    /// The group has assigned partitions at least once.
    joined: bool,
    /// Takes checkpoints when `[checkpoints] store` is set.
    checkpointer: Option<Checkpointer>,
    /// Per task: when its last checkpoint was asked for, and the records
    /// committed since.
    checkpoint_due: BTreeMap<u32, (Instant, u64)>,
}

impl Processor<'_> {
    fn handle_group_events(&mut self) -> crate::Result<()> {
        let events = self.consumer.context().take_events();
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
                            runner.close();
                            // Its last committed state, for whoever takes it next.
                            self.checkpoint_due.remove(&partition);
                            if let Some(checkpointer) = &self.checkpointer {
                                checkpointer.request(partition);
                            }
                        }
                    }
                }
                GroupEvent::Assigned(assigned) => {
                    self.joined = true;
                    for entry in assigned {
                        let runner = TaskRunner::start(self.config, &self.store, &entry, &self.poisoned)?;
                        self.stats.partitions_assigned += 1;
                        self.stats.records_restored += entry.records_restored;
                        self.checkpoint_due.insert(entry.partition, (Instant::now(), 0));
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
            let record = {
                let Some(result) = self.consumer.poll(Duration::ZERO) else { break };
                let message = match result {
                    Ok(message) => message,
                    Err(KafkaError::PartitionEOF(_)) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "consumer error");
                        continue;
                    }
                };
                let topic = input_of(&self.config.topics, message.topic()).unwrap_or(Topic::Metering);
                to_input(topic, &message)
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
            if record.offset < runner.feeds.expected[record.topic] {
                continue;
            }
            let decoded = decode_record(record.topic, &record.value, &self.registry, &self.config.fold.limits);
            runner.feeds.push(record, decoded);
            received = true;
        }
        for runner in self.runners.values_mut() {
            for _ in 0..10_000 {
                match runner.rates.poll(Duration::ZERO) {
                    None => break,
                    Some(Err(KafkaError::PartitionEOF(_))) => runner.feeds.rates_caught_up = true,
                    Some(Err(error)) => tracing::warn!(%error, "rates consumer error"),
                    Some(Ok(message)) => {
                        if message.offset() < runner.feeds.expected[Topic::Rates] {
                            continue;
                        }
                        let record = to_input(Topic::Rates, &message);
                        runner.feeds.rates_caught_up = false;
                        let decoded =
                            decode_record(Topic::Rates, &record.value, &self.registry, &self.config.fold.limits);
                        runner.feeds.push(record, decoded);
                        received = true;
                    }
                }
            }
        }
        Ok(received)
    }

    /// Folds what the tasks' buffers hold; returns the number of records
    /// taken. A record that fails inside the fold (spec §5, v1.1
    /// `internal_error`): its task is rebuilt from its committed state and
    /// folds again, the record now a dead letter.
    fn fold_buffered(&mut self) -> crate::Result<u64> {
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
        let runner = self.runners.get_mut(&partition).expect("listed");
        let taken_before = runner.driver.counts().taken;
        loop {
            let refolding = runner.refolding();
            if !refolding {
                // The recorded order covers the re-fold only.
                runner.driver.end_plan();
            }
            let mut sink = LiveSink {
                partition,
                refolding,
                suppress_below: runner.feeds.suppress_below,
                pending: &mut runner.pending,
                pending_json: &mut runner.pending_json,
                segments: &mut runner.segments,
                folded_since_commit: &mut runner.folded_since_commit,
                stats: &mut self.stats,
                store: &self.store,
                inject_write_failure: self.config.inject_refold_write_failure,
            };
            let mut inputs = LiveInputs { feeds: &mut runner.feeds, consumer: &self.consumer, config: self.config };
            match runner.driver.run(&mut inputs, &mut TaskStep::new(&mut runner.task, &mut sink))? {
                Err(poison) => return Ok(Err(poison)),
                // The re-fold is done: go on live.
                Ok(Stop::Yielded) if refolding && !runner.refolding() => {}
                Ok(_) => break,
            }
        }
        Ok(Ok(runner.driver.counts().taken - taken_before))
    }

    /// Tells the HTTP endpoints where the loop stands: the run's counts,
    /// the tasks and whether they are restoring, each input's lag; and
    /// announces the tasks for query routing.
    fn report(&mut self) -> crate::Result<()> {
        let Some(service) = &self.service else { return Ok(()) };
        service.metrics.publish(&self.stats);
        let tasks = Tasks {
            joined: self.joined,
            assigned: self.runners.keys().copied().collect(),
            refolding: self.runners.iter().filter(|(_, runner)| runner.refolding()).map(|(task, _)| *task).collect(),
        };
        let mut lag = BTreeMap::new();
        for (&partition, runner) in &self.runners {
            let position = runner.task.state().offsets;
            for topic in [Topic::Deals, Topic::Metering] {
                let name = name_of(&self.config.topics, topic);
                if let Some(end) = client::cached_end_offset(&self.consumer, name, partition) {
                    lag.insert((name.to_owned(), partition), (end - position[topic]).max(0));
                }
            }
            if let Some(end) = client::cached_end_offset(&runner.rates, &self.config.topics.rates, 0) {
                let rates = (self.config.topics.rates.clone(), 0);
                let behind = (end - position[Topic::Rates]).max(0);
                // Every task reads the rates: the slowest one's lag.
                lag.entry(rates).and_modify(|lag: &mut i64| *lag = (*lag).max(behind)).or_insert(behind);
            }
        }
        service.metrics.set_tasks(tasks.assigned.len(), &lag);
        if let Some(announcer) = &mut self.announcer {
            announcer.announce(&tasks.assigned)?;
        }
        service.health.set_tasks(tasks);
        Ok(())
    }

    /// Asks for a checkpoint of every task whose interval has passed (in
    /// time or records folded), or of every task with `all`. The
    /// checkpoint thread reads RocksDB, which holds committed state only.
    fn request_checkpoints(&mut self, all: bool) {
        let Some(checkpointer) = &self.checkpointer else { return };
        let settings = &self.config.checkpoints;
        for (partition, runner) in &self.runners {
            if runner.refolding() {
                continue;
            }
            let (since, committed) = self.checkpoint_due.get(partition).copied().unwrap_or((Instant::now(), 0));
            let due = since.elapsed().as_millis() as i64 >= settings.interval
                || (settings.interval_records > 0 && committed >= settings.interval_records);
            if all || due {
                checkpointer.request(*partition);
                self.checkpoint_due.insert(*partition, (Instant::now(), 0));
            }
        }
        self.stats.note_checkpoints(&checkpointer.stats());
    }

    /// Drops a task's uncommitted state: reload it and rewind its inputs.
    fn rebuild(&mut self, partition: u32) -> crate::Result<()> {
        let Some(old) = self.runners.remove(&partition) else { return Ok(()) };
        self.stats.task_rebuilds += 1;
        old.close();
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.config.topics.deals, partition as i32);
        list.add_partition(&self.config.topics.metering, partition as i32);
        let committed = self.consumer.committed_offsets(list, METADATA_TIMEOUT)?;
        let committed = keyed_offsets(&self.config.topics, &committed).remove(&partition).unwrap_or_default();
        let assigned = Assigned { partition, committed, records_restored: 0, progress: None };
        let runner = TaskRunner::start(self.config, &self.store, &assigned, &self.poisoned)?;
        for topic in [Topic::Deals, Topic::Metering] {
            let offset = runner.feeds.expected[topic];
            let name = name_of(&self.config.topics, topic);
            self.consumer.seek(name, partition as i32, Offset::Offset(offset), Duration::from_secs(10))?;
        }
        self.runners.insert(partition, runner);
        Ok(())
    }
}

/// Runs the processor until `shutdown` is set (or, with
/// `exit_when_caught_up`, every owned partition is at its end); with a
/// `service`, feeds its metrics and health and serves queries.
pub fn run(
    config: &Config,
    options: &RunOptions,
    shutdown: Arc<AtomicBool>,
    service: Option<Arc<Service>>,
) -> crate::Result<RunStats> {
    tracing::info!(config = %config.describe(), "starting");
    let metadata = client::metadata_consumer(config)?;
    let partitions = check_copartitioned(config, &metadata)?;
    let store = Arc::new(Mutex::new(RocksStore::open(&config.state_dir)?));
    let mut follower = None;
    let mut announcer = None;
    if let Some((service, url)) = service.as_ref().and_then(|service| Some((service, service.advertised_url()?))) {
        check_members_topic(config, &metadata)?;
        let directory = Arc::new(Directory::default());
        follower = Some(routing::follow(config, Arc::clone(&directory))?);
        let names = input_names(&config.topics);
        service.serve_queries(QueryState::new(&store, partitions, names, url.clone(), directory));
        announcer = Some(Announcer::new(config, &url)?);
        tracing::info!(advertised_url = %url, "answering queries; announcing tasks on {}", config.topics.members);
    }
    close_in_background(metadata);
    let restorer = restore::Restorer::new(config, partitions)?;
    let checkpointer = Checkpointer::start(config, store.lock().expect("store lock").snapshot_reader(), partitions)?;
    let context = GroupContext::new(Arc::clone(&store), config.topics.clone(), restorer);
    let consumer = client::group_consumer(config, context)?;
    // Metering only: deals p follows metering p (`GroupContext::tasks_list`).
    consumer.subscribe(&[&config.topics.metering]).context("subscribing")?;
    let mut processor = Processor {
        config,
        partitions,
        ticker: Ticker::new(config),
        names: input_names(&config.topics),
        store,
        consumer,
        runners: BTreeMap::new(),
        registry: SchemaRegistry::with_ids(&config.schema_ids),
        encoder: OutputEncoder::with_ids(&config.schema_ids),
        stats: RunStats::default(),
        transactions_begun: 0,
        destinations: Destinations::new(&config.topics),
        poisoned: BTreeMap::new(),
        service,
        announcer,
        joined: false,
        checkpointer,
        checkpoint_due: BTreeMap::new(),
    };
    tracing::info!(partitions, group = %config.group_id, "joined; waiting for partitions");
    let commit_interval = Duration::from_millis(config.commit_interval as u64);
    let mut last_cycle = Instant::now();
    let mut last_report = Instant::now();
    let mut last_published = Instant::now();
    let joined_at = Instant::now();
    let mut warned_unassigned = false;
    loop {
        if let Some(service) = &processor.service {
            service.health.beat();
        }
        if last_published.elapsed() >= PUBLISH_EVERY {
            last_published = Instant::now();
            processor.report()?;
        }
        // Every poll of the group consumer goes through poll_inputs, which
        // routes each record it returns (a poll here would swallow one).
        processor.handle_group_events()?;
        if let Some(ticker) = processor.ticker.as_mut().filter(|_| processor.runners.contains_key(&0)) {
            ticker.publish(config, processor.partitions)?;
        }
        let received = processor.poll_inputs()?;
        let taken = processor.fold_buffered()?;
        processor.handle_group_events()?;
        processor.settle(false, &[])?;
        processor.request_checkpoints(false);
        if last_cycle.elapsed() >= commit_interval {
            processor.start_cycle()?;
            last_cycle = Instant::now();
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(
                folded = processor.stats.records_folded,
                refolded = processor.stats.records_refolded,
                commits = processor.stats.transactions_committed,
                "progress"
            );
            if !warned_unassigned
                && processor.stats.partitions_assigned == 0
                && joined_at.elapsed() >= UNASSIGNED_WARNING
            {
                warned_unassigned = true;
                tracing::warn!(
                    waited_s = joined_at.elapsed().as_secs(),
                    group = %config.group_id,
                    "no partition assigned yet: expected when the group has more members than partitions; \
                     otherwise the group coordinator may be stuck (docs/kafka.md)"
                );
            }
        }
        let stopping = shutdown.load(Ordering::Relaxed);
        let caught_up = options.exit_when_caught_up
            && !processor.runners.is_empty()
            && processor.runners.values().all(TaskRunner::caught_up);
        if stopping || caught_up {
            processor.start_cycle()?;
            processor.settle(true, &[])?;
            // A planned move restores with nothing to re-fold.
            processor.request_checkpoints(true);
            if let Some(checkpointer) = processor.checkpointer.take() {
                processor.stats.note_checkpoints(&checkpointer.finish());
            }
            tracing::info!(stats = ?processor.stats, reason = if stopping { "signal" } else { "caught up" }, "stopping");
            break;
        }
        if !received && taken == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let stats = processor.stats.clone();
    if let Some(service) = &processor.service {
        service.metrics.publish(&stats);
        service.health.set_tasks(Tasks::default());
    }
    if let Some(announcer) = processor.announcer.take() {
        announcer.leave();
    }
    drop(follower);
    if let Some(ticker) = processor.ticker.take() {
        ticker.close();
    }
    for (_, runner) in std::mem::take(&mut processor.runners) {
        runner.close();
    }
    let Processor { consumer, .. } = processor;
    consumer.unsubscribe();
    close_in_background(consumer);
    Ok(stats)
}
