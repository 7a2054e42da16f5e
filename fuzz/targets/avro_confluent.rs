//! Avro in the Confluent wire format: magic byte, a schema id the registry
//! knows (chosen by the first byte; sometimes one it does not), any body.

use gpuledger::events::{avro::SchemaRegistry, decode_record, Limits, Topic};

fn main() {
    let registry = SchemaRegistry::builtin();
    let limits = Limits::default();
    afl::fuzz!(|data: &[u8]| {
        let Some((&selector, body)) = data.split_first() else { return };
        let topic = Topic::ALL[usize::from(selector >> 4) % 3];
        // Ids 1..=8 are the built-in input schemas; 0 and 9..15 are unknown.
        let id = u32::from(selector & 0x0f);
        let mut value = vec![0u8];
        value.extend_from_slice(&id.to_be_bytes());
        value.extend_from_slice(body);
        let _ = decode_record(topic, &value, &registry, &limits);
    });
}
