//! An open-loop load of `GET /v1/startups/{startup}/balances` against one or
//! more gpuledger instances: RATE requests per second, spread round-robin
//! over the start-ups and the instances, each sent at its scheduled time
//! whatever the answers before it did (so a slow answer cannot slow the
//! load down and hide itself). Runs until STOP_FILE exists (or SECONDS
//! have passed), then prints JSON: requests, answers by status, latency
//! p50 / p99 / max in ms (of every answer, and of the 200s).
//! `cargo run --release --example query_load -- URL[,URL...] STARTUPS_FILE RATE SECONDS [STOP_FILE]`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(5..=6).contains(&args.len()) {
        eprintln!("usage: query_load URL[,URL...] STARTUPS_FILE RATE SECONDS [STOP_FILE]");
        std::process::exit(2);
    }
    let urls: Vec<String> = args[1].split(',').map(|url| url.trim_end_matches('/').to_owned()).collect();
    let startups: Vec<String> = std::fs::read_to_string(&args[2])
        .expect("reading the start-ups file")
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!startups.is_empty(), "no start-ups in {}", args[2]);
    let rate: u64 = args[3].parse().expect("RATE");
    let seconds: u64 = args[4].parse().expect("SECONDS");
    let stop_file = args.get(5).map(std::path::PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let answers: Arc<Mutex<Vec<(u16, f64)>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(0u64));
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut sent = 0u64;
    runtime.block_on(async {
        let mut handles = Vec::new();
        loop {
            let due = started + period * sent as u32;
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
            if sent.is_multiple_of(100) {
                let stop = stop_file.as_ref().is_some_and(|file| file.exists());
                if stop || started.elapsed() >= Duration::from_secs(seconds) {
                    break;
                }
            }
            let url = &urls[(sent as usize) % urls.len()];
            let startup = &startups[(sent as usize / urls.len()) % startups.len()];
            let target = format!("{url}/v1/startups/{startup}/balances");
            let (answers, errors) = (Arc::clone(&answers), Arc::clone(&errors));
            handles.push(tokio::spawn(async move {
                let asked = Instant::now();
                match gpuledger::serve::client::get(&target, &[], Duration::from_secs(10)).await {
                    Ok(answer) => {
                        let millis = asked.elapsed().as_secs_f64() * 1000.0;
                        answers.lock().unwrap().push((answer.status, millis));
                    }
                    Err(_) => *errors.lock().unwrap() += 1,
                }
            }));
            sent += 1;
        }
        for handle in handles {
            let _ = handle.await;
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let answers = answers.lock().unwrap().clone();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for (status, _) in &answers {
        *by_status.entry(status.to_string()).or_default() += 1;
    }
    let all: Vec<f64> = answers.iter().map(|(_, millis)| *millis).collect();
    let ok: Vec<f64> = answers.iter().filter(|(status, _)| *status == 200).map(|(_, millis)| *millis).collect();
    let errors = *errors.lock().unwrap();
    println!(
        "{}",
        serde_json::json!({
            "requests": sent,
            "seconds": elapsed,
            "rate_achieved": sent as f64 / elapsed,
            "answers_by_status": by_status,
            "errors": errors,
            "p50_ms": quantile(&all, 0.50),
            "p99_ms": quantile(&all, 0.99),
            "max_ms": quantile(&all, 1.0),
            "ok_p50_ms": quantile(&ok, 0.50),
            "ok_p99_ms": quantile(&ok, 0.99),
        })
    );
}

fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[index])
}
