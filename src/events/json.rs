//! CloudEvents 1.0 JSON, structured mode: bytes to a JSON value.

use super::{reject, Reason, Rejection};

/// Parses a record's bytes as one JSON document. Invalid UTF-8 or JSON is
/// `undecodable`; whether the document is a CloudEvent is judged later.
pub fn parse(value: &[u8]) -> Result<serde_json::Value, Rejection> {
    match serde_json::from_slice(value) {
        Ok(parsed) => Ok(parsed),
        Err(error) => reject(Reason::Undecodable, format!("not a JSON document: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_json_is_undecodable() {
        for bad in [&b"{\"specversion\": "[..], b"\xff\xfe", b"", b"{} {}"] {
            assert_eq!(parse(bad).unwrap_err().reason, Reason::Undecodable);
        }
        assert!(parse(b"[1, 2]").is_ok(), "not an object is judged later, as schema_violation");
    }
}
