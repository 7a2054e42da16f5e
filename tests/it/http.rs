//! The HTTP face of `run` against the real broker, over real HTTP: two
//! instances of one group answer for every start-up with the figures the
//! batch run computes (the non-owner forwarding to the owner), readiness
//! before and after assignment, the bearer token, statements and errors;
//! and `/metrics`, read by the Prometheus project's own parser, counting
//! what the run did.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gpuledger::serve::client::{get_blocking, Answer};
use serde_json::Value;

use super::common::lines;
use super::harness::{gpuledger_with, loaded_broker, path, Broker, Instance};

const TOKEN: &str = "t0ken-for-tests";

/// Starts `run` with HTTP on a free port; returns it and its URL.
fn serving(broker: &Broker, state: &Path, environment: &[(&str, &str)]) -> (Instance, String) {
    let mut instance = Instance::start_with(broker, state, &["--http-listen", "127.0.0.1:0"], environment);
    let line = instance.line_with("serving metrics, health and queries over HTTP");
    let url = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("advertised_url="))
        .unwrap_or_else(|| panic!("no advertised_url in {line:?}"))
        .to_owned();
    (instance, url)
}

fn get(url: &str, token: Option<&str>) -> Answer {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization.iter().map(|value| ("authorization", value.as_str())).collect();
    get_blocking(url, &headers).unwrap_or_else(|error| panic!("GET {url}: {error:#}"))
}

/// Asks `url` until `done` holds for its answer (bounded: 120 s); returns
/// the answers before that one, and that one.
fn until(url: &str, token: Option<&str>, done: impl Fn(&Answer) -> bool) -> (Vec<Answer>, Answer) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut before = Vec::new();
    loop {
        let answer = get(url, token);
        if done(&answer) {
            return (before, answer);
        }
        assert!(
            Instant::now() < deadline,
            "{url}: still {} after 120 s: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        before.push(answer);
        // The pause between two questions, not a synchronisation: the
        // condition above is.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The batch run's balances records by start-up, with the inputs named
/// as the live processor names them.
fn batch_balances(dir: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(dir.join("balances.json")).unwrap();
    let records: Vec<Value> = match serde_json::from_str(&text).unwrap() {
        Value::Array(records) => records,
        other => other["startups"].as_array().cloned().unwrap_or_else(|| panic!("balances.json: {other}")),
    };
    records
        .into_iter()
        .map(|mut record| {
            for offset in record["offsets"].as_array_mut().unwrap() {
                let topic = offset["topic"].as_str().unwrap();
                offset["topic"] = Value::from(format!("gpuledger.{topic}"));
            }
            (record["startup"].as_str().unwrap().to_owned(), record)
        })
        .collect()
}

#[test]
fn two_instances_answer_for_every_startup_with_the_batch_figures() {
    let (broker, dir, inputs) = loaded_broker(300, 30 * gpuledger::units::MINUTE_MS, 4);
    let environment = [("GPULEDGER_HTTP__TOKEN", TOKEN)];
    let (a, url_a) = serving(&broker, &dir.join("state-a"), &environment);
    // Before its partitions are assigned an instance is not ready, and says why.
    let (before, ready) = until(&format!("{url_a}/healthz/ready"), None, |answer| answer.status == 200);
    for answer in &before {
        assert_eq!(answer.status, 503);
        assert!(answer.json().unwrap()["reason"].is_string(), "{answer:?}");
    }
    assert_eq!(ready.json().unwrap()["ready"], true);
    let (b, url_b) = serving(&broker, &dir.join("state-b"), &environment);
    let (before, _) = until(&format!("{url_b}/healthz/ready"), None, |answer| answer.status == 200);
    assert!(before.iter().all(|answer| answer.status == 503), "{before:?}");
    assert_eq!(get(&format!("{url_b}/healthz/live"), None).status, 200);

    let batch_out = dir.join("batch");
    let mut options = super::common::options(&inputs, &batch_out);
    options.partitions = 4;
    super::common::fold(&options);
    let expected = batch_balances(&batch_out);
    assert!(expected.len() >= 5, "{} start-ups", expected.len());

    // Both instances converge on the batch figures for every start-up.
    for (startup, record) in &expected {
        for url in [&url_a, &url_b] {
            let balances = format!("{url}/v1/startups/{startup}/balances");
            until(&balances, Some(TOKEN), |answer| answer.status == 200 && answer.json().ok().as_ref() == Some(record));
        }
    }
    // Now settled: each instance answers every start-up, itself or by its owner.
    let tasks_of = |url: &str| -> Vec<u64> {
        let ready = get(&format!("{url}/healthz/ready"), None).json().unwrap();
        ready["tasks"].as_array().unwrap().iter().map(|task| task.as_u64().unwrap()).collect()
    };
    let (tasks_a, tasks_b) = (tasks_of(&url_a), tasks_of(&url_b));
    let mut owned: Vec<u64> = tasks_a.iter().chain(&tasks_b).copied().collect();
    owned.sort_unstable();
    assert_eq!(owned, vec![0, 1, 2, 3], "each task has one owner: {tasks_a:?} {tasks_b:?}");
    let mut forwarded = 0;
    for (startup, record) in &expected {
        let task = record["task"].as_u64().unwrap();
        let owner = if tasks_a.contains(&task) { &url_a } else { &url_b };
        for url in [&url_a, &url_b] {
            let answer = get(&format!("{url}/v1/startups/{startup}/balances"), Some(TOKEN));
            assert_eq!(answer.status, 200, "{startup} at {url}");
            assert_eq!(&answer.json().unwrap(), record, "{startup} at {url}");
            assert_eq!(answer.header("x-gpuledger-served-by"), Some(owner.as_str()), "{startup} asked at {url}");
            forwarded += usize::from(url != owner);
        }
    }
    assert_eq!(forwarded, expected.len(), "every start-up was asked once at the instance that does not own it");

    // The list of start-ups, from either instance.
    for url in [&url_a, &url_b] {
        let list = get(&format!("{url}/v1/startups"), Some(TOKEN)).json().unwrap();
        let listed: BTreeMap<String, u64> = list["startups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| (entry["startup"].as_str().unwrap().to_owned(), entry["task"].as_u64().unwrap()))
            .collect();
        let wanted: BTreeMap<String, u64> =
            expected.iter().map(|(startup, record)| (startup.clone(), record["task"].as_u64().unwrap())).collect();
        assert_eq!(listed, wanted, "{url}");
    }

    // Statements of closed months, all and one by one, as the batch run wrote them.
    let mut statements: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in lines(&batch_out, "statements") {
        let statement: Value = serde_json::from_str(&line).unwrap();
        statements.entry(statement["startup"].as_str().unwrap().to_owned()).or_default().push(statement);
    }
    assert!(!statements.is_empty(), "the workload closes months");
    for (startup, wanted) in &statements {
        let all = get(&format!("{url_a}/v1/startups/{startup}/statements"), Some(TOKEN)).json().unwrap();
        assert_eq!(all["statements"].as_array().unwrap(), wanted, "{startup}");
        assert_eq!(all["digest"], expected[startup]["digest"], "{startup}: the committed digest");
        let period = wanted[0]["period"].as_str().unwrap();
        let one = get(&format!("{url_b}/v1/startups/{startup}/statements/{period}"), Some(TOKEN));
        assert_eq!(one.status, 200);
        assert_eq!(one.json().unwrap()["statement"], wanted[0]);
    }
    let startup = statements.keys().next().unwrap();

    // Errors: unknown start-up 404, malformed period 400, a month not closed
    // 404, no token 401 (probes stay open).
    for url in [&url_a, &url_b] {
        let unknown = get(&format!("{url}/v1/startups/no-such-startup/balances"), Some(TOKEN));
        assert_eq!(unknown.status, 404, "{unknown:?}");
        assert!(unknown.json().unwrap()["error"].as_str().unwrap().contains("no-such-startup"));
        let malformed = get(&format!("{url}/v1/startups/{startup}/statements/2017-13"), Some(TOKEN));
        assert_eq!(malformed.status, 400, "{malformed:?}");
        let open = get(&format!("{url}/v1/startups/{startup}/statements/1999-01"), Some(TOKEN));
        assert_eq!(open.status, 404, "{open:?}");
        let anonymous = get(&format!("{url}/v1/startups/{startup}/balances"), None);
        assert_eq!(anonymous.status, 401);
        assert_eq!(get(&format!("{url}/v1/startups"), Some("wrong")).status, 401);
        assert_eq!(get(&format!("{url}/metrics"), None).status, 200);
        let openapi = get(&format!("{url}/openapi.json"), None).json().unwrap();
        assert!(openapi["paths"]["/v1/startups/{startup}/balances"].is_object());
    }

    assert!(a.terminate_with_stats().0.success());
    assert!(b.terminate_with_stats().0.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One sample of a parsed exposition.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// `/metrics` of `url`, read by the Prometheus project's parser.
fn scrape(url: &str) -> Vec<Sample> {
    use std::io::Write;
    let text = get(&format!("{url}/metrics"), None);
    assert_eq!(text.status, 200);
    assert!(text.header("content-type").is_some_and(|kind| kind.starts_with("text/plain; version=0.0.4")), "{text:?}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http/metrics.py");
    let mut child = std::process::Command::new(super::interop::python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&text.body).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the parser refused the exposition: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name
                && labels.iter().all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
}

#[test]
fn metrics_count_what_the_run_did() {
    let (broker, dir, inputs) = loaded_broker(200, 30 * gpuledger::units::MINUTE_MS, 4);
    let count = |name: &str| std::fs::read_to_string(inputs.join(name)).unwrap().lines().count() as f64;
    let (rates, deals) = (count("rates.jsonl"), count("deals.jsonl"));
    // The input records of the 4 tasks, as the batch run splits them: each
    // task folds every rate card, ticks go to every metering partition.
    let mut options = super::common::options(&inputs, &dir.join("batch"));
    options.partitions = 4;
    let inputs_total = super::common::fold(&options).records as f64;
    let metering = inputs_total - 4.0 * rates - deals;
    let (instance, url) = serving(&broker, &dir.join("state"), &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let samples = loop {
        let samples = scrape(&url);
        let committed = value(&samples, "gpuledger_records_committed_total", &[]).unwrap();
        if committed == inputs_total {
            break samples;
        }
        assert!(Instant::now() < deadline, "{committed} of {inputs_total} records committed after 120 s");
        std::thread::sleep(Duration::from_millis(100)); // between scrapes; the condition synchronises
    };
    let folded = |topic: &str| value(&samples, "gpuledger_records_folded_total", &[("topic", topic)]);
    assert_eq!(folded("gpuledger.rates"), Some(4.0 * rates));
    assert_eq!(folded("gpuledger.deals"), Some(deals));
    assert_eq!(folded("gpuledger.metering"), Some(metering));
    for partition in ["0", "1", "2", "3"] {
        for topic in ["gpuledger.deals", "gpuledger.metering"] {
            let lag = value(&samples, "gpuledger_consumer_lag_records", &[("topic", topic), ("partition", partition)]);
            assert_eq!(lag, Some(0.0), "{topic} {partition}");
        }
    }
    assert_eq!(value(&samples, "gpuledger_partitions_assigned", &[]), Some(4.0));
    assert!(value(&samples, "gpuledger_state_disk_bytes", &[]).unwrap() > 0.0);
    assert!(value(&samples, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&samples, "process_open_fds", &[]).unwrap() > 3.0);
    assert!(value(&samples, "process_cpu_seconds_total", &[]).unwrap() > 0.0);

    // Dead letters by reason, as the dead-letter topic holds them.
    let exported = dir.join("export");
    gpuledger_with(&broker, &["export", "--out", path(&exported)], &[]);
    let mut reasons: BTreeMap<String, f64> = BTreeMap::new();
    for line in lines(&exported, "dead-letter") {
        let letter: Value = serde_json::from_str(&line).unwrap();
        *reasons.entry(letter["reason"].as_str().unwrap().to_owned()).or_default() += 1.0;
    }
    assert!(!reasons.is_empty());
    let metered: BTreeMap<String, f64> = samples
        .iter()
        .filter(|sample| sample.name == "gpuledger_dead_letters_total")
        .map(|sample| (sample.labels["reason"].clone(), sample.value))
        .collect();
    assert_eq!(metered, reasons);

    // Transactions and cycles, as the run counted them.
    let (exit, stats) = instance.terminate_with_stats();
    assert!(exit.success());
    let stats = stats.expect("the run's counters");
    let committed = value(&samples, "gpuledger_transactions_total", &[("outcome", "committed")]).unwrap();
    assert_eq!(committed, stats["transactions_committed"].as_f64().unwrap(), "{stats}");
    assert_eq!(value(&samples, "gpuledger_transactions_total", &[("outcome", "aborted")]), Some(0.0));
    let cycles = value(&samples, "gpuledger_commit_cycle_seconds_count", &[]).unwrap();
    assert_eq!(cycles, stats["cycles"].as_f64().unwrap(), "{stats}");
    std::fs::remove_dir_all(&dir).unwrap();
}
