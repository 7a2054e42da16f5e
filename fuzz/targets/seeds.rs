//! Writes the seed corpus of every target into `fuzz/corpus/<target>/`
//! from `schemas/examples` and the golden inputs (`tests/data/golden`):
//! `cargo run --release --bin seeds` (run from `fuzz/`). Not a fuzz target.

use std::path::Path;

use gpuledger::events::{avro::SchemaRegistry, Topic};

#[path = "support.rs"]
mod support;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let registry = SchemaRegistry::builtin();
    let examples = support::examples();
    for (index, (name, topic, event)) in examples.iter().enumerate() {
        let json = serde_json::to_vec(event).unwrap();
        write("json_decoder", &format!("{name}.json"), &[&[topic.index() as u8][..], &json].concat());
        write("canonical_digest", &format!("{name}.json"), &json);
        let single = registry.encode_single_object(name, event).unwrap();
        write("avro_single_object", name, &[&[index as u8][..], &single[10..]].concat());
        let id = gpuledger::events::avro::INPUT_SCHEMAS.iter().position(|(known, _)| known == name).unwrap() as u32 + 1;
        let confluent = registry.encode_confluent(id, event).unwrap();
        let selector = (topic.index() as u8) << 4 | id as u8;
        write("avro_confluent", name, &[&[selector][..], &confluent[5..]].concat());
    }
    // Golden inputs: the first lines of each file, as JSON decoder seeds.
    let golden = root.join("../tests/data/golden");
    for (file, topic) in
        [("rates.jsonl", Topic::Rates), ("deals.jsonl", Topic::Deals), ("metering.jsonl", Topic::Metering)]
    {
        let text = std::fs::read_to_string(golden.join(file)).unwrap();
        for (number, line) in text.lines().take(6).enumerate() {
            let seed = [&[topic.index() as u8][..], line.as_bytes()].concat();
            write("json_decoder", &format!("golden-{file}-{number}"), &seed);
            write("canonical_digest", &format!("golden-{file}-{number}"), line.as_bytes());
        }
    }
    // The fold's generator: a few byte strings that make whole histories.
    for (number, seed) in [
        vec![0u8, 0, 0, 5, 9, 0, 0, 0, 0, 1, 5, 5, 5, 1, 1, 1, 2, 0, 0, 5, 5, 5, 0, 6, 5, 5, 5],
        (0u8..=255).collect(),
        (0u8..=255).rev().collect(),
        [1u8, 2, 6, 7].repeat(40),
    ]
    .iter()
    .enumerate()
    {
        write("fold", &format!("seed-{number}"), seed);
    }
    println!("seeds written to {}", corpus.display());
}
