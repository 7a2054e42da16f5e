//! Prints a consumer group's committed offsets for a topic's first 4
//! partitions: `cargo run --release --example committed -- HOST:PORT GROUP TOPIC`.
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args[1])
        .set("group.id", &args[2])
        .set("isolation.level", args.get(4).map_or("read_uncommitted", String::as_str))
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..4 {
        list.add_partition(&args[3], partition);
    }
    println!("{:?}", consumer.committed_offsets(list, Duration::from_secs(10)));
}
