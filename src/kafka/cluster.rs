//! What the cluster says about the topics and the group: partition counts,
//! committed and end offsets, and the input records between two positions.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::client::{cached_end_offset, close_in_background, group_offsets_client, reader, METADATA_TIMEOUT};
use super::topics::{input_of, name_of};
use crate::config::Config;
use crate::events::Topic;
use crate::fold::state::{KeyedOffsets, Offsets};

/// The end offsets of `partitions` (topic, partition), as fetch responses
/// report them. Not ListOffsets: the local test broker answers it with a
/// wrong high watermark (see docs/kafka.md). `None` when not all are known
/// within 10 s.
pub fn end_offsets(config: &Config, partitions: &[(&str, u32)]) -> crate::Result<Option<Vec<i64>>> {
    let consumer = reader(config, "metadata", &[("fetch.wait.max.ms", "100")])?;
    let mut list = rdkafka::TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition_offset(topic, *partition as i32, rdkafka::Offset::End)?;
    }
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ends = loop {
        let _ = consumer.poll(Duration::from_millis(50));
        let ends: Vec<Option<i64>> =
            partitions.iter().map(|(topic, partition)| cached_end_offset(&consumer, topic, *partition)).collect();
        if ends.iter().all(Option::is_some) {
            break Some(ends.into_iter().flatten().collect());
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
    };
    close_in_background(consumer);
    Ok(ends)
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
pub fn group_offsets(config: &Config, partitions: &[u32]) -> crate::Result<BTreeMap<u32, KeyedOffsets>> {
    let consumer = group_offsets_client(config)?;
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(&config.topics.deals, *partition as i32);
        list.add_partition(&config.topics.metering, *partition as i32);
    }
    let committed = consumer
        .committed_offsets(list, METADATA_TIMEOUT)
        .with_context(|| format!("reading the committed offsets of group {}", config.group_id))?;
    close_in_background(consumer);
    Ok(keyed_offsets(&config.topics, &committed))
}

/// The deals and metering offsets in a committed-offsets list, per
/// partition (0 where none is committed).
pub fn keyed_offsets(
    topics: &crate::config::Topics,
    committed: &rdkafka::TopicPartitionList,
) -> BTreeMap<u32, KeyedOffsets> {
    let mut offsets = BTreeMap::new();
    for element in committed.elements() {
        let entry: &mut KeyedOffsets = offsets.entry(element.partition() as u32).or_default();
        if let Some(topic) = input_of(topics, element.topic()) {
            entry.set(topic, element.offset().to_raw().filter(|offset| *offset >= 0).unwrap_or(0));
        }
    }
    offsets
}

/// The input records of task `partition` from offsets `from` up to `to`
/// (rates, deals, metering), one line each: where it is, its key, the start
/// of its value. For `verify`: the records in which two runs parted.
pub fn input_records_between(
    config: &Config,
    partition: u32,
    from: Offsets,
    to: Offsets,
) -> crate::Result<Vec<String>> {
    use rdkafka::message::Message as _;
    let mut lines = Vec::new();
    for (input, from, to) in from.zip(to) {
        if from >= to {
            continue;
        }
        let topic = name_of(&config.topics, input);
        let topic_partition = if input == Topic::Rates { 0 } else { partition };
        let consumer = reader(config, "verify", &[])?;
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(topic, topic_partition as i32, rdkafka::Offset::Offset(from))?;
        consumer.assign(&list)?;
        loop {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(message)) if message.offset() < to => {
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
                    if message.offset() + 1 >= to {
                        break;
                    }
                }
                Some(Ok(_)) | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) => return Err(error).with_context(|| format!("reading {topic}[{topic_partition}]")),
                None => bail!("reading {topic}[{topic_partition}]: no record within 10 s"),
            }
        }
        close_in_background(consumer);
    }
    Ok(lines)
}
