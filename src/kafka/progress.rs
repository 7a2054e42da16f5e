//! The progress record (spec §4, §10): per commit cycle and task, the input
//! offsets reached, the segments of input taken in order, and the output
//! digest. The live processor writes one in every transaction; recovery,
//! `replay` and `reset --to-time` read the chain of them back.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::client::{close_in_background, reader};
use super::topics::input_of;
use crate::config::{Config, Topics};
use crate::drive::Segment;
use crate::events::Topic;
use crate::fold::state::{KeyedOffsets, Offsets};
use crate::fold::TopicNames;
use crate::records::InputOffset;

/// A progress record as written.
#[derive(Serialize)]
pub struct ProgressRecord {
    pub task: u32,
    pub offsets: Vec<InputOffset>,
    /// The task's output digest at these offsets.
    pub digest: String,
    pub segments: Vec<SegmentRecord>,
    pub records: u64,
}

/// A [`Segment`] as a progress record names it.
#[derive(Serialize)]
pub struct SegmentRecord {
    pub topic: String,
    pub from: i64,
    pub to: i64,
}

impl SegmentRecord {
    pub fn of(segment: &Segment, names: &TopicNames) -> SegmentRecord {
        SegmentRecord { topic: names.name(segment.topic).to_owned(), from: segment.from, to: segment.to }
    }
}

/// One progress record read back: where its cycle started and ended, what
/// it took in between, and when it was written (the record's Kafka timestamp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressEntry {
    pub start: Offsets,
    pub end: Offsets,
    pub segments: Vec<Segment>,
    pub timestamp: Option<i64>,
    /// The task's output digest at `end` (hex).
    pub digest: String,
}

impl ProgressEntry {
    /// Parses task `partition`'s progress record; `None` for another task's,
    /// or one that does not name all three inputs' offsets.
    pub fn parse(bytes: &[u8], topics: &Topics, partition: u32, timestamp: Option<i64>) -> Option<ProgressEntry> {
        let record: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        if record["task"] != partition {
            return None;
        }
        let mut end = Offsets::new(-1, -1, -1);
        for offset in record["offsets"].as_array().into_iter().flatten() {
            if let (Some(topic), Some(value)) =
                (offset["topic"].as_str().and_then(|name| input_of(topics, name)), offset["offset"].as_i64())
            {
                end[topic] = value;
            }
        }
        let mut segments = Vec::new();
        for segment in record["segments"].as_array().into_iter().flatten() {
            if let (Some(topic), Some(from), Some(to)) = (
                segment["topic"].as_str().and_then(|name| input_of(topics, name)),
                segment["from"].as_i64(),
                segment["to"].as_i64(),
            ) {
                segments.push(Segment { topic, from, to });
            }
        }
        // Each input starts where the cycle's first segment of it starts.
        let mut start = end;
        for segment in segments.iter().rev() {
            start[segment.topic] = segment.from;
        }
        Topic::ALL.iter().all(|topic| end[*topic] >= 0).then_some(ProgressEntry {
            start,
            end,
            segments,
            timestamp,
            digest: record["digest"].as_str().unwrap_or_default().to_owned(),
        })
    }

    fn ends_at(&self, committed: KeyedOffsets) -> bool {
        self.end.keyed() == committed
    }
}

/// Reads task `partition`'s progress records, in log order (records of
/// aborted cycles included where a broker shows them).
pub fn read_progress(config: &Config, partition: u32) -> crate::Result<Vec<ProgressEntry>> {
    let consumer = reader(config, "progress", &[("fetch.wait.max.ms", "100")])?;
    let mut entries: Vec<ProgressEntry> = Vec::new();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&config.topics.progress, partition as i32, Offset::Beginning)?;
    consumer.assign(&list)?;
    let mut last_record = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_record = Instant::now();
                let bytes = message.payload().unwrap_or_default();
                entries.extend(ProgressEntry::parse(bytes, &config.topics, partition, message.timestamp().to_millis()));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(error).context("reading the progress topic"),
            None if last_record.elapsed() > Duration::from_secs(30) => {
                bail!("reading the progress topic: no record and no end of partition for 30 s")
            }
            None => {}
        }
    }
    close_in_background(consumer);
    Ok(entries)
}

/// The committed cycles from `stored` to `committed`, as indices into
/// `entries` in order. Working backwards from the committed end skips
/// records of aborted cycles that a broker may show: the latest record
/// ending where the chain needs one is the committed one. `None` when no
/// record ends at the committed offsets or the chain breaks.
pub fn committed_chain(entries: &[ProgressEntry], stored: Offsets, committed: KeyedOffsets) -> Option<Vec<usize>> {
    let last = entries.iter().rposition(|entry| entry.ends_at(committed))?;
    let mut chain = vec![last];
    let mut at = entries[last].start;
    while at != stored {
        let previous = entries[..*chain.last().expect("non-empty")].iter().rposition(|entry| entry.end == at)?;
        at = entries[previous].start;
        chain.push(previous);
    }
    chain.reverse();
    Some(chain)
}

/// Whether a state at `offsets` with output digest `digest` lies on the
/// committed history that ends at `committed`: a progress record ends at
/// those offsets with that digest, and the chain of records from there
/// reaches the committed offsets. Checkpoints are restored only then.
pub fn on_committed_chain(entries: &[ProgressEntry], offsets: Offsets, digest: &str, committed: KeyedOffsets) -> bool {
    let recorded = entries.iter().any(|entry| entry.end == offsets && entry.digest == digest);
    recorded && (offsets.keyed() == committed || committed_chain(entries, offsets, committed).is_some())
}

/// What the progress topic says about a task's committed cycles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommittedPlan {
    /// Rates offset reached by the last committed cycle.
    pub rates_offset: Option<i64>,
    /// The input segments the committed cycles took after the stored
    /// offsets, in order; `None` when the chain of progress records from the
    /// stored offsets to the committed ones cannot be followed.
    pub segments: Option<Vec<Segment>>,
}

impl CommittedPlan {
    /// The plan `entries` give from `stored` to `committed`.
    pub fn of(entries: &[ProgressEntry], stored: Offsets, committed: KeyedOffsets) -> CommittedPlan {
        let mut plan = CommittedPlan::default();
        let Some(last) = entries.iter().rposition(|entry| entry.ends_at(committed)) else { return plan };
        plan.rates_offset = Some(entries[last].end[Topic::Rates]);
        plan.segments = committed_chain(entries, stored, committed)
            .map(|chain| chain.iter().flat_map(|index| entries[*index].segments.iter().copied()).collect());
        plan
    }
}

/// What the progress topic says about task `partition`'s committed cycles
/// after the stored offsets (spec §4: a re-fold follows the recorded order
/// wherever it exists).
pub fn committed_plan(
    config: &Config,
    partition: u32,
    stored: Offsets,
    committed: KeyedOffsets,
) -> crate::Result<CommittedPlan> {
    Ok(CommittedPlan::of(&read_progress(config, partition)?, stored, committed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        crate::config::for_tests().topics
    }

    /// A progress record of task 0 as the processor writes it.
    fn record(offsets: [i64; 3], segments: &[(Topic, i64, i64)]) -> Vec<u8> {
        let topics = topics();
        let names = super::super::topics::input_names(&topics);
        let record = ProgressRecord {
            task: 0,
            offsets: Topic::ALL
                .into_iter()
                .map(|topic| InputOffset {
                    topic: names.name(topic).to_owned(),
                    partition: 0,
                    offset: offsets[topic.index()],
                })
                .collect(),
            digest: "00".into(),
            segments: segments
                .iter()
                .map(|(topic, from, to)| SegmentRecord::of(&Segment { topic: *topic, from: *from, to: *to }, &names))
                .collect(),
            records: 0,
        };
        serde_json::to_vec(&record).unwrap()
    }

    fn entry(offsets: [i64; 3], segments: &[(Topic, i64, i64)]) -> ProgressEntry {
        ProgressEntry::parse(&record(offsets, segments), &topics(), 0, Some(1)).unwrap()
    }

    fn keyed(deals: i64, metering: i64) -> KeyedOffsets {
        KeyedOffsets { deals, metering }
    }

    #[test]
    fn a_record_reads_back_with_where_its_cycle_started() {
        let read = entry([1, 3, 9], &[(Topic::Metering, 5, 9), (Topic::Deals, 2, 3), (Topic::Rates, 0, 1)]);
        assert_eq!(read.end, Offsets::new(1, 3, 9));
        assert_eq!(read.start, Offsets::new(0, 2, 5));
        assert_eq!(read.segments.len(), 3);
        assert_eq!(read.timestamp, Some(1));
        // Another task's record, or one that is not a progress record, is not read.
        assert_eq!(ProgressEntry::parse(&record([1, 3, 9], &[]).replace_task(7), &topics(), 0, None), None);
        assert_eq!(ProgressEntry::parse(b"{}", &topics(), 0, None), None);
    }

    trait ReplaceTask {
        fn replace_task(self, task: u32) -> Vec<u8>;
    }

    impl ReplaceTask for Vec<u8> {
        fn replace_task(self, task: u32) -> Vec<u8> {
            String::from_utf8(self).unwrap().replace("\"task\":0", &format!("\"task\":{task}")).into_bytes()
        }
    }

    #[test]
    fn the_chain_skips_a_cycle_that_was_aborted() {
        let entries = vec![
            entry([0, 2, 0], &[(Topic::Deals, 0, 2)]),
            // Aborted: its successor starts where the first one ended.
            entry([0, 2, 7], &[(Topic::Metering, 0, 7)]),
            entry([0, 2, 5], &[(Topic::Metering, 0, 5)]),
            entry([0, 3, 5], &[(Topic::Deals, 2, 3)]),
        ];
        assert_eq!(committed_chain(&entries, Offsets::ZERO, keyed(3, 5)), Some(vec![0, 2, 3]));
        // A state on the chain (at a record's end, with its digest) or not.
        assert!(on_committed_chain(&entries, Offsets::new(0, 2, 5), "00", keyed(3, 5)));
        assert!(on_committed_chain(&entries, Offsets::new(0, 3, 5), "00", keyed(3, 5)));
        assert!(!on_committed_chain(&entries, Offsets::new(0, 2, 5), "01", keyed(3, 5)), "another digest");
        assert!(!on_committed_chain(&entries, Offsets::new(0, 2, 7), "00", keyed(3, 5)), "the aborted cycle's end");
        // From a stored position part-way along the chain.
        assert_eq!(committed_chain(&entries, Offsets::new(0, 2, 5), keyed(3, 5)), Some(vec![3]));
        // No record ends at the committed offsets.
        assert_eq!(committed_chain(&entries, Offsets::ZERO, keyed(4, 5)), None);
        // The chain does not reach the stored position.
        assert_eq!(committed_chain(&entries, Offsets::new(0, 1, 0), keyed(3, 5)), None);
    }

    #[test]
    fn the_plan_is_the_chains_segments_in_order() {
        let entries = vec![
            entry([1, 2, 0], &[(Topic::Rates, 0, 1), (Topic::Deals, 0, 2)]),
            entry([1, 2, 5], &[(Topic::Metering, 0, 5)]),
        ];
        let plan = CommittedPlan::of(&entries, Offsets::ZERO, keyed(2, 5));
        assert_eq!(plan.rates_offset, Some(1));
        assert_eq!(
            plan.segments.unwrap(),
            [
                Segment { topic: Topic::Rates, from: 0, to: 1 },
                Segment { topic: Topic::Deals, from: 0, to: 2 },
                Segment { topic: Topic::Metering, from: 0, to: 5 },
            ]
        );
        // A broken chain: the rates offset is known, the order is not.
        let broken = CommittedPlan::of(&entries[1..], Offsets::ZERO, keyed(2, 5));
        assert_eq!(broken, CommittedPlan { rates_offset: Some(1), segments: None });
        assert_eq!(CommittedPlan::of(&entries, Offsets::ZERO, keyed(9, 9)), CommittedPlan::default());
    }
}
