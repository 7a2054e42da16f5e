//! Kafka I/O: topic administration, the `produce` and `export` tools, and
//! the streaming processor (`processor`). Nothing here computes ledger
//! figures; the fold does.

pub mod admin;
pub mod export;
pub mod processor;
pub mod produce;

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
/// instance's partitions move after 10 s rather than librdkafka's 45 s, and a
/// stuck loop leaves the group after a minute rather than five.
pub const GROUP_DEFAULTS: [(&str, &str); 3] =
    [("session.timeout.ms", "10000"), ("heartbeat.interval.ms", "1000"), ("max.poll.interval.ms", "60000")];

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

/// A consumer for metadata and watermarks only (never subscribes).
pub fn metadata_consumer(config: &Config) -> crate::Result<BaseConsumer> {
    client_config(config, &[("group.id", &format!("{}-metadata", config.group_id)), ("enable.auto.commit", "false")])
        .create()
        .context("creating a Kafka client")
}

/// The number of partitions of a topic, `None` when it does not exist.
pub fn partition_count(consumer: &BaseConsumer, topic: &str) -> crate::Result<Option<u32>> {
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
