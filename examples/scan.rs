//! Reads one topic partition whole and reports record count, offset gaps
//! and the ids of records matching a text:
//! `cargo run --release --example scan -- HOST:PORT TOPIC PARTITION [TEXT]`.
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let partition: i32 = args[3].parse().unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args[1])
        .set("group.id", "scan")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&args[2], partition, Offset::Beginning).unwrap();
    consumer.assign(&list).unwrap();
    let (mut count, mut next, mut gaps) = (0u64, 0i64, 0u64);
    loop {
        match consumer.poll(Duration::from_secs(5)) {
            Some(Ok(message)) => {
                if message.offset() != next {
                    gaps += 1;
                    println!("gap: expected {next}, got {}", message.offset());
                }
                next = message.offset() + 1;
                count += 1;
                if let Some(text) = args.get(4) {
                    let payload = String::from_utf8_lossy(message.payload().unwrap_or_default());
                    if payload.contains(text.as_str()) {
                        println!("offset {}: {}", message.offset(), &payload[..payload.len().min(120)]);
                    }
                }
            }
            Some(Err(error)) => {
                println!("end: {error}");
                break;
            }
            None => break,
        }
    }
    println!("{count} records, next offset {next}, {gaps} gaps");
}
