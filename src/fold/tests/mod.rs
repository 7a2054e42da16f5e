//! Unit tests of the ledger rules, one or more per rule and reason code,
//! by section of the spec: `deals` (§6), `rating` (§7, §8 burn-down),
//! `closing` (§9 journal, expiry, close; §10 alerts), `clocks` (§4 clocks,
//! §5 dedup), `decoding` (§5 decoding, §10 balances), `robust` (v1.1
//! robustness). Pure: events go through the real decoder and the fold, no
//! I/O.
//!
//! `Ledger` is the given/when/then helper: `feed` folds one record (in the
//! order given, which is the merge order) and returns what it wrote.

use serde_json::{json, Value};

use super::*;
use crate::events::decode::decode_value;
use crate::records::{AlertKind, CurrencyBalance, JournalEntry, Statement, UsageRated};
use crate::units::{parse_rfc3339, Month};

struct Ledger {
    task: Task,
    next_offset: [i64; 3],
}

fn t(text: &str) -> Millis {
    parse_rfc3339(text).unwrap_or_else(|| panic!("bad test time {text}"))
}

impl Ledger {
    fn new() -> Ledger {
        Ledger::with(FoldConfig::default(), 0)
    }

    fn with(config: FoldConfig, partition: u32) -> Ledger {
        Ledger { task: Task::new(config, TaskState { partition, ..TaskState::default() }), next_offset: [0; 3] }
    }

    fn feed(&mut self, topic: Topic, event: Value) -> Vec<Output> {
        let value = serde_json::to_vec(&event).unwrap();
        self.feed_bytes(topic, value)
    }

    fn feed_bytes(&mut self, topic: Topic, value: Vec<u8>) -> Vec<Output> {
        let offset = self.next_offset[topic.index()];
        self.next_offset[topic.index()] += 1;
        let decoded = match crate::events::json::parse(&value) {
            Ok(parsed) => decode_value(topic, &parsed),
            Err(rejection) => Decoded { time: None, event: Err(rejection) },
        };
        let record =
            InputRecord { topic, partition: self.task.state().partition, offset, key: None, value, headers: vec![] };
        let mut outputs = Vec::new();
        self.task.fold(&record, decoded, &mut outputs).expect("no internal error");
        outputs
    }

    fn startup(&self, id: &str) -> &Startup {
        &self.task.state().startups[id]
    }

    fn balances(&self, id: &str) -> Balances {
        self.task.balances(id, &TopicNames::default()).unwrap()
    }

    fn usd(&self, id: &str) -> CurrencyBalance {
        self.balances(id).currencies.into_iter().find(|currency| currency.currency == "USD").unwrap()
    }

    /// A standard world: an H800 rate of $3.60/GPU-hour from 2025-01-01.
    fn with_rate() -> Ledger {
        let mut ledger = Ledger::new();
        assert!(ledger.feed(Topic::Rates, rate("H800", 3_600_000, "2025-01-01T00:00:00Z", 0)).is_empty());
        ledger
    }
}

fn envelope(id: &str, type_name: &str, subject: Option<&str>, time: &str, data: Value) -> Value {
    let mut event =
        json!({"specversion": "1.0", "id": id, "source": "test", "type": type_name, "time": time, "data": data});
    if let Some(subject) = subject {
        event["subject"] = json!(subject);
    }
    event
}

fn rate(model: &str, price: i64, from: &str, min_billable_seconds: i64) -> Value {
    envelope(
        &format!("rate-{model}-{from}-{price}"),
        "gpuledger.rate.published",
        None,
        from,
        json!({"gpu_model": model, "region": "r1", "tier": "on_demand", "currency": "USD",
               "price_per_gpu_hour": price, "effective_from": from, "min_billable_seconds": min_billable_seconds}),
    )
}

fn deal(id: &str, time: &str, cash: i64, face: i64, fair_value: i64) -> Value {
    envelope(
        &format!("signed-{id}"),
        "gpuledger.deal.signed",
        Some("acme"),
        time,
        json!({"deal_id": id, "investor": "inv", "cash_amount": cash, "credit_face_amount": face,
               "currency": "USD", "equity_fair_value": fair_value}),
    )
}

fn grant(id: &str, time: &str, data: Value) -> Value {
    let mut data = data;
    data["grant_id"] = json!(id);
    if data.get("currency").is_none() {
        data["currency"] = json!("USD");
    }
    if data.get("effective_at").is_none() {
        data["effective_at"] = json!("2025-01-01T00:00:00Z");
    }
    envelope(&format!("grant-{id}"), "gpuledger.credit.granted", Some("acme"), time, data)
}

fn usage_for(startup: &str, id: &str, start: &str, end: &str, gpus: i64) -> Value {
    envelope(
        id,
        "gpuledger.gpu.usage",
        Some(startup),
        end,
        json!({"cluster_id": "c1", "region": "r1", "gpu_model": "H800", "tier": "on_demand",
               "gpu_count": gpus, "started_at": start, "ended_at": end}),
    )
}

fn usage(id: &str, start: &str, end: &str, gpus: i64) -> Value {
    usage_for("acme", id, start, end, gpus)
}

fn tick(time: &str) -> Value {
    json!({"specversion": "1.0", "id": format!("tick-{time}"), "source": "sched", "type": "gpuledger.clock.tick", "time": time})
}

fn with_id(mut event: Value, id: &str) -> Value {
    event["id"] = json!(id);
    event
}

fn deal_event(id: &str, type_name: &str, time: &str, data: Value) -> Value {
    envelope(id, type_name, Some("acme"), time, data)
}

fn dead_reason(outputs: &[Output]) -> Option<String> {
    outputs.iter().find_map(|output| match output {
        Output::DeadLetter(letter) => Some(letter.reason.clone()),
        _ => None,
    })
}

fn journal(outputs: &[Output]) -> Vec<&JournalEntry> {
    outputs.iter().filter_map(|output| if let Output::Journal(entry) = output { Some(entry) } else { None }).collect()
}

fn rated(outputs: &[Output]) -> &UsageRated {
    outputs
        .iter()
        .find_map(|output| if let Output::UsageRated(usage) = output { Some(usage) } else { None })
        .expect("a usage-rated record")
}

fn statements(outputs: &[Output]) -> Vec<&Statement> {
    outputs
        .iter()
        .filter_map(|output| if let Output::Statement(statement) = output { Some(statement) } else { None })
        .collect()
}

fn alerts(outputs: &[Output]) -> Vec<(AlertKind, Option<String>, Option<u32>)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Alert(alert) => Some((alert.kind, alert.grant_id.clone(), alert.threshold)),
            _ => None,
        })
        .collect()
}

fn expect_reason(outputs: &[Output], reason: Reason) {
    assert_eq!(dead_reason(outputs).as_deref(), Some(reason.as_str()), "outputs: {outputs:#?}");
}

mod clocks;
mod closing;
mod deals;
mod decoding;
mod rating;
mod robust;
