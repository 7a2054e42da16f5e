//! The tick publisher (spec §3): the owner of partition 0 sends a tick with
//! its wall-clock time to every metering partition. The time is written
//! into the log, so the fold itself never reads a clock.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::config::Config;
use crate::kafka::client;

pub(super) struct Ticker {
    /// `clock.tick_interval`, in milliseconds.
    interval: Duration,
    /// Made on the first tick.
    producer: Option<BaseProducer>,
    last: Instant,
}

impl Ticker {
    /// A ticker when `clock.tick_interval` is set.
    pub(super) fn new(config: &Config) -> Option<Ticker> {
        let interval = Duration::from_millis(config.tick_interval? as u64);
        Some(Ticker { interval, producer: None, last: Instant::now() })
    }

    /// Publishes a tick to each of `partitions` metering partitions when the
    /// interval has passed.
    pub(super) fn publish(&mut self, config: &Config, partitions: u32) -> crate::Result<()> {
        if self.last.elapsed() < self.interval {
            return Ok(());
        }
        self.last = Instant::now();
        if self.producer.is_none() {
            self.producer = Some(client::tick_producer(config)?);
        }
        let producer = self.producer.as_ref().expect("made above");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the wall clock is before 1970")?
            .as_millis() as i64;
        let tick = format!(
            "{{\"specversion\":\"1.0\",\"id\":\"tick-{now}\",\"source\":\"gpuledger:clock\",\"type\":\"gpuledger.clock.tick\",\"time\":\"{}\"}}",
            crate::units::format_millis(now)
        );
        for partition in 0..partitions {
            let record = BaseRecord::<[u8], [u8]>::to(&config.topics.metering)
                .partition(partition as i32)
                .payload(tick.as_bytes());
            if let Err((error, _)) = producer.send(record) {
                tracing::warn!(partition, %error, "could not publish a tick");
            }
        }
        producer.poll(Duration::ZERO);
        tracing::debug!(time = now, "ticks published");
        Ok(())
    }

    /// Flushes what was published and closes the producer.
    pub(super) fn close(self) {
        if let Some(producer) = self.producer {
            let _ = producer.flush(Duration::from_secs(10));
            client::close_in_background(producer);
        }
    }
}
