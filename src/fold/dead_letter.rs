//! The dead letter of a refused record (spec §5), its size bounded.

use crate::events::{InputRecord, Rejection};
use crate::records::{base64, DeadLetter, Header};

/// Raw bytes of the key and of all header values a dead letter keeps at
/// most; with the value's prefix this bounds a dead letter's size (JSON
/// escaping at most sextuples a byte) well under 1 MB by default.
const DEAD_LETTER_KEY_BYTES: usize = 1 << 10;
const DEAD_LETTER_HEADER_BYTES: usize = 8 << 10;

/// Bytes kept of a key or value: the text (or base64) of at most `limit`
/// bytes, cut on a character boundary, and, when cut, the full length and
/// lowercase hex SHA-256 of the whole.
struct Kept {
    text: Option<String>,
    base64: Option<String>,
    length: Option<u64>,
    sha256: Option<String>,
}

fn keep(bytes: Option<&[u8]>, limit: usize) -> Kept {
    let Some(bytes) = bytes else { return Kept { text: None, base64: None, length: None, sha256: None } };
    let (kept, cut) = if bytes.len() > limit { (&bytes[..limit], true) } else { (bytes, false) };
    let (text, base64_text) = match std::str::from_utf8(kept) {
        Ok(text) => (Some(text.to_owned()), None),
        // A cut inside a character: keep the text up to it.
        Err(error) if cut && error.error_len().is_none() && std::str::from_utf8(bytes).is_ok() => {
            (Some(String::from_utf8_lossy(&kept[..error.valid_up_to()]).into_owned()), None)
        }
        Err(_) => (None, Some(base64(kept))),
    };
    let (length, sha256) = if cut {
        use sha2::Digest as _;
        (Some(bytes.len() as u64), Some(crate::records::hex(&sha2::Sha256::digest(bytes))))
    } else {
        (None, None)
    };
    Kept { text, base64: base64_text, length, sha256 }
}

/// The dead letter of a refused record (spec §5): original key, value and
/// headers (the value cut to `value_limit` bytes, see [`Kept`]), reason,
/// detail and the record's position.
pub fn dead_letter(record: &InputRecord, rejection: &Rejection, value_limit: usize) -> DeadLetter {
    let key = keep(record.key.as_deref(), DEAD_LETTER_KEY_BYTES);
    let value = keep(Some(&record.value), value_limit);
    let mut header_budget = DEAD_LETTER_HEADER_BYTES;
    let mut headers = Vec::with_capacity(record.headers.len());
    for (name, header_value) in &record.headers {
        let size = name.len() + header_value.as_ref().map_or(0, Vec::len);
        if size > header_budget {
            break;
        }
        header_budget -= size;
        headers.push(Header {
            key: name.clone(),
            value: header_value.as_deref().map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
        });
    }
    let headers_dropped = record.headers.len() - headers.len();
    DeadLetter {
        key: key.text,
        key_base64: key.base64,
        value: value.text,
        value_base64: value.base64,
        headers,
        reason: rejection.reason.as_str().to_owned(),
        detail: rejection.detail.clone(),
        topic: record.topic.name().to_owned(),
        partition: record.partition,
        offset: record.offset,
        key_length: key.length,
        key_sha256: key.sha256,
        value_length: value.length,
        value_sha256: value.sha256,
        headers_dropped: (headers_dropped > 0).then_some(headers_dropped as u64),
    }
}
