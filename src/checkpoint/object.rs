//! The checkpoint store: an object store named by URL (`file:///path`, or
//! `s3://bucket/prefix` for any S3-compatible store), behind blocking
//! calls on a runtime of its own, so the processor's threads (which are
//! not async) can use it.

use std::path::Path as LocalPath;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::{BufReader, BufWriter};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::manifest::Manifest;
use crate::config::CheckpointConfig;

/// Bytes read or written per call when moving a file.
const CHUNK: usize = 4 << 20;

/// A checkpoint store, with the root path of one consumer group in it.
pub struct CheckpointStore {
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/<group>`.
    root: Path,
    url: String,
}

/// One checkpoint as listed: its id, and its manifest or why it has none
/// that can be read (incomplete: files without a manifest, or a corrupt one).
#[derive(Debug)]
pub struct Listed {
    pub task: u32,
    pub id: String,
    pub manifest: Result<Manifest, String>,
}

impl CheckpointStore {
    /// Opens the store `config.store` names, for consumer group `group`.
    pub fn open(config: &CheckpointConfig, group: &str) -> crate::Result<CheckpointStore> {
        let Some(url) = &config.store else {
            bail!("no checkpoint store is configured: set [checkpoints] store (file:///… or s3://bucket/prefix)")
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(path) = url.strip_prefix("file://") {
            std::fs::create_dir_all(path).with_context(|| format!("creating the checkpoint directory {path}"))?;
            let local = LocalFileSystem::new_with_prefix(path)
                .with_context(|| format!("opening the checkpoint directory {path}"))?
                .with_automatic_cleanup(true);
            (Arc::new(local), String::new())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (option, value) in &config.options {
                let key: AmazonS3ConfigKey = option
                    .parse()
                    .map_err(|_| anyhow::anyhow!("checkpoints.options.{option}: not an S3 option of object_store"))?;
                builder = builder.with_config(key, value);
            }
            let s3 = builder.build().with_context(|| format!("configuring the checkpoint store {url}"))?;
            (Arc::new(s3), prefix.trim_matches('/').to_owned())
        } else {
            bail!("checkpoints.store must be a file:/// or s3:// URL, not {url:?}")
        };
        let root = prefix.split('/').filter(|part| !part.is_empty()).chain([group]).collect::<Vec<_>>().join("/");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the checkpoint store's runtime")?;
        Ok(CheckpointStore { runtime, store, root: Path::from(root), url: url.clone() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn task_dir(&self, task: u32) -> Path {
        self.root.child(format!("task-{task:05}"))
    }

    /// Where a checkpoint's object `name` lives.
    pub fn object(&self, task: u32, id: &str, name: &str) -> Path {
        self.task_dir(task).child(id).child(name)
    }

    /// The tasks that have checkpoints.
    pub fn tasks(&self) -> crate::Result<Vec<u32>> {
        let listed = self.runtime.block_on(self.store.list_with_delimiter(Some(&self.root)));
        let listed = listed.with_context(|| format!("listing {}", self.url))?;
        let mut tasks: Vec<u32> = listed
            .common_prefixes
            .iter()
            .filter_map(|prefix| prefix.filename()?.strip_prefix("task-")?.parse().ok())
            .collect();
        tasks.sort_unstable();
        Ok(tasks)
    }

    /// Task `task`'s checkpoints, oldest first, complete or not.
    pub fn list(&self, task: u32) -> crate::Result<Vec<Listed>> {
        let listed = self.runtime.block_on(self.store.list_with_delimiter(Some(&self.task_dir(task))));
        let listed = listed.with_context(|| format!("listing task {task}'s checkpoints in {}", self.url))?;
        let mut ids: Vec<String> =
            listed.common_prefixes.iter().filter_map(|prefix| prefix.filename().map(str::to_owned)).collect();
        ids.sort();
        let mut checkpoints = Vec::new();
        for id in ids {
            let manifest = match self.get(&self.object(task, &id, "manifest.json")) {
                Ok(Some(bytes)) => serde_json::from_slice::<Manifest>(&bytes)
                    .map_err(|error| format!("its manifest cannot be read: {error}")),
                Ok(None) => Err("incomplete: no manifest".to_owned()),
                Err(error) => Err(format!("{error:#}")),
            };
            checkpoints.push(Listed { task, id, manifest });
        }
        Ok(checkpoints)
    }

    /// An object's bytes; `None` when it does not exist.
    pub fn get(&self, path: &Path) -> crate::Result<Option<Vec<u8>>> {
        let got = self.runtime.block_on(async {
            match self.store.get(path).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error),
            }
        });
        Ok(got.with_context(|| format!("reading {path} from {}", self.url))?.map(|bytes| bytes.to_vec()))
    }

    pub fn put(&self, path: &Path, bytes: Vec<u8>) -> crate::Result<()> {
        let put = self.runtime.block_on(self.store.put(path, PutPayload::from(bytes)));
        put.with_context(|| format!("writing {path} to {}", self.url))?;
        Ok(())
    }

    /// Uploads a local file (multipart when large).
    pub fn upload(&self, local: &LocalPath, path: &Path) -> crate::Result<()> {
        let uploaded: crate::Result<()> = self.runtime.block_on(async {
            let mut file = tokio::fs::File::open(local).await?;
            let mut writer = BufWriter::new(Arc::clone(&self.store), path.clone());
            let mut buffer = vec![0; CHUNK];
            loop {
                let read = file.read(&mut buffer).await?;
                if read == 0 {
                    break;
                }
                writer.write_all(&buffer[..read]).await?;
            }
            writer.shutdown().await?;
            Ok(())
        });
        uploaded.with_context(|| format!("uploading {} to {path} in {}", local.display(), self.url))
    }

    /// Downloads an object into a local file.
    pub fn download(&self, path: &Path, local: &LocalPath) -> crate::Result<()> {
        let downloaded: crate::Result<()> = self.runtime.block_on(async {
            let meta = self.store.head(path).await?;
            let mut reader = BufReader::with_capacity(Arc::clone(&self.store), &meta, CHUNK);
            let mut file = tokio::fs::File::create(local).await?;
            tokio::io::copy(&mut reader, &mut file).await?;
            file.sync_all().await?;
            Ok(())
        });
        downloaded.with_context(|| format!("downloading {path} from {} to {}", self.url, local.display()))
    }

    /// Deletes a checkpoint: its manifest first, so it is never complete
    /// with files missing, then its files.
    pub fn delete(&self, task: u32, id: &str) -> crate::Result<()> {
        let dir = self.task_dir(task).child(id);
        let deleted: crate::Result<()> = self.runtime.block_on(async {
            let manifest = dir.child("manifest.json");
            match self.store.delete(&manifest).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            let listed = self.store.list_with_delimiter(Some(&dir)).await?;
            for object in listed.objects {
                match self.store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            Ok(())
        });
        deleted.with_context(|| format!("deleting checkpoint {id} of task {task} in {}", self.url))
    }
}
