//! Restoring a checkpoint: download its files, verify their checksums,
//! install them in place of the task's ranges, and check the installed
//! state against the manifest. A checkpoint that fails any step is left
//! for the next older one; no checkpoint at all means a re-fold from the
//! stored state (or offset 0), as before checkpoints existed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::manifest::{candidates, Manifest};
use super::take::file_digest;
use super::{task_ranges, CheckpointStore};
use crate::fold::state::{KeyedOffsets, Offsets};
use crate::store::columns::{self, Column};
use crate::store::rocks::RocksStore;
use crate::store::{self, KvStore, Op};

/// Downloads checkpoint `manifest`'s files into `dir` and checks each
/// against the manifest's length and SHA-256.
pub fn fetch(store: &CheckpointStore, manifest: &Manifest, dir: &Path) -> crate::Result<Vec<(Column, PathBuf)>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    for file in &manifest.files {
        let column = Manifest::column_of(file).with_context(|| format!("unknown column family {}", file.column))?;
        let local = dir.join(&file.name);
        store.download(&store.object(manifest.task, &manifest.id, &file.name), &local)?;
        let (sha256, bytes) = file_digest(&local)?;
        if bytes != file.bytes || sha256 != file.sha256 {
            bail!(
                "{} of checkpoint {} is corrupt: {bytes} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}",
                file.name,
                manifest.id,
                file.bytes,
                file.sha256
            );
        }
        files.push((column, local));
    }
    Ok(files)
}

/// Replaces task `task`'s state in `rocks` with fetched files. A marker
/// written first and deleted last makes a crash in between visible
/// ([`clear_interrupted`] wipes the half-installed task).
pub fn install(rocks: &mut RocksStore, task: u32, files: &[(Column, PathBuf)]) -> crate::Result<()> {
    let marker = columns::restore_marker_key(task);
    rocks.write(vec![Op { column: Column::Meta, key: marker.clone(), value: Some(Vec::new()) }])?;
    rocks.delete_ranges(&task_ranges(task))?;
    // The meta column family (offsets, digest) last: until it is in, the
    // task reads as one without state.
    let (meta, rest): (Vec<_>, Vec<_>) = files.iter().partition(|(column, _)| *column == Column::Meta);
    for (column, file) in rest.into_iter().chain(meta) {
        rocks.ingest(*column, file)?;
    }
    rocks.write(vec![Op { column: Column::Meta, key: marker, value: None }])
}

/// Wipes task `task`'s state if an install was cut short; whether it was.
pub fn clear_interrupted(rocks: &mut RocksStore, task: u32) -> crate::Result<bool> {
    let marker = columns::restore_marker_key(task);
    if rocks.get(Column::Meta, &marker)?.is_none() {
        return Ok(false);
    }
    rocks.delete_ranges(&task_ranges(task))?;
    rocks.write(vec![Op { column: Column::Meta, key: marker, value: None }])?;
    Ok(true)
}

/// Checks that the state installed for `manifest.task` is the manifest's:
/// offsets, records folded and output digest.
pub fn check_installed(rocks: &dyn KvStore, manifest: &Manifest) -> crate::Result<()> {
    let meta = store::load_task_meta(rocks, manifest.task)?;
    if meta.offsets != manifest.offsets() || meta.folded != manifest.records || meta.digest.hex() != manifest.digest {
        bail!(
            "checkpoint {} installed as offsets {:?}, {} records, digest {}; its manifest says {:?}, {}, {}",
            manifest.id,
            meta.offsets,
            meta.folded,
            meta.digest.hex(),
            manifest.offsets(),
            manifest.records,
            manifest.digest
        );
    }
    // Every record of the task must read back.
    store::load_task(rocks, manifest.task).with_context(|| format!("loading checkpoint {}", manifest.id))?;
    Ok(())
}

/// What a task's restore came to.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The checkpoint installed, if any.
    pub restored: Option<Manifest>,
    /// Checkpoints tried and passed over, with why.
    pub skipped: Vec<(String, String)>,
}

/// Restores the newest usable checkpoint of task `task` into `rocks`:
/// among those at or before the group's `committed` offsets and ahead of
/// the `stored` state, that `on_chain` accepts (it lies on the committed
/// history), newest first; one that fails to download, verify or install
/// is passed over, with a warning, for the next older one.
#[allow(clippy::too_many_arguments)]
pub fn restore_newest(
    store: &CheckpointStore,
    rocks: &mut RocksStore,
    task: u32,
    partitions: u32,
    stored: Offsets,
    committed: KeyedOffsets,
    on_chain: impl Fn(&Manifest) -> Result<(), String>,
    staging: &Path,
) -> crate::Result<Outcome> {
    let mut outcome = Outcome::default();
    let listed = store.list(task)?;
    let manifests: Vec<Manifest> = listed.into_iter().filter_map(|entry| entry.manifest.ok()).collect();
    let dir = staging.join(format!("restore-{task:05}"));
    let mut stored = stored;
    let mut tried = std::collections::BTreeSet::new();
    loop {
        let next = candidates(&manifests, task, partitions, stored, committed)
            .into_iter()
            .find(|manifest| !tried.contains(&manifest.id));
        let Some(manifest) = next else { break };
        tried.insert(manifest.id.clone());
        if let Err(reason) = on_chain(manifest) {
            outcome.skipped.push((manifest.id.clone(), reason));
            continue;
        }
        // Verified before anything is replaced: a corrupt download leaves
        // the stored state as it was.
        let files = match fetch(store, manifest, &dir) {
            Ok(files) => files,
            Err(error) => {
                let reason = format!("{error:#}");
                tracing::warn!(task, checkpoint = %manifest.id, %reason, "checkpoint unusable; trying an older one");
                outcome.skipped.push((manifest.id.clone(), reason));
                continue;
            }
        };
        match install(rocks, task, &files).and_then(|()| check_installed(rocks, manifest)) {
            Ok(()) => {
                outcome.restored = Some(manifest.clone());
                break;
            }
            Err(error) => {
                let reason = format!("{error:#}");
                tracing::warn!(task, checkpoint = %manifest.id, %reason, "checkpoint did not install; trying an older one");
                // Whatever was installed goes, and the stored state with it.
                rocks.delete_ranges(&task_ranges(task))?;
                clear_interrupted(rocks, task)?;
                stored = Offsets::ZERO;
                outcome.skipped.push((manifest.id.clone(), reason));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(outcome)
}

/// Restores `manifest` into a fresh RocksDB under `scratch` and checks it:
/// checksums, then the installed offsets, records and digest against the
/// manifest, and that every record of the task reads back.
pub fn verify(store: &CheckpointStore, manifest: &Manifest, scratch: &Path) -> crate::Result<()> {
    let _ = std::fs::remove_dir_all(scratch);
    let files = fetch(store, manifest, &scratch.join("files"))?;
    let mut rocks = RocksStore::open(&scratch.join("state"))?;
    install(&mut rocks, manifest.task, &files)?;
    check_installed(&rocks, manifest)
}
