//! A replayed task's inputs: one consumer per input, so each one's end of
//! partition is unambiguous.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::drive::Inputs;
use crate::events::avro::SchemaRegistry;
use crate::events::{decode_record, Decoded, InputRecord, Limits, Topic};
use crate::fold::merge::Head;
use crate::kafka::client::{replay_reader, to_input, QuietEof};

/// Records a task buffers per input before the merge takes them.
const BUFFER_CAP: usize = 20_000;
/// How long an input may give neither a record nor its end.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// One input of a task, read by its own consumer so that its end of
/// partition is unambiguous.
pub(super) struct Input {
    pub(super) topic: Topic,
    pub(super) consumer: BaseConsumer<QuietEof>,
    pub(super) buffer: VecDeque<(InputRecord, Decoded)>,
    pub(super) next: i64,
    /// The consumer reported the end; what is appended later is not replayed.
    pub(super) ended: bool,
    pub(super) last_heard: Instant,
}

impl Input {
    /// `name[partition]` read from offset `from` on.
    pub(super) fn open(config: &Config, topic: Topic, name: &str, partition: u32, from: i64) -> crate::Result<Input> {
        let consumer = replay_reader(config)?;
        let mut list = TopicPartitionList::new();
        let start = if from == 0 { Offset::Beginning } else { Offset::Offset(from) };
        list.add_partition_offset(name, partition as i32, start)?;
        consumer.assign(&list).with_context(|| format!("assigning {name}[{partition}]"))?;
        Ok(Input { topic, consumer, buffer: VecDeque::new(), next: from, ended: false, last_heard: Instant::now() })
    }

    /// Moves fetched records into the buffer, waiting up to `wait` for the first.
    pub(super) fn fill(&mut self, wait: Duration, registry: &SchemaRegistry, limits: &Limits) -> crate::Result<()> {
        let mut timeout = wait;
        while !self.ended && self.buffer.len() < BUFFER_CAP {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    tracing::debug!(topic = self.topic.name(), end = self.next, "input at its end");
                    self.ended = true;
                    self.last_heard = Instant::now();
                }
                Some(Err(error)) => tracing::warn!(topic = self.topic.name(), %error, "replay consumer error"),
                Some(Ok(message)) => {
                    timeout = Duration::ZERO;
                    self.last_heard = Instant::now();
                    if message.offset() < self.next {
                        continue;
                    }
                    let record = to_input(self.topic, &message);
                    self.next = record.offset + 1;
                    let decoded = decode_record(self.topic, &record.value, registry, limits);
                    self.buffer.push_back((record, decoded));
                }
            }
        }
        if !self.ended && self.buffer.is_empty() && self.last_heard.elapsed() > STALL_LIMIT {
            bail!(
                "replay: the {} input gave no record and no end of partition for {} s",
                self.topic.name(),
                STALL_LIMIT.as_secs()
            );
        }
        Ok(())
    }

    pub(super) fn head(&self) -> Head {
        match self.buffer.front() {
            Some((_, decoded)) => Head::Ready(decoded.time),
            None if self.ended => Head::CaughtUp,
            None => Head::Pending,
        }
    }
}

/// A replayed task's three inputs, for the driver.
pub(super) struct ReplayInputs {
    pub(super) inputs: [Input; 3],
    pub(super) registry: SchemaRegistry,
    pub(super) limits: Limits,
}

impl ReplayInputs {
    /// Fetches for every input that has nothing buffered and is not at its end.
    pub(super) fn fill_pending(&mut self) -> crate::Result<()> {
        for input in &mut self.inputs {
            if input.head() == Head::Pending {
                input.fill(Duration::from_millis(100), &self.registry, &self.limits)?;
            }
        }
        Ok(())
    }
}

impl Inputs for ReplayInputs {
    fn head(&mut self, topic: Topic) -> crate::Result<Head> {
        Ok(self.inputs[topic.index()].head())
    }

    fn position(&self, topic: Topic) -> Option<i64> {
        self.inputs[topic.index()].buffer.front().map(|(record, _)| record.offset)
    }

    fn pop(&mut self, topic: Topic) -> crate::Result<Option<(InputRecord, Decoded)>> {
        let input = &mut self.inputs[topic.index()];
        let head = input.buffer.pop_front();
        if input.buffer.is_empty() {
            input.fill(Duration::ZERO, &self.registry, &self.limits)?;
        }
        Ok(head)
    }
}
