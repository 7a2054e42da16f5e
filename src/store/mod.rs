//! Persistence of task state.
//!
//! The fold keeps a task's state in memory and notes what changed
//! ([`Changes`]); a commit turns the changes into one atomic batch of puts
//! and deletes ([`commit_ops`]) written to a [`KvStore`]: RocksDB
//! ([`rocks::RocksStore`]) or memory ([`MemoryStore`], for tests). Loading
//! reads a partition's ranges back ([`load_task`]). The same code serves
//! both stores, and one conformance test runs over both.

pub mod columns;
pub mod reads;
#[cfg(feature = "io")]
pub mod rocks;

use std::collections::BTreeMap;

use anyhow::{anyhow, Context as _};

use crate::fold::state::{rate_key_text, Changes, Checkpoint, Deal, Grant, Offsets, RateCard, Startup, TaskState};
use columns::{Column, Layout, TaskMeta};

/// One write of a commit; `None` deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub column: Column,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// An ordered key-value store with column families and atomic batches.
pub trait KvStore {
    fn get(&self, column: Column, key: &[u8]) -> crate::Result<Option<Vec<u8>>>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, column: Column, prefix: &[u8]) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies all operations atomically.
    fn write(&mut self, ops: Vec<Op>) -> crate::Result<()>;
}

/// A store in memory, for tests and runs that persist nothing.
#[derive(Debug, Default)]
pub struct MemoryStore {
    columns: BTreeMap<Column, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl KvStore for MemoryStore {
    fn get(&self, column: Column, key: &[u8]) -> crate::Result<Option<Vec<u8>>> {
        Ok(self.columns.get(&column).and_then(|entries| entries.get(key).cloned()))
    }

    fn scan_prefix(&self, column: Column, prefix: &[u8]) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(entries) = self.columns.get(&column) else { return Ok(Vec::new()) };
        Ok(entries
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn write(&mut self, ops: Vec<Op>) -> crate::Result<()> {
        for op in ops {
            let entries = self.columns.entry(op.column).or_default();
            match op.value {
                Some(value) => entries.insert(op.key, value),
                None => entries.remove(&op.key),
            };
        }
        Ok(())
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("state records are plain data and always serialize")
}

/// The writes that persist `changes` of `state`.
pub fn commit_ops(state: &TaskState, changes: &Changes) -> Vec<Op> {
    let partition = state.partition;
    let mut ops = Vec::new();
    let put = |ops: &mut Vec<Op>, column, key, value| ops.push(Op { column, key, value: Some(value) });
    for id in &changes.startups {
        let Some(startup) = state.startups.get(id) else { continue };
        put(&mut ops, Column::Startups, columns::startup_key(partition, id), json(startup));
    }
    // Only the grants and deals that changed: a start-up with a long history
    // costs a commit what it changed, not what it holds.
    for (startup, grant_id) in &changes.grants {
        let Some(grant) = state.startups.get(startup).and_then(|startup| startup.grants.get(grant_id)) else {
            continue;
        };
        put(&mut ops, Column::Grants, columns::child_key(partition, startup, grant_id), json(grant));
    }
    for (startup, deal_id) in &changes.deals {
        let Some(deal) = state.startups.get(startup).and_then(|startup| startup.deals.get(deal_id)) else { continue };
        put(&mut ops, Column::Deals, columns::child_key(partition, startup, deal_id), json(deal));
    }
    for (startup, list) in &changes.identities {
        for (identity, remembered) in list {
            ops.push(Op {
                column: Column::Dedup,
                key: columns::dedup_key(partition, startup, identity),
                value: remembered.as_ref().map(columns::encode_remembered),
            });
        }
    }
    for ((gpu_model, region, tier), effective_from) in &changes.rate_cards {
        let key = (gpu_model.clone(), region.clone(), *tier);
        let card = &state.rates.cards[&key][effective_from];
        put(
            &mut ops,
            Column::Rates,
            columns::rate_key(partition, gpu_model, region, *tier, *effective_from),
            json(card),
        );
    }
    for (identity, digest) in &changes.rate_identities {
        put(&mut ops, Column::RateIds, columns::rate_identity_key(partition, identity), digest.to_vec());
    }
    for ((startup, period), statement) in &changes.statements {
        put(&mut ops, Column::Statements, columns::child_key(partition, startup, period), statement.clone());
    }
    for checkpoint in &changes.checkpoints {
        put(&mut ops, Column::Meta, columns::checkpoint_key(partition, checkpoint.folded), json(checkpoint));
    }
    let meta = TaskMeta {
        tick_clock: state.tick_clock,
        offsets: state.offsets,
        rates_duplicates_dropped: state.rates.duplicates_dropped,
        digest: state.digest,
        folded: state.folded,
    };
    put(&mut ops, Column::Meta, columns::task_meta_key(partition), json(&meta));
    ops
}

fn parse<T: serde::de::DeserializeOwned>(column: Column, key: &[u8], value: &[u8]) -> crate::Result<T> {
    serde_json::from_slice(value).with_context(|| format!("corrupt {} record at key {:?}", column.name(), key))
}

/// The stored scalars of one partition (offsets, tick clock) without its
/// state; a partition never committed has offsets 0.
pub fn load_task_meta(store: &dyn KvStore, partition: u32) -> crate::Result<TaskMeta> {
    match store.get(Column::Meta, &columns::task_meta_key(partition))? {
        Some(bytes) => parse(Column::Meta, b"task", &bytes),
        None => Ok(TaskMeta::default()),
    }
}

/// Loads one partition's state; a partition never committed loads empty.
pub fn load_task(store: &dyn KvStore, partition: u32) -> crate::Result<TaskState> {
    let mut state = TaskState { partition, ..TaskState::default() };
    let meta = load_task_meta(store, partition)?;
    state.tick_clock = meta.tick_clock;
    state.offsets = meta.offsets;
    state.rates.duplicates_dropped = meta.rates_duplicates_dropped;
    state.digest = meta.digest;
    state.folded = meta.folded;
    let prefix = columns::partition_prefix(partition);
    for (key, value) in store.scan_prefix(Column::Startups, &prefix)? {
        let startup: Startup = parse(Column::Startups, &key, &value)?;
        state.startups.insert(startup.id.clone(), startup);
    }
    let corrupt = |column: Column, key: &[u8]| anyhow!("corrupt {} key {:?}", column.name(), key);
    for column in [Column::Grants, Column::Deals] {
        for (key, value) in store.scan_prefix(column, &prefix)? {
            let (startup_id, _) = columns::split_startup_key(&key).ok_or_else(|| corrupt(column, &key))?;
            let startup = state
                .startups
                .get_mut(&startup_id)
                .ok_or_else(|| anyhow!("{} record of unknown start-up {startup_id:?}", column.name()))?;
            if column == Column::Grants {
                let grant: Grant = parse(column, &key, &value)?;
                startup.grants.insert(grant.grant_id.clone(), grant);
            } else {
                let deal: Deal = parse(column, &key, &value)?;
                startup.deals.insert(deal.deal_id.clone(), deal);
            }
        }
    }
    for startup in state.startups.values_mut() {
        startup.rebuild_index();
    }
    for (key, value) in store.scan_prefix(Column::Dedup, &prefix)? {
        let (startup_id, rest) = columns::split_startup_key(&key).ok_or_else(|| corrupt(Column::Dedup, &key))?;
        let identity: [u8; 16] = rest.try_into().map_err(|_| corrupt(Column::Dedup, &key))?;
        let remembered = columns::decode_remembered(&value).ok_or_else(|| corrupt(Column::Dedup, &key))?;
        let startup = state
            .startups
            .get_mut(&startup_id)
            .ok_or_else(|| anyhow!("dedup record of unknown start-up {startup_id:?}"))?;
        startup.dedup.remembered.insert(identity, remembered);
        if remembered.usage {
            startup.dedup.usage_by_time.insert((remembered.time, identity));
        }
    }
    for (key, value) in store.scan_prefix(Column::Rates, &prefix)? {
        let (gpu_model, region, tier, effective_from) =
            columns::parse_rate_key(&key).ok_or_else(|| corrupt(Column::Rates, &key))?;
        let card: RateCard = parse(Column::Rates, &key, &value)?;
        let rate_key = (gpu_model, region, tier);
        debug_assert!(!rate_key_text(&rate_key).is_empty());
        state.rates.cards.entry(rate_key).or_default().insert(effective_from, card);
    }
    for (key, value) in store.scan_prefix(Column::RateIds, &prefix)? {
        let identity: [u8; 16] =
            key.get(4..).and_then(|rest| rest.try_into().ok()).ok_or_else(|| corrupt(Column::RateIds, &key))?;
        let digest: [u8; 32] = value.as_slice().try_into().map_err(|_| corrupt(Column::RateIds, &key))?;
        state.rates.remembered.insert(identity, digest);
    }
    Ok(state)
}

/// The outcome of comparing two state directories.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub tasks: usize,
    /// One line per task that agrees (identical, or one run further on).
    pub agreements: Vec<String>,
    /// One line per task that differs; empty when nothing contradicts.
    pub differences: Vec<String>,
    /// Per task that parted: the first directory's offsets at the last
    /// agreeing checkpoint and at the first differing one. The input records
    /// between them hold the first record whose outputs differ.
    pub windows: Vec<(u32, Offsets, Offsets)>,
}

/// The partitions a store holds task state for.
pub fn task_partitions(store: &dyn KvStore) -> crate::Result<Vec<u32>> {
    let mut partitions = Vec::new();
    for (key, _) in store.scan_prefix(Column::Meta, b"task")? {
        if let Some(bytes) = key.get(4..8) {
            partitions.push(u32::from_be_bytes(bytes.try_into().expect("four bytes")));
        }
    }
    Ok(partitions)
}

/// A task's checkpoints, in order, ending with its current position.
pub fn load_checkpoints(store: &dyn KvStore, partition: u32) -> crate::Result<Vec<Checkpoint>> {
    let mut checkpoints = Vec::new();
    for (key, value) in store.scan_prefix(Column::Meta, &columns::checkpoint_prefix(partition))? {
        checkpoints.push(parse::<Checkpoint>(Column::Meta, &key, &value)?);
    }
    let meta = load_task_meta(store, partition)?;
    if checkpoints.last().is_none_or(|last| last.folded != meta.folded) {
        checkpoints.push(Checkpoint { folded: meta.folded, offsets: meta.offsets, digest: meta.digest });
    }
    Ok(checkpoints)
}

/// Compares two stores task by task through their checkpoints (offsets and
/// output digest every [`CHECKPOINT_EVERY`](crate::fold::state::CHECKPOINT_EVERY) records): identical, one run
/// further on than the other with nothing contradicting, or where they part
/// — the last agreeing position and the first differing one.
pub fn verify(left: &dyn KvStore, right: &dyn KvStore) -> crate::Result<VerifyReport> {
    let (in_left, in_right) = (task_partitions(left)?, task_partitions(right)?);
    let mut partitions: Vec<u32> = in_left.iter().chain(&in_right).copied().collect();
    partitions.sort_unstable();
    partitions.dedup();
    let mut report = VerifyReport { tasks: partitions.len(), ..VerifyReport::default() };
    for partition in partitions {
        if !in_left.contains(&partition) || !in_right.contains(&partition) {
            let side = if in_left.contains(&partition) { "the first" } else { "the second" };
            report.differences.push(format!("task {partition}: only {side} directory has state for it"));
            continue;
        }
        let a = load_checkpoints(left, partition)?;
        let b = load_checkpoints(right, partition)?;
        let (a_end, b_end) = (a.last().copied().unwrap_or_default(), b.last().copied().unwrap_or_default());
        if a_end == b_end {
            report.agreements.push(format!(
                "task {partition}: identical through record {} at offsets (rates, deals, metering) {:?}",
                a_end.folded, a_end.offsets
            ));
            continue;
        }
        // Walk the positions both have, in record order.
        let b_at: BTreeMap<u64, Checkpoint> = b.iter().map(|checkpoint| (checkpoint.folded, *checkpoint)).collect();
        let mut agreed = Checkpoint::default();
        let mut parted: Option<(Checkpoint, Checkpoint)> = None;
        for checkpoint in &a {
            let Some(other) = b_at.get(&checkpoint.folded) else { continue };
            if other == checkpoint {
                agreed = *checkpoint;
            } else {
                parted = Some((*checkpoint, *other));
                break;
            }
        }
        if let Some((x, _)) = parted {
            report.windows.push((partition, agreed.offsets, x.offsets));
        }
        match parted {
            Some((x, y)) => report.differences.push(format!(
                "task {partition}: diverged after record {} (offsets {:?}, identical so far), by record {}: \
                 offsets {:?} and {:?}, output digests {} and {}",
                agreed.folded,
                agreed.offsets,
                x.folded,
                x.offsets,
                y.offsets,
                x.digest.hex(),
                y.digest.hex()
            )),
            None => {
                let (shorter, longer, which) =
                    if a_end.folded < b_end.folded { (a_end, b_end, "second") } else { (b_end, a_end, "first") };
                if agreed.folded == 0 && shorter.folded > 0 {
                    report.differences.push(format!(
                        "task {partition}: no common checkpoint to compare (records folded {} and {}); \
                         were both directories written by this version?",
                        a_end.folded, b_end.folded
                    ));
                } else {
                    report.agreements.push(format!(
                        "task {partition}: identical through record {} at offsets {:?}; the {which} run goes on to \
                         record {} at offsets {:?}{}",
                        agreed.folded,
                        agreed.offsets,
                        longer.folded,
                        longer.offsets,
                        if agreed.folded < shorter.folded {
                            format!(
                                " (the last {} records of the shorter run are not compared)",
                                shorter.folded - agreed.folded
                            )
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
    }
    Ok(report)
}

/// Finds a start-up in a state directory: its partition and its record with
/// grants and deals (not its dedup identities).
pub fn load_startup(store: &dyn KvStore, startup_id: &str) -> crate::Result<Option<(u32, Startup)>> {
    for partition in task_partitions(store)? {
        if let Some(startup) = reads::startup_in(store, partition, startup_id)? {
            return Ok(Some((partition, startup)));
        }
    }
    Ok(None)
}

/// A start-up's balances record (spec §10) from a state directory, with
/// its task's offsets (inputs named `rates`, `deals`, `metering`) and
/// output digest; `None` when no task holds the start-up.
pub fn load_balances(store: &dyn KvStore, startup_id: &str) -> crate::Result<Option<crate::records::Balances>> {
    let Some((partition, _)) = load_startup(store, startup_id)? else { return Ok(None) };
    reads::balances_in(store, partition, startup_id, &crate::fold::TopicNames::default())
}

/// Checks (and on first use records) how many partitions the state
/// directory's tasks were split into.
pub fn check_layout(store: &mut dyn KvStore, partitions: u32) -> crate::Result<()> {
    match store.get(Column::Meta, columns::LAYOUT_KEY)? {
        Some(bytes) => {
            let layout: Layout = parse(Column::Meta, columns::LAYOUT_KEY, &bytes)?;
            if layout.partitions != partitions {
                anyhow::bail!(
                    "the state directory holds state for {} partitions, not {partitions}: use --partitions {} or a fresh state directory",
                    layout.partitions,
                    layout.partitions
                );
            }
            Ok(())
        }
        None => store.write(vec![Op {
            column: Column::Meta,
            key: columns::LAYOUT_KEY.to_vec(),
            value: Some(json(&Layout { partitions })),
        }]),
    }
}
