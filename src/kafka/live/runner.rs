//! One assigned partition's task: its fold, its producer and rates reader,
//! the records fetched for it, and how the driver sees them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;
use rdkafka::{Offset, TopicPartitionList};

use super::group::{Assigned, GroupContext};
use super::RunStats;
use crate::config::Config;
use crate::drive::{Driver, Flow, Inputs, Segment, Sink};
use crate::events::{Decoded, InputRecord, Topic};
use crate::fold::merge::Head;
use crate::fold::state::Offsets;
use crate::fold::{Poisoned, Task};
use crate::kafka::client::{self, cached_end_offset, QuietEof};
use crate::kafka::progress::{committed_plan, CommittedPlan};
use crate::kafka::topics::name_of;
use crate::records::Output;
use crate::store::rocks::RocksStore;
use crate::store::{self, KvStore};

/// How often the high watermark of an input without a buffered head is
/// asked for, to tell "caught up" from "not fetched yet".
const WATERMARK_REFRESH: Duration = Duration::from_millis(200);

/// Records a task folds before the loop cuts a commit cycle regardless of
/// the interval.
const MAX_RECORDS_PER_CYCLE: u64 = 50_000;

/// One assigned partition's task.
pub(super) struct TaskRunner {
    pub(super) task: Task,
    /// Shared with the commit thread while a cycle of this task is in flight.
    pub(super) producer: Arc<BaseProducer>,
    pub(super) rates: BaseConsumer<QuietEof>,
    pub(super) feeds: Feeds,
    /// Takes the buffered records in the recorded order while re-folding,
    /// then by the merge rule.
    pub(super) driver: Driver,
    pub(super) pending: Vec<Output>,
    /// The JSON bytes of `pending`, one entry per output.
    pub(super) pending_json: Vec<Vec<u8>>,
    /// The input segments folded since the last cycle, for its progress record.
    pub(super) segments: Vec<Segment>,
    pub(super) folded_since_commit: u64,
}

/// A task's fetched input records and what is known of each input's end.
pub(super) struct Feeds {
    partition: u32,
    pub(super) buffers: [VecDeque<(InputRecord, Decoded)>; 3],
    pub(super) rates_caught_up: bool,
    /// Next offset expected per input.
    pub(super) expected: Offsets,
    /// Next offset to fold per input (the task's offsets).
    taken: Offsets,
    high_watermarks: Offsets,
    watermarks_at: Instant,
    /// Offsets reached by the last committed cycle (o_k), per input: the
    /// group's for deals and metering, the last progress record's for rates.
    /// Below them the outputs were published already.
    pub(super) suppress_below: Offsets,
}

impl Feeds {
    /// Whether the folded position is still below the committed offsets.
    fn refolding(&self) -> bool {
        self.taken.any_below(&self.suppress_below)
    }

    /// Buffers a fetched record (one at or past the next expected offset).
    pub(super) fn push(&mut self, record: InputRecord, decoded: Decoded) {
        self.expected[record.topic] = record.offset + 1;
        self.buffers[record.topic.index()].push_back((record, decoded));
    }
}

impl TaskRunner {
    /// Starts task `assigned.partition` from its stored state: when the
    /// group committed more than the store holds, it re-folds up to the
    /// committed offsets in the recorded order, outputs suppressed.
    pub(super) fn start(
        config: &Config,
        store: &Mutex<RocksStore>,
        assigned: &Assigned,
        poisoned: &BTreeMap<u32, Vec<Poisoned>>,
    ) -> crate::Result<TaskRunner> {
        let partition = assigned.partition;
        let state = store::load_task(&*store.lock().expect("store lock"), partition)?;
        let offsets = state.offsets;
        let committed = assigned.committed;
        let behind = committed.deals > offsets[Topic::Deals] || committed.metering > offsets[Topic::Metering];
        let plan = if behind {
            match &assigned.progress {
                Some(entries) => CommittedPlan::of(entries, offsets, committed),
                None => committed_plan(config, partition, offsets, committed)?,
            }
        } else {
            CommittedPlan { rates_offset: Some(offsets[Topic::Rates]), segments: Some(Vec::new()) }
        };
        let rates_committed = match plan.rates_offset {
            Some(offset) => offset,
            None => {
                tracing::warn!(
                    partition,
                    "no progress record matches the committed offsets; re-folding rates from the stored offset"
                );
                offsets[Topic::Rates]
            }
        };
        if behind && plan.segments.is_none() {
            tracing::warn!(
                partition,
                "the progress records do not chain back to the stored offsets; re-folding by the merge rule"
            );
        }
        let producer = client::transactional_producer(config, partition)?;
        let rates = client::rates_reader(config)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&config.topics.rates, 0, Offset::Offset(offsets[Topic::Rates]))?;
        rates.assign(&list).context("assigning the rates topic")?;
        tracing::info!(partition, stored = ?offsets, committed = ?assigned.committed, "task starting");
        if behind {
            tracing::info!(partition, "re-folding from the stored offsets to the committed ones, outputs suppressed");
        }
        let mut task = Task::new(config.fold.clone(), state);
        for poison in poisoned.get(&partition).into_iter().flatten() {
            task.poison(poison);
        }
        Ok(TaskRunner {
            task,
            producer: Arc::new(producer),
            rates,
            feeds: Feeds {
                partition,
                buffers: Default::default(),
                rates_caught_up: false,
                expected: offsets,
                taken: offsets,
                // Unknown until asked: not caught up.
                high_watermarks: Offsets::new(i64::MAX, i64::MAX, i64::MAX),
                watermarks_at: Instant::now() - WATERMARK_REFRESH,
                suppress_below: Offsets::new(
                    rates_committed.max(offsets[Topic::Rates]),
                    assigned.committed.deals,
                    assigned.committed.metering,
                ),
            },
            driver: Driver::recorded(partition, plan.segments.unwrap_or_default()),
            pending: Vec::new(),
            pending_json: Vec::new(),
            segments: Vec::new(),
            folded_since_commit: 0,
        })
    }

    /// Whether the folded position is still below the committed offsets.
    pub(super) fn refolding(&self) -> bool {
        self.task.state().offsets.any_below(&self.feeds.suppress_below)
    }

    pub(super) fn caught_up(&self) -> bool {
        let feeds = &self.feeds;
        feeds.buffers.iter().all(VecDeque::is_empty)
            && feeds.rates_caught_up
            && [Topic::Deals, Topic::Metering]
                .iter()
                .all(|topic| feeds.expected[*topic] >= feeds.high_watermarks[*topic])
            && self.pending.is_empty()
            && self.folded_since_commit == 0
    }

    /// Closes the task's Kafka clients.
    pub(super) fn close(self) {
        client::close_in_background(self.producer);
        client::close_in_background(self.rates);
    }
}

/// A task's feeds as the driver sees them.
pub(super) struct LiveInputs<'r> {
    pub(super) feeds: &'r mut Feeds,
    pub(super) consumer: &'r BaseConsumer<GroupContext>,
    pub(super) config: &'r Config,
}

impl Inputs for LiveInputs<'_> {
    fn head(&mut self, topic: Topic) -> crate::Result<Head> {
        let feeds = &mut *self.feeds;
        let refolding = feeds.refolding();
        let committed = feeds.suppress_below[topic];
        if let Some((record, decoded)) = feeds.buffers[topic.index()].front() {
            // While re-folding, an input at its committed offset waits for the others.
            if refolding && record.offset >= committed {
                return Ok(Head::CaughtUp);
            }
            return Ok(Head::Ready(decoded.time));
        }
        if refolding && feeds.expected[topic] >= committed {
            return Ok(Head::CaughtUp);
        }
        if topic == Topic::Rates {
            return Ok(if feeds.rates_caught_up { Head::CaughtUp } else { Head::Pending });
        }
        if feeds.watermarks_at.elapsed() >= WATERMARK_REFRESH {
            feeds.watermarks_at = Instant::now();
            for input in [Topic::Deals, Topic::Metering] {
                let name = name_of(&self.config.topics, input);
                if let Some(high) = cached_end_offset(self.consumer, name, feeds.partition) {
                    feeds.high_watermarks[input] = high;
                }
            }
        }
        Ok(if feeds.expected[topic] >= feeds.high_watermarks[topic] { Head::CaughtUp } else { Head::Pending })
    }

    fn position(&self, topic: Topic) -> Option<i64> {
        self.feeds.buffers[topic.index()].front().map(|(record, _)| record.offset)
    }

    fn pop(&mut self, topic: Topic) -> crate::Result<Option<(InputRecord, Decoded)>> {
        let head = self.feeds.buffers[topic.index()].pop_front();
        if let Some((record, _)) = &head {
            self.feeds.taken[topic] = record.offset + 1;
        }
        Ok(head)
    }
}

/// Where a live task's outputs go: nowhere while re-folding (they were
/// published), else into the cycle's pending outputs. The segments taken
/// are recorded for the progress record either way.
pub(super) struct LiveSink<'r> {
    pub(super) partition: u32,
    /// Whether the record being written is below the committed offsets.
    pub(super) refolding: bool,
    pub(super) suppress_below: Offsets,
    pub(super) pending: &'r mut Vec<Output>,
    pub(super) pending_json: &'r mut Vec<Vec<u8>>,
    pub(super) segments: &'r mut Vec<Segment>,
    pub(super) folded_since_commit: &'r mut u64,
    pub(super) stats: &'r mut RunStats,
    pub(super) store: &'r Mutex<RocksStore>,
    pub(super) inject_write_failure: bool,
}

impl Sink for LiveSink<'_> {
    fn write(
        &mut self,
        _: &mut Task,
        record: &InputRecord,
        outputs: &mut Vec<Output>,
        encoded: &mut Vec<Vec<u8>>,
    ) -> crate::Result<()> {
        Segment::extend(self.segments, record.topic, record.offset);
        if !self.refolding {
            self.stats.records_folded_by_topic[record.topic.index()] += 1;
            self.pending.append(outputs);
            self.pending_json.append(encoded);
        }
        Ok(())
    }

    fn folded(&mut self, task: &mut Task) -> crate::Result<Flow> {
        if !self.refolding {
            *self.folded_since_commit += 1;
            self.stats.records_folded += 1;
            let full = *self.folded_since_commit >= MAX_RECORDS_PER_CYCLE;
            return Ok(if full { Flow::Yield } else { Flow::Continue });
        }
        self.stats.records_refolded += 1;
        if task.state().offsets.any_below(&self.suppress_below) {
            return Ok(Flow::Continue);
        }
        // Caught up with what Kafka has: persist, no transaction.
        let changes = task.take_changes();
        let ops = store::commit_ops(task.state(), &changes);
        // The changes are taken: a state that missed them would take later
        // deltas wrongly, so this is fatal (a restart re-folds from what the
        // store holds).
        let written = if self.inject_write_failure {
            Err(anyhow::anyhow!("injected failure (processor.inject_refold_write_failure)"))
        } else {
            self.store.lock().expect("store lock").write(ops)
        };
        let partition = self.partition;
        written.with_context(|| format!("writing the re-folded state of task {partition} to RocksDB"))?;
        self.segments.clear();
        self.refolding = false;
        tracing::info!(partition, "re-fold done; processing live");
        Ok(Flow::Yield)
    }
}
