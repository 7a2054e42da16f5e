//! The whole fold over a sequence of arbitrary events: the bytes drive a
//! small generator of mostly well-formed deals, grants, usage, rates and
//! ticks with extreme amounts and times (and sometimes raw bytes), folded
//! in order by one task. A failure inside the fold must not happen at all
//! here (the task would turn it into an `internal_error` dead letter; the
//! target aborts instead, so the fuzzer sees it), and every start-up's
//! balances must be computable afterwards (commit preparation).

use gpuledger::events::{avro::SchemaRegistry, decode_record, InputRecord, Limits, Topic};
use gpuledger::fold::state::TaskState;
use gpuledger::fold::{FoldConfig, Task, TopicNames};
use serde_json::{json, Value};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    fn pick<'s>(&mut self, choices: &[&'s str]) -> &'s str {
        choices[usize::from(self.byte()) % choices.len()]
    }

    /// Mostly ordinary amounts, sometimes the edges of 64 bits.
    fn amount(&mut self) -> Value {
        match self.byte() % 8 {
            0 => json!(i64::MAX),
            1 => json!(i64::MAX - i64::from(self.byte())),
            2 => json!(-i64::from(self.byte())),
            3 => json!(0),
            4 => serde_json::from_str(&format!("1e{}", self.byte())).unwrap(),
            _ => json!(i64::from(self.byte()) * 1_000_000 + i64::from(self.byte())),
        }
    }

    /// Times around 2025, sometimes at the calendar's edges.
    fn time(&mut self) -> String {
        match self.byte() % 16 {
            0 => "0000-01-01T00:00:00+00:01".to_owned(),
            1 => "9999-12-31T23:59:59.999-23:59".to_owned(),
            2 => "1969-12-31T23:59:59Z".to_owned(),
            3 => format!("{:04}-01-01T00:00:00Z", u16::from(self.byte()) * 39),
            _ => {
                let day = 1 + self.byte() % 28;
                let hour = self.byte() % 24;
                let month = 1 + self.byte() % 3;
                format!("2025-{month:02}-{day:02}T{hour:02}:00:00Z")
            }
        }
    }
}

fn event(bytes: &mut Bytes<'_>) -> (Topic, Vec<u8>) {
    let startup = bytes.pick(&["a", "b", "c"]);
    let id = format!("e{}", bytes.byte() % 16);
    let time = bytes.time();
    let envelope = |type_name: &str, subject: Option<&str>, data: Value| {
        let mut event = json!({"specversion": "1.0", "id": id, "source": "fuzz", "type": type_name, "time": time});
        if let Some(subject) = subject {
            event["subject"] = json!(subject);
        }
        event["data"] = data;
        serde_json::to_vec(&event).unwrap()
    };
    let deal_id = bytes.pick(&["d1", "d2"]);
    let grant_id = bytes.pick(&["g1", "g2", "g3"]);
    match bytes.byte() % 9 {
        0 => (
            Topic::Rates,
            envelope(
                "gpuledger.rate.published",
                None,
                json!({"gpu_model": "H800", "region": "r", "tier": "spot", "currency": "USD",
                       "price_per_gpu_hour": bytes.amount(), "effective_from": bytes.time(),
                       "min_billable_seconds": bytes.byte()}),
            ),
        ),
        1 => (
            Topic::Deals,
            envelope(
                "gpuledger.deal.signed",
                Some(startup),
                json!({"deal_id": deal_id, "investor": "i", "cash_amount": bytes.amount(),
                       "credit_face_amount": bytes.amount(), "currency": "USD", "equity_fair_value": bytes.amount()}),
            ),
        ),
        2 => {
            let mut data = json!({"grant_id": grant_id, "face_amount": bytes.amount(), "currency": "USD",
                                  "effective_at": bytes.time(), "priority": bytes.byte() % 102});
            match bytes.byte() % 4 {
                0 => data["deal_id"] = json!(deal_id),
                1 => data["consideration"] = json!("cash"),
                2 => data["consideration"] = json!("promotional"),
                _ => {
                    data["consideration"] = json!("equity");
                    data["transaction_price"] = bytes.amount();
                }
            }
            if bytes.byte() % 2 == 0 {
                data["expires_at"] = json!(bytes.time());
            }
            (Topic::Deals, envelope("gpuledger.credit.granted", Some(startup), data))
        }
        3 => (
            Topic::Deals,
            envelope(
                "gpuledger.grant.extended",
                Some(startup),
                json!({"grant_id": grant_id, "expires_at": bytes.time()}),
            ),
        ),
        4 => (Topic::Deals, envelope("gpuledger.grant.revoked", Some(startup), json!({"grant_id": grant_id}))),
        5 => (Topic::Deals, envelope("gpuledger.deal.cancelled", Some(startup), json!({"deal_id": deal_id}))),
        6 => {
            let started = bytes.time();
            let mut value: Value = serde_json::from_slice(&envelope(
                "gpuledger.gpu.usage",
                Some(startup),
                json!({"cluster_id": "c", "region": "r", "gpu_model": "H800", "tier": "spot",
                       "gpu_count": bytes.amount(), "started_at": started, "ended_at": time}),
            ))
            .unwrap();
            value["ext"] = bytes.amount();
            (Topic::Metering, serde_json::to_vec(&value).unwrap())
        }
        7 => (Topic::Metering, envelope("gpuledger.clock.tick", None, Value::Null)),
        _ => {
            // Raw bytes: whatever is left of a short run.
            let length = usize::from(bytes.byte());
            let raw: Vec<u8> = (0..length).map(|_| bytes.byte()).collect();
            (Topic::ALL[usize::from(bytes.byte()) % 3], raw)
        }
    }
}

fn main() {
    let registry = SchemaRegistry::builtin();
    let limits = Limits::default();
    afl::fuzz!(|data: &[u8]| {
        let mut bytes = Bytes(data);
        // Ticks may jump at most 31 days, except when the first byte is 7:
        // an unguarded tick to year 9999 closes ~96,000 months per start-up,
        // slow by design (the guard exists for it), which would only make
        // the fuzzer report hangs.
        let config = FoldConfig {
            max_tick_jump: (data.first() != Some(&7)).then_some(31 * 24 * 3_600_000),
            ..FoldConfig::default()
        };
        let mut task = Task::new(config, TaskState::default());
        let mut offsets = [0i64; 3];
        let mut outputs = Vec::new();
        while !bytes.0.is_empty() {
            let (topic, value) = event(&mut bytes);
            let decoded = decode_record(topic, &value, &registry, &limits);
            let offset = offsets[topic.index()];
            offsets[topic.index()] += 1;
            let record = InputRecord { topic, partition: 0, offset, key: None, value, headers: Vec::new() };
            if let Err(poisoned) = task.fold(&record, decoded, &mut outputs) {
                // A defect: make the fuzzer see it.
                eprintln!("{poisoned}");
                std::process::abort();
            }
        }
        let names = TopicNames::default();
        let startups: Vec<String> = task.state().startups.keys().cloned().collect();
        for startup in startups {
            let balances = task.balances(&startup, &names).expect("a known start-up");
            serde_json::to_vec(&balances).expect("balances serialise");
        }
        let changes = task.take_changes();
        let _ = gpuledger::store::commit_ops(task.state(), &changes);
    });
}
