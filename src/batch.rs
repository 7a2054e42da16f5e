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

use crate::events::{decode, Decoded, InputRecord, Topic};
use crate::fold::merge::{choose, Choice, Head};
use crate::fold::{FoldConfig, Task, TopicNames};
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
}

impl Cursor {
    fn open(
        path: &Path,
        topic: Topic,
        partition: u32,
        partitions: u32,
        skip_below: i64,
        routes: Option<Rc<Vec<u32>>>,
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
            let parsed = crate::events::json::parse(&line);
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
            let decoded = match parsed {
                Ok(value) => decode::decode_value(self.topic, &value),
                Err(rejection) => Decoded { time: None, event: Err(rejection) },
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
fn route_lines(path: &Path, topic: Topic, partitions: u32) -> crate::Result<Vec<u32>> {
    let mut routes = Vec::new();
    for line in open_lines(path, topic)? {
        let line = without_cr(line.with_context(|| format!("reading {}", path.display()))?);
        let (key, tick) = key_and_tick(topic, &crate::events::json::parse(&line));
        routes.push(route(topic, key.as_deref(), tick, partitions).unwrap_or(EVERY_PARTITION));
    }
    Ok(routes)
}

pub(crate) struct OutputFiles {
    writers: Vec<BufWriter<File>>,
    counts: [u64; 5],
}

impl OutputFiles {
    pub(crate) fn create(dir: &Path) -> crate::Result<OutputFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
        let mut writers = Vec::new();
        for stream in Stream::ALL {
            let path = dir.join(format!("{}.jsonl", stream.name()));
            let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            writers.push(BufWriter::with_capacity(1 << 20, file));
        }
        Ok(OutputFiles { writers, counts: [0; 5] })
    }

    /// Writes outputs with their JSON bytes (as [`Task::fold_encoded`] gives them).
    pub(crate) fn write(&mut self, outputs: &mut Vec<Output>, encoded: &mut Vec<Vec<u8>>) -> crate::Result<()> {
        debug_assert_eq!(outputs.len(), encoded.len());
        for (output, bytes) in outputs.drain(..).zip(encoded.drain(..)) {
            let stream = output.stream() as usize;
            let writer = &mut self.writers[stream];
            writer.write_all(&bytes)?;
            writer.write_all(b"\n")?;
            self.counts[stream] += 1;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> crate::Result<[u64; 5]> {
        for writer in &mut self.writers {
            writer.flush()?;
        }
        Ok(self.counts)
    }
}

pub fn run(options: &BatchOptions) -> crate::Result<BatchSummary> {
    anyhow::ensure!(options.partitions >= 1, "--partitions must be at least 1");
    for (path, topic) in
        [(&options.rates, Topic::Rates), (&options.deals, Topic::Deals), (&options.metering, Topic::Metering)]
    {
        anyhow::ensure!(path.is_file(), "{} input {} is not a readable file", topic.name(), path.display());
    }
    let mut store: Option<RocksStore> = match &options.state_dir {
        Some(dir) => Some(RocksStore::open(dir)?),
        None => None,
    };
    if let Some(store) = store.as_mut() {
        store::check_layout(store, options.partitions)?;
    }
    let mut files = OutputFiles::create(&options.out)?;
    let mut summary = BatchSummary::default();
    let mut all_balances: Vec<Balances> = Vec::new();
    let names = TopicNames::default();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    // Rates are read whole by every task; deals and metering are split.
    let mut routes: [Option<Rc<Vec<u32>>>; 3] = Default::default();
    if options.partitions > 1 {
        for (path, topic) in [(&options.deals, Topic::Deals), (&options.metering, Topic::Metering)] {
            routes[topic.index()] = Some(Rc::new(route_lines(path, topic, options.partitions)?));
        }
    }
    for partition in 0..options.partitions {
        let state = match store.as_ref() {
            Some(store) => store::load_task(store, partition)?,
            None => crate::fold::state::TaskState { partition, ..Default::default() },
        };
        let paths = [&options.rates, &options.deals, &options.metering];
        let mut cursors = Vec::with_capacity(3);
        for topic in Topic::ALL {
            let skip = state.offsets[topic.index()];
            let routes = routes[topic.index()].clone();
            cursors.push(Cursor::open(paths[topic.index()], topic, partition, options.partitions, skip, routes)?);
        }
        let mut task = Task::new(options.fold, state);
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
                    summary.after_until += 1;
                    continue;
                }
            }
            task.fold_encoded(&record, decoded, &mut outputs, &mut encoded);
            files.write(&mut outputs, &mut encoded)?;
            since_commit += 1;
            if since_commit >= options.commit_every {
                commit(store.as_mut(), &mut task)?;
                since_commit = 0;
            }
            if last_progress.elapsed().as_secs() >= 5 {
                last_progress = Instant::now();
                let records = summary.records + task.stats().records;
                tracing::info!(
                    partition,
                    records,
                    records_per_second = (records as f64 / started.elapsed().as_secs_f64()) as u64,
                    "folding"
                );
            }
        }
        commit(store.as_mut(), &mut task)?;
        let stats = task.stats();
        summary.records += stats.records;
        summary.usage_accepted += stats.usage_accepted;
        summary.dead_letters += stats.dead_letters;
        summary.duplicates_dropped += stats.duplicates_dropped;
        summary.startups += task.state().startups.len();
        for startup in task.state().startups.keys() {
            all_balances.push(task.balances(startup, &names).expect("listed start-up"));
        }
    }
    summary.outputs = files.finish()?;
    all_balances.sort_by(|left, right| left.startup.cmp(&right.startup));
    write_balances(&options.out.join("balances.json"), &all_balances)?;
    Ok(summary)
}

fn commit(store: Option<&mut RocksStore>, task: &mut Task) -> crate::Result<()> {
    let changes = task.take_changes();
    if let Some(store) = store {
        if !changes.is_empty() {
            store.write(store::commit_ops(task.state(), &changes))?;
        }
    }
    Ok(())
}

/// `balances.json`: a JSON array, one start-up per line, sorted by start-up.
pub fn write_balances(path: &Path, balances: &[Balances]) -> crate::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = BufWriter::new(file);
    writer.write_all(b"[")?;
    for (index, balance) in balances.iter().enumerate() {
        writer.write_all(if index == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut writer, balance)?;
    }
    writer.write_all(b"\n]\n")?;
    writer.flush()?;
    Ok(())
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
            if index > 0 && (text.len() - index) % 3 == 0 {
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
