//! The checkpoint thread of `run`: takes checkpoints the loop asks for,
//! off the folding thread, one at a time, from RocksDB snapshots (so only
//! ever committed state).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;

use super::take::take;
use super::CheckpointStore;
use crate::config::Config;
use crate::store::rocks::SnapshotReader;

/// What the checkpoint thread has done, for the run's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub taken: u64,
    pub failed: u64,
    /// Bytes of the checkpoints taken, summed.
    pub bytes: u64,
    /// Time spent exporting and uploading, summed, in ms.
    pub export_millis: u64,
    pub upload_millis: u64,
}

enum Request {
    Take(u32),
}

/// Takes checkpoints on a thread of its own.
pub struct Checkpointer {
    sender: Sender<Request>,
    handle: JoinHandle<()>,
    stats: Arc<Mutex<CheckpointStats>>,
}

impl Checkpointer {
    /// Starts the thread when `[checkpoints] store` is set; the store is
    /// opened (and a bad URL or option reported) before anything runs.
    pub fn start(config: &Config, reader: SnapshotReader, partitions: u32) -> crate::Result<Option<Checkpointer>> {
        if config.checkpoints.store.is_none() {
            return Ok(None);
        }
        let store = CheckpointStore::open(&config.checkpoints, &config.group_id)?;
        let staging = staging_dir(config);
        let (sender, receiver) = mpsc::channel();
        let stats = Arc::new(Mutex::new(CheckpointStats::default()));
        let worker = Worker {
            store,
            reader,
            group: config.group_id.clone(),
            partitions,
            staging,
            keep: config.checkpoints.keep,
            last: BTreeMap::new(),
            stats: Arc::clone(&stats),
        };
        let handle = std::thread::Builder::new()
            .name("checkpoints".into())
            .spawn(move || worker.run(receiver))
            .context("starting the checkpoint thread")?;
        tracing::info!(store = %config.checkpoints.store.as_deref().unwrap_or_default(), "checkpoints on");
        Ok(Some(Checkpointer { sender, handle, stats }))
    }

    /// Asks for a checkpoint of task `task` (queued; one at a time).
    pub fn request(&self, task: u32) {
        let _ = self.sender.send(Request::Take(task));
    }

    pub fn stats(&self) -> CheckpointStats {
        self.stats.lock().expect("checkpoint stats lock").clone()
    }

    /// Takes what was asked for, then stops the thread.
    pub fn finish(self) -> CheckpointStats {
        drop(self.sender);
        let _ = self.handle.join();
        let stats = self.stats.lock().expect("checkpoint stats lock").clone();
        stats
    }
}

/// Where checkpoint files are staged: inside the state directory, so an
/// installed file moves into RocksDB without a copy.
pub fn staging_dir(config: &Config) -> PathBuf {
    config.state_dir.join("checkpoint-staging")
}

struct Worker {
    store: CheckpointStore,
    reader: SnapshotReader,
    group: String,
    partitions: u32,
    staging: PathBuf,
    keep: usize,
    /// The last checkpoint taken per task: the same state is not taken twice.
    last: BTreeMap<u32, String>,
    stats: Arc<Mutex<CheckpointStats>>,
}

impl Worker {
    fn run(mut self, receiver: Receiver<Request>) {
        while let Ok(Request::Take(first)) = receiver.recv() {
            // Requests that piled up while one was taken: each task once.
            let mut tasks = vec![first];
            while let Ok(Request::Take(task)) = receiver.try_recv() {
                if !tasks.contains(&task) {
                    tasks.push(task);
                }
            }
            for task in tasks {
                self.take(task);
            }
        }
    }

    fn take(&mut self, task: u32) {
        let last = self.last.get(&task).map(String::as_str);
        let taken = take(&self.store, &self.reader, &self.group, task, self.partitions, &self.staging, self.keep, last);
        let mut stats = self.stats.lock().expect("checkpoint stats lock");
        match taken {
            Ok(Some(taken)) => {
                let manifest = &taken.manifest;
                tracing::info!(
                    task,
                    checkpoint = %manifest.id,
                    records = manifest.records,
                    bytes = manifest.bytes(),
                    export_ms = taken.export_millis,
                    upload_ms = taken.upload_millis,
                    pruned = taken.pruned,
                    "checkpoint taken"
                );
                stats.taken += 1;
                stats.bytes += manifest.bytes();
                stats.export_millis += taken.export_millis;
                stats.upload_millis += taken.upload_millis;
                self.last.insert(task, manifest.id.clone());
            }
            Ok(None) => tracing::debug!(task, "no new state to checkpoint"),
            Err(error) => {
                stats.failed += 1;
                tracing::warn!(task, error = %format!("{error:#}"), "checkpoint failed; the next one will try again");
            }
        }
    }
}
