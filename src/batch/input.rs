//! Batch inputs: JSONL files read as Kafka topics would hold them — each
//! line's key and partition as a producer would give them, ticks to every
//! partition — and a task's three files as the driver sees them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::Context as _;
use serde_json::Value;

use crate::drive::Inputs;
use crate::events::{Decoded, InputRecord, Topic};
use crate::fold::merge::Head;
use crate::partitioner::partition_for_key;

/// The Kafka key a producer gives a line: the start-up for deals and usage,
/// `gpu_model/region/tier` for rates, none for ticks or unreadable lines.
pub fn record_key(topic: Topic, value: &Value) -> Option<Vec<u8>> {
    match topic {
        Topic::Rates => {
            let data = value.get("data")?;
            let part = |name: &str| data.get(name).and_then(Value::as_str);
            Some(format!("{}/{}/{}", part("gpu_model")?, part("region")?, part("tier")?).into_bytes())
        }
        Topic::Deals | Topic::Metering => {
            if is_tick(value) {
                return None;
            }
            value.get("subject").and_then(Value::as_str).map(|subject| subject.as_bytes().to_vec())
        }
    }
}

pub fn is_tick(value: &Value) -> bool {
    value.get("type").and_then(Value::as_str) == Some("gpuledger.clock.tick")
}

/// Where a line goes: `None` = every partition (ticks on metering).
/// Unkeyed lines go to partition 0, as `gpuledger produce` sends them.
pub fn route(topic: Topic, key: Option<&[u8]>, tick: bool, partitions: u32) -> Option<u32> {
    match (topic, key) {
        (Topic::Rates, _) => Some(0),
        (Topic::Metering, _) if tick => None,
        (_, Some(key)) => Some(partition_for_key(key, partitions)),
        (_, None) => Some(0),
    }
}

/// One task's view of one input file: the lines routed to its partition,
/// numbered by their offset within that partition.
pub(super) struct Cursor {
    topic: Topic,
    partition: u32,
    partitions: u32,
    lines: std::io::Split<BufReader<File>>,
    /// With several tasks: each line's partition, worked out once for all
    /// tasks (see [`route_lines`]), so a task parses only its own lines.
    routes: Option<Rc<Vec<u32>>>,
    line_index: usize,
    next_offset: i64,
    skip_below: i64,
    head: Option<(InputRecord, Decoded)>,
    done: bool,
    limits: crate::events::Limits,
}

impl Cursor {
    pub(super) fn open(
        path: &Path,
        topic: Topic,
        partition: u32,
        partitions: u32,
        skip_below: i64,
        routes: Option<Rc<Vec<u32>>>,
        limits: crate::events::Limits,
    ) -> crate::Result<Cursor> {
        Ok(Cursor {
            topic,
            partition,
            partitions,
            lines: open_lines(path, topic)?,
            routes,
            line_index: 0,
            next_offset: 0,
            skip_below,
            head: None,
            done: false,
            limits,
        })
    }

    fn fill(&mut self, path: &Path) -> crate::Result<Head> {
        while self.head.is_none() && !self.done {
            let Some(line) = self.lines.next() else {
                self.done = true;
                break;
            };
            let line = without_cr(line.with_context(|| format!("reading {}", path.display()))?);
            let known = self.routes.as_ref().and_then(|routes| routes.get(self.line_index).copied());
            self.line_index += 1;
            if known.is_some_and(|target| target != EVERY_PARTITION && target != self.partition) {
                continue;
            }
            let oversize = crate::events::oversize(&line, &self.limits);
            let parsed = match oversize {
                Some(_) => Err(crate::events::Rejection::new(crate::events::Reason::Undecodable, "oversize")),
                None => crate::events::json::parse(&line),
            };
            let (key, tick) = key_and_tick(self.topic, &parsed);
            // Rates are one partition, read whole by every task.
            let target = if self.topic == Topic::Rates {
                Some(0)
            } else {
                route(self.topic, key.as_deref(), tick, self.partitions)
            };
            if self.topic != Topic::Rates && target.is_some_and(|target| target != self.partition) {
                continue;
            }
            let offset = self.next_offset;
            self.next_offset += 1;
            if offset < self.skip_below {
                continue;
            }
            let decoded = match oversize {
                Some(refused) => refused,
                None => crate::events::decode_parsed(self.topic, parsed, &self.limits),
            };
            let record = InputRecord {
                topic: self.topic,
                partition: if self.topic == Topic::Rates { 0 } else { self.partition },
                offset,
                key,
                value: line,
                headers: Vec::new(),
            };
            self.head = Some((record, decoded));
        }
        Ok(match &self.head {
            Some((_, decoded)) => Head::Ready(decoded.time),
            None => Head::CaughtUp,
        })
    }
}

/// In [`route_lines`]' answer: a line every partition takes (a tick).
const EVERY_PARTITION: u32 = u32::MAX;

fn open_lines(path: &Path, topic: Topic) -> crate::Result<std::io::Split<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("opening {} input {}", topic.name(), path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, file).split(b'\n'))
}

/// A line without the `\r` of a CRLF ending.
fn without_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

/// A parsed line's key and whether it is a tick; nothing for a broken line.
fn key_and_tick<E>(topic: Topic, parsed: &Result<Value, E>) -> (Option<Vec<u8>>, bool) {
    match parsed {
        Ok(value) => (record_key(topic, value), is_tick(value)),
        Err(_) => (None, false),
    }
}

/// Each line's partition among `partitions` (ticks: [`EVERY_PARTITION`]),
/// parsing every line once; the tasks then skip other partitions' lines
/// without parsing them.
pub(super) fn route_lines(
    path: &Path,
    topic: Topic,
    partitions: u32,
    limits: &crate::events::Limits,
) -> crate::Result<Vec<u32>> {
    let mut routes = Vec::new();
    for line in open_lines(path, topic)? {
        let line = without_cr(line.with_context(|| format!("reading {}", path.display()))?);
        // An oversize line is not parsed: unkeyed, as the cursor takes it.
        if crate::events::oversize(&line, limits).is_some() {
            routes.push(route(topic, None, false, partitions).unwrap_or(EVERY_PARTITION));
            continue;
        }
        let (key, tick) = key_and_tick(topic, &crate::events::json::parse(&line));
        routes.push(route(topic, key.as_deref(), tick, partitions).unwrap_or(EVERY_PARTITION));
    }
    Ok(routes)
}

/// One task's three input files, for the driver.
pub(super) struct Cursors<'p> {
    pub(super) cursors: Vec<Cursor>,
    pub(super) paths: [&'p PathBuf; 3],
}

impl Inputs for Cursors<'_> {
    fn head(&mut self, topic: Topic) -> crate::Result<Head> {
        self.cursors[topic.index()].fill(self.paths[topic.index()])
    }

    fn position(&self, topic: Topic) -> Option<i64> {
        self.cursors[topic.index()].head.as_ref().map(|(record, _)| record.offset)
    }

    fn pop(&mut self, topic: Topic) -> crate::Result<Option<(InputRecord, Decoded)>> {
        Ok(self.cursors[topic.index()].head.take())
    }
}
