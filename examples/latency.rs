//! End-to-end latency of the live processor at a steady produce rate: sends
//! a generated metering log (usage events and ticks, partitioned as
//! `gpuledger produce` does) at RATE lines per second until RATE × SECONDS
//! usage events are out, and measures, per usage event, the time
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

/// (usage id if a usage event, key, target partitions, the line).
type Timed = (Option<String>, Option<Vec<u8>>, Vec<u32>, String);

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
    // The metering log as `gpuledger produce` sends it (ticks to every
    // partition keep the start-ups' clocks moving), up to `wanted` usage
    // events; only usage events are timed.
    let mut events: Vec<Timed> = Vec::new();
    let mut usage = 0;
    for line in std::io::BufReader::new(std::fs::File::open(input).expect("metering file")).lines() {
        let line = line.expect("reading the metering file");
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let key = gpuledger::batch::record_key(gpuledger::events::Topic::Metering, &value);
        let tick = gpuledger::batch::is_tick(&value);
        let targets =
            match gpuledger::batch::route(gpuledger::events::Topic::Metering, key.as_deref(), tick, partitions) {
                Some(partition) => vec![partition],
                None => (0..partitions).collect(),
            };
        let id = (value["type"] == "gpuledger.gpu.usage").then(|| value["id"].as_str().map(str::to_owned)).flatten();
        if id.is_some() {
            usage += 1;
        }
        events.push((id, key, targets, line));
        if usage >= wanted {
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
        // From the start: the topics hold no usage record's output yet (and
        // the local broker cannot resolve "end" for a read_committed reader).
        for topic in ["gpuledger.usage-rated", "gpuledger.dead-letter"] {
            list.add_partition_offset(topic, partition as i32, Offset::Beginning).expect("partition");
        }
    }
    consumer.assign(&list).expect("assign");
    let reader_sent = Arc::clone(&sent);
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader_producing = Arc::clone(&producing);
    // Every distinct usage id sent ends as a usage-rated record or a dead
    // letter (a repeated id is a duplicate: dropped or dead-lettered after
    // its first copy was rated); the reader stops when all are accounted for.
    let reader = std::thread::spawn(move || {
        let mut latencies: Vec<f64> = Vec::new();
        let mut dead_letters = 0u64;
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_secs(60) {
            if !reader_producing.load(std::sync::atomic::Ordering::SeqCst)
                && reader_sent.lock().expect("lock").is_empty()
            {
                break;
            }
            let message = match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(error)) => {
                    eprintln!("output consumer: {error}");
                    continue;
                }
                Some(Ok(message)) => message,
            };
            let seen = Instant::now();
            last = seen;
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default()) else {
                continue;
            };
            if message.topic() == "gpuledger.dead-letter" {
                let original =
                    record["value"].as_str().and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
                if let Some(id) = original.as_ref().and_then(|value| value["id"].as_str()) {
                    if reader_sent.lock().expect("lock").remove(id).is_some() {
                        dead_letters += 1;
                    }
                }
                continue;
            }
            let Some(id) = record["id"].as_str() else { continue };
            if let Some(at) = reader_sent.lock().expect("lock").remove(id) {
                latencies.push(seen.duration_since(at).as_secs_f64() * 1000.0);
            }
        }
        (latencies, dead_letters)
    });

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let distinct = events.iter().filter_map(|event| event.0.as_ref()).collect::<std::collections::HashSet<_>>().len();
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1) as usize;
    for (index, chunk) in events.chunks(per_tick).enumerate() {
        let due = started + tick * index as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait); // pacing the load, not synchronisation
        }
        for (id, key, targets, line) in chunk {
            if let Some(id) = id {
                sent.lock().expect("lock").insert(id.clone(), Instant::now());
            }
            for partition in targets {
                loop {
                    let mut record =
                        BaseRecord::<[u8], str>::to("gpuledger.metering").partition(*partition as i32).payload(line);
                    if let Some(key) = key {
                        record = record.key(key.as_slice());
                    }
                    match producer.send(record) {
                        Ok(()) => break,
                        Err(_) => {
                            producer.poll(Duration::from_millis(1));
                        }
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    let produce_seconds = started.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(30)).expect("flush");
    producing.store(false, std::sync::atomic::Ordering::SeqCst);
    let (mut latencies, dead_letters) = reader.join().expect("reader");
    let unaccounted = sent.lock().expect("lock").len();
    latencies.sort_by(f64::total_cmp);
    let at = |fraction: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        latencies[((latencies.len() - 1) as f64 * fraction).round() as usize]
    };
    println!(
        "{{\"sent\":{usage},\"distinct\":{distinct},\"dead_letters\":{dead_letters},\"unaccounted\":{unaccounted},\"seen\":{},\"rate_target\":{rate},\"rate_achieved\":{:.0},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1}}}",
        latencies.len(),
        usage as f64 / produce_seconds,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
