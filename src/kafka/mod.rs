//! Kafka I/O: topic administration, the `produce` and `export` tools, and
//! the streaming processor (`processor`). Nothing here computes ledger
//! figures; the fold does.

pub mod admin;
pub mod export;
pub mod processor;
pub mod produce;
pub mod replay;
pub mod reset;

use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;

/// How long metadata and admin calls may take before they are an error.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// A client configuration: the user's librdkafka properties, then ours.
pub fn client_config(config: &Config, ours: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in config.client_properties() {
        client.set(key, value);
    }
    for (key, value) in ours {
        client.set(*key, *value);
    }
    client
}

/// Group timing defaults, each overridable in `kafka.properties`: a crashed
/// instance's partitions move after 10 s rather than librdkafka's 45 s, a
/// stuck loop leaves the group after a minute rather than five, and a fetch
/// waits at most 10 ms for new input rather than 500 (brokers that do not
/// answer a waiting fetch as soon as data arrives — Tansu — otherwise set
/// the pace of commit cycles: measured 82 → 170 cycles and p50 latency
/// 299 → 195 ms at 2,000 events/s; the cost is up to 100 empty fetches a
/// second per broker while idle).
pub const GROUP_DEFAULTS: [(&str, &str); 4] = [
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    ("max.poll.interval.ms", "60000"),
    ("fetch.wait.max.ms", "10"),
];

/// [`client_config`] for the processor's group consumer: the group defaults
/// unless the user set them.
pub fn group_client_config(config: &Config, ours: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in GROUP_DEFAULTS {
        client.set(key, value);
    }
    for (key, value) in config.client_properties() {
        client.set(key, value);
    }
    for (key, value) in ours {
        client.set(*key, *value);
    }
    client
}

/// A consumer context that keeps librdkafka's end-of-partition events
/// (which consumers with `enable.partition.eof` read from `poll`) out of the
/// error log; every other error is logged as librdkafka's default does.
pub struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        match error {
            rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
            | rdkafka::error::KafkaError::PartitionEOF(_) => tracing::trace!(reason, "end of partition"),
            error => tracing::error!(%error, reason, "librdkafka error"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// The end offsets of `partitions` (topic, partition), as fetch responses
/// report them. Not ListOffsets: the local test broker answers it with a
/// wrong high watermark (see docs/kafka.md). `None` when not all are known
/// within 10 s.
pub fn end_offsets(config: &Config, partitions: &[(&str, u32)]) -> crate::Result<Option<Vec<i64>>> {
    let consumer: BaseConsumer<QuietEof> = client_config(
        config,
        &[
            ("group.id", &format!("{}-metadata", config.group_id)),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("fetch.wait.max.ms", "100"),
        ],
    )
    .create_with_context(QuietEof)
    .context("creating a Kafka client")?;
    let mut list = rdkafka::TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition_offset(topic, *partition as i32, rdkafka::Offset::End)?;
    }
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ends = loop {
        let _ = consumer.poll(Duration::from_millis(50));
        let ends: Vec<Option<i64>> = partitions
            .iter()
            .map(|(topic, partition)| processor::cached_end_offset(&consumer, topic, *partition))
            .collect();
        if ends.iter().all(Option::is_some) {
            break Some(ends.into_iter().flatten().collect());
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
    };
    processor::close_in_background(consumer);
    Ok(ends)
}

/// A consumer for metadata and watermarks only (never subscribes).
pub fn metadata_consumer(config: &Config) -> crate::Result<BaseConsumer> {
    client_config(config, &[("group.id", &format!("{}-metadata", config.group_id)), ("enable.auto.commit", "false")])
        .create()
        .context("creating a Kafka client")
}

/// The number of partitions of a topic, `None` when it does not exist.
pub fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> crate::Result<Option<u32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| format!("reading the metadata of topic {topic}"))?;
    let Some(found) = metadata.topics().iter().find(|candidate| candidate.name() == topic) else { return Ok(None) };
    if found.error().is_some() || found.partitions().is_empty() {
        return Ok(None);
    }
    Ok(Some(found.partitions().len() as u32))
}

/// Deals and metering must be co-partitioned (spec §3): same count.
pub fn check_copartitioned(config: &Config, consumer: &BaseConsumer) -> crate::Result<u32> {
    let topics = &config.topics;
    let deals = partition_count(consumer, &topics.deals)?;
    let metering = partition_count(consumer, &topics.metering)?;
    let rates = partition_count(consumer, &topics.rates)?;
    match (deals, metering, rates) {
        (None, _, _) | (_, None, _) | (_, _, None) => bail!(
            "input topics missing: {} ({}), {} ({}), {} ({}); create them with `gpuledger topics create`",
            topics.deals,
            deals.map_or("missing".to_owned(), |count| format!("{count} partitions")),
            topics.metering,
            metering.map_or("missing".to_owned(), |count| format!("{count} partitions")),
            topics.rates,
            rates.map_or("missing".to_owned(), |count| format!("{count} partitions")),
        ),
        (Some(deals_count), Some(metering_count), _) if deals_count != metering_count => bail!(
            "{} has {deals_count} partitions but {} has {metering_count}: deals and metering must be co-partitioned (same count, same key)",
            topics.deals,
            topics.metering
        ),
        (_, _, Some(rates_count)) if rates_count != 1 => {
            bail!("{} has {rates_count} partitions; the rates topic must have exactly one", topics.rates)
        }
        (Some(count), _, _) => Ok(count),
    }
}

/// The consumer group's committed offsets of deals and metering for each of
/// `partitions` (0 where none is committed). Reads them without joining the
/// group, so a running processor is not disturbed.
pub fn group_offsets(config: &Config, partitions: &[u32]) -> crate::Result<std::collections::BTreeMap<u32, [i64; 2]>> {
    let consumer: BaseConsumer =
        client_config(config, &[("group.id", &config.group_id), ("enable.auto.commit", "false")])
            .create()
            .context("creating a Kafka client")?;
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(&config.topics.deals, *partition as i32);
        list.add_partition(&config.topics.metering, *partition as i32);
    }
    let committed = consumer
        .committed_offsets(list, METADATA_TIMEOUT)
        .with_context(|| format!("reading the committed offsets of group {}", config.group_id))?;
    processor::close_in_background(consumer);
    let mut offsets = std::collections::BTreeMap::new();
    for element in committed.elements() {
        let entry = offsets.entry(element.partition() as u32).or_insert([0i64; 2]);
        let slot = usize::from(element.topic() != config.topics.deals);
        entry[slot] = element.offset().to_raw().filter(|offset| *offset >= 0).unwrap_or(0);
    }
    Ok(offsets)
}

/// The input records of task `partition` from offsets `from` up to `to`
/// (rates, deals, metering), one line each: where it is, its key, the start
/// of its value. For `verify`: the records in which two runs parted.
pub fn input_records_between(
    config: &Config,
    partition: u32,
    from: [i64; 3],
    to: [i64; 3],
) -> crate::Result<Vec<String>> {
    use rdkafka::message::Message as _;
    let topics =
        [(&config.topics.rates, 0u32), (&config.topics.deals, partition), (&config.topics.metering, partition)];
    let mut lines = Vec::new();
    for (index, (topic, topic_partition)) in topics.into_iter().enumerate() {
        if from[index] >= to[index] {
            continue;
        }
        let consumer: BaseConsumer<QuietEof> = client_config(
            config,
            &[
                ("group.id", &format!("{}-verify", config.group_id)),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
            ],
        )
        .create_with_context(QuietEof)
        .context("creating a Kafka client")?;
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(topic, topic_partition as i32, rdkafka::Offset::Offset(from[index]))?;
        consumer.assign(&list)?;
        loop {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(message)) if message.offset() < to[index] => {
                    let text = |bytes: Option<&[u8]>| {
                        let text = String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
                        if text.chars().count() > 160 {
                            format!("{}…", text.chars().take(160).collect::<String>())
                        } else {
                            text
                        }
                    };
                    lines.push(format!(
                        "{topic}[{topic_partition}]@{} key={} {}",
                        message.offset(),
                        text(message.key()),
                        text(message.payload())
                    ));
                    if message.offset() + 1 >= to[index] {
                        break;
                    }
                }
                Some(Ok(_)) | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) => return Err(error).with_context(|| format!("reading {topic}[{topic_partition}]")),
                None => bail!("reading {topic}[{topic_partition}]: no record within 10 s"),
            }
        }
        processor::close_in_background(consumer);
    }
    Ok(lines)
}
