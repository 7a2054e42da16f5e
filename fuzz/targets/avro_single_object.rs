//! Avro single-object encoding: a valid header of one of the input schemas
//! (chosen by the first byte) followed by any body.

use gpuledger::events::{avro::SchemaRegistry, decode_record, Limits, Topic};

fn main() {
    let registry = SchemaRegistry::builtin();
    let limits = Limits::default();
    // The headers the decoder knows, from encoding one example per schema.
    let headers: Vec<(Topic, Vec<u8>)> = gpuledger_fuzz_support::examples()
        .into_iter()
        .filter_map(|(name, topic, event)| {
            let framed = registry.encode_single_object(&name, &event).ok()?;
            Some((topic, framed[..10].to_vec()))
        })
        .collect();
    assert!(!headers.is_empty());
    afl::fuzz!(|data: &[u8]| {
        let Some((&selector, body)) = data.split_first() else { return };
        let (topic, header) = &headers[usize::from(selector) % headers.len()];
        let mut value = header.clone();
        value.extend_from_slice(body);
        let _ = decode_record(*topic, &value, &registry, &limits);
    });
}

#[path = "support.rs"]
mod gpuledger_fuzz_support;
