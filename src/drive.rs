//! The one loop that feeds a task: `gpuledger fold`, `replay` and the live
//! processor all run it.
//!
//! Each step takes the next record from one of the task's three inputs —
//! in the order a recorded plan gives (the segments committed cycles took,
//! from the progress topic) while it lasts and matches the input, else by
//! the merge rule of spec §4 ([`crate::fold::merge`]) — leaves out what
//! `--until` excludes, and hands the record to a [`Step`]: usually a
//! [`TaskStep`], which folds it into the [`Task`] and gives the outputs to
//! a [`Sink`] (files, a producer, a transaction's buffer, or nowhere while
//! re-folding), whose hook persists the state every so often.
//!
//! Nothing here does I/O of its own: inputs come in through [`Inputs`]
//! (JSONL files, Kafka consumers, or memory in the tests below).

use std::collections::VecDeque;

use crate::events::{Decoded, InputRecord, Topic};
use crate::fold::merge::{choose, Choice, Head};
use crate::fold::{Poisoned, Task};
use crate::records::Output;
use crate::units::Millis;

/// A run of consecutive offsets of one input that a task took in one go:
/// `[from, to)`. Progress records list them, in order, per commit cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub topic: Topic,
    pub from: i64,
    pub to: i64,
}

impl Segment {
    /// Appends the record at `offset` of `topic` to a list of segments: it
    /// extends the last one when it follows on, else starts a new one.
    pub fn extend(segments: &mut Vec<Segment>, topic: Topic, offset: i64) {
        match segments.last_mut() {
            Some(last) if last.topic == topic && last.to == offset => last.to = offset + 1,
            _ => segments.push(Segment { topic, from: offset, to: offset + 1 }),
        }
    }
}

/// A task's three inputs, as the driver sees them.
pub trait Inputs {
    /// What `topic` offers next: a buffered record's time, nothing yet
    /// ([`Head::Pending`]: more may come), or nothing more for now
    /// ([`Head::CaughtUp`]). May read ahead.
    fn head(&mut self, topic: Topic) -> crate::Result<Head>;
    /// The offset of the record [`Inputs::pop`] would return, if one is buffered.
    fn position(&self, topic: Topic) -> Option<i64>;
    /// Takes the buffered head of `topic`.
    fn pop(&mut self, topic: Topic) -> crate::Result<Option<(InputRecord, Decoded)>>;
}

/// What to do with each record the driver takes.
pub trait Step {
    /// A record that failed inside the fold (the caller rebuilds and retries).
    type Poison;
    /// Folds one record.
    fn fold(&mut self, record: InputRecord, decoded: Decoded) -> crate::Result<Result<Flow, Self::Poison>>;
    /// A record `--until` left out.
    fn left_out(&mut self, _record: &InputRecord) -> crate::Result<()> {
        Ok(())
    }
}

/// Whether the driver goes on after a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Return to the caller (a commit is due, the re-fold is done).
    Yield,
}

/// Why [`Driver::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An input that is not caught up has nothing buffered: fetch, then run again.
    Wait,
    /// Every input is caught up.
    Idle,
    /// The step asked to return.
    Yielded,
}

/// Counts over a driver's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records taken from the inputs (left out by `--until` included).
    pub taken: u64,
    /// Of those, taken in the recorded order.
    pub in_recorded_order: u64,
    /// Records `--until` left out: later than it, or without a readable time.
    pub after_until: u64,
}

/// The loop: which input next, the `--until` filter, and the step.
#[derive(Debug, Default)]
pub struct Driver {
    /// The recorded order still to follow.
    plan: VecDeque<Segment>,
    until: Option<Millis>,
    /// For log lines.
    partition: u32,
    counts: Counts,
}

impl Driver {
    /// A driver of task `partition` that takes records by the merge rule.
    pub fn merge(partition: u32) -> Driver {
        Driver { partition, ..Driver::default() }
    }

    /// A driver that first follows `plan` (the segments committed cycles
    /// took, in order), then the merge rule.
    pub fn recorded(partition: u32, plan: Vec<Segment>) -> Driver {
        Driver { partition, plan: plan.into(), ..Driver::default() }
    }

    /// Leaves out records whose time is after `until`, or unreadable.
    pub fn until(mut self, until: Option<Millis>) -> Driver {
        self.until = until;
        self
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether part of the recorded order is still to be followed.
    pub fn following_plan(&self) -> bool {
        !self.plan.is_empty()
    }

    /// Stops following the recorded order.
    pub fn end_plan(&mut self) {
        self.plan.clear();
    }

    /// Takes and steps records until an input must be waited for, all are
    /// caught up, or the step yields; or returns the record that failed
    /// inside the fold.
    pub fn run<S: Step>(&mut self, inputs: &mut impl Inputs, step: &mut S) -> crate::Result<Result<Stop, S::Poison>> {
        loop {
            let topic = match self.next(inputs)? {
                Choice::Take(topic) => topic,
                Choice::Wait => return Ok(Ok(Stop::Wait)),
                Choice::Idle => return Ok(Ok(Stop::Idle)),
            };
            let Some((record, decoded)) = inputs.pop(topic)? else {
                anyhow::bail!("task {}: the {} input lost its head", self.partition, topic.name());
            };
            self.counts.taken += 1;
            if let Some(until) = self.until {
                if decoded.time.is_none_or(|time| time > until) {
                    self.counts.after_until += 1;
                    step.left_out(&record)?;
                    continue;
                }
            }
            match step.fold(record, decoded)? {
                Ok(Flow::Continue) => {}
                Ok(Flow::Yield) => return Ok(Ok(Stop::Yielded)),
                Err(poison) => return Ok(Err(poison)),
            }
        }
    }

    /// The input to take next: the recorded order's while it lasts and the
    /// input holds the record it names, else the merge rule's.
    fn next(&mut self, inputs: &mut impl Inputs) -> crate::Result<Choice> {
        while let Some(front) = self.plan.front_mut() {
            let topic = front.topic;
            match inputs.position(topic) {
                Some(offset) if offset == front.from => {
                    front.from += 1;
                    if front.from >= front.to {
                        self.plan.pop_front();
                    }
                    self.counts.in_recorded_order += 1;
                    return Ok(Choice::Take(topic));
                }
                Some(found) => {
                    tracing::warn!(
                        partition = self.partition,
                        topic = topic.name(),
                        expected = front.from,
                        found,
                        "recorded order does not match the input; following the merge rule"
                    );
                    self.plan.clear();
                }
                None => match inputs.head(topic)? {
                    Head::CaughtUp => {
                        tracing::warn!(
                            partition = self.partition,
                            topic = topic.name(),
                            expected = front.from,
                            "recorded order reaches past the input's end; following the merge rule"
                        );
                        self.plan.clear();
                    }
                    Head::Pending | Head::Ready(_) => return Ok(Choice::Wait),
                },
            }
        }
        let mut heads = [Head::CaughtUp; 3];
        for topic in Topic::ALL {
            heads[topic.index()] = inputs.head(topic)?;
        }
        Ok(choose(heads))
    }
}

/// Runs `attempt` until it folds through. A record that failed inside the
/// fold (spec §5, v1.1 `internal_error`) joins the list the next attempt
/// is given; that attempt starts again from the task's base and folds the
/// record as an `internal_error` dead letter.
pub fn retry_poisoned<T, P: std::fmt::Display>(
    partition: u32,
    mut attempt: impl FnMut(&[P]) -> crate::Result<Result<T, P>>,
) -> crate::Result<T> {
    let mut poisoned = Vec::new();
    loop {
        match attempt(&poisoned)? {
            Ok(done) => return Ok(done),
            Err(poison) => {
                tracing::warn!(partition, error = %poison, "folding the task again to dead-letter the record");
                poisoned.push(poison);
            }
        }
    }
}

/// Where a [`TaskStep`]'s outputs go, and its persist hook.
pub trait Sink {
    /// Takes one record's outputs and their JSON bytes (one entry per
    /// output); what it leaves in them is dropped.
    fn write(
        &mut self,
        task: &mut Task,
        record: &InputRecord,
        outputs: &mut Vec<Output>,
        encoded: &mut Vec<Vec<u8>>,
    ) -> crate::Result<()>;
    /// Called after each record is written: persists the task's changes
    /// when it is time, and says whether the driver goes on.
    fn folded(&mut self, task: &mut Task) -> crate::Result<Flow>;
    /// A record `--until` left out.
    fn left_out(&mut self, _record: &InputRecord) -> crate::Result<()> {
        Ok(())
    }
}

/// The usual step: fold into a task, outputs to a sink.
pub struct TaskStep<'a, S> {
    pub task: &'a mut Task,
    pub sink: &'a mut S,
    outputs: Vec<Output>,
    encoded: Vec<Vec<u8>>,
}

impl<'a, S: Sink> TaskStep<'a, S> {
    pub fn new(task: &'a mut Task, sink: &'a mut S) -> Self {
        TaskStep { task, sink, outputs: Vec::with_capacity(1024), encoded: Vec::with_capacity(1024) }
    }
}

impl<S: Sink> Step for TaskStep<'_, S> {
    type Poison = Poisoned;

    fn fold(&mut self, record: InputRecord, decoded: Decoded) -> crate::Result<Result<Flow, Poisoned>> {
        if let Err(poison) = self.task.fold_encoded(&record, decoded, &mut self.outputs, &mut self.encoded) {
            return Ok(Err(poison));
        }
        self.sink.write(self.task, &record, &mut self.outputs, &mut self.encoded)?;
        self.outputs.clear();
        self.encoded.clear();
        Ok(Ok(self.sink.folded(self.task)?))
    }

    fn left_out(&mut self, record: &InputRecord) -> crate::Result<()> {
        self.sink.left_out(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{json, Limits};
    use crate::fold::state::TaskState;
    use crate::fold::FoldConfig;

    /// Three inputs in memory; `open` says which are still open (Pending
    /// when empty) rather than at their end.
    #[derive(Default)]
    struct Memory {
        buffers: [VecDeque<(InputRecord, Decoded)>; 3],
        open: [bool; 3],
    }

    impl Memory {
        fn push(&mut self, topic: Topic, line: &str) {
            let buffer = &mut self.buffers[topic.index()];
            let offset = buffer.back().map_or(0, |(record, _)| record.offset + 1);
            let value = line.as_bytes().to_vec();
            let decoded = crate::events::decode_parsed(topic, json::parse(&value), &Limits::default());
            let record = InputRecord { topic, partition: 0, offset, key: None, value, headers: Vec::new() };
            buffer.push_back((record, decoded));
        }
    }

    impl Inputs for Memory {
        fn head(&mut self, topic: Topic) -> crate::Result<Head> {
            Ok(match self.buffers[topic.index()].front() {
                Some((_, decoded)) => Head::Ready(decoded.time),
                None if self.open[topic.index()] => Head::Pending,
                None => Head::CaughtUp,
            })
        }

        fn position(&self, topic: Topic) -> Option<i64> {
            self.buffers[topic.index()].front().map(|(record, _)| record.offset)
        }

        fn pop(&mut self, topic: Topic) -> crate::Result<Option<(InputRecord, Decoded)>> {
            Ok(self.buffers[topic.index()].pop_front())
        }
    }

    /// Records the order of what it is given.
    #[derive(Default)]
    struct Taken {
        order: Vec<(Topic, i64)>,
        left_out: Vec<(Topic, i64)>,
        yield_after: Option<usize>,
    }

    impl Step for Taken {
        type Poison = std::convert::Infallible;

        fn fold(&mut self, record: InputRecord, _: Decoded) -> crate::Result<Result<Flow, Self::Poison>> {
            self.order.push((record.topic, record.offset));
            let done = self.yield_after.is_some_and(|count| self.order.len() >= count);
            Ok(Ok(if done { Flow::Yield } else { Flow::Continue }))
        }

        fn left_out(&mut self, record: &InputRecord) -> crate::Result<()> {
            self.left_out.push((record.topic, record.offset));
            Ok(())
        }
    }

    fn usage(time: &str, id: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"gpuledger.gpu.usage","subject":"acme","time":"{time}","data":{{"startup_id":"acme","gpu_model":"H800","region":"us","tier":"on_demand","gpu_seconds":3600,"cluster_id":"c","job_id":"{id}"}}}}"#
        )
    }

    fn deal(time: &str, id: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"gpuledger.deal.signed","subject":"acme","time":"{time}","data":{{}}}}"#
        )
    }

    /// Metering at 1 h and 3 h, a deal at 2 h: the merge takes them by time.
    fn three() -> Memory {
        let mut memory = Memory::default();
        memory.push(Topic::Metering, &usage("2026-01-01T01:00:00Z", "u1"));
        memory.push(Topic::Metering, &usage("2026-01-01T03:00:00Z", "u2"));
        memory.push(Topic::Deals, &deal("2026-01-01T02:00:00Z", "d1"));
        memory
    }

    #[test]
    fn without_a_plan_the_merge_rule_orders_by_time() {
        let (mut memory, mut taken) = (three(), Taken::default());
        let stop = Driver::merge(0).run(&mut memory, &mut taken).unwrap().unwrap();
        assert_eq!(stop, Stop::Idle);
        assert_eq!(taken.order, [(Topic::Metering, 0), (Topic::Deals, 0), (Topic::Metering, 1)]);
    }

    #[test]
    fn a_recorded_plan_that_differs_from_the_merge_is_followed_then_the_merge() {
        // Recorded: both metering records first (the deal arrived late), then the deal.
        let plan = vec![Segment { topic: Topic::Metering, from: 0, to: 2 }];
        let (mut memory, mut taken) = (three(), Taken::default());
        let mut driver = Driver::recorded(0, plan);
        assert_eq!(driver.run(&mut memory, &mut taken).unwrap().unwrap(), Stop::Idle);
        assert_eq!(taken.order, [(Topic::Metering, 0), (Topic::Metering, 1), (Topic::Deals, 0)]);
        assert_eq!(driver.counts().in_recorded_order, 2);
        assert!(!driver.following_plan());
    }

    #[test]
    fn a_plan_that_does_not_match_the_input_falls_back_to_the_merge() {
        let plan = vec![Segment { topic: Topic::Metering, from: 5, to: 6 }];
        let (mut memory, mut taken) = (three(), Taken::default());
        let mut driver = Driver::recorded(0, plan);
        driver.run(&mut memory, &mut taken).unwrap().unwrap();
        assert_eq!(taken.order, [(Topic::Metering, 0), (Topic::Deals, 0), (Topic::Metering, 1)]);
        assert_eq!(driver.counts().in_recorded_order, 0);
    }

    #[test]
    fn a_plan_past_the_end_of_an_input_falls_back_to_the_merge() {
        let plan = vec![Segment { topic: Topic::Rates, from: 0, to: 1 }];
        let (mut memory, mut taken) = (three(), Taken::default());
        Driver::recorded(0, plan).run(&mut memory, &mut taken).unwrap().unwrap();
        assert_eq!(taken.order.len(), 3);
    }

    #[test]
    fn a_plan_waits_for_an_open_input_that_has_not_delivered_its_record() {
        let plan = vec![Segment { topic: Topic::Rates, from: 0, to: 1 }];
        let (mut memory, mut taken) = (three(), Taken::default());
        memory.open[Topic::Rates.index()] = true;
        let mut driver = Driver::recorded(0, plan);
        assert_eq!(driver.run(&mut memory, &mut taken).unwrap().unwrap(), Stop::Wait);
        assert!(taken.order.is_empty());
        assert!(driver.following_plan());
    }

    #[test]
    fn the_merge_waits_for_an_open_input_without_a_head() {
        let (mut memory, mut taken) = (three(), Taken::default());
        memory.open[Topic::Rates.index()] = true;
        assert_eq!(Driver::merge(0).run(&mut memory, &mut taken).unwrap().unwrap(), Stop::Wait);
        assert!(taken.order.is_empty());
    }

    #[test]
    fn until_leaves_out_later_records_and_counts_them() {
        let until = crate::units::parse_rfc3339("2026-01-01T02:00:00Z");
        let (mut memory, mut taken) = (three(), Taken::default());
        let mut driver = Driver::merge(0).until(until);
        driver.run(&mut memory, &mut taken).unwrap().unwrap();
        assert_eq!(taken.order, [(Topic::Metering, 0), (Topic::Deals, 0)]);
        assert_eq!(taken.left_out, [(Topic::Metering, 1)]);
        assert_eq!(driver.counts(), Counts { taken: 3, in_recorded_order: 0, after_until: 1 });
    }

    #[test]
    fn a_step_that_yields_returns_and_the_next_run_goes_on() {
        let (mut memory, mut taken) = (three(), Taken { yield_after: Some(1), ..Taken::default() });
        let mut driver = Driver::merge(0);
        assert_eq!(driver.run(&mut memory, &mut taken).unwrap().unwrap(), Stop::Yielded);
        taken.yield_after = None;
        assert_eq!(driver.run(&mut memory, &mut taken).unwrap().unwrap(), Stop::Idle);
        assert_eq!(taken.order.len(), 3);
    }

    #[test]
    fn segments_extend_while_offsets_follow_on() {
        let mut segments = Vec::new();
        for (topic, offset) in
            [(Topic::Deals, 4), (Topic::Deals, 5), (Topic::Metering, 0), (Topic::Deals, 6), (Topic::Deals, 8)]
        {
            Segment::extend(&mut segments, topic, offset);
        }
        let segment = |topic, from, to| Segment { topic, from, to };
        assert_eq!(
            segments,
            [
                segment(Topic::Deals, 4, 6),
                segment(Topic::Metering, 0, 1),
                segment(Topic::Deals, 6, 7),
                segment(Topic::Deals, 8, 9)
            ]
        );
    }

    #[test]
    fn retry_poisoned_gives_each_attempt_the_records_that_failed_before() {
        let mut seen: Vec<Vec<String>> = Vec::new();
        let done = retry_poisoned(0, |poisoned: &[String]| {
            seen.push(poisoned.to_vec());
            Ok(if poisoned.len() < 2 { Err(format!("record {}", poisoned.len())) } else { Ok("folded") })
        })
        .unwrap();
        assert_eq!(done, "folded");
        assert_eq!(seen, [vec![], vec!["record 0".to_owned()], vec!["record 0".to_owned(), "record 1".to_owned()]]);
    }

    /// A sink that keeps the JSON of every output, and persists every 2 records.
    #[derive(Default)]
    struct Lines {
        lines: Vec<String>,
        persisted_at: Vec<u64>,
    }

    impl Sink for Lines {
        fn write(
            &mut self,
            _: &mut Task,
            _: &InputRecord,
            outputs: &mut Vec<Output>,
            encoded: &mut Vec<Vec<u8>>,
        ) -> crate::Result<()> {
            assert_eq!(outputs.len(), encoded.len());
            self.lines.extend(encoded.drain(..).map(|bytes| String::from_utf8(bytes).unwrap()));
            outputs.clear();
            Ok(())
        }

        fn folded(&mut self, task: &mut Task) -> crate::Result<Flow> {
            if task.stats().records.is_multiple_of(2) {
                task.take_changes();
                self.persisted_at.push(task.stats().records);
            }
            Ok(Flow::Continue)
        }
    }

    #[test]
    fn a_task_step_folds_writes_and_persists_through_the_sink() {
        let mut memory = three();
        let mut task = Task::new(FoldConfig::default(), TaskState::default());
        let mut sink = Lines::default();
        Driver::merge(0).run(&mut memory, &mut TaskStep::new(&mut task, &mut sink)).unwrap().unwrap();
        assert_eq!(task.stats().records, 3);
        assert_eq!(task.state().offsets, crate::fold::state::Offsets::new(0, 1, 2));
        assert_eq!(sink.persisted_at, [2]);
        // No rate card: both usage events are dead letters, and so is the
        // empty deal; each output reaches the sink as JSON.
        assert_eq!(sink.lines.len(), 3);
        assert!(sink.lines.iter().all(|line| line.contains("\"reason\"")), "{:?}", sink.lines);
    }
}
