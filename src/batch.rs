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

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::Context as _;
use serde_json::Value;

use crate::events::{Decoded, InputRecord, Topic};
use crate::fold::merge::{choose, Choice, Head};
use crate::fold::{FoldConfig, FoldStats, Poisoned, Task, TopicNames};
use crate::partitioner::partition_for_key;
use crate::records::{Balances, Output, Stream};
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

/// The Kafka key a producer gives a line: the start-up for deals and usage,
/// `gpu_model/region/tier` for rates, none for ticks or unreadable lines.
pub fn record_key(topic: Topic, value: &Value) -> Option<Vec<u8>> {
    match topic {
        Topic::Rates => {
            let data = value.get("data")?;
            let part = |name: &str| data.get(name).and_then(Value::as_str);
            Some(format!("{}/{}/{}", part("gpu_model")?, part("region")?, part("tier")?).into_bytes())
        }
        Topic::Deals | Topic::Metering => {
            if is_tick(value) {
                return None;
            }
            value.get("subject").and_then(Value::as_str).map(|subject| subject.as_bytes().to_vec())
        }
    }
}

pub fn is_tick(value: &Value) -> bool {
    value.get("type").and_then(Value::as_str) == Some("gpuledger.clock.tick")
}

/// Where a line goes: `None` = every partition (ticks on metering).
/// Unkeyed lines go to partition 0, as `gpuledger produce` sends them.
pub fn route(topic: Topic, key: Option<&[u8]>, tick: bool, partitions: u32) -> Option<u32> {
    match (topic, key) {
        (Topic::Rates, _) => Some(0),
        (Topic::Metering, _) if tick => None,
        (_, Some(key)) => Some(partition_for_key(key, partitions)),
        (_, None) => Some(0),
    }
}

/// One task's view of one input file: the lines routed to its partition,
/// numbered by their offset within that partition.
struct Cursor {
    topic: Topic,
    partition: u32,
    partitions: u32,
    lines: std::io::Split<BufReader<File>>,
    /// With several tasks: each line's partition, worked out once for all
    /// tasks (see [`route_lines`]), so a task parses only its own lines.
    routes: Option<Rc<Vec<u32>>>,
    line_index: usize,
    next_offset: i64,
    skip_below: i64,
    head: Option<(InputRecord, Decoded)>,
    done: bool,
    limits: crate::events::Limits,
}

impl Cursor {
    fn open(
        path: &Path,
        topic: Topic,
        partition: u32,
        partitions: u32,
        skip_below: i64,
        routes: Option<Rc<Vec<u32>>>,
        limits: crate::events::Limits,
    ) -> crate::Result<Cursor> {
        Ok(Cursor {
            topic,
            partition,
            partitions,
            lines: open_lines(path, topic)?,
            routes,
            line_index: 0,
            next_offset: 0,
            skip_below,
            head: None,
            done: false,
            limits,
        })
    }

    fn fill(&mut self, path: &Path) -> crate::Result<Head> {
        while self.head.is_none() && !self.done {
            let Some(line) = self.lines.next() else {
                self.done = true;
                break;
            };
            let line = without_cr(line.with_context(|| format!("reading {}", path.display()))?);
            let known = self.routes.as_ref().and_then(|routes| routes.get(self.line_index).copied());
            self.line_index += 1;
            if known.is_some_and(|target| target != EVERY_PARTITION && target != self.partition) {
                continue;
            }
            let oversize = crate::events::oversize(&line, &self.limits);
            let parsed = match oversize {
                Some(_) => Err(crate::events::Rejection::new(crate::events::Reason::Undecodable, "oversize")),
                None => crate::events::json::parse(&line),
            };
            let (key, tick) = key_and_tick(self.topic, &parsed);
            // Rates are one partition, read whole by every task.
            let target = if self.topic == Topic::Rates {
                Some(0)
            } else {
                route(self.topic, key.as_deref(), tick, self.partitions)
            };
            if self.topic != Topic::Rates && target.is_some_and(|target| target != self.partition) {
                continue;
            }
            let offset = self.next_offset;
            self.next_offset += 1;
            if offset < self.skip_below {
                continue;
            }
            let decoded = match oversize {
                Some(refused) => refused,
                None => crate::events::decode_parsed(self.topic, parsed, &self.limits),
            };
            let record = InputRecord {
                topic: self.topic,
                partition: if self.topic == Topic::Rates { 0 } else { self.partition },
                offset,
                key,
                value: line,
                headers: Vec::new(),
            };
            self.head = Some((record, decoded));
        }
        Ok(match &self.head {
            Some((_, decoded)) => Head::Ready(decoded.time),
            None => Head::CaughtUp,
        })
    }
}

/// In [`route_lines`]' answer: a line every partition takes (a tick).
const EVERY_PARTITION: u32 = u32::MAX;

fn open_lines(path: &Path, topic: Topic) -> crate::Result<std::io::Split<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("opening {} input {}", topic.name(), path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, file).split(b'\n'))
}

/// A line without the `\r` of a CRLF ending.
fn without_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

/// A parsed line's key and whether it is a tick; nothing for a broken line.
fn key_and_tick<E>(topic: Topic, parsed: &Result<Value, E>) -> (Option<Vec<u8>>, bool) {
    match parsed {
        Ok(value) => (record_key(topic, value), is_tick(value)),
        Err(_) => (None, false),
    }
}

/// Each line's partition among `partitions` (ticks: [`EVERY_PARTITION`]),
/// parsing every line once; the tasks then skip other partitions' lines
/// without parsing them.
fn route_lines(path: &Path, topic: Topic, partitions: u32, limits: &crate::events::Limits) -> crate::Result<Vec<u32>> {
    let mut routes = Vec::new();
    for line in open_lines(path, topic)? {
        let line = without_cr(line.with_context(|| format!("reading {}", path.display()))?);
        // An oversize line is not parsed: unkeyed, as the cursor takes it.
        if crate::events::oversize(&line, limits).is_some() {
            routes.push(route(topic, None, false, partitions).unwrap_or(EVERY_PARTITION));
            continue;
        }
        let (key, tick) = key_and_tick(topic, &crate::events::json::parse(&line));
        routes.push(route(topic, key.as_deref(), tick, partitions).unwrap_or(EVERY_PARTITION));
    }
    Ok(routes)
}

pub(crate) struct OutputFiles {
    paths: Vec<PathBuf>,
    writers: Vec<BufWriter<File>>,
    counts: [u64; 5],
    /// Bytes written to each file, from its start.
    lengths: [u64; 5],
}

/// The output file lengths a batch commit records with the state it writes
/// (meta column, [`BATCH_OUTPUTS_KEY`]): a resume cuts the files to them,
/// so outputs of records the state does not cover are not kept twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RecordedOutputs {
    /// The output directory, resolved.
    out: PathBuf,
    /// Byte length of each output file, in [`Stream::ALL`] order.
    lengths: [u64; 5],
}

const BATCH_OUTPUTS_KEY: &[u8] = b"batch_outputs";

impl OutputFiles {
    pub(crate) fn create(dir: &Path) -> crate::Result<OutputFiles> {
        Self::open(dir, None)
    }

    /// Opens the five output files: new and empty, or (`resume`) cut to the
    /// recorded lengths and appended to.
    fn open(dir: &Path, resume: Option<&[u64; 5]>) -> crate::Result<OutputFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
        let mut files = OutputFiles { paths: Vec::new(), writers: Vec::new(), counts: [0; 5], lengths: [0; 5] };
        for (index, stream) in Stream::ALL.into_iter().enumerate() {
            let path = dir.join(format!("{}.jsonl", stream.name()));
            let file = match resume {
                None => File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                Some(lengths) => {
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    let actual = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
                    anyhow::ensure!(
                        actual >= lengths[index],
                        "{} holds {actual} bytes but the state directory's last commit covers {}: these are not \
                         the outputs of this state (give the --out of the run that wrote it, or a fresh --state-dir)",
                        path.display(),
                        lengths[index]
                    );
                    // Outputs written after the last state commit are
                    // written again by this run: cut them off.
                    file.set_len(lengths[index]).with_context(|| format!("truncating {}", path.display()))?;
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
                        .with_context(|| format!("seeking {}", path.display()))?;
                    files.lengths[index] = lengths[index];
                    file
                }
            };
            files.writers.push(BufWriter::with_capacity(1 << 20, file));
            files.paths.push(path);
        }
        Ok(files)
    }

    /// Writes outputs with their JSON bytes (as [`Task::fold_encoded`] gives them).
    pub(crate) fn write(&mut self, outputs: &mut Vec<Output>, encoded: &mut Vec<Vec<u8>>) -> crate::Result<()> {
        debug_assert_eq!(outputs.len(), encoded.len());
        for (output, bytes) in outputs.drain(..).zip(encoded.drain(..)) {
            let stream = output.stream() as usize;
            let writer = &mut self.writers[stream];
            let written = writer.write_all(&bytes).and_then(|()| writer.write_all(b"\n"));
            written.with_context(|| format!("writing {}", self.paths[stream].display()))?;
            self.counts[stream] += 1;
            self.lengths[stream] += bytes.len() as u64 + 1;
        }
        Ok(())
    }

    /// Flushes and fsyncs every file, so what the lengths say is on disk
    /// before a state commit records them.
    fn sync(&mut self) -> crate::Result<()> {
        for (writer, path) in self.writers.iter_mut().zip(&self.paths) {
            writer.flush().with_context(|| format!("writing {}", path.display()))?;
            writer.get_ref().sync_data().with_context(|| format!("syncing {}", path.display()))?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> crate::Result<[u64; 5]> {
        for (writer, path) in self.writers.iter_mut().zip(&self.paths) {
            writer.flush().with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(self.counts)
    }
}

/// An exclusive lock on an output directory for the length of a run, so two
/// runs cannot interleave their records in one set of files.
struct OutLock {
    _file: File,
}

impl OutLock {
    fn take(dir: &Path) -> crate::Result<OutLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
        let path = dir.join(".gpuledger.lock");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(OutLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                anyhow::bail!("{} is in use by another gpuledger run (lock file {})", dir.display(), path.display())
            }
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
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
        Progress { started: Instant::now(), last: Instant::now(), records_before: 0, written: 0, commits: 0 };
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
        let mut poisoned = Vec::new();
        let mut base = Base::default();
        let (task, stats, after_until) = loop {
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
            match attempt.fold(&poisoned)? {
                Ok(folded) => break folded,
                Err(poison) => {
                    tracing::warn!(partition, error = %poison, "rebuilding the task to dead-letter the record");
                    poisoned.push(poison);
                }
            }
        };
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

struct Progress {
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
    progress: &'a mut Progress,
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
                state.offsets[topic.index()],
                self.routes[topic.index()].clone(),
                options.fold.limits,
            )?);
        }
        let mut task = Task::new(options.fold.clone(), state);
        for poison in poisoned {
            task.poison(poison);
        }
        let start = *self.base;
        let mut to_skip = start.folded_since;
        let mut after_until = 0;
        let mut outputs = Vec::with_capacity(1024);
        let mut encoded = Vec::with_capacity(1024);
        let mut since_commit = 0u64;
        loop {
            let mut heads = [Head::CaughtUp; 3];
            for topic in Topic::ALL {
                heads[topic.index()] = cursors[topic.index()].fill(paths[topic.index()])?;
            }
            let topic = match choose(heads) {
                Choice::Take(topic) => topic,
                Choice::Idle => break,
                Choice::Wait => unreachable!("batch inputs are complete, the merge never waits"),
            };
            let (record, decoded) = cursors[topic.index()].head.take().expect("chosen input has a head");
            if let Some(until) = options.until {
                if decoded.time.is_none_or(|time| time > until) {
                    after_until += 1;
                    continue;
                }
            }
            if let Err(poison) = task.fold_encoded(&record, decoded, &mut outputs, &mut encoded) {
                return Ok(Err(poison));
            }
            if to_skip > 0 {
                // Folded again after a rebuild: written before.
                to_skip -= 1;
                outputs.clear();
                encoded.clear();
            } else {
                self.files.write(&mut outputs, &mut encoded)?;
                self.base.folded_since += 1;
                self.progress.written += 1;
                if options.inject_crash == Some(CrashPoint::AfterRecord(self.progress.written)) {
                    std::process::abort();
                }
            }
            since_commit += 1;
            if since_commit >= options.commit_every {
                self.commit(&mut task, &start, after_until)?;
                since_commit = 0;
            }
            if self.progress.last.elapsed().as_secs() >= 5 {
                self.progress.last = Instant::now();
                let records = self.progress.records_before + start.stats.records + task.stats().records;
                tracing::info!(
                    partition,
                    records,
                    records_per_second = (records as f64 / self.progress.started.elapsed().as_secs_f64()) as u64,
                    "folding"
                );
            }
        }
        self.commit(&mut task, &start, after_until)?;
        let stats = add_stats(start.stats, task.stats());
        Ok(Ok((task, stats, start.after_until + after_until)))
    }

    /// Persists the task's changes with a state directory: the outputs so
    /// far are synced first and their lengths written with the state, so the
    /// state never covers outputs that are not on disk; the base moves here.
    fn commit(&mut self, task: &mut Task, start: &Base, after_until: u64) -> crate::Result<()> {
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

/// `balances.json`: a JSON array, one start-up per line, sorted by start-up.
pub fn write_balances(path: &Path, balances: &[Balances]) -> crate::Result<()> {
    // Written aside and renamed: a crash leaves the old file or the new one.
    let partial = path.with_extension("json.partial");
    let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut writer = BufWriter::new(file);
    let mut write = || -> std::io::Result<()> {
        writer.write_all(b"[")?;
        for (index, balance) in balances.iter().enumerate() {
            writer.write_all(if index == 0 { b"\n" } else { b",\n" })?;
            serde_json::to_writer(&mut writer, balance)?;
        }
        writer.write_all(b"\n]\n")?;
        writer.flush()?;
        writer.get_ref().sync_data()
    };
    write().with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
}

pub fn read_balances(path: &Path) -> crate::Result<Vec<Balances>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// A per-start-up table of the headline figures, in whole currency units.
pub fn balance_table(balances: &[Balances]) -> String {
    use std::fmt::Write as _;
    let money = |micros: i64| {
        let units = micros / 1_000_000;
        let text = units.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (index, digit) in text.chars().enumerate() {
            if index > 0 && (text.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if micros < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<20} {:>4} {:>14} {:>14} {:>14} {:>12} {:>14} {:>14}",
        "startup", "cur", "granted", "consumed", "remaining", "overage", "revenue", "liability"
    );
    for balance in balances {
        for currency in &balance.currencies {
            let revenue = currency.revenue_compute + currency.revenue_overage + currency.revenue_breakage;
            let _ = writeln!(
                table,
                "{:<20} {:>4} {:>14} {:>14} {:>14} {:>12} {:>14} {:>14}",
                balance.startup,
                currency.currency,
                money(currency.granted_face),
                money(currency.consumed_face),
                money(currency.remaining_face),
                money(currency.overage),
                money(revenue),
                money(currency.contract_liability)
            );
        }
    }
    table
}

/// One start-up's figures (spec §10) as a readable table, amounts in micros.
pub fn balance_detail(balance: &Balances) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let clock = balance.clock.map(|clock| crate::units::format_millis(clock.0)).unwrap_or_default();
    let _ = writeln!(
        text,
        "{}  (task {}, clock {clock}, duplicates dropped {})",
        balance.startup, balance.task, balance.duplicates_dropped
    );
    for currency in &balance.currencies {
        let _ = writeln!(text, "\n{} (micros)", currency.currency);
        for (name, value) in [
            ("granted_face", currency.granted_face),
            ("consumed_face", currency.consumed_face),
            ("expired_face", currency.expired_face),
            ("revoked_face", currency.revoked_face),
            ("remaining_face", currency.remaining_face),
            ("usage_cost", currency.usage_cost),
            ("usage_count", currency.usage_count),
            ("overage", currency.overage),
            ("revenue_compute", currency.revenue_compute),
            ("revenue_overage", currency.revenue_overage),
            ("revenue_breakage", currency.revenue_breakage),
            ("revocation_reversal", currency.revocation_reversal),
            ("contract_liability", currency.contract_liability),
            ("escrow_remaining_face", currency.escrow_remaining_face),
            ("rpo", currency.rpo),
        ] {
            let _ = writeln!(text, "  {name:<22} {value:>20}");
        }
        let _ =
            writeln!(text, "  {:<24} {:<9} {:>16} {:>16} {:>16}", "grant", "state", "face", "consumed", "remaining");
        for grant in &currency.grants {
            let _ = writeln!(
                text,
                "  {:<24} {:<9} {:>16} {:>16} {:>16}",
                grant.grant_id, grant.state, grant.face, grant.consumed_face, grant.remaining_face
            );
        }
    }
    text
}
