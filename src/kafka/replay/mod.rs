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
//! `--from-checkpoint` starts each task from a checkpoint of the live
//! processor (`gpuledger checkpoint list`) instead of offset 0: the newest
//! on the committed history, as a restoring processor picks it, or one named
//! by id. Only the records after it are read and folded, so the outputs
//! written are those derived after the checkpoint; the state is whole.
//!
//! `--until T` folds exactly the records whose `time` is at or before T
//! (records without a readable time are left out too), so the state is the
//! ledger as of T. `--what-if-rates` folds the same deals and usage a second
//! time with other rate cards, taken by the merge rule among the actual
//! order of deals and usage, and compares the two.

mod input;
mod output;
mod what_if;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::bail;
use serde::Serialize;

use self::input::{Input, ReplayInputs};
use self::output::{ReplaySink, Writer};
use self::what_if::{read_rates, Failed, WhatIf, WhatIfStep};
use super::client::close_in_background;
use super::progress::{on_committed_chain, read_progress, CommittedPlan};
use crate::checkpoint::restore::restore_newest;
use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::drive::{retry_poisoned, Driver, Step, Stop, TaskStep};
use crate::events::avro::SchemaRegistry;
use crate::events::{Decoded, InputRecord, Topic};
use crate::fold::state::{KeyedOffsets, Offsets, TaskState};
use crate::fold::Task;
use crate::kafka::live::RunStats;
use crate::progress_bar::ProgressBar;
use crate::records::Balances;
use crate::serve::{Service, Tasks};
use crate::store::rocks::RocksStore;
use crate::store::{self, KvStore};
use crate::units::Millis;
use crate::whatif::{Comparison, Side};

/// Records folded between two writes of the state to RocksDB.
pub(super) const COMMIT_EVERY: u64 = 50_000;

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
    /// Metrics and health over HTTP while the replay runs.
    pub service: Option<Arc<Service>>,
    /// Start each task from a checkpoint instead of offset 0.
    pub from_checkpoint: Option<FromCheckpoint>,
}

/// Which checkpoint `--from-checkpoint` starts a task from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromCheckpoint {
    /// The newest on the committed history (what a restoring processor takes).
    Newest,
    /// This one (one task only).
    Id(String),
}

impl FromCheckpoint {
    /// `newest`, or a checkpoint id.
    pub fn parse(text: &str) -> FromCheckpoint {
        if text == "newest" {
            FromCheckpoint::Newest
        } else {
            FromCheckpoint::Id(text.to_owned())
        }
    }
}

/// The replay's counts as the metrics show them while it runs.
pub(super) struct Observed {
    service: Option<Arc<Service>>,
    stats: Mutex<RunStats>,
}

impl Observed {
    /// Records folded since the last report, per input.
    pub(super) fn folded(&self, by_topic: [u64; 3]) {
        let Some(service) = &self.service else { return };
        let mut stats = self.stats.lock().expect("stats lock");
        for (total, more) in stats.records_folded_by_topic.iter_mut().zip(by_topic) {
            *total += more;
        }
        stats.records_folded = stats.records_folded_by_topic.iter().sum();
        service.metrics.publish(&stats);
        service.health.beat();
    }
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
    /// Records the checkpoints started from had folded (`--from-checkpoint`).
    pub records_restored: u64,
    pub outputs: u64,
    pub seconds: f64,
    /// Input records read per second.
    pub records_per_second: f64,
    #[serde(skip)]
    pub what_if: Option<Comparison>,
}

pub fn replay(config: &Config, options: &ReplayOptions) -> crate::Result<ReplaySummary> {
    let started = Instant::now();
    let metadata = super::client::metadata_consumer(config)?;
    let partitions = super::cluster::check_copartitioned(config, &metadata)?;
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
    check_from_checkpoint(config, options, &tasks)?;
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
    let committed = super::cluster::group_offsets(config, &tasks)?;
    let writer = Writer::open(config, &options.sink, partitions)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(tasks.len()).max(1);
    tracing::info!(
        tasks = ?tasks,
        threads,
        until = ?options.until.map(crate::units::format_millis),
        state_dir = %options.state_dir.display(),
        "replay starting"
    );
    if let Some(service) = &options.service {
        service.health.beat();
        service.health.set_tasks(Tasks { joined: true, assigned: tasks.iter().copied().collect(), ..Tasks::default() });
    }
    let shared = Shared {
        observed: Observed { service: options.service.clone(), stats: Mutex::new(RunStats::default()) },
        config,
        options,
        store: Mutex::new(store),
        writer,
        progress: Mutex::new(ProgressBar::new("replay", total, tasks.len() as u32)),
        queue: Mutex::new(tasks.iter().copied().collect()),
        committed,
        what_if_rates,
        partitions,
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
            summary.records_restored += task.records_restored;
            summary.outputs += task.outputs;
            if let (Some(all), Some(one)) = (comparison.as_mut(), task.comparison) {
                all.rows.extend(one.rows);
            }
        }
    }
    let Shared { progress, writer, .. } = shared;
    progress.into_inner().expect("progress lock").finish();
    writer.finish(&tasks)?;
    // What --from-checkpoint staged (restores remove their files; the directory may stay).
    let _ = std::fs::remove_dir(options.state_dir.join("checkpoint-staging"));
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_second = summary.records_read as f64 / summary.seconds.max(1e-9);
    summary.what_if = comparison;
    Ok(summary)
}

/// `--from-checkpoint` needs a checkpoint store, and cannot go with what
/// would need the history before the checkpoint.
fn check_from_checkpoint(config: &Config, options: &ReplayOptions, tasks: &[u32]) -> crate::Result<()> {
    let Some(from) = &options.from_checkpoint else { return Ok(()) };
    if config.checkpoints.store.is_none() {
        bail!("--from-checkpoint needs the checkpoint store: set [checkpoints] store or GPULEDGER_CHECKPOINTS__STORE");
    }
    if options.until.is_some() {
        bail!(
            "--from-checkpoint cannot go with --until: a checkpoint may hold records after T; replay from offset 0 for an as-of state"
        );
    }
    if options.what_if_rates.is_some() {
        bail!("--from-checkpoint cannot go with --what-if-rates: the what-if folds the whole history with other rates");
    }
    if let FromCheckpoint::Id(id) = from {
        if tasks.len() != 1 {
            bail!("--from-checkpoint {id}: a checkpoint belongs to one task; name it with --partitions");
        }
    }
    Ok(())
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
    let Some(ends) = super::cluster::end_offsets(config, &partitions)? else { return Ok(None) };
    let rates = ends[0].max(0) as u64;
    Ok(Some(ends[1..].iter().map(|end| end.max(&0).unsigned_abs()).sum::<u64>() + rates * tasks.len() as u64))
}

/// What the replay threads share.
struct Shared<'a> {
    config: &'a Config,
    options: &'a ReplayOptions,
    store: Mutex<RocksStore>,
    writer: Writer,
    progress: Mutex<ProgressBar>,
    /// Tasks not yet taken by a thread.
    queue: Mutex<VecDeque<u32>>,
    committed: std::collections::BTreeMap<u32, KeyedOffsets>,
    what_if_rates: Option<Vec<(InputRecord, Decoded)>>,
    observed: Observed,
    /// The inputs' partition count.
    partitions: u32,
}

/// One task's counts (and what-if rows: start-ups belong to one task, so
/// the tasks' rows never overlap).
#[derive(Default)]
struct TaskSummary {
    records_read: u64,
    records_folded: u64,
    records_after_until: u64,
    records_in_recorded_order: u64,
    records_restored: u64,
    outputs: u64,
    comparison: Option<Comparison>,
}

impl Shared<'_> {
    /// Takes tasks from the queue until it is empty.
    fn work(&self) -> crate::Result<Vec<TaskSummary>> {
        let mut done = Vec::new();
        loop {
            let Some(partition) = self.queue.lock().expect("queue lock").pop_front() else { return Ok(done) };
            let committed = self.committed.get(&partition).copied().unwrap_or_default();
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
    fn replay_task(&self, partition: u32, committed: KeyedOffsets) -> crate::Result<TaskSummary> {
        let mut written = 0u64;
        retry_poisoned(partition, |poisoned| self.replay_attempt(partition, committed, poisoned, &mut written))
    }

    fn replay_attempt(
        &self,
        partition: u32,
        committed: KeyedOffsets,
        poisoned: &[Failed],
        written: &mut u64,
    ) -> crate::Result<Result<TaskSummary, Failed>> {
        let mut comparison = self.what_if_rates.as_ref().map(|_| Comparison::default());
        let topics = &self.config.topics;
        let (start, entries) = match &self.options.from_checkpoint {
            Some(from) => self.start_from_checkpoint(partition, committed, from)?,
            None => (None, None),
        };
        let from = start.as_ref().map_or(Offsets::ZERO, |state| state.offsets);
        // Nothing committed after where the replay starts: the merge rule throughout.
        let mut driver = if committed == KeyedOffsets::default() || from.keyed() == committed {
            Driver::merge(partition)
        } else {
            let entries = match entries {
                Some(entries) => entries,
                None => read_progress(self.config, partition)?,
            };
            match CommittedPlan::of(&entries, from, committed).segments {
                Some(segments) => Driver::recorded(partition, segments),
                None => {
                    tracing::warn!(
                        partition,
                        from = ?from,
                        "the progress records do not chain back to where the replay starts; replaying by the merge rule"
                    );
                    Driver::merge(partition)
                }
            }
        }
        .until(self.options.until);
        let mut inputs = ReplayInputs {
            inputs: [
                Input::open(self.config, Topic::Rates, &topics.rates, 0, from[Topic::Rates])?,
                Input::open(self.config, Topic::Deals, &topics.deals, partition, from[Topic::Deals])?,
                Input::open(self.config, Topic::Metering, &topics.metering, partition, from[Topic::Metering])?,
            ],
            registry: SchemaRegistry::with_ids(&self.config.schema_ids),
            limits: self.config.fold.limits,
        };
        let fresh = || TaskState { partition, ..TaskState::default() };
        let records_restored = start.as_ref().map_or(0, |state| state.folded);
        let mut actual = Task::new(self.config.fold.clone(), start.unwrap_or_else(fresh));
        for failed in poisoned {
            if let Failed::Actual(poison) = failed {
                actual.poison(poison);
            }
        }
        let mut sink = ReplaySink {
            partition,
            output: self.writer.for_task(partition)?,
            // Files are written anew by each attempt; topics keep what was sent.
            to_skip: if matches!(self.writer, Writer::Topics { .. }) { *written } else { 0 },
            written,
            outputs: 0,
            since_commit: 0,
            read_since_report: 0,
            folded_since_report: [0; 3],
            store: &self.store,
            progress: &self.progress,
            observed: &self.observed,
        };
        let mut persisted = match self.what_if_rates.clone() {
            None => {
                let mut step = TaskStep::new(&mut actual, &mut sink);
                if let Err(poison) = drive_to_end(&mut driver, &mut inputs, &mut step)? {
                    return Ok(Err(Failed::Actual(poison)));
                }
                actual
            }
            Some(rates) => {
                let mut task = Task::new(self.config.fold.clone(), fresh());
                for failed in poisoned {
                    if let Failed::WhatIf(poison) = failed {
                        task.poison(poison);
                    }
                }
                let mut what_if = WhatIf { task, rates, next_rate: 0 };
                let comparison = comparison.as_mut().expect("a comparison with what-if rates");
                let mut step = WhatIfStep {
                    actual: &mut actual,
                    what_if: &mut what_if,
                    sink: &mut sink,
                    comparison,
                    until: self.options.until,
                    alternative: Vec::new(),
                    outputs: Vec::new(),
                    encoded: Vec::new(),
                };
                if let Err(poison) = drive_to_end(&mut driver, &mut inputs, &mut step)? {
                    return Ok(Err(poison));
                }
                // Rate cards after the last event: folded for a complete state.
                let mut outputs = Vec::new();
                if let Err(poison) = what_if.take_rates(None, self.options.until, &mut outputs, &mut Vec::new()) {
                    return Ok(Err(Failed::WhatIf(poison)));
                }
                comparison.absorb(Side::WhatIf, &outputs);
                what_if.task
            }
        };
        let ReplaySink { output, outputs, read_since_report, folded_since_report, .. } = sink;
        self.progress.lock().expect("progress lock").advance(read_since_report);
        self.observed.folded(folded_since_report);
        persist(&self.store, &mut persisted)?;
        output.finish()?;
        let names = super::topics::input_names(topics);
        let balances: Vec<Balances> =
            persisted.state().startups.keys().filter_map(|startup| persisted.balances(startup, &names)).collect();
        self.writer.balances(partition, balances)?;
        tracing::info!(partition, offsets = ?persisted.state().offsets, digest = %persisted.state().digest.hex(), "task replayed");
        tracing::debug!(partition, "closing the task's consumers");
        for input in inputs.inputs {
            close_in_background(input.consumer);
        }
        tracing::debug!(partition, "task's consumers closed");
        let counts = driver.counts();
        Ok(Ok(TaskSummary {
            records_read: counts.taken,
            records_folded: counts.taken - counts.after_until,
            records_after_until: counts.after_until,
            records_in_recorded_order: counts.in_recorded_order,
            records_restored,
            outputs,
            comparison,
        }))
    }
}

impl Shared<'_> {
    /// Installs the checkpoint `from` names for task `partition` in place of
    /// whatever the task's state holds (a retry starts from it again), and
    /// returns the state it holds with the progress records read to choose
    /// it; `None` (and a warning) when no checkpoint is usable: the replay
    /// then starts from offset 0.
    fn start_from_checkpoint(
        &self,
        partition: u32,
        committed: KeyedOffsets,
        from: &FromCheckpoint,
    ) -> crate::Result<(Option<TaskState>, Option<Vec<super::progress::ProgressEntry>>)> {
        let checkpoints = CheckpointStore::open(&self.config.checkpoints, &self.config.group_id)?;
        let entries = read_progress(self.config, partition)?;
        let accept = |manifest: &crate::checkpoint::Manifest| {
            if let FromCheckpoint::Id(id) = from {
                if manifest.id != *id {
                    return Err(format!("not {id}"));
                }
            }
            if on_committed_chain(&entries, manifest.offsets(), &manifest.digest, committed) {
                Ok(())
            } else {
                Err("no chain of committed progress records leads from it to the group's offsets".to_owned())
            }
        };
        let staging = self.options.state_dir.join("checkpoint-staging");
        let mut rocks = self.store.lock().expect("store lock");
        rocks.delete_ranges(&crate::checkpoint::task_ranges(partition))?;
        let outcome = restore_newest(
            &checkpoints,
            &mut rocks,
            partition,
            self.partitions,
            Offsets::ZERO,
            committed,
            accept,
            &staging,
        )?;
        let Some(manifest) = outcome.restored else {
            let reasons: Vec<String> = outcome
                .skipped
                .iter()
                .filter(|(_, reason)| !reason.starts_with("not "))
                .map(|(id, reason)| format!("{id}: {reason}"))
                .collect();
            if let FromCheckpoint::Id(id) = from {
                bail!(
                    "checkpoint {id} of task {partition} cannot start the replay (it must be at or before the group's \
                     committed offsets, on the committed history, and intact): {}",
                    if reasons.is_empty() { "no such checkpoint".to_owned() } else { reasons.join("; ") }
                );
            }
            tracing::warn!(partition, passed_over = ?reasons, "no usable checkpoint; replaying the task from offset 0");
            return Ok((None, Some(entries)));
        };
        let state = store::load_task(&*rocks, partition)?;
        tracing::info!(
            partition,
            checkpoint = %manifest.id,
            records = manifest.records,
            offsets = ?manifest.offsets(),
            "replay starts from a checkpoint"
        );
        Ok((Some(state), Some(entries)))
    }
}

/// Runs the driver to the end of the inputs, fetching whenever it waits.
fn drive_to_end<S: Step>(
    driver: &mut Driver,
    inputs: &mut ReplayInputs,
    step: &mut S,
) -> crate::Result<Result<(), S::Poison>> {
    loop {
        match driver.run(inputs, step)? {
            Err(poison) => return Ok(Err(poison)),
            Ok(Stop::Idle) => return Ok(Ok(())),
            Ok(Stop::Wait) => inputs.fill_pending()?,
            Ok(Stop::Yielded) => {}
        }
    }
}

pub(super) fn persist(store: &Mutex<RocksStore>, task: &mut Task) -> crate::Result<()> {
    let changes = task.take_changes();
    if !changes.is_empty() {
        let ops = store::commit_ops(task.state(), &changes);
        store.lock().expect("store lock").write(ops)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_publishes_what_it_folded_to_the_metrics() {
        let names = ["r".to_owned(), "d".to_owned(), "m".to_owned()];
        let service = Service::new(crate::serve::Metrics::new(names, None), None);
        let observed = Observed { service: Some(Arc::clone(&service)), stats: Mutex::new(RunStats::default()) };
        observed.folded([1, 2, 300]);
        observed.folded([0, 0, 45]);
        let text = service.metrics.render();
        for line in [
            "gpuledger_records_folded_total{topic=\"r\"} 1",
            "gpuledger_records_folded_total{topic=\"d\"} 2",
            "gpuledger_records_folded_total{topic=\"m\"} 345",
        ] {
            assert!(text.lines().any(|candidate| candidate == line), "no {line:?} in\n{text}");
        }
    }
}
