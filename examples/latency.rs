//! End-to-end latency of the live processor at a steady produce rate: sends
//! usage events (lines of a generated metering file) at RATE per second for
//! SECONDS, each to its murmur2 partition, and measures, per event, the time
//! from its send to its usage-rated record being visible to a
//! `read_committed` consumer. Prints JSON (p50, p99, max in ms).
//! `cargo run --release --example latency -- HOST:PORT METERING.jsonl PARTITIONS RATE SECONDS`
//! (topics gpuledger.metering and gpuledger.usage-rated; a processor must be running).
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: latency HOST:PORT METERING.jsonl PARTITIONS RATE SECONDS");
        std::process::exit(2);
    }
    let (address, input) = (&args[1], &args[2]);
    let partitions: u32 = args[3].parse().expect("PARTITIONS");
    let rate: u64 = args[4].parse().expect("RATE");
    let seconds: u64 = args[5].parse().expect("SECONDS");
    let wanted = (rate * seconds) as usize;
    // Usage events with their id and start-up, in file order.
    let mut events: Vec<(String, String, String)> = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(input).expect("metering file")).lines() {
        let line = line.expect("reading the metering file");
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if value["type"] != "gpuledger.gpu.usage" || !value["id"].is_string() || !value["subject"].is_string() {
            continue;
        }
        let id = value["id"].as_str().unwrap_or_default().to_owned();
        let subject = value["subject"].as_str().unwrap_or_default().to_owned();
        events.push((id, subject, line));
        if events.len() >= wanted {
            break;
        }
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(events.len())));

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", "gpuledger-latency")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset("gpuledger.usage-rated", partition as i32, Offset::End).expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let expected = events.len();
    let reader_sent = Arc::clone(&sent);
    let reader = std::thread::spawn(move || {
        let mut latencies: Vec<f64> = Vec::with_capacity(expected);
        let mut last = Instant::now();
        while latencies.len() < expected && last.elapsed() < Duration::from_secs(60) {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else { continue };
            let seen = Instant::now();
            last = seen;
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default()) else {
                continue;
            };
            let Some(id) = record["id"].as_str() else { continue };
            if let Some(at) = reader_sent.lock().expect("lock").remove(id) {
                latencies.push(seen.duration_since(at).as_secs_f64() * 1000.0);
            }
        }
        latencies
    });

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1) as usize;
    for (index, chunk) in events.chunks(per_tick).enumerate() {
        let due = started + tick * index as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait); // pacing the load, not synchronisation
        }
        for (id, subject, line) in chunk {
            let partition = gpuledger::partitioner::partition_for_key(subject.as_bytes(), partitions);
            sent.lock().expect("lock").insert(id.clone(), Instant::now());
            loop {
                let record =
                    BaseRecord::to("gpuledger.metering").partition(partition as i32).key(subject).payload(line);
                match producer.send(record) {
                    Ok(()) => break,
                    Err(_) => {
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    let produce_seconds = started.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(30)).expect("flush");
    let mut latencies = reader.join().expect("reader");
    latencies.sort_by(f64::total_cmp);
    let at = |fraction: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        latencies[((latencies.len() - 1) as f64 * fraction).round() as usize]
    };
    println!(
        "{{\"sent\":{},\"seen\":{},\"rate_target\":{rate},\"rate_achieved\":{:.0},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1}}}",
        events.len(),
        latencies.len(),
        events.len() as f64 / produce_seconds,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
