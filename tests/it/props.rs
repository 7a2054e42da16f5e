//! Property tests of the fold over arbitrary event sequences:
//! - the invariants of spec §11 hold (checked by `audit` on the outputs);
//! - splitting a run in two, with the state committed to a store and loaded
//!   back in between, gives the same outputs and state as one run;
//! - the same sequence twice gives the same bytes.

use proptest::prelude::*;
use serde_json::{json, Value};

use gpuledger::events::{decode::decode_value, Decoded, InputRecord, Topic};
use gpuledger::fold::state::TaskState;
use gpuledger::fold::{balances_of, FoldConfig, Task};
use gpuledger::records::Output;
use gpuledger::store::{commit_ops, load_task, KvStore, MemoryStore};
use gpuledger::units::{format_millis, parse_rfc3339, HOUR_MS};

const STARTUPS: [&str; 2] = ["acme", "bolt"];

fn base() -> i64 {
    parse_rfc3339("2025-01-01T00:00:00Z").unwrap()
}

/// One input, described by small numbers; `to_json` makes it an event.
#[derive(Clone, Debug)]
enum Step {
    Rate {
        model: u8,
        price: i64,
        hours: i64,
        min_seconds: i64,
    },
    Deal {
        startup: u8,
        deal: u8,
        cash: i64,
        face: i64,
        fair: i64,
        hours: i64,
    },
    Grant {
        startup: u8,
        grant: u8,
        deal: Option<u8>,
        face: i64,
        kind: u8,
        price: i64,
        priority: i64,
        effective: i64,
        expires: Option<i64>,
        hours: i64,
    },
    Extend {
        startup: u8,
        grant: u8,
        expires: i64,
        hours: i64,
    },
    Revoke {
        startup: u8,
        grant: u8,
        hours: i64,
    },
    Cancel {
        startup: u8,
        deal: u8,
        hours: i64,
    },
    Usage {
        startup: u8,
        id: u8,
        model: u8,
        gpus: i64,
        start: i64,
        minutes: i64,
    },
    Tick {
        hours: i64,
    },
}

fn at(hours: i64) -> String {
    format_millis(base() + hours * HOUR_MS)
}

fn step() -> impl Strategy<Value = Step> {
    let hours = 0i64..24 * 80;
    prop_oneof![
        (0u8..2, 0i64..5_000_000, 0i64..24 * 10, 0i64..120).prop_map(|(model, price, hours, min_seconds)| Step::Rate {
            model,
            price,
            hours,
            min_seconds
        }),
        (0u8..2, 0u8..2, 0i64..2_000_000, 1i64..3_000_000, 0i64..5_000_000, hours.clone())
            .prop_map(|(startup, deal, cash, face, fair, hours)| Step::Deal { startup, deal, cash, face, fair, hours }),
        (
            0u8..2,
            0u8..4,
            prop::option::of(0u8..2),
            1i64..2_000_000,
            0u8..3,
            0i64..2_000_000,
            0i64..101,
            0i64..24 * 60,
            prop::option::of(1i64..24 * 90),
            hours.clone()
        )
            .prop_map(|(startup, grant, deal, face, kind, price, priority, effective, expires, hours)| {
                Step::Grant { startup, grant, deal, face, kind, price, priority, effective, expires, hours }
            }),
        (0u8..2, 0u8..4, 1i64..24 * 120, hours.clone()).prop_map(|(startup, grant, expires, hours)| Step::Extend {
            startup,
            grant,
            expires,
            hours
        }),
        (0u8..2, 0u8..4, hours.clone()).prop_map(|(startup, grant, hours)| Step::Revoke { startup, grant, hours }),
        (0u8..2, 0u8..2, hours.clone()).prop_map(|(startup, deal, hours)| Step::Cancel { startup, deal, hours }),
        (0u8..2, 0u8..40, 0u8..3, 1i64..9, 0i64..24 * 80 * 60, 1i64..600).prop_map(
            |(startup, id, model, gpus, start, minutes)| Step::Usage { startup, id, model, gpus, start, minutes }
        ),
        hours.prop_map(|hours| Step::Tick { hours }),
    ]
}

fn envelope(id: String, type_name: &str, startup: Option<u8>, time: String, data: Value) -> Value {
    let mut event =
        json!({"specversion": "1.0", "id": id, "source": "prop", "type": type_name, "time": time, "data": data});
    if let Some(startup) = startup {
        event["subject"] = json!(STARTUPS[usize::from(startup)]);
    }
    event
}

impl Step {
    fn to_record(&self, index: usize) -> (Topic, Value) {
        let models = ["H800", "A800", "L20"];
        match self {
            Step::Rate { model, price, hours, min_seconds } => (
                Topic::Rates,
                envelope(
                    format!("rate-{index}"),
                    "gpuledger.rate.published",
                    None,
                    at(*hours),
                    json!({"gpu_model": models[usize::from(*model)], "region": "r", "tier": "spot", "currency": "USD", "price_per_gpu_hour": price, "effective_from": at(*hours), "min_billable_seconds": min_seconds}),
                ),
            ),
            Step::Deal { startup, deal, cash, face, fair, hours } => (
                Topic::Deals,
                envelope(
                    format!("deal-{index}"),
                    "gpuledger.deal.signed",
                    Some(*startup),
                    at(*hours),
                    json!({"deal_id": format!("d{deal}"), "investor": "i", "cash_amount": cash, "credit_face_amount": face, "currency": "USD", "equity_fair_value": fair}),
                ),
            ),
            Step::Grant { startup, grant, deal, face, kind, price, priority, effective, expires, hours } => {
                let mut data = json!({"grant_id": format!("g{grant}"), "face_amount": face, "currency": "USD", "effective_at": at(*effective), "priority": priority});
                match deal {
                    Some(deal) => data["deal_id"] = json!(format!("d{deal}")),
                    None => {
                        data["consideration"] = json!(["equity", "cash", "promotional"][usize::from(*kind)]);
                        if *kind == 0 || (*kind == 1 && price % 2 == 0) {
                            data["transaction_price"] = json!(price);
                        }
                    }
                }
                if let Some(expires) = expires {
                    data["expires_at"] = json!(at(effective + expires));
                }
                (
                    Topic::Deals,
                    envelope(format!("grant-{index}"), "gpuledger.credit.granted", Some(*startup), at(*hours), data),
                )
            }
            Step::Extend { startup, grant, expires, hours } => (
                Topic::Deals,
                envelope(
                    format!("ext-{index}"),
                    "gpuledger.grant.extended",
                    Some(*startup),
                    at(*hours),
                    json!({"grant_id": format!("g{grant}"), "expires_at": at(*expires)}),
                ),
            ),
            Step::Revoke { startup, grant, hours } => (
                Topic::Deals,
                envelope(
                    format!("rev-{index}"),
                    "gpuledger.grant.revoked",
                    Some(*startup),
                    at(*hours),
                    json!({"grant_id": format!("g{grant}")}),
                ),
            ),
            Step::Cancel { startup, deal, hours } => (
                Topic::Deals,
                envelope(
                    format!("cancel-{index}"),
                    "gpuledger.deal.cancelled",
                    Some(*startup),
                    at(*hours),
                    json!({"deal_id": format!("d{deal}")}),
                ),
            ),
            Step::Usage { startup, id, model, gpus, start, minutes } => {
                let started = base() + start * 60_000;
                let ended = started + minutes * 60_000;
                // Ids repeat (0..40): some repeats are equal duplicates, some conflict.
                (
                    Topic::Metering,
                    envelope(
                        format!("u{id}"),
                        "gpuledger.gpu.usage",
                        Some(*startup),
                        format_millis(ended),
                        json!({"cluster_id": "c", "region": "r", "gpu_model": models[usize::from(*model)], "tier": "spot", "gpu_count": gpus, "started_at": format_millis(started), "ended_at": format_millis(ended)}),
                    ),
                )
            }
            Step::Tick { hours } => (
                Topic::Metering,
                json!({"specversion": "1.0", "id": format!("t{index}"), "source": "s", "type": "gpuledger.clock.tick", "time": at(*hours)}),
            ),
        }
    }
}

fn records(steps: &[Step]) -> Vec<(InputRecord, Decoded)> {
    let mut offsets = [0i64; 3];
    steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let (topic, value) = step.to_record(index);
            let offset = offsets[topic.index()];
            offsets[topic.index()] += 1;
            let decoded = decode_value(topic, &value);
            let record = InputRecord {
                topic,
                partition: 0,
                offset,
                key: None,
                value: serde_json::to_vec(&value).unwrap(),
                headers: vec![],
            };
            (record, decoded)
        })
        .collect()
}

fn config() -> FoldConfig {
    // A long max_future: arbitrary times jump around.
    FoldConfig { max_future: 100 * 24 * HOUR_MS, ..FoldConfig::default() }
}

fn run(records: &[(InputRecord, Decoded)], task: &mut Task) -> Vec<Output> {
    let mut outputs = Vec::new();
    for (record, decoded) in records {
        task.fold(record, decoded.clone(), &mut outputs).expect("no internal error");
    }
    outputs
}

fn write_dir(dir: &std::path::Path, outputs: &[Output], task: &Task) {
    let mut files: std::collections::BTreeMap<&str, String> = Default::default();
    for stream in gpuledger::records::Stream::ALL {
        files.insert(stream.name(), String::new());
    }
    for output in outputs {
        let text = files.get_mut(output.stream().name()).unwrap();
        text.push_str(std::str::from_utf8(&output.to_json()).unwrap());
        text.push('\n');
    }
    for (name, text) in files {
        std::fs::write(dir.join(format!("{name}.jsonl")), text).unwrap();
    }
    let balances: Vec<_> = task.state().startups.values().map(|startup| balances_of(startup, 0, &[])).collect();
    gpuledger::batch::write_balances(&dir.join("balances.json"), &balances).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_arbitrary_sequences(steps in prop::collection::vec(step(), 1..120)) {
        let records = records(&steps);
        let mut task = Task::new(config(), TaskState::default());
        let outputs = run(&records, &mut task);
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &outputs, &task);
        let report = gpuledger::audit::audit(dir.path(), false).unwrap();
        prop_assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    #[test]
    fn a_split_run_with_state_kept_equals_one_run(steps in prop::collection::vec(step(), 2..120), cut in any::<prop::sample::Index>()) {
        let records = records(&steps);
        let split = cut.index(records.len());
        let mut whole = Task::new(config(), TaskState::default());
        let expected = run(&records, &mut whole);

        let mut first = Task::new(config(), TaskState::default());
        let mut outputs = run(&records[..split], &mut first);
        let mut store = MemoryStore::default();
        let changes = first.take_changes();
        store.write(commit_ops(first.state(), &changes)).unwrap();
        let mut second = Task::new(config(), load_task(&store, 0).unwrap());
        outputs.extend(run(&records[split..], &mut second));
        prop_assert_eq!(outputs, expected);
        prop_assert_eq!(second.state(), whole.state());
    }

    #[test]
    fn the_same_sequence_gives_the_same_bytes(steps in prop::collection::vec(step(), 1..80)) {
        let records = records(&steps);
        let bytes = |outputs: Vec<Output>| outputs.iter().flat_map(|output| output.to_json()).collect::<Vec<u8>>();
        let first = bytes(run(&records, &mut Task::new(config(), TaskState::default())));
        let second = bytes(run(&records, &mut Task::new(config(), TaskState::default())));
        prop_assert_eq!(first, second);
    }
}
