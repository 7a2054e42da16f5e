//! The canonical digest (duplicate detection, spec §5) of any JSON value:
//! never a panic, and equal for a value and its re-serialised form (the
//! digest depends on the parsed value, not on its spelling).

use gpuledger::events::canonical::{digest, exact_decimal};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
        let first = digest(&value);
        let respelled: serde_json::Value =
            serde_json::from_str(&value.to_string()).expect("serde_json reads its own output");
        assert_eq!(first, digest(&respelled));
        walk(&value);
    });
}

/// Every number's exact decimal is a fixed point: written back as
/// `0.DIGITS e EXPONENT`, it reduces to itself.
fn walk(value: &serde_json::Value) {
    match value {
        serde_json::Value::Number(number) => {
            let exact = exact_decimal(number.as_str());
            if exact != "0" {
                let (mantissa, exponent) = exact.split_once('e').expect("mantissa e exponent");
                let (sign, digits) = mantissa.strip_prefix('-').map_or(("", mantissa), |digits| ("-", digits));
                assert_eq!(exact_decimal(&format!("{sign}0.{digits}e{exponent}")), exact, "{}", number.as_str());
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(walk),
        serde_json::Value::Object(members) => members.values().for_each(walk),
        _ => {}
    }
}
