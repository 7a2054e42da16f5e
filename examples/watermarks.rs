//! Measures how long a watermark query takes against a broker:
//! `cargo run --release --example watermarks -- HOST:PORT TOPIC`.
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args[1])
        .set("group.id", "watermark-probe")
        .create()
        .expect("consumer");
    for attempt in 0..5 {
        let started = Instant::now();
        let result = consumer.fetch_watermarks(&args[2], 0, Duration::from_secs(10));
        println!("attempt {attempt}: {result:?} in {:?}", started.elapsed());
    }
}
