//! Checkpoints of a task's state in an object store, so that a task moves
//! or restores in time proportional to its state, not its history.
//!
//! A checkpoint is one task's key ranges, read from one RocksDB snapshot
//! (so at one commit boundary: RocksDB holds only committed state, each
//! commit one `WriteBatch`) and written as one SST file per column family,
//! plus a manifest written last: a checkpoint without its manifest is
//! incomplete and never used. Objects live under
//! `<store>/<group>/task-<partition>/<id>/`, the id being the records
//! folded (zero-padded, so names sort by progress) and the digest's head.
//!
//! - [`manifest`]: what a checkpoint holds, and which one a task may use;
//! - [`object`]: the object store (`file://`, `s3://`), behind blocking calls;
//! - [`take`]: writing one (export, upload, manifest, pruning);
//! - [`restore`]: reading one back (download, verify, ingest), with fallback.

pub mod manifest;
pub mod object;
pub mod restore;
pub mod take;
pub mod worker;

pub use manifest::{Manifest, ManifestFile};
pub use object::CheckpointStore;

use crate::store::columns::{self, Column};

/// The key ranges (column family, key prefix) that make up task
/// `partition`'s state, in key order within each column family.
pub fn task_ranges(partition: u32) -> Vec<(Column, Vec<u8>)> {
    let mut ranges =
        vec![(Column::Meta, columns::checkpoint_prefix(partition)), (Column::Meta, columns::task_meta_key(partition))];
    for column in Column::ALL.into_iter().filter(|column| *column != Column::Meta) {
        ranges.push((column, columns::partition_prefix(partition)));
    }
    ranges
}

/// The smallest key above every key that starts with `prefix` (`None`
/// when there is none: all bytes 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_ranges_cover_every_column_and_no_other_task() {
        let ranges = task_ranges(7);
        for column in Column::ALL {
            assert!(ranges.iter().any(|(range_column, _)| *range_column == column), "{column:?}");
        }
        // Within a column family the prefixes are in key order (one SST file each).
        let meta: Vec<&Vec<u8>> =
            ranges.iter().filter(|(column, _)| *column == Column::Meta).map(|(_, prefix)| prefix).collect();
        assert!(meta.windows(2).all(|pair| pair[0] < pair[1]));
        // Task 7's keys, and not task 8's or task 70's.
        let mine = columns::startup_key(7, "acme");
        let theirs = columns::startup_key(8, "acme");
        let (_, prefix) = ranges.iter().find(|(column, _)| *column == Column::Startups).unwrap();
        assert!(mine.starts_with(prefix) && !theirs.starts_with(prefix));
        assert!(!columns::task_meta_key(70).starts_with(&columns::task_meta_key(7)));
    }

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(&[0, 0, 0, 7]), Some(vec![0, 0, 0, 8]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b"task\0\0\0\x07"), Some(b"task\0\0\0\x08".to_vec()));
    }
}
