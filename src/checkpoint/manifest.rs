//! The manifest: what a checkpoint holds and how to check it, and the
//! rule for which checkpoint a task may restore.

use serde::{Deserialize, Serialize};

use crate::fold::state::{KeyedOffsets, Offsets};
use crate::store::columns::{Column, TaskMeta};

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;

/// A checkpoint's manifest (`manifest.json`, written after its files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// The consumer group whose committed cycles the state belongs to.
    pub group: String,
    pub task: u32,
    /// Partitions of the inputs when it was taken (a restore needs the same).
    pub partitions: u32,
    /// The task's next input offsets: the end of the committed cycle it
    /// matches, i.e. of the progress record with these offsets and `digest`.
    pub offsets: NamedOffsets,
    /// Records folded from offset 0 to `offsets`.
    pub records: u64,
    /// The task's output digest at `offsets` (hex).
    pub digest: String,
    /// When it was taken (wall clock; not part of the state).
    pub created_at: String,
    pub files: Vec<ManifestFile>,
}

/// One SST file of a checkpoint: one column family's part of the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub column: String,
    pub name: String,
    pub bytes: u64,
    pub entries: u64,
    /// SHA-256 of the file (hex).
    pub sha256: String,
}

/// [`Offsets`] by input name, as people read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedOffsets {
    pub rates: i64,
    pub deals: i64,
    pub metering: i64,
}

impl From<Offsets> for NamedOffsets {
    fn from(offsets: Offsets) -> NamedOffsets {
        use crate::events::Topic;
        NamedOffsets { rates: offsets[Topic::Rates], deals: offsets[Topic::Deals], metering: offsets[Topic::Metering] }
    }
}

impl From<NamedOffsets> for Offsets {
    fn from(offsets: NamedOffsets) -> Offsets {
        Offsets::new(offsets.rates, offsets.deals, offsets.metering)
    }
}

/// A checkpoint's id: records folded, zero-padded so ids sort by progress,
/// and the head of the digest (two states at one count never share an id).
pub fn checkpoint_id(meta: &TaskMeta) -> String {
    format!("{:020}-{}", meta.folded, &meta.digest.hex()[..16])
}

impl Manifest {
    pub fn offsets(&self) -> Offsets {
        self.offsets.into()
    }

    /// Total bytes of its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|file| file.bytes).sum()
    }

    pub fn column_of(file: &ManifestFile) -> Option<Column> {
        Column::ALL.into_iter().find(|column| column.name() == file.column)
    }

    /// Why this checkpoint cannot serve task `task` of a `partitions`-way
    /// layout restoring towards the group's `committed` offsets, if it
    /// cannot.
    pub fn unusable_for(&self, task: u32, partitions: u32, committed: KeyedOffsets) -> Option<String> {
        if self.format != FORMAT {
            return Some(format!("manifest format {} (this build reads {FORMAT})", self.format));
        }
        if self.task != task {
            return Some(format!("it is task {}'s", self.task));
        }
        if self.partitions != partitions {
            return Some(format!("taken with {} partitions, the inputs have {partitions}", self.partitions));
        }
        if committed.check_not_behind(&self.offsets()).is_err() {
            return Some(format!(
                "it is past the group's committed offsets (deals {}, metering {})",
                committed.deals, committed.metering
            ));
        }
        if self.files.iter().any(|file| Manifest::column_of(file).is_none()) {
            return Some("it names a column family this build does not know".to_owned());
        }
        None
    }

    /// Whether restoring it moves a task whose stored state is at `stored`
    /// forward (never back, never sideways).
    pub fn is_ahead_of(&self, stored: Offsets) -> bool {
        let offsets = self.offsets();
        !offsets.any_below(&stored) && offsets != stored
    }
}

/// The checkpoints worth trying for a task, newest first: usable (see
/// [`Manifest::unusable_for`]) and ahead of the stored state.
pub fn candidates(
    manifests: &[Manifest],
    task: u32,
    partitions: u32,
    stored: Offsets,
    committed: KeyedOffsets,
) -> Vec<&Manifest> {
    let mut usable: Vec<&Manifest> = manifests
        .iter()
        .filter(|manifest| manifest.unusable_for(task, partitions, committed).is_none())
        .filter(|manifest| manifest.is_ahead_of(stored))
        .collect();
    usable.sort_by(|left, right| right.records.cmp(&left.records).then_with(|| right.id.cmp(&left.id)));
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(records: u64, offsets: [i64; 3]) -> Manifest {
        Manifest {
            format: FORMAT,
            id: format!("{records:020}-00"),
            group: "g".into(),
            task: 2,
            partitions: 8,
            offsets: Offsets::new(offsets[0], offsets[1], offsets[2]).into(),
            records,
            digest: "00".into(),
            created_at: "2026-12-02T00:00:00Z".into(),
            files: vec![ManifestFile {
                column: "dedup".into(),
                name: "dedup.sst".into(),
                bytes: 10,
                entries: 1,
                sha256: "ab".into(),
            }],
        }
    }

    fn keyed(deals: i64, metering: i64) -> KeyedOffsets {
        KeyedOffsets { deals, metering }
    }

    #[test]
    fn the_newest_checkpoint_at_or_before_the_committed_offsets_comes_first() {
        let all = vec![manifest(10, [1, 2, 7]), manifest(30, [1, 5, 24]), manifest(50, [1, 9, 40])];
        let chosen = candidates(&all, 2, 8, Offsets::ZERO, keyed(6, 30));
        let records: Vec<u64> = chosen.iter().map(|manifest| manifest.records).collect();
        assert_eq!(records, [30, 10], "the one past the committed offsets is left out");
        // Exactly at the committed offsets (a graceful stop's) is usable.
        assert_eq!(candidates(&all, 2, 8, Offsets::ZERO, keyed(9, 40))[0].records, 50);
    }

    #[test]
    fn a_checkpoint_never_moves_a_task_back_or_sideways() {
        let all = vec![manifest(10, [1, 2, 7]), manifest(30, [1, 5, 24])];
        // The stored state is at the first checkpoint: only the second helps.
        let chosen = candidates(&all, 2, 8, Offsets::new(1, 2, 7), keyed(9, 40));
        assert_eq!(chosen.iter().map(|manifest| manifest.records).collect::<Vec<_>>(), [30]);
        // Stored state further on than every checkpoint: none.
        assert!(candidates(&all, 2, 8, Offsets::new(1, 6, 30), keyed(9, 40)).is_empty());
        // Not comparable (ahead on one input, behind on another): never.
        assert!(!manifest(30, [1, 5, 24]).is_ahead_of(Offsets::new(1, 6, 0)));
    }

    #[test]
    fn another_task_layout_or_format_is_refused_with_the_reason() {
        let checkpoint = manifest(10, [1, 2, 7]);
        assert!(checkpoint.unusable_for(3, 8, keyed(9, 9)).unwrap().contains("task 2's"));
        assert!(checkpoint.unusable_for(2, 4, keyed(9, 9)).unwrap().contains("8 partitions"));
        assert!(checkpoint.unusable_for(2, 8, keyed(1, 9)).unwrap().contains("past the group's committed"));
        let newer = Manifest { format: FORMAT + 1, ..checkpoint.clone() };
        assert!(newer.unusable_for(2, 8, keyed(9, 9)).unwrap().contains("format"));
        let mut unknown = checkpoint;
        unknown.files[0].column = "future".into();
        assert!(unknown.unusable_for(2, 8, keyed(9, 9)).unwrap().contains("column family"));
    }

    #[test]
    fn ids_sort_by_records_folded() {
        let mut meta = TaskMeta { folded: 9, ..TaskMeta::default() };
        let early = checkpoint_id(&meta);
        meta.folded = 10;
        assert!(early < checkpoint_id(&meta));
        assert_eq!(early.len(), 20 + 1 + 16);
    }
}
