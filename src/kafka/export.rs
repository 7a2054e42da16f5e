//! `gpuledger export`: reads the derived topics (`read_committed`) from the
//! start to their end, drops duplicates by record identity, and writes the
//! files batch mode writes, so `gpuledger audit` and billing jobs can use
//! them.
//!
//! Exactly-once must not rest on the broker alone: a broker that does not
//! hide aborted transactions from `read_committed` readers (the local test
//! broker) shows the records of an aborted cycle and then the same records
//! again from the retried one. Every record has a deterministic identity, so
//! the reader keeps the first of each and counts the rest; an identity seen
//! with two different contents is an error (that would be a real bug).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::config::Config;
use crate::records::avro::OutputEncoder;
use crate::records::Balances;

#[derive(Clone, Debug, Default)]
pub struct ExportSummary {
    /// Per stream: records kept and duplicates dropped.
    pub streams: BTreeMap<String, (u64, u64)>,
}

/// The identity of an output record (spec §10), from its JSON form.
pub fn identity(stream: &str, record: &Value) -> crate::Result<String> {
    let field = |name: &str| record.get(name).map(Value::to_string).unwrap_or_default();
    Ok(match stream {
        "usage-rated" => format!("{}|{}|{}|{}", field("startup"), field("source"), field("id"), field("time")),
        "journal" => format!("{}|{}", field("entry_id"), field("event_time")),
        "statements" => format!("{}|{}", field("startup"), field("period")),
        "alerts" => field("alert_id"),
        "dead-letter" => format!("{}|{}|{}", field("topic"), field("partition"), field("offset")),
        "balances" => format!("{}|{}|{}", field("task"), field("offsets"), field("startup")),
        // A cycle's record: after a reset two cycles may end at the same
        // offsets having taken different segments; only copies are duplicates.
        "progress" => record.to_string(),
        other => bail!("no identity for stream {other}"),
    })
}

fn decode(value: &[u8], stream: &str, encoder: &OutputEncoder) -> crate::Result<Value> {
    // JSON starts with `{`; Avro with `C3 01` (single object) or `00` (Confluent).
    if matches!(value.first(), Some(0xC3 | 0x00)) {
        let schema = match stream {
            "usage-rated" => "usage_rated",
            "journal" => "journal_entry",
            "statements" => "statement",
            "alerts" => "alert",
            "dead-letter" => "dead_letter",
            "balances" => "balances",
            other => bail!("stream {other} has no Avro schema"),
        };
        return encoder.decode(schema, value);
    }
    serde_json::from_slice(value).context("an output record is not JSON")
}

/// The record as batch mode writes it: through its typed form, so field
/// order and spelling are the contract's whatever the wire format.
fn typed_bytes(stream: &str, record: &Value) -> crate::Result<Vec<u8>> {
    use crate::records::{Alert, DeadLetter, JournalEntry, Statement, UsageRated};
    fn through<T: serde::de::DeserializeOwned + serde::Serialize>(record: &Value) -> crate::Result<Vec<u8>> {
        let typed: T = serde::Deserialize::deserialize(record).context("an output record does not match its schema")?;
        Ok(serde_json::to_vec(&typed)?)
    }
    match stream {
        "usage-rated" => through::<UsageRated>(record),
        "journal" => through::<JournalEntry>(record),
        "statements" => through::<Statement>(record),
        "alerts" => through::<Alert>(record),
        "dead-letter" => through::<DeadLetter>(record),
        "balances" => through::<Balances>(record),
        _ => Ok(serde_json::to_vec(record)?),
    }
}

/// Reads one topic whole (all partitions, in partition then offset order).
fn read_topic(
    config: &Config,
    topic: &str,
    mut each: impl FnMut(u32, i64, &[u8]) -> crate::Result<()>,
) -> crate::Result<()> {
    let consumer = super::client::reader(
        config,
        "export",
        &[("isolation.level", "read_committed"), ("auto.offset.reset", "earliest")],
    )?;
    let Some(partitions) = super::cluster::partition_count(&consumer, topic)? else {
        bail!("topic {topic} does not exist")
    };
    // The end of a partition is where the consumer reports EOF, not a
    // watermark query: the local test broker can report a high watermark
    // below the true end (docs/kafka.md).
    for partition in 0..partitions {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition as i32, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let mut last_progress = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    each(partition, message.offset(), message.payload().unwrap_or_default())?;
                    last_progress = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) => return Err(error).with_context(|| format!("reading {topic}[{partition}]")),
                None if last_progress.elapsed() > Duration::from_secs(30) => {
                    bail!("reading {topic}[{partition}]: no record and no end of partition for 30 s")
                }
                None => {}
            }
        }
    }
    super::client::close_in_background(consumer);
    Ok(())
}

pub fn export(config: &Config, out: &Path, streams: &[String]) -> crate::Result<ExportSummary> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let encoder = OutputEncoder::with_ids(&config.schema_ids);
    let mut summary = ExportSummary::default();
    for (stream, topic) in config.topics.outputs() {
        if !streams.is_empty() && !streams.iter().any(|wanted| wanted == stream) {
            continue;
        }
        let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
        let mut kept = Vec::new();
        let mut duplicates = 0u64;
        read_topic(config, topic, |partition, offset, value| {
            let record = decode(value, stream, &encoder).with_context(|| format!("{topic}[{partition}]@{offset}"))?;
            let canonical = typed_bytes(stream, &record)?;
            let key = identity(stream, &record)?;
            match seen.get(&key) {
                Some(previous) if *previous == canonical => duplicates += 1,
                Some(_) => bail!(
                    "{stream}: identity {key} has two different contents (second at {topic}[{partition}]@{offset})"
                ),
                None => {
                    seen.insert(key, canonical.clone());
                    kept.push(canonical);
                }
            }
            Ok(())
        })?;
        summary.streams.insert(stream.to_owned(), (kept.len() as u64, duplicates));
        if stream == "balances" {
            // The latest record of each start-up is its balance.
            let mut latest: BTreeMap<String, Balances> = BTreeMap::new();
            for bytes in &kept {
                let balance: Balances = serde_json::from_slice(bytes)?;
                latest.insert(balance.startup.clone(), balance);
            }
            let balances: Vec<Balances> = latest.into_values().collect();
            crate::batch::write_balances(&out.join("balances.json"), &balances)?;
            continue;
        }
        let path = out.join(format!("{stream}.jsonl"));
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        for bytes in kept {
            file.write_all(&bytes)?;
            file.write_all(b"\n")?;
        }
        file.flush()?;
    }
    Ok(summary)
}
