//! `gpuledger reset`: moves the consumer group's committed offsets back, in
//! the manner of Kafka Streams' application reset tool, but safe:
//!
//! - it refuses while the group has live members (a running processor would
//!   overwrite the offsets with its next commit, or worse, keep state that
//!   no longer matches them);
//! - `--to-datetime T` goes back to the processor's committed position at
//!   wall-clock time T: the last committed cycle whose progress record was
//!   written at or before T. A commit boundary, not an arbitrary offset, so
//!   the rebuild follows the recorded order exactly (spec §4);
//! - it shows the plan first (`--dry-run` stops there);
//! - local state beyond the new offsets is moved aside (kept for audit),
//!   never deleted; the processor rebuilds from the input log on start.
//!
//! After a reset the processor publishes the outputs from the new offsets
//! again. They are the same records with the same identities (the fold is
//! deterministic), so readers that deduplicate by identity see no change.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::client::close_in_background;
use super::progress::{committed_chain, read_progress};
use crate::config::Config;
use crate::fold::state::{KeyedOffsets, Offsets};
use crate::store::rocks::RocksStore;
use crate::units::Millis;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    /// Wall-clock instant (ms since the epoch).
    Datetime(Millis),
}

#[derive(Clone, Debug)]
pub struct PartitionReset {
    pub partition: u32,
    /// Committed offsets (deals, metering) now.
    pub current: KeyedOffsets,
    pub target: KeyedOffsets,
    /// When the target cycle was committed (`--to-datetime`).
    pub committed_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateAction {
    /// No state directory, or no task state in it.
    Nothing,
    /// Every task's state is at or below the new offsets: kept.
    Keep,
    /// Tasks beyond the new offsets: the directory is moved aside.
    Move { tasks: Vec<u32>, to: PathBuf },
}

#[derive(Clone, Debug)]
pub struct ResetPlan {
    pub group: String,
    pub group_state: String,
    pub partitions: Vec<PartitionReset>,
    pub state_dir: PathBuf,
    pub state: StateAction,
}

impl ResetPlan {
    /// The plan as text; `dry_run` words the state action as a possibility.
    pub fn describe(&self, dry_run: bool) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        let _ = writeln!(text, "group {}: no live members (state {})", self.group, self.group_state);
        let _ = writeln!(text, "{:<10} {:>24} {:>24}  committed at", "partition", "deals", "metering");
        for reset in &self.partitions {
            let at = reset.committed_at.map(crate::units::format_millis).unwrap_or_else(|| "-".to_owned());
            let _ = writeln!(
                text,
                "{:<10} {:>24} {:>24}  {at}",
                reset.partition,
                format!("{} -> {}", reset.current.deals, reset.target.deals),
                format!("{} -> {}", reset.current.metering, reset.target.metering),
            );
        }
        let _ = match &self.state {
            StateAction::Nothing => writeln!(text, "state directory {}: no task state", self.state_dir.display()),
            StateAction::Keep => writeln!(
                text,
                "state directory {}: every task is at or before the new offsets; kept",
                self.state_dir.display()
            ),
            StateAction::Move { tasks, to } => writeln!(
                text,
                "state directory {}: tasks {tasks:?} are beyond the new offsets; {} {} (the processor rebuilds from the input log)",
                self.state_dir.display(),
                if dry_run { "would be moved to" } else { "moved to" },
                to.display()
            ),
        };
        text
    }
}

/// Fails unless the group has no live member.
fn group_state(consumer: &BaseConsumer, group: &str) -> crate::Result<String> {
    let groups = consumer
        .fetch_group_list(Some(group), super::client::METADATA_TIMEOUT)
        .with_context(|| format!("cannot tell whether group {group} has live members; refusing to reset"))?;
    let Some(info) = groups.groups().iter().find(|info| info.name() == group) else {
        return Ok("unknown to the broker".to_owned());
    };
    if !info.members().is_empty() {
        let members: Vec<String> = info
            .members()
            .iter()
            .map(|member| match (member.client_id(), member.client_host()) {
                ("", "") => member.id().to_owned(),
                (client, host) => format!("{} ({client} on {host})", member.id()),
            })
            .collect();
        bail!(
            "group {group} has {} live member(s) ({}); stop every processor of the group before resetting it",
            members.len(),
            members.join(", ")
        );
    }
    Ok(if info.state().is_empty() { "empty".to_owned() } else { info.state().to_owned() })
}

/// Where the state directory goes: beside it, named by the reset's time.
fn moved_name(state_dir: &Path, now: Millis) -> PathBuf {
    let stamp: String = crate::units::format_millis(now).chars().filter(char::is_ascii_alphanumeric).collect();
    let name = state_dir.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
    state_dir.with_file_name(format!("{name}.before-reset-{stamp}"))
}

/// Works out the reset; changes nothing.
pub fn plan(config: &Config, to: ResetTo, now: Millis) -> crate::Result<ResetPlan> {
    let metadata = super::client::metadata_consumer(config)?;
    let partitions = super::cluster::check_copartitioned(config, &metadata)?;
    let group_state = group_state(&metadata, &config.group_id)?;
    close_in_background(metadata);
    let all: Vec<u32> = (0..partitions).collect();
    let committed = super::cluster::group_offsets(config, &all)?;
    let mut resets = Vec::new();
    for partition in all {
        let current = committed.get(&partition).copied().unwrap_or_default();
        let (target, committed_at) = match to {
            ResetTo::Earliest => (KeyedOffsets::default(), None),
            ResetTo::Datetime(at) => {
                if current == KeyedOffsets::default() {
                    (KeyedOffsets::default(), None)
                } else {
                    let entries = read_progress(config, partition)?;
                    let Some(chain) = committed_chain(&entries, Offsets::ZERO, current) else {
                        bail!(
                            "partition {partition}: the progress topic does not hold the committed history up to \
                             deals offset {} and metering offset {}; use --to-earliest",
                            current.deals,
                            current.metering
                        );
                    };
                    let last =
                        chain.iter().rev().find(|index| entries[**index].timestamp.is_some_and(|time| time <= at));
                    match last {
                        Some(index) => {
                            let entry = &entries[*index];
                            (entry.end.keyed(), entry.timestamp)
                        }
                        None => (KeyedOffsets::default(), None),
                    }
                }
            }
        };
        resets.push(PartitionReset { partition, current, target, committed_at });
    }

    let state_dir = config.state_dir.clone();
    let state = if !state_dir.exists() {
        StateAction::Nothing
    } else {
        let store = RocksStore::open_read_only(&state_dir)?;
        let tasks = crate::store::task_partitions(&store)?;
        let mut beyond = Vec::new();
        for task in &tasks {
            let stored = crate::store::load_task_meta(&store, *task)?.offsets;
            let target = resets
                .iter()
                .find(|reset| reset.partition == *task)
                .map_or(KeyedOffsets::default(), |reset| reset.target);
            if target.check_not_behind(&stored).is_err() {
                beyond.push(*task);
            }
        }
        match (tasks.is_empty(), beyond.is_empty()) {
            (true, _) => StateAction::Nothing,
            (false, true) => StateAction::Keep,
            (false, false) => StateAction::Move { tasks: beyond, to: moved_name(&state_dir, now) },
        }
    };
    Ok(ResetPlan { group: config.group_id.clone(), group_state, partitions: resets, state_dir, state })
}

/// Carries out a plan: checks the group again, moves the state aside, then
/// commits the new offsets for the group.
pub fn apply(config: &Config, plan: &ResetPlan) -> crate::Result<()> {
    let consumer: BaseConsumer = super::client::group_offsets_client(config)?;
    // A processor may have joined since the plan was made.
    group_state(&consumer, &config.group_id)?;
    if let StateAction::Move { to, .. } = &plan.state {
        std::fs::rename(&plan.state_dir, to)
            .with_context(|| format!("moving {} to {}", plan.state_dir.display(), to.display()))?;
        tracing::info!(from = %plan.state_dir.display(), to = %to.display(), "state directory moved aside");
    }
    let mut list = TopicPartitionList::new();
    for reset in &plan.partitions {
        list.add_partition_offset(&config.topics.deals, reset.partition as i32, Offset::Offset(reset.target.deals))?;
        list.add_partition_offset(
            &config.topics.metering,
            reset.partition as i32,
            Offset::Offset(reset.target.metering),
        )?;
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .with_context(|| format!("committing offsets for group {}", config.group_id))?;
    close_in_background(consumer);
    Ok(())
}
