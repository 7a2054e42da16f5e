//! The RocksDB store: one column family per kind of state
//! ([`Column`]), one `WriteBatch` per commit. The raw handle stays private.
//!
//! RocksDB calls block; the streaming processor calls them from a blocking
//! thread, never from an async executor thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use anyhow::{bail, Context as _};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IngestExternalFileOptions, Options, SstFileWriter, WriteBatch,
    WriteOptions, DB,
};

use super::{Column, KvStore, Op};

/// Shared block cache for all column families. The hot state lives in the
/// fold's memory; RocksDB is read on load and written on commit, so a small
/// cache suffices.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Per column family memtable: commits write many small dedup entries, and a
/// larger memtable means fewer, larger flushes.
const WRITE_BUFFER_BYTES: usize = 32 << 20;

pub struct RocksStore {
    /// Shared only (weakly) with [`SnapshotReader`]s; the store closes the
    /// database when it is dropped.
    db: Arc<DB>,
    path: PathBuf,
}

impl RocksStore {
    /// Opens (or creates) a state directory. Column families written by a
    /// newer version are opened too, so an older binary can still start.
    pub fn open(path: &Path) -> crate::Result<RocksStore> {
        std::fs::create_dir_all(path).with_context(|| format!("creating state directory {}", path.display()))?;
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut column_options = Options::default();
        column_options.set_block_based_table_factory(&table);
        column_options.set_write_buffer_size(WRITE_BUFFER_BYTES);
        column_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut db_options = column_options.clone();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);

        let mut names: Vec<String> = Column::ALL.iter().map(|column| column.name().to_owned()).collect();
        if let Ok(existing) = DB::list_cf(&db_options, path) {
            for name in existing {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let descriptors = names.iter().map(|name| ColumnFamilyDescriptor::new(name, column_options.clone()));
        let db = match DB::open_cf_descriptors(&db_options, path, descriptors) {
            Ok(db) => db,
            Err(error) if error.to_string().contains("lock") => {
                bail!("state directory {} is in use by another gpuledger process ({error})", path.display())
            }
            Err(error) => return Err(error).with_context(|| format!("opening state directory {}", path.display())),
        };
        Ok(RocksStore { db: Arc::new(db), path: path.to_owned() })
    }

    /// Opens a state directory read-only, as it is at this moment. It takes
    /// no lock, so it works while a processor writes the directory; writes
    /// through it fail.
    pub fn open_read_only(path: &Path) -> crate::Result<RocksStore> {
        if !path.join("CURRENT").is_file() {
            bail!("{} is not a gpuledger state directory", path.display());
        }
        let options = Options::default();
        let names = DB::list_cf(&options, path).with_context(|| format!("reading {}", path.display()))?;
        let db = DB::open_cf_for_read_only(&options, path, names, false)
            .with_context(|| format!("opening state directory {} read-only", path.display()))?;
        Ok(RocksStore { db: Arc::new(db), path: path.to_owned() })
    }

    /// A reader of consistent snapshots that needs no lock on the store, so
    /// a read never waits for a commit's write (queries); it does not keep
    /// the database open.
    pub fn snapshot_reader(&self) -> SnapshotReader {
        SnapshotReader { db: Arc::downgrade(&self.db), path: self.path.clone() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn handle(&self, column: Column) -> crate::Result<&rocksdb::ColumnFamily> {
        handle(&self.db, &self.path, column)
    }

    /// Deletes every key of the given ranges (column family, key prefix)
    /// in one atomic write.
    pub fn delete_ranges(&mut self, ranges: &[(Column, Vec<u8>)]) -> crate::Result<()> {
        let mut batch = WriteBatch::default();
        for (column, prefix) in ranges {
            let end = crate::checkpoint::prefix_end(prefix).context("a key range without an end")?;
            batch.delete_range_cf(self.handle(*column)?, prefix, &end);
        }
        self.db.write(batch).context("deleting a task's key ranges")
    }

    /// Adds the entries of an SST file (from [`SnapshotReader::export`]) to
    /// a column family; the file is moved into the store.
    pub fn ingest(&mut self, column: Column, file: &Path) -> crate::Result<()> {
        let mut options = IngestExternalFileOptions::default();
        options.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(self.handle(column)?, &options, vec![file])
            .with_context(|| format!("ingesting {} into column family {}", file.display(), column.name()))
    }
}

/// One column family's part of a task, exported to an SST file.
#[derive(Clone, Debug)]
pub struct Exported {
    pub column: Column,
    pub path: PathBuf,
    pub entries: u64,
}

fn handle<'a>(db: &'a DB, path: &Path, column: Column) -> crate::Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(column.name())
        .with_context(|| format!("column family {} missing in {}", column.name(), path.display()))
}

/// Iterates forward from `prefix`.
fn from(prefix: &[u8]) -> rocksdb::IteratorMode<'_> {
    rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward)
}

/// The entries of `iterator` (started at `prefix`) whose keys start with it.
fn take_prefix(iterator: rocksdb::DBIterator<'_>, prefix: &[u8]) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut entries = Vec::new();
    for item in iterator {
        let (key, value) = item?;
        if !key.starts_with(prefix) {
            break;
        }
        entries.push((key.into_vec(), value.into_vec()));
    }
    Ok(entries)
}

impl KvStore for RocksStore {
    fn get(&self, column: Column, key: &[u8]) -> crate::Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.handle(column)?, key)?)
    }

    fn scan_prefix(&self, column: Column, prefix: &[u8]) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        take_prefix(self.db.iterator_cf(self.handle(column)?, from(prefix)), prefix)
    }

    fn write(&mut self, ops: Vec<Op>) -> crate::Result<()> {
        let mut batch = WriteBatch::default();
        for op in ops {
            let handle = self.handle(op.column)?;
            match op.value {
                Some(value) => batch.put_cf(handle, op.key, value),
                None => batch.delete_cf(handle, op.key),
            }
        }
        // The WAL makes a commit atomic and durable against a process crash;
        // no fsync per commit: after a machine crash the state is rebuilt
        // from the input logs (batch mode) or the committed offsets (live).
        self.db.write_opt(batch, &WriteOptions::default()).context("writing a commit to RocksDB")
    }
}

/// Reads a [`RocksStore`] through snapshots (see [`RocksStore::snapshot_reader`]).
#[derive(Clone, Debug)]
pub struct SnapshotReader {
    db: Weak<DB>,
    path: PathBuf,
}

impl SnapshotReader {
    /// Runs `read` over one snapshot: every read in it sees the same
    /// commits. Fails once the store is closed.
    pub fn read<T>(&self, read: impl FnOnce(&dyn KvStore) -> crate::Result<T>) -> crate::Result<T> {
        let db = self.db.upgrade().with_context(|| format!("the state directory {} is closed", self.path.display()))?;
        let snapshot = db.snapshot();
        read(&SnapshotView { db: &db, snapshot: &snapshot, path: &self.path })
    }

    /// Writes the entries of `ranges` (column family, key prefix; in key
    /// order within a column family) to one SST file per column family in
    /// `dir` (none for a column family without entries), and runs `read`,
    /// all over one snapshot.
    pub fn export<T>(
        &self,
        ranges: &[(Column, Vec<u8>)],
        dir: &Path,
        read: impl FnOnce(&dyn KvStore) -> crate::Result<T>,
    ) -> crate::Result<(T, Vec<Exported>)> {
        let db = self.db.upgrade().with_context(|| format!("the state directory {} is closed", self.path.display()))?;
        let snapshot = db.snapshot();
        let value = read(&SnapshotView { db: &db, snapshot: &snapshot, path: &self.path })?;
        let mut options = Options::default();
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut exported = Vec::new();
        for column in Column::ALL {
            let path = dir.join(format!("{}.sst", column.name()));
            let mut writer = SstFileWriter::create(&options);
            let mut entries = 0;
            for (_, prefix) in ranges.iter().filter(|(range_column, _)| *range_column == column) {
                let mut iterator = snapshot.raw_iterator_cf(handle(&db, &self.path, column)?);
                iterator.seek(prefix);
                while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
                    if !key.starts_with(prefix) {
                        break;
                    }
                    if entries == 0 {
                        writer.open(&path).with_context(|| format!("creating {}", path.display()))?;
                    }
                    writer.put(key, value).with_context(|| format!("writing {}", path.display()))?;
                    entries += 1;
                    iterator.next();
                }
                iterator.status().with_context(|| format!("reading column family {}", column.name()))?;
            }
            if entries > 0 {
                writer.finish().with_context(|| format!("finishing {}", path.display()))?;
                exported.push(Exported { column, path, entries });
            }
        }
        Ok((value, exported))
    }
}

/// One snapshot, as a read-only [`KvStore`].
struct SnapshotView<'a> {
    db: &'a DB,
    snapshot: &'a rocksdb::Snapshot<'a>,
    path: &'a Path,
}

impl SnapshotView<'_> {
    fn handle(&self, column: Column) -> crate::Result<&rocksdb::ColumnFamily> {
        handle(self.db, self.path, column)
    }
}

impl KvStore for SnapshotView<'_> {
    fn get(&self, column: Column, key: &[u8]) -> crate::Result<Option<Vec<u8>>> {
        Ok(self.snapshot.get_cf(self.handle(column)?, key)?)
    }

    fn scan_prefix(&self, column: Column, prefix: &[u8]) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        take_prefix(self.snapshot.iterator_cf(self.handle(column)?, from(prefix)), prefix)
    }

    fn write(&mut self, _: Vec<Op>) -> crate::Result<()> {
        bail!("a snapshot of {} is read-only", self.path.display())
    }
}
