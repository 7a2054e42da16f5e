//! Every Kafka client gpuledger makes, with its properties, in one place;
//! and what all of them need: closing without hanging, the cached end of a
//! partition, a message as the fold's input record.
//!
//! A client's properties are the user's `[kafka.properties]`, then ours
//! (the group consumer has defaults that the user's properties override).

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};

use crate::config::Config;
use crate::events::{InputRecord, Topic};

/// How long metadata and admin calls may take before they are an error.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a transaction's calls may take.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Group timing defaults, each overridable in `kafka.properties`: a crashed
/// instance's partitions move after 10 s rather than librdkafka's 45 s, a
/// stuck loop leaves the group after a minute rather than five, and a fetch
/// waits at most 10 ms for new input rather than 500 (brokers that do not
/// answer a waiting fetch as soon as data arrives — Tansu — otherwise set
/// the pace of commit cycles; docs/benchmarks.md has the figures; the cost
/// is up to 100 empty fetches a second per broker while idle).
pub const GROUP_DEFAULTS: [(&str, &str); 5] = [
    // Incremental rebalancing: a joining or leaving instance moves only the
    // partitions that change owner; the others keep folding (KIP-429). The
    // rebalance callback handles both protocols, should a deployment set
    // another assignor in `kafka.properties`.
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    ("max.poll.interval.ms", "60000"),
    ("fetch.wait.max.ms", "10"),
];

/// A client configuration: `defaults`, the user's librdkafka properties,
/// then ours.
pub fn properties(config: &Config, defaults: &[(&str, &str)], ours: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in defaults {
        client.set(*key, *value);
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

impl ConsumerContext for QuietEof {}

/// How long a command tries to reach the cluster before it gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client context that keeps librdkafka's errors, so a command can say
/// why it could not reach the cluster (logged as [`QuietEof`] logs them).
#[derive(Default)]
pub struct Recorder {
    errors: std::sync::Mutex<Vec<(rdkafka::error::KafkaError, String)>>,
}

impl Recorder {
    /// The first refusal no retry can cure: a certificate not trusted or not
    /// for the host, a TLS handshake the broker rejects, refused credentials.
    pub fn refusal(&self) -> Option<String> {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        let errors = self.errors.lock().expect("errors lock");
        errors.iter().find_map(|(error, reason)| match error {
            KafkaError::Global(Code::SSL | Code::Authentication | Code::SaslAuthenticationFailed) => {
                Some(reason.clone())
            }
            _ => None,
        })
    }

    /// The last error librdkafka reported, if any.
    pub fn last(&self) -> Option<String> {
        self.errors.lock().expect("errors lock").last().map(|(_, reason)| reason.clone())
    }
}

impl rdkafka::ClientContext for Recorder {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka error");
        self.errors.lock().expect("errors lock").push((error, reason.to_owned()));
    }
}

impl rdkafka::producer::ProducerContext for Recorder {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Reaches the cluster and reads its metadata, so that a wrong address, a
/// certificate that is not trusted or not for the host, or refused
/// credentials is a clear error within seconds — librdkafka itself would
/// retry them forever. Every Kafka command starts with it.
pub fn check_reachable(config: &Config) -> crate::Result<()> {
    // A producer: its error events reach the context with librdkafka's
    // reason (a consumer's come out of `poll` as bare codes). It sends nothing.
    let producer: BaseProducer<Recorder> =
        properties(config, &[], &[]).create_with_context(Recorder::default()).context("creating a Kafka client")?;
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
    let servers = &config.bootstrap_servers;
    let outcome = loop {
        let fetched = producer.client().fetch_metadata(None, Duration::from_millis(500));
        producer.poll(Duration::ZERO);
        match fetched {
            Ok(_) => break Ok(()),
            Err(error) => {
                if let Some(refusal) = producer.context().refusal() {
                    break Err(anyhow::anyhow!("Kafka at {servers} refused the connection: {refusal}"));
                }
                if std::time::Instant::now() >= deadline {
                    let said =
                        producer.context().last().map(|last| format!(" (librdkafka: {last})")).unwrap_or_default();
                    break Err(anyhow::anyhow!(
                        "cannot reach Kafka at {servers} within {} s: {error}{said}",
                        CONNECT_TIMEOUT.as_secs()
                    ));
                }
            }
        }
    };
    close_in_background(producer);
    outcome
}

/// A consumer that is assigned partitions (it never joins a group, nothing
/// is committed) and reports the end of each: group id `<group>-<purpose>`,
/// with `extra` properties.
pub fn reader(config: &Config, purpose: &str, extra: &[(&str, &str)]) -> crate::Result<BaseConsumer<QuietEof>> {
    let group = format!("{}-{purpose}", config.group_id);
    let mut ours =
        vec![("group.id", group.as_str()), ("enable.auto.commit", "false"), ("enable.partition.eof", "true")];
    ours.extend_from_slice(extra);
    properties(config, &[], &ours)
        .create_with_context(QuietEof)
        .with_context(|| format!("creating a Kafka consumer ({purpose})"))
}

/// A replay's reader of one input: committed records only, fetched in full
/// batches (only the end waits).
pub fn replay_reader(config: &Config) -> crate::Result<BaseConsumer<QuietEof>> {
    reader(
        config,
        "replay",
        &[("enable.auto.offset.store", "false"), ("isolation.level", "read_committed"), ("fetch.wait.max.ms", "100")],
    )
}

/// A live task's reader of the rates topic (committed records only).
pub fn rates_reader(config: &Config) -> crate::Result<BaseConsumer<QuietEof>> {
    reader(config, "rates", &[("isolation.level", "read_committed")])
}

/// A consumer for metadata and watermarks only (never subscribes).
pub fn metadata_consumer(config: &Config) -> crate::Result<BaseConsumer> {
    let group = format!("{}-metadata", config.group_id);
    properties(config, &[], &[("group.id", &group), ("enable.auto.commit", "false")])
        .create()
        .context("creating a Kafka client")
}

/// A client of the processor's consumer group that reads or commits its
/// offsets without joining it.
pub fn group_offsets_client(config: &Config) -> crate::Result<BaseConsumer> {
    properties(config, &[], &[("group.id", &config.group_id), ("enable.auto.commit", "false")])
        .create()
        .context("creating a Kafka client")
}

/// The processor's group consumer: offsets are committed only inside
/// transactions, and only committed records are read.
pub fn group_consumer<C: ConsumerContext>(config: &Config, context: C) -> crate::Result<BaseConsumer<C>> {
    properties(
        config,
        &GROUP_DEFAULTS,
        &[
            ("group.id", &config.group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
        ],
    )
    .create_with_context(context)
    .context("creating the group consumer")
}

/// Task `partition`'s transactional producer (`transactional.id` =
/// `<prefix>-<partition>`, so a new owner fences the old one), initialised.
pub fn transactional_producer(config: &Config, partition: u32) -> crate::Result<BaseProducer> {
    let id = format!("{}-{partition}", config.transactional_id_prefix);
    let producer: BaseProducer = properties(
        config,
        &[],
        &[
            ("transactional.id", &id),
            ("enable.idempotence", "true"),
            ("transaction.timeout.ms", "60000"),
            // Below the transaction timeout, as librdkafka requires.
            ("message.timeout.ms", "50000"),
            ("linger.ms", "5"),
        ],
    )
    .create()
    .context("creating a transactional producer")?;
    producer.init_transactions(TRANSACTION_TIMEOUT).context("initialising transactions")?;
    Ok(producer)
}

/// The idempotent producer of clock ticks.
pub fn tick_producer(config: &Config) -> crate::Result<BaseProducer> {
    properties(config, &[], &[("enable.idempotence", "true")]).create().context("creating the tick producer")
}

/// An idempotent producer tuned for loading many records, with `context`.
pub fn bulk_producer<C: rdkafka::producer::ProducerContext>(
    config: &Config,
    context: C,
) -> crate::Result<BaseProducer<C>> {
    properties(
        config,
        &[],
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "20"),
            ("batch.num.messages", "10000"),
            ("compression.type", "lz4"),
        ],
    )
    .create_with_context(context)
    .context("creating a Kafka producer")
}

pub fn admin_client(config: &Config) -> crate::Result<AdminClient<DefaultClientContext>> {
    properties(config, &[], &[]).create().context("creating a Kafka admin client")
}

/// Drops a Kafka client on another thread and waits for it at most 10 s:
/// librdkafka's teardown can hang right after a transactional cycle.
pub fn close_in_background<T: Send + 'static>(client: T) {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(client);
        let _ = done.send(());
    });
    if wait.recv_timeout(Duration::from_secs(10)).is_err() {
        tracing::warn!("a Kafka client did not close within 10 s; leaving it behind");
    }
}

/// The end of a partition as the consumer last saw it in a fetch response
/// (librdkafka's cached watermark: the last stable offset for a
/// `read_committed` consumer), without a network round trip. A broker query
/// (`fetch_watermarks`) would block the loop, and with `read_committed` the
/// local test broker does not answer it at all.
pub fn cached_end_offset<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: u32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, the
    // topic is a NUL-terminated string, and the out-parameters are plain i64s.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition as i32,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// A Kafka message as the fold's input record.
pub fn to_input(topic: Topic, message: &rdkafka::message::BorrowedMessage<'_>) -> InputRecord {
    let headers = message
        .headers()
        .map(|headers| headers.iter().map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default();
    InputRecord {
        topic,
        partition: message.partition() as u32,
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(properties: &[(&str, &str)]) -> Config {
        let mut config = crate::config::for_tests();
        config.properties.extend(properties.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        config
    }

    /// The local broker cannot authenticate users (docs/kafka.md), so SASL is
    /// shown here: the passthrough reaches every client, ours cannot be
    /// overridden by it, and librdkafka as built accepts every mechanism
    /// (it refuses to create a client whose settings it cannot honour).
    #[test]
    fn sasl_and_tls_settings_reach_the_clients_and_librdkafka_accepts_them() {
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
            let credentials: &[(&str, &str)] = if mechanism == "OAUTHBEARER" {
                &[("sasl.oauthbearer.config", "principal=ledger scope=s3cret")]
            } else {
                &[("sasl.username", "ledger"), ("sasl.password", "s3cret")]
            };
            let mut settings = vec![
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", mechanism),
                ("ssl.endpoint.identification.algorithm", "https"),
                ("compression.type", "zstd"),
            ];
            settings.extend_from_slice(credentials);
            let config = config_with(&settings);
            let client = properties(&config, &GROUP_DEFAULTS, &[("group.id", "ours")]);
            assert_eq!(client.get("sasl.mechanism"), Some(mechanism));
            assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(client.get("group.id"), Some("ours"));
            let created: Result<BaseConsumer, _> =
                client.clone().set_log_level(rdkafka::config::RDKafkaLogLevel::Emerg).create();
            let created = created.map(|_| ()).map_err(|error| error.to_string());
            assert_eq!(created, Ok(()), "{mechanism}");
            assert!(!config.describe().contains("s3cret"), "{}", config.describe());
        }
    }

    #[test]
    fn a_user_property_cannot_override_ours() {
        let config = config_with(&[("enable.auto.commit", "true"), ("session.timeout.ms", "30000")]);
        let client = properties(&config, &GROUP_DEFAULTS, &[("enable.auto.commit", "false")]);
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        // Defaults yield to the user's.
        assert_eq!(client.get("session.timeout.ms"), Some("30000"));
    }
}
