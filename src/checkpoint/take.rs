//! Taking a checkpoint: export a task's ranges from one RocksDB snapshot,
//! upload the files, then the manifest; then prune the older ones.

use std::io::Read as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use super::manifest::{checkpoint_id, Manifest, ManifestFile, FORMAT};
use super::{task_ranges, CheckpointStore};
use crate::store::rocks::SnapshotReader;
use crate::store::{self, columns::TaskMeta};

/// What taking a checkpoint did.
#[derive(Clone, Debug)]
pub struct Taken {
    pub manifest: Manifest,
    /// Reading the snapshot into SST files, and uploading them, in ms.
    pub export_millis: u64,
    pub upload_millis: u64,
    /// Older checkpoints deleted (beyond `keep`, or incomplete and older).
    pub pruned: usize,
}

/// SHA-256 of a file, and its length.
pub fn file_digest(path: &Path) -> crate::Result<(String, u64)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut bytes = 0;
    loop {
        let read = file.read(&mut buffer).with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
    Ok((crate::units::hex(&hasher.finalize()), bytes))
}

/// A name part that differs between two processes writing the same
/// checkpoint at once (a handover), so neither overwrites the other's files.
fn nonce() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:08x}{:08x}", std::process::id(), nanos as u32)
}

fn now_rfc3339() -> String {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    crate::units::format_millis(millis as i64)
}

/// Checkpoints task `task` as RocksDB holds it now (its last committed
/// state) into `store`, staging files under `staging`; keeps the newest
/// `keep` complete checkpoints. `None` when the task has no state yet or
/// the newest checkpoint already holds this state (`last_id`).
#[allow(clippy::too_many_arguments)]
pub fn take(
    store: &CheckpointStore,
    reader: &SnapshotReader,
    group: &str,
    task: u32,
    partitions: u32,
    staging: &Path,
    keep: usize,
    last_id: Option<&str>,
) -> crate::Result<Option<Taken>> {
    // Cheap test first: the same state as the last checkpoint is not exported.
    let now = reader.read(|view| store::load_task_meta(view, task))?;
    if now == TaskMeta::default() || last_id == Some(checkpoint_id(&now).as_str()) {
        return Ok(None);
    }
    // Already in the store (the state was restored from it, or another
    // instance took it).
    if store.get(&store.object(task, &checkpoint_id(&now), "manifest.json"))?.is_some() {
        return Ok(None);
    }
    let dir = staging.join(format!("take-{task:05}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let taken = (|| {
        let (meta, exported) = reader.export(&task_ranges(task), &dir, |view| store::load_task_meta(view, task))?;
        if meta == TaskMeta::default() {
            return Ok(None);
        }
        let id = checkpoint_id(&meta);
        if last_id == Some(id.as_str()) {
            return Ok(None);
        }
        let export_millis = started.elapsed().as_millis() as u64;
        let uploading = Instant::now();
        let nonce = nonce();
        let mut files = Vec::new();
        for file in &exported {
            let (sha256, bytes) = file_digest(&file.path)?;
            let name = format!("{}-{nonce}.sst", file.column.name());
            store.upload(&file.path, &store.object(task, &id, &name))?;
            files.push(ManifestFile {
                column: file.column.name().to_owned(),
                name,
                bytes,
                entries: file.entries,
                sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            id: id.clone(),
            group: group.to_owned(),
            task,
            partitions,
            offsets: meta.offsets.into(),
            records: meta.folded,
            digest: meta.digest.hex(),
            created_at: now_rfc3339(),
            files,
        };
        let json = serde_json::to_vec_pretty(&manifest).context("encoding a manifest")?;
        store.put(&store.object(task, &id, "manifest.json"), json)?;
        let upload_millis = uploading.elapsed().as_millis() as u64;
        let pruned = prune(store, task, keep)?;
        Ok(Some(Taken { manifest, export_millis, upload_millis, pruned }))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    taken
}

/// Deletes task `task`'s complete checkpoints beyond the newest `keep`,
/// and incomplete ones older than the newest complete one (uploads a crash
/// cut short). Only ever after a newer one is complete.
pub fn prune(store: &CheckpointStore, task: u32, keep: usize) -> crate::Result<usize> {
    let listed = store.list(task)?;
    let mut complete: Vec<(u64, &str)> = listed
        .iter()
        .filter_map(|entry| entry.manifest.as_ref().ok().map(|manifest| (manifest.records, entry.id.as_str())))
        .collect();
    complete.sort();
    let Some(&(_, newest)) = complete.last() else { return Ok(0) };
    let mut doomed: Vec<&str> = complete.iter().rev().skip(keep).map(|(_, id)| *id).collect();
    doomed.extend(
        listed
            .iter()
            .filter(|entry| entry.manifest.is_err() && entry.id.as_str() < newest)
            .map(|entry| entry.id.as_str()),
    );
    for id in &doomed {
        store.delete(task, id)?;
    }
    Ok(doomed.len())
}
