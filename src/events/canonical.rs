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
    // value = 0.significant × 10^(integer_len - leading_zeros + exponent).
    // The shift is bounded by the text's length; the exponent is not (JSON
    // puts no limit on its digits), so it is added exactly, as decimal text.
    let shift = integer_part.len() as i128 - leading_zeros as i128;
    let point = add_to_decimal(exponent_text, shift);
    format!("{}{significant}e{point}", if negative { "-" } else { "" })
}

/// `exponent + shift` as canonical decimal text (no `+`, no leading zeros,
/// `0` for zero), exact for an exponent of any length.
fn add_to_decimal(exponent: &str, shift: i128) -> String {
    let (negative, digits) = match exponent.as_bytes().first() {
        Some(b'-') => (true, &exponent[1..]),
        Some(b'+') => (false, &exponent[1..]),
        _ => (false, exponent),
    };
    let digits = digits.trim_start_matches('0');
    // Up to 30 digits the sum fits i128 with room to spare (|shift| is at
    // most the length of the number's text).
    if digits.len() <= 30 {
        let magnitude: i128 = if digits.is_empty() { 0 } else { digits.parse().unwrap_or(0) };
        let value = if negative { -magnitude } else { magnitude };
        return (value + shift).to_string();
    }
    // Longer: |exponent| >= 10^30 > |shift|, so the sign is the exponent's
    // and the magnitude moves by |shift| towards or away from zero.
    let towards_zero = negative == (shift > 0);
    let mut magnitude: Vec<u8> = digits.bytes().map(|digit| digit - b'0').collect();
    let mut carry = shift.unsigned_abs();
    for digit in magnitude.iter_mut().rev() {
        if carry == 0 {
            break;
        }
        let step = (carry % 10) as u8;
        carry /= 10;
        if towards_zero {
            if *digit >= step {
                *digit -= step;
            } else {
                *digit = *digit + 10 - step;
                carry += 1;
            }
        } else {
            let sum = *digit + step;
            *digit = sum % 10;
            carry += u128::from(sum / 10);
        }
    }
    let mut text = String::with_capacity(magnitude.len() + 2);
    if negative {
        text.push('-');
    }
    let body: String = magnitude.iter().map(|digit| char::from(b'0' + digit)).collect();
    if carry > 0 {
        text.push_str(&carry.to_string());
        text.push_str(&body);
    } else {
        text.push_str(body.trim_start_matches('0'));
    }
    text
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

    #[test]
    fn exponents_of_any_length_compare_exactly() {
        // Near i128::MAX: no overflow, and exact.
        let huge = "1e170141183460469231731687303715884105727";
        assert_eq!(exact_decimal(huge), "1e170141183460469231731687303715884105728");
        assert_eq!(
            exact_decimal("-0.01e-170141183460469231731687303715884105729"),
            "-1e-170141183460469231731687303715884105730"
        );
        // Too long for i128: still exact, never read as 0.
        let long = format!("1e{}", "9".repeat(42));
        assert_ne!(exact_decimal(&long), exact_decimal("1"));
        assert_eq!(exact_decimal(&long), format!("1e1{}", "0".repeat(42)));
        assert_eq!(exact_decimal(&format!("10e{}", "9".repeat(42))), format!("1e1{}1", "0".repeat(41)));
        assert_eq!(exact_decimal(&format!("100e-1{}", "0".repeat(40))), format!("1e-{}7", "9".repeat(39)));
        assert_eq!(exact_decimal(&format!("1e+000{}", "5".repeat(35))), format!("1e{}6", "5".repeat(34)));
        // A digest of an event carrying one does not panic, and differs.
        let value = parse(&format!(r#"{{"ext":{huge},"data":{{"x":1e{}}}}}"#, "7".repeat(60)));
        assert_ne!(digest(&value), digest(&parse(r#"{"ext":1,"data":{"x":1}}"#)));
    }
}
