//! The physical limit replay and the processor are measured against: a plain
//! rdkafka consumer reading the input topics from the start to their end
//! (`read_committed`, as gpuledger reads them), no processing. Prints JSON.
//! `cargo run --release --example raw_consume -- HOST:PORT TOPIC...`
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: raw_consume HOST:PORT TOPIC...");
        std::process::exit(2);
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args[1])
        .set("group.id", "gpuledger-raw-consume")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("creating a consumer");
    let mut list = TopicPartitionList::new();
    for topic in &args[2..] {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(15)).expect("metadata");
        let partitions = metadata.topics()[0].partitions().len();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition as i32, Offset::Beginning).expect("partition");
        }
    }
    let partitions = list.count();
    consumer.assign(&list).expect("assign");
    let started = Instant::now();
    let (mut records, mut bytes, mut ended) = (0u64, 0u64, 0usize);
    while ended < partitions {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(message)) => {
                records += 1;
                bytes += message.payload().map_or(0, <[u8]>::len) as u64;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(error)) => eprintln!("consumer error: {error}"),
            None => {
                eprintln!("no record and no end of partition for 30 s");
                std::process::exit(1);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\":{records},\"bytes\":{bytes},\"seconds\":{seconds:.3},\"records_per_second\":{:.0}}}",
        records as f64 / seconds
    );
}
