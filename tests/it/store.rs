//! Store conformance: the same commits to RocksDB and to memory load back
//! the same state, equal to the state the fold holds.

use gpuledger::events::{decode::decode_value, json, Decoded, InputRecord, Topic};
use gpuledger::fold::state::TaskState;
use gpuledger::fold::{FoldConfig, Task};
use gpuledger::store::rocks::RocksStore;
use gpuledger::store::{commit_ops, load_task, KvStore, MemoryStore};

fn records(inputs: &std::path::Path) -> Vec<InputRecord> {
    let mut all = Vec::new();
    for topic in Topic::ALL {
        let text = std::fs::read(inputs.join(format!("{}.jsonl", topic.name()))).unwrap();
        for (offset, line) in text.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()).enumerate() {
            all.push(InputRecord {
                topic,
                partition: 0,
                offset: offset as i64,
                key: None,
                value: line.to_vec(),
                headers: vec![],
            });
        }
    }
    all
}

fn decode(record: &InputRecord) -> Decoded {
    match json::parse(&record.value) {
        Ok(value) => decode_value(record.topic, &value),
        Err(rejection) => Decoded { time: None, event: Err(rejection) },
    }
}

#[test]
fn rocksdb_and_memory_stores_hold_the_same_state_as_the_fold() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = super::common::workload(dir.path(), 200, 30 * gpuledger::units::MINUTE_MS);
    let mut rocks = RocksStore::open(&dir.path().join("state")).unwrap();
    let mut memory = MemoryStore::default();
    let mut task = Task::new(FoldConfig::default(), TaskState::default());
    let mut outputs = Vec::new();
    for (index, record) in records(&inputs).iter().enumerate() {
        task.fold(record, decode(record), &mut outputs).expect("no internal error");
        if index % 97 == 0 {
            let changes = task.take_changes();
            rocks.write(commit_ops(task.state(), &changes)).unwrap();
            memory.write(commit_ops(task.state(), &changes)).unwrap();
        }
    }
    let changes = task.take_changes();
    rocks.write(commit_ops(task.state(), &changes)).unwrap();
    memory.write(commit_ops(task.state(), &changes)).unwrap();
    assert!(task.state().startups.values().any(|startup| !startup.dedup.remembered.is_empty()));
    assert_eq!(&load_task(&memory, 0).unwrap(), task.state());
    assert_eq!(&load_task(&rocks, 0).unwrap(), task.state());
    // Another partition's range is untouched.
    assert_eq!(load_task(&rocks, 1).unwrap(), TaskState { partition: 1, ..TaskState::default() });
    // A snapshot reader (queries) reads the same state without the store's
    // lock, keeps seeing its snapshot while later commits land, and fails
    // once the store is closed instead of keeping RocksDB open.
    let reader = rocks.snapshot_reader();
    assert_eq!(&reader.read(|view| load_task(view, 0)).unwrap(), task.state());
    let seen_during_a_commit = reader
        .read(|view| {
            let before = load_task(view, 0)?;
            rocks.write(vec![gpuledger::store::Op {
                column: gpuledger::store::columns::Column::Meta,
                key: gpuledger::store::columns::task_meta_key(0),
                value: Some(b"{}".to_vec()),
            }])?;
            Ok((before, load_task(view, 0)?))
        })
        .unwrap();
    assert_eq!(seen_during_a_commit.0, seen_during_a_commit.1, "one snapshot, one commit");
    rocks
        .write(commit_ops(task.state(), &gpuledger::fold::state::Changes { task_meta: true, ..Default::default() }))
        .unwrap();
    drop(rocks);
    let closed = reader.read(|view| load_task(view, 0)).unwrap_err().to_string();
    assert!(closed.contains("is closed"), "{closed}");
    let reopened = RocksStore::open(&dir.path().join("state")).unwrap();
    assert_eq!(&load_task(&reopened, 0).unwrap(), task.state(), "state survives a reopen");
}

#[test]
fn a_second_process_on_the_same_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RocksStore::open(dir.path()).unwrap();
    let error = RocksStore::open(dir.path()).err().expect("the directory is locked").to_string();
    assert!(error.contains("in use by another gpuledger process"), "{error}");
}
