//! Output records (spec §10). Field names and order are the contract: JSON
//! writes them in declaration order, Avro in the order of `schemas/`.
//!
//! Every record has a deterministic identity so readers can deduplicate:
//! usage-rated (source, id); journal `entry_id`; statements (startup,
//! period); alerts `alert_id`; dead letters (topic, partition, offset);
//! balances (task, offsets).

pub mod avro;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use crate::units::hex;
use crate::units::{Month, Ts};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateRef {
    /// `gpu_model/region/tier`, the rates topic's key.
    pub key: String,
    pub effective_from: Ts,
    pub price_per_gpu_hour: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draw {
    pub grant_id: String,
    pub face: i64,
    pub revenue: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRated {
    pub source: String,
    pub id: String,
    pub startup: String,
    pub time: Ts,
    pub cluster_id: String,
    pub job_id: Option<String>,
    pub gpu_model: String,
    pub region: String,
    pub tier: String,
    pub gpu_count: i64,
    pub started_at: Ts,
    pub ended_at: Ts,
    pub billable_ms: i64,
    pub gpu_ms: i64,
    pub rate: RateRef,
    pub cost: i64,
    pub currency: String,
    pub draws: Vec<Draw>,
    pub overage: i64,
    pub period: Month,
    pub adjusts_period: Option<Month>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub entry_id: String,
    pub cause: String,
    pub startup: String,
    pub currency: String,
    pub debit: String,
    pub credit: String,
    pub amount: i64,
    pub deal_id: Option<String>,
    pub grant_id: Option<String>,
    pub event_time: Ts,
    pub period: Month,
    pub adjusts_period: Option<Month>,
    pub topic: String,
    pub source: String,
    pub id: String,
}

/// Flows of one currency over one month, or of one earlier month booked as
/// an adjustment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodFigures {
    pub granted_face: i64,
    pub consumed_face: i64,
    pub expired_face: i64,
    pub revoked_face: i64,
    pub usage_cost: i64,
    pub usage_count: i64,
    pub overage: i64,
    pub revenue_compute: i64,
    pub revenue_overage: i64,
    pub revenue_breakage: i64,
    pub revocation_reversal: i64,
    /// Transaction price of the grants made (what entered contract liability).
    pub granted_transaction_price: i64,
}

impl PeriodFigures {
    pub fn add(&mut self, other: &PeriodFigures) {
        self.granted_face += other.granted_face;
        self.consumed_face += other.consumed_face;
        self.expired_face += other.expired_face;
        self.revoked_face += other.revoked_face;
        self.usage_cost += other.usage_cost;
        self.usage_count += other.usage_count;
        self.overage += other.overage;
        self.revenue_compute += other.revenue_compute;
        self.revenue_overage += other.revenue_overage;
        self.revenue_breakage += other.revenue_breakage;
        self.revocation_reversal += other.revocation_reversal;
        self.granted_transaction_price += other.granted_transaction_price;
    }

    /// Change of remaining face these flows make.
    pub fn remaining_face_change(&self) -> i64 {
        self.granted_face - self.consumed_face - self.expired_face - self.revoked_face
    }

    /// Change of contract liability these flows make.
    pub fn contract_liability_change(&self) -> i64 {
        self.granted_transaction_price - self.revenue_compute - self.revenue_breakage - self.revocation_reversal
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub period: Month,
    #[serde(flatten)]
    pub figures: PeriodFigures,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementCurrency {
    pub currency: String,
    pub opening_remaining_face: i64,
    pub closing_remaining_face: i64,
    pub opening_contract_liability: i64,
    pub closing_contract_liability: i64,
    #[serde(flatten)]
    pub figures: PeriodFigures,
    pub adjustments: Vec<Adjustment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub startup: String,
    pub period: Month,
    /// When the month closed: start of the next month plus `close_grace`.
    pub closed_at: Ts,
    pub currencies: Vec<StatementCurrency>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    GrantConsumed,
    FirstOverage,
    GrantExpiring,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::GrantConsumed => "grant_consumed",
            AlertKind::FirstOverage => "first_overage",
            AlertKind::GrantExpiring => "grant_expiring",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub kind: AlertKind,
    pub startup: String,
    pub currency: String,
    pub grant_id: Option<String>,
    /// Percent of the grant's face, for `grant_consumed`.
    pub threshold: Option<u32>,
    /// The expiry warned of, for `grant_expiring`.
    pub expires_at: Option<Ts>,
    /// Event time of the record that raised it, or the due time of a timed alert.
    pub time: Ts,
    pub remaining_face: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original key and value, as text where they are UTF-8; otherwise
    /// `null` here and the bytes in base64 in `*_base64`.
    pub key: Option<String>,
    pub key_base64: Option<String>,
    pub value: Option<String>,
    pub value_base64: Option<String>,
    pub headers: Vec<Header>,
    pub reason: String,
    pub detail: String,
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    /// When the key was cut to its first bytes: its full length and SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// When the value was cut to a prefix (`limits.dead_letter_value_bytes`):
    /// its full length and lowercase hex SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_sha256: Option<String>,
    /// Headers left out once their bytes passed the dead letter's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_dropped: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBalance {
    pub grant_id: String,
    pub deal_id: Option<String>,
    pub state: String,
    pub consideration: String,
    pub escrow: bool,
    pub priority: u8,
    pub effective_at: Ts,
    pub expires_at: Option<Ts>,
    pub face: i64,
    pub transaction_price: i64,
    pub consumed_face: i64,
    pub expired_face: i64,
    pub revoked_face: i64,
    pub remaining_face: i64,
    pub revenue_compute: i64,
    pub revenue_breakage: i64,
    pub revocation_reversal: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyBalance {
    pub currency: String,
    pub granted_face: i64,
    pub consumed_face: i64,
    pub expired_face: i64,
    pub revoked_face: i64,
    pub remaining_face: i64,
    pub usage_cost: i64,
    pub usage_count: i64,
    pub overage: i64,
    pub revenue_compute: i64,
    pub revenue_overage: i64,
    pub revenue_breakage: i64,
    pub revocation_reversal: i64,
    pub contract_liability: i64,
    pub escrow_remaining_face: i64,
    pub rpo: i64,
    pub grants: Vec<GrantBalance>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputOffset {
    pub topic: String,
    pub partition: u32,
    /// The next offset to read (Kafka's convention: exclusive).
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    pub startup: String,
    pub task: u32,
    pub clock: Option<Ts>,
    pub duplicates_dropped: u64,
    pub offsets: Vec<InputOffset>,
    /// The task's output digest at these offsets (hex).
    pub digest: String,
    pub currencies: Vec<CurrencyBalance>,
}

/// A record the fold emits, in the order it emits them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    UsageRated(UsageRated),
    Journal(JournalEntry),
    Statement(Statement),
    Alert(Alert),
    DeadLetter(DeadLetter),
}

/// The output streams, in the order the batch mode names its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    UsageRated,
    Journal,
    Statements,
    Alerts,
    DeadLetter,
}

impl Stream {
    pub const ALL: [Stream; 5] =
        [Stream::UsageRated, Stream::Journal, Stream::Statements, Stream::Alerts, Stream::DeadLetter];

    pub fn name(self) -> &'static str {
        match self {
            Stream::UsageRated => "usage-rated",
            Stream::Journal => "journal",
            Stream::Statements => "statements",
            Stream::Alerts => "alerts",
            Stream::DeadLetter => "dead-letter",
        }
    }
}

impl Output {
    pub fn stream(&self) -> Stream {
        match self {
            Output::UsageRated(_) => Stream::UsageRated,
            Output::Journal(_) => Stream::Journal,
            Output::Statement(_) => Stream::Statements,
            Output::Alert(_) => Stream::Alerts,
            Output::DeadLetter(_) => Stream::DeadLetter,
        }
    }

    /// The Kafka key: the start-up, or the original key for a dead letter.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Output::UsageRated(record) => Some(record.startup.as_bytes()),
            Output::Journal(record) => Some(record.startup.as_bytes()),
            Output::Statement(record) => Some(record.startup.as_bytes()),
            Output::Alert(record) => Some(record.startup.as_bytes()),
            Output::DeadLetter(record) => record.key.as_deref().map(str::as_bytes),
        }
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(512);
        self.write_json(&mut bytes).expect("writing to memory cannot fail");
        bytes
    }

    /// Writes the record as one line of JSON (no trailing newline).
    pub fn write_json<W: std::io::Write>(&self, writer: W) -> std::io::Result<()> {
        let written = match self {
            Output::UsageRated(record) => serde_json::to_writer(writer, record),
            Output::Journal(record) => serde_json::to_writer(writer, record),
            Output::Statement(record) => serde_json::to_writer(writer, record),
            Output::Alert(record) => serde_json::to_writer(writer, record),
            Output::DeadLetter(record) => serde_json::to_writer(writer, record),
        };
        written.map_err(std::io::Error::from)
    }
}

/// Lowercase hex SHA-256 over each part as a 4-byte big-endian length and
/// its UTF-8 bytes (spec §9 `entry_id`, §10 `alert_id`).
pub fn identity_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex(&hasher.finalize())
}

/// Standard base64 with padding, for dead-letter bytes that are not UTF-8.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for position in 0..4 {
            if position <= chunk.len() {
                text.push(ALPHABET[(triple >> (18 - 6 * position) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_hash_is_length_prefixed_sha256() {
        // ("a","bc") and ("ab","c") must differ: lengths are part of the input.
        assert_ne!(identity_hash(&["a", "bc"]), identity_hash(&["ab", "c"]));
        assert_eq!(identity_hash(&[]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(identity_hash(&["a"]).len(), 64);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
