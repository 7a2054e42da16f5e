//! Batch mode: `gpuledger fold` over three JSONL files.
//!
//! The files are taken as one task's three inputs in log order (or, with
//! `--partitions N`, split by key as Kafka's default partitioner would, ticks
//! to every partition, one task per partition), so batch mode computes what
//! the live processor computes on N partitions. Every input is complete, so
//! the merge never waits: it follows the rule of spec §4 exactly.
//!
//! With a state directory the state is committed to RocksDB every
//! `commit_every` records and at the end; a later run over longer files
//! skips what the stored offsets say was folded and continues.

mod input;
mod output;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::Context as _;

pub use self::input::{is_tick, record_key, route};
use self::input::{route_lines, Cursor, Cursors};
pub(crate) use self::output::OutputFiles;
pub use self::output::{balance_detail, balance_table, read_balances, write_balances};
use self::output::{OutLock, RecordedOutputs, BATCH_OUTPUTS_KEY};
use crate::drive::{retry_poisoned, Driver, Flow, Sink, Stop, TaskStep};
use crate::events::{InputRecord, Topic};
use crate::fold::{FoldConfig, FoldStats, Poisoned, Task, TopicNames};
use crate::records::{Balances, Output};
use crate::store::{self, rocks::RocksStore, KvStore};

#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub rates: PathBuf,
    pub deals: PathBuf,
    pub metering: PathBuf,
    pub out: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub partitions: u32,
    pub fold: FoldConfig,
    /// Records folded between two commits to the state store.
    pub commit_every: u64,
    /// Fold only the records whose `time` is at or before this instant,
    /// in the order the merge takes them from the whole files (as-of T).
    pub until: Option<crate::units::Millis>,
    /// Fault injection for tests: the process aborts (as if killed) at this
    /// point, so crash-safe resumption can be shown.
    #[doc(hidden)]
    pub inject_crash: Option<CrashPoint>,
}

/// Where an injected crash strikes (counted over the whole run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after the N-th record's outputs went to the write buffers.
    AfterRecord(u64),
    /// In the N-th state commit, after the outputs were synced and before
    /// the state was written.
    InCommit(u64),
}

impl std::str::FromStr for CrashPoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, count) = text.split_once(':').ok_or_else(|| format!("{text:?} is not record:N or commit:N"))?;
        let count = count.parse().map_err(|_| format!("{count:?} is not a count"))?;
        match kind {
            "record" => Ok(CrashPoint::AfterRecord(count)),
            "commit" => Ok(CrashPoint::InCommit(count)),
            _ => Err(format!("{kind:?} is not record or commit")),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub records: u64,
    pub usage_accepted: u64,
    pub dead_letters: u64,
    pub duplicates_dropped: u64,
    pub outputs: [u64; 5],
    pub startups: usize,
    /// Records `until` left out: later, or without a readable time.
    pub after_until: u64,
}

fn add_stats(left: FoldStats, right: FoldStats) -> FoldStats {
    FoldStats {
        records: left.records + right.records,
        usage_accepted: left.usage_accepted + right.usage_accepted,
        dead_letters: left.dead_letters + right.dead_letters,
        duplicates_dropped: left.duplicates_dropped + right.duplicates_dropped,
        ticks: left.ticks + right.ticks,
    }
}

pub fn run(options: &BatchOptions) -> crate::Result<BatchSummary> {
    anyhow::ensure!(options.partitions >= 1, "--partitions must be at least 1");
    let calendar = crate::fold::EARLIEST_REPRESENTABLE_TIME..=crate::fold::LATEST_REPRESENTABLE_TIME;
    anyhow::ensure!(
        calendar.contains(&options.fold.earliest_time)
            && calendar.contains(&options.fold.latest_time)
            && options.fold.earliest_time <= options.fold.latest_time,
        "--earliest-time and --latest-time must lie within years 0000 to 9999 (UTC), the earliest first"
    );
    for (path, topic) in
        [(&options.rates, Topic::Rates), (&options.deals, Topic::Deals), (&options.metering, Topic::Metering)]
    {
        anyhow::ensure!(path.is_file(), "{} input {} is not a readable file", topic.name(), path.display());
    }
    let _lock = OutLock::take(&options.out)?;
    let mut store: Option<RocksStore> = match &options.state_dir {
        Some(dir) => Some(RocksStore::open(dir)?),
        None => None,
    };
    // The same --out as the state's last run: cut its files to what the
    // state covers and append (a crashed or stopped run, resumed). Another
    // --out: it gets the continuation only, in new files.
    let out = std::fs::canonicalize(&options.out).with_context(|| format!("resolving {}", options.out.display()))?;
    let mut resume = None;
    if let Some(store) = store.as_mut() {
        store::check_layout(store, options.partitions)?;
        if let Some(bytes) = store.get(store::columns::Column::Meta, BATCH_OUTPUTS_KEY)? {
            let recorded: RecordedOutputs =
                serde_json::from_slice(&bytes).context("reading the output lengths recorded in the state")?;
            if recorded.out == out {
                resume = Some(recorded.lengths);
            }
        }
    }
    let mut files = OutputFiles::open(&options.out, resume.as_ref())?;
    let mut summary = BatchSummary::default();
    let mut all_balances: Vec<Balances> = Vec::new();
    let names = TopicNames::default();
    let mut progress =
        Counters { started: Instant::now(), last: Instant::now(), records_before: 0, written: 0, commits: 0 };
    // Rates are read whole by every task; deals and metering are split.
    let mut routes: [Option<Rc<Vec<u32>>>; 3] = Default::default();
    if options.partitions > 1 {
        for (path, topic) in [(&options.deals, Topic::Deals), (&options.metering, Topic::Metering)] {
            routes[topic.index()] = Some(Rc::new(route_lines(path, topic, options.partitions, &options.fold.limits)?));
        }
    }
    for partition in 0..options.partitions {
        // A record that fails inside the fold: the task is rebuilt from its
        // last commit (or its start, without a state directory) and folds
        // again, the record now an `internal_error` dead letter; outputs
        // already written are not written twice.
        let mut base = Base::default();
        let (task, stats, after_until) = retry_poisoned(partition, |poisoned| {
            let mut attempt = Attempt {
                options,
                out: &out,
                partition,
                routes: &routes,
                store: store.as_mut(),
                files: &mut files,
                progress: &mut progress,
                base: &mut base,
            };
            attempt.fold(poisoned)
        })?;
        summary.records += stats.records;
        summary.usage_accepted += stats.usage_accepted;
        summary.dead_letters += stats.dead_letters;
        summary.duplicates_dropped += stats.duplicates_dropped;
        summary.after_until += after_until;
        summary.startups += task.state().startups.len();
        progress.records_before += stats.records;
        for startup in task.state().startups.keys() {
            all_balances.push(task.balances(startup, &names).expect("listed start-up"));
        }
    }
    summary.outputs = files.finish()?;
    all_balances.sort_by(|left, right| left.startup.cmp(&right.startup));
    write_balances(&options.out.join("balances.json"), &all_balances)?;
    Ok(summary)
}

/// Where a task's folding starts again after a rebuild: the stats and the
/// `--until` count of what its last commit covers (zero without a state
/// directory: then it starts again from the start), and how many records
/// were folded since (their outputs are written already).
#[derive(Clone, Copy, Debug, Default)]
struct Base {
    stats: FoldStats,
    after_until: u64,
    folded_since: u64,
}

struct Counters {
    started: Instant,
    last: Instant,
    records_before: u64,
    /// Records written and commits made in this run, for injected crashes.
    written: u64,
    commits: u64,
}

/// What a task's folding came to: the task, its stats in this run, and how
/// many records `--until` left out.
type Folded = (Task, FoldStats, u64);

/// One attempt at folding one task's inputs from its base.
struct Attempt<'a> {
    options: &'a BatchOptions,
    /// The output directory, resolved, as the state records it.
    out: &'a Path,
    partition: u32,
    routes: &'a [Option<Rc<Vec<u32>>>; 3],
    store: Option<&'a mut RocksStore>,
    files: &'a mut OutputFiles,
    progress: &'a mut Counters,
    base: &'a mut Base,
}

impl Attempt<'_> {
    /// Folds the task to the end of its inputs, or stops at the record that
    /// failed inside the fold.
    fn fold(&mut self, poisoned: &[Poisoned]) -> crate::Result<Result<Folded, Poisoned>> {
        let (options, partition) = (self.options, self.partition);
        let state = match self.store.as_deref() {
            Some(store) => store::load_task(store, partition)?,
            None => crate::fold::state::TaskState { partition, ..Default::default() },
        };
        let paths = [&options.rates, &options.deals, &options.metering];
        let mut cursors = Vec::with_capacity(3);
        for topic in Topic::ALL {
            cursors.push(Cursor::open(
                paths[topic.index()],
                topic,
                partition,
                options.partitions,
                state.offsets[topic],
                self.routes[topic.index()].clone(),
                options.fold.limits,
            )?);
        }
        let mut inputs = Cursors { cursors, paths };
        let mut task = Task::new(options.fold.clone(), state);
        for poison in poisoned {
            task.poison(poison);
        }
        let start = *self.base;
        let mut sink = FileSink { attempt: self, start, to_skip: start.folded_since, after_until: 0, since_commit: 0 };
        let mut driver = Driver::merge(partition).until(options.until);
        match driver.run(&mut inputs, &mut TaskStep::new(&mut task, &mut sink))? {
            Err(poison) => return Ok(Err(poison)),
            Ok(Stop::Idle) => {}
            Ok(stop) => {
                anyhow::bail!("task {partition}: the batch inputs are complete, yet the fold stopped ({stop:?})")
            }
        }
        let after_until = driver.counts().after_until;
        sink.attempt.persist(&mut task, &start, after_until)?;
        let stats = add_stats(start.stats, task.stats());
        Ok(Ok((task, stats, start.after_until + after_until)))
    }

    /// Persists the task's changes with a state directory: the outputs so
    /// far are synced first and their lengths written with the state, so the
    /// state never covers outputs that are not on disk; the base moves here.
    fn persist(&mut self, task: &mut Task, start: &Base, after_until: u64) -> crate::Result<()> {
        let changes = task.take_changes();
        let Some(store) = self.store.as_deref_mut() else { return Ok(()) };
        self.files.sync()?;
        self.progress.commits += 1;
        if self.options.inject_crash == Some(CrashPoint::InCommit(self.progress.commits)) {
            std::process::abort();
        }
        let mut ops = store::commit_ops(task.state(), &changes);
        let recorded = RecordedOutputs { out: self.out.to_owned(), lengths: self.files.lengths };
        ops.push(store::Op {
            column: store::columns::Column::Meta,
            key: BATCH_OUTPUTS_KEY.to_vec(),
            value: Some(serde_json::to_vec(&recorded)?),
        });
        store.write(ops)?;
        *self.base = Base {
            stats: add_stats(start.stats, task.stats()),
            after_until: start.after_until + after_until,
            folded_since: 0,
        };
        Ok(())
    }
}

/// Where an attempt's outputs go: the output files (records folded again
/// after a rebuild were written before, and are skipped), with the state
/// committed every `commit_every` records.
struct FileSink<'s, 'a> {
    attempt: &'s mut Attempt<'a>,
    start: Base,
    /// Records folded again after a rebuild whose outputs are written already.
    to_skip: u64,
    /// Records `--until` left out in this attempt.
    after_until: u64,
    since_commit: u64,
}

impl Sink for FileSink<'_, '_> {
    fn write(
        &mut self,
        _: &mut Task,
        _: &InputRecord,
        outputs: &mut Vec<Output>,
        encoded: &mut Vec<Vec<u8>>,
    ) -> crate::Result<()> {
        if self.to_skip > 0 {
            self.to_skip -= 1;
            return Ok(());
        }
        let attempt = &mut *self.attempt;
        attempt.files.write(outputs, encoded)?;
        attempt.base.folded_since += 1;
        attempt.progress.written += 1;
        if attempt.options.inject_crash == Some(CrashPoint::AfterRecord(attempt.progress.written)) {
            std::process::abort();
        }
        Ok(())
    }

    fn left_out(&mut self, _: &InputRecord) -> crate::Result<()> {
        self.after_until += 1;
        Ok(())
    }

    fn folded(&mut self, task: &mut Task) -> crate::Result<Flow> {
        self.since_commit += 1;
        if self.since_commit >= self.attempt.options.commit_every {
            self.attempt.persist(task, &self.start, self.after_until)?;
            self.since_commit = 0;
        }
        let progress = &mut *self.attempt.progress;
        if progress.last.elapsed().as_secs() >= 5 {
            progress.last = Instant::now();
            let records = progress.records_before + self.start.stats.records + task.stats().records;
            tracing::info!(
                partition = self.attempt.partition,
                records,
                records_per_second = (records as f64 / progress.started.elapsed().as_secs_f64()) as u64,
                "folding"
            );
        }
        Ok(Flow::Continue)
    }
}
