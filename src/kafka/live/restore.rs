//! Restoring an assigned task from a checkpoint before it starts, when
//! the group has committed more than the local state holds.

use std::path::PathBuf;

use crate::checkpoint::restore::{clear_interrupted, restore_newest};
use crate::checkpoint::worker::staging_dir;
use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::fold::state::KeyedOffsets;
use crate::kafka::progress::{on_committed_chain, read_progress, ProgressEntry};
use crate::store::{self, rocks::RocksStore};

/// Restores tasks from the checkpoint store (`[checkpoints] store`).
pub(super) struct Restorer {
    store: Option<CheckpointStore>,
    config: Config,
    partitions: u32,
    staging: PathBuf,
}

/// What preparing a task's state did.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    /// Records the installed checkpoint had folded beyond the local state.
    pub(super) records_restored: u64,
    /// The task's progress records, when they were read (the task's
    /// re-fold follows them).
    pub(super) progress: Option<Vec<ProgressEntry>>,
}

impl Restorer {
    pub(super) fn new(config: &Config, partitions: u32) -> crate::Result<Restorer> {
        let store = match config.checkpoints.store {
            Some(_) => Some(CheckpointStore::open(&config.checkpoints, &config.group_id)?),
            None => None,
        };
        Ok(Restorer { store, config: config.clone(), partitions, staging: staging_dir(config) })
    }

    /// Makes task `task`'s local state ready to start from: wipes a
    /// half-installed checkpoint, and, when the group committed more than
    /// the state holds, installs the newest checkpoint on the committed
    /// history that moves it forward (or leaves the state to be re-folded).
    pub(super) fn prepare(
        &self,
        rocks: &mut RocksStore,
        task: u32,
        committed: KeyedOffsets,
    ) -> crate::Result<Prepared> {
        if clear_interrupted(rocks, task)? {
            tracing::warn!(task, "a checkpoint install was cut short; the task's state was wiped");
        }
        let mut prepared = Prepared::default();
        let Some(store) = &self.store else { return Ok(prepared) };
        let stored = store::load_task_meta(rocks, task)?;
        if stored.offsets.keyed() == committed {
            return Ok(prepared);
        }
        let entries = read_progress(&self.config, task)?;
        let on_chain = |manifest: &crate::checkpoint::Manifest| {
            if on_committed_chain(&entries, manifest.offsets(), &manifest.digest, committed) {
                Ok(())
            } else {
                Err("no chain of committed progress records leads from it to the group's offsets".to_owned())
            }
        };
        let outcome =
            restore_newest(store, rocks, task, self.partitions, stored.offsets, committed, on_chain, &self.staging)?;
        for (id, reason) in &outcome.skipped {
            tracing::warn!(task, checkpoint = %id, %reason, "checkpoint passed over");
        }
        match &outcome.restored {
            Some(manifest) => {
                prepared.records_restored = manifest.records.saturating_sub(stored.folded);
                tracing::info!(
                    task,
                    checkpoint = %manifest.id,
                    records = manifest.records,
                    bytes = manifest.bytes(),
                    offsets = ?manifest.offsets(),
                    "task restored from a checkpoint"
                );
            }
            None => {
                tracing::info!(task, stored = ?stored.offsets, "no checkpoint ahead of the local state; re-folding")
            }
        }
        prepared.progress = Some(entries);
        Ok(prepared)
    }
}
