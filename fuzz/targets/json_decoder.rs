//! Any bytes as a record of any input topic: the JSON path of the decoder
//! (parse, limits, CloudEvent checks) must answer, never panic.

use gpuledger::events::{avro::SchemaRegistry, decode_record, Limits, Topic};

fn main() {
    let registry = SchemaRegistry::builtin();
    let limits = Limits::default();
    afl::fuzz!(|data: &[u8]| {
        let Some((&selector, value)) = data.split_first() else { return };
        let topic = Topic::ALL[usize::from(selector) % 3];
        // Force the JSON path: Avro's magic bytes have targets of their own.
        if value.first().is_some_and(|byte| *byte == 0 || *byte == 0xc3) {
            return;
        }
        let decoded = decode_record(topic, value, &registry, &limits);
        if let Ok(event) = &decoded.event {
            assert_eq!(decoded.time, Some(event.time), "an accepted event orders by its own time");
        }
    });
}
