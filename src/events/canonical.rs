//! Canonical digest of a parsed event (spec §5: "equal as parsed values:
//! objects key by key, numbers by exact value, strings exactly, null distinct
//! from absent").
//!
//! The digest is SHA-256 over a tagged, length-prefixed walk of the value:
//! object members sorted by key bytes, numbers reduced to their exact decimal
//! value (`1`, `1.0` and `10e-1` are the same number), strings as their UTF-8
//! bytes. Two events are equal exactly when their digests are (up to SHA-256
//! collisions), so only the 32-byte digest is remembered per identity.

use sha2::{Digest as _, Sha256};

use super::Digest;

/// Times of the envelope and data that compare as instants, not as text:
/// `2025-01-01T08:00:00+08:00` and `2025-01-01T00:00:00.000Z` are one value.
const TIME_FIELDS: [&str; 6] = ["time", "effective_at", "expires_at", "effective_from", "started_at", "ended_at"];

/// Digest of a CloudEvent: the canonical walk, with the known time fields
/// (top-level `time`, and those of `data`) fed as parsed instants.
pub fn digest(value: &serde_json::Value) -> Digest {
    // The canonical form is written to a buffer and hashed once: many small
    // hasher updates cost more than the copy.
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.clear();
        feed_event(&mut buffer, value, 0);
        Sha256::digest(buffer.as_slice()).into()
    })
}

fn feed_event(hasher: &mut Vec<u8>, value: &serde_json::Value, depth: u8) {
    let serde_json::Value::Object(members) = value else {
        feed(hasher, value);
        return;
    };
    // serde_json's map is a BTreeMap: members come sorted by key bytes.
    hasher.extend_from_slice(b"{");
    hasher.extend_from_slice(&(members.len() as u64).to_be_bytes());
    for (key, member) in members {
        feed_bytes(hasher, b'k', key.as_bytes());
        let instant = match member {
            serde_json::Value::String(text) if TIME_FIELDS.contains(&key.as_str()) && (depth == 1 || key == "time") => {
                crate::units::parse_rfc3339(text)
            }
            _ => None,
        };
        match instant {
            Some(instant) => feed_bytes(hasher, b'T', &instant.to_be_bytes()),
            None if depth == 0 && key == "data" => feed_event(hasher, member, 1),
            None => feed(hasher, member),
        }
    }
}

fn feed_bytes(hasher: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    hasher.push(tag);
    hasher.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    hasher.extend_from_slice(bytes);
}

fn feed(hasher: &mut Vec<u8>, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Null => hasher.push(b'n'),
        Value::Bool(true) => hasher.push(b't'),
        Value::Bool(false) => hasher.push(b'f'),
        Value::Number(number) => feed_bytes(hasher, b'N', exact_decimal(number.as_str()).as_bytes()),
        Value::String(text) => feed_bytes(hasher, b's', text.as_bytes()),
        Value::Array(items) => {
            hasher.push(b'[');
            hasher.extend_from_slice(&(items.len() as u64).to_be_bytes());
            for item in items {
                feed(hasher, item);
            }
        }
        Value::Object(members) => {
            hasher.push(b'{');
            hasher.extend_from_slice(&(members.len() as u64).to_be_bytes());
            for (key, member) in members {
                feed_bytes(hasher, b'k', key.as_bytes());
                feed(hasher, member);
            }
        }
    }
}

/// Reduces a JSON number's text to a canonical form of its exact value:
/// `[-]DIGITS e EXPONENT` with no leading or trailing zeros in DIGITS, the
/// value being `0.DIGITS × 10^EXPONENT`; zero (of any sign) is `0`.
pub fn exact_decimal(text: &str) -> String {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent_text) = match unsigned.find(['e', 'E']) {
        Some(position) => (&unsigned[..position], &unsigned[position + 1..]),
        None => (unsigned, "0"),
    };
    // JSON exponents are bounded by what serde_json accepts; i128 keeps the
    // arithmetic exact for any exponent text it lets through.
    let exponent: i128 = exponent_text.trim_start_matches('+').parse().unwrap_or(0);
    let (integer_part, fraction_part) = match mantissa.find('.') {
        Some(position) => (&mantissa[..position], &mantissa[position + 1..]),
        None => (mantissa, ""),
    };
    let all_digits: String = format!("{integer_part}{fraction_part}");
    let leading_zeros = all_digits.len() - all_digits.trim_start_matches('0').len();
    let significant = all_digits.trim_start_matches('0').trim_end_matches('0');
    if significant.is_empty() {
        return "0".to_owned();
    }
    // value = 0.significant × 10^(integer_len - leading_zeros + exponent)
    let point = integer_part.len() as i128 - leading_zeros as i128 + exponent;
    format!("{}{significant}e{point}", if negative { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn numbers_compare_by_exact_value() {
        assert_eq!(exact_decimal("1"), exact_decimal("1.0"));
        assert_eq!(exact_decimal("1"), exact_decimal("10e-1"));
        assert_eq!(exact_decimal("120"), exact_decimal("1.2E2"));
        assert_eq!(exact_decimal("0.0"), exact_decimal("-0"));
        assert_ne!(exact_decimal("1"), exact_decimal("-1"));
        assert_ne!(exact_decimal("9007199254740993"), exact_decimal("9007199254740992"));
        assert_eq!(exact_decimal("0.05"), "5e-1");
    }

    #[test]
    fn known_times_compare_as_instants() {
        let plain = parse(
            r#"{"time":"2025-01-01T08:00:00+08:00","data":{"started_at":"2025-01-01T00:00:00Z"},"x":"2025-01-01T00:00:00Z"}"#,
        );
        let spelled = parse(
            r#"{"time":"2025-01-01T00:00:00.000Z","data":{"started_at":"2025-01-01T00:00:00.000Z"},"x":"2025-01-01T00:00:00Z"}"#,
        );
        assert_eq!(digest(&plain), digest(&spelled));
        // An extension attribute is compared as text.
        let other = parse(
            r#"{"time":"2025-01-01T00:00:00.000Z","data":{"started_at":"2025-01-01T00:00:00.000Z"},"x":"2025-01-01T00:00:00.000Z"}"#,
        );
        assert_ne!(digest(&plain), digest(&other));
    }

    #[test]
    fn objects_compare_key_by_key_and_null_differs_from_absent() {
        assert_eq!(digest(&parse(r#"{"a":1,"b":"x"}"#)), digest(&parse(r#"{"b":"x","a":1.00}"#)));
        assert_ne!(digest(&parse(r#"{"a":1,"b":null}"#)), digest(&parse(r#"{"a":1}"#)));
        assert_ne!(digest(&parse(r#"{"a":"1"}"#)), digest(&parse(r#"{"a":1}"#)));
        assert_ne!(digest(&parse(r#"["a","b"]"#)), digest(&parse(r#"["b","a"]"#)));
    }
}
