//! `gpuledger produce`: publishes JSONL files to the input topics, each line
//! as-is (a broken line too, so bad input can be tested), keyed and
//! partitioned exactly as batch mode splits them (`batch::route`): by the
//! start-up (murmur2, Kafka's default partitioner), ticks to every metering
//! partition, unkeyed lines to partition 0.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::batch::{is_tick, record_key, route};
use crate::config::Config;
use crate::events::Topic;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceSummary {
    pub lines: [u64; 3],
    pub records: u64,
}

/// Counts records the broker did not take (delivery reports arrive later
/// than `send` returns).
#[derive(Default)]
pub(crate) struct Deliveries {
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error.lock().expect("lock").get_or_insert_with(|| error.to_string());
        }
    }
}

/// An idempotent producer tuned for loading many records, counting failed deliveries.
pub(crate) fn bulk_producer(config: &Config) -> crate::Result<BaseProducer<Deliveries>> {
    super::client::bulk_producer(config, Deliveries::default())
}

/// Flushes and fails if any of the `sent` records was not delivered.
pub(crate) fn flush_checked(producer: &BaseProducer<Deliveries>, sent: u64) -> crate::Result<()> {
    producer.flush(Duration::from_secs(60)).context("flushing the producer")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer.context().first_error.lock().expect("lock").clone().unwrap_or_default();
        anyhow::bail!("{failed} of {sent} records were not delivered (first error: {first})");
    }
    Ok(())
}

/// Publishes the files; with `event_timestamps` each record's Kafka
/// timestamp is its event `time` (where readable) instead of now, for
/// consumers that order by record timestamps (gpuledger does not).
pub fn produce(config: &Config, files: [Option<&Path>; 3], event_timestamps: bool) -> crate::Result<ProduceSummary> {
    let consumer = super::client::metadata_consumer(config)?;
    let partitions = super::cluster::check_copartitioned(config, &consumer)?;
    let producer = bulk_producer(config)?;
    let mut summary = ProduceSummary::default();
    let started = Instant::now();
    let mut last_report = Instant::now();
    for topic in Topic::ALL {
        let Some(path) = files[topic.index()] else { continue };
        let name = match topic {
            Topic::Rates => &config.topics.rates,
            Topic::Deals => &config.topics.deals,
            Topic::Metering => &config.topics.metering,
        };
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for line in BufReader::with_capacity(1 << 20, file).split(b'\n') {
            let mut line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let parsed = crate::events::json::parse(&line).ok();
            let key = parsed.as_ref().and_then(|value| record_key(topic, value));
            let tick = parsed.as_ref().is_some_and(is_tick);
            let timestamp = if event_timestamps {
                parsed.as_ref().and_then(|value| value.get("time")?.as_str().and_then(crate::units::parse_rfc3339))
            } else {
                None
            };
            let targets: Vec<u32> = match route(topic, key.as_deref(), tick, partitions) {
                Some(partition) => vec![if topic == Topic::Rates { 0 } else { partition }],
                None => (0..partitions).collect(),
            };
            for partition in targets {
                send_at(&producer, name, partition as i32, key.as_deref(), &line, timestamp)?;
                summary.records += 1;
            }
            summary.lines[topic.index()] += 1;
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                tracing::info!(
                    records = summary.records,
                    records_per_second = (summary.records as f64 / started.elapsed().as_secs_f64()) as u64,
                    "producing"
                );
            }
        }
    }
    flush_checked(&producer, summary.records)?;
    Ok(summary)
}

pub(crate) fn send(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: &[u8],
) -> crate::Result<()> {
    send_at(producer, topic, partition, key, value, None)
}

/// [`send`] with the record's timestamp (ms), when given.
fn send_at(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: &[u8],
    timestamp: Option<i64>,
) -> crate::Result<()> {
    loop {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(partition).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(timestamp) = timestamp {
            record = record.timestamp(timestamp);
        }
        match producer.send(record) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(50));
            }
            Err((error, _)) => return Err(error).with_context(|| format!("producing to {topic}[{partition}]")),
        }
    }
}
