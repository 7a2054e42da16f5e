//! Input events: the records of the deals, rates and metering topics, decoded
//! into one typed [`Event`] whatever their wire format (spec §3).
//!
//! # Layout
//! - [`json`]: CloudEvents 1.0 structured-mode JSON;
//! - [`avro`]: Avro binary, single-object encoding and Confluent wire format;
//! - [`canonical`]: the canonical digest that decides whether a repeat is
//!   equal to its original (spec §5);
//! - [`decode`]: the checks, in the spec's order, from a parsed CloudEvent
//!   to an [`Event`] or a [`Rejection`] with its reason code.
//!
//! Both wire formats are first turned into the same JSON-shaped value, so the
//! checks, the reason codes and the duplicate digest are the same for both.

pub mod avro;
pub mod canonical;
pub mod compat;
pub mod decode;
pub mod fingerprint;
pub mod json;

use crate::units::Millis;

/// The three logical inputs of a task, in the merge's tie order (spec §4:
/// rates, then deals, then metering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    Rates,
    Deals,
    Metering,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Rates, Topic::Deals, Topic::Metering];

    pub fn name(self) -> &'static str {
        match self {
            Topic::Rates => "rates",
            Topic::Deals => "deals",
            Topic::Metering => "metering",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A record as read from a log: where it came from and its raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRecord {
    pub topic: Topic,
    pub partition: u32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Why a record was refused (spec §5). The string forms are the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Undecodable,
    SchemaViolation,
    UnknownType,
    InvalidField,
    TooOld,
    ConflictingDuplicate,
    NoRate,
    UnknownDeal,
    UnknownGrant,
    DuplicateGrant,
    CurrencyMismatch,
    OverCommitment,
    InvalidTransition,
    /// The processor failed deciding the record (a defect, not a rule):
    /// the state is as if the record had not been taken (spec §5, v1.1).
    InternalError,
}

impl Reason {
    /// Every reason: those of inputs, then `internal_error`.
    pub const ALL: [Reason; 14] = {
        let mut all = [Reason::InternalError; 14];
        let mut index = 0;
        while index < Reason::OF_INPUT.len() {
            all[index] = Reason::OF_INPUT[index];
            index += 1;
        }
        all
    };

    /// The reasons an input itself can earn (all but `internal_error`).
    pub const OF_INPUT: [Reason; 13] = [
        Reason::Undecodable,
        Reason::SchemaViolation,
        Reason::UnknownType,
        Reason::InvalidField,
        Reason::TooOld,
        Reason::ConflictingDuplicate,
        Reason::NoRate,
        Reason::UnknownDeal,
        Reason::UnknownGrant,
        Reason::DuplicateGrant,
        Reason::CurrencyMismatch,
        Reason::OverCommitment,
        Reason::InvalidTransition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::SchemaViolation => "schema_violation",
            Reason::UnknownType => "unknown_type",
            Reason::InvalidField => "invalid_field",
            Reason::TooOld => "too_old",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
            Reason::NoRate => "no_rate",
            Reason::UnknownDeal => "unknown_deal",
            Reason::UnknownGrant => "unknown_grant",
            Reason::DuplicateGrant => "duplicate_grant",
            Reason::CurrencyMismatch => "currency_mismatch",
            Reason::OverCommitment => "over_commitment",
            Reason::InvalidTransition => "invalid_transition",
            Reason::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A refused record: its reason code and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection { reason, detail: detail.into() }
    }
}

/// Shorthand for the fold and the decoders.
pub fn reject<T>(reason: Reason, detail: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection::new(reason, detail))
}

/// SHA-256 digest of an event's canonical form (see [`canonical`]).
pub type Digest = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consideration {
    Equity,
    Cash,
    Promotional,
}

impl Consideration {
    pub fn as_str(self) -> &'static str {
        match self {
            Consideration::Equity => "equity",
            Consideration::Cash => "cash",
            Consideration::Promotional => "promotional",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    OnDemand,
    Reserved,
    Spot,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::OnDemand, Tier::Reserved, Tier::Spot];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::OnDemand => "on_demand",
            Tier::Reserved => "reserved",
            Tier::Spot => "spot",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|tier| tier.as_str() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DealSigned {
    pub deal_id: String,
    pub investor: String,
    pub cash_amount: i64,
    pub credit_face_amount: i64,
    pub currency: String,
    pub equity_fair_value: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditGranted {
    pub grant_id: String,
    pub deal_id: Option<String>,
    pub face_amount: i64,
    pub currency: String,
    pub effective_at: Millis,
    pub expires_at: Option<Millis>,
    pub priority: u8,
    pub consideration: Consideration,
    pub transaction_price: Option<i64>,
    pub escrow: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatePublished {
    pub gpu_model: String,
    pub region: String,
    pub tier: Tier,
    pub currency: String,
    pub price_per_gpu_hour: i64,
    pub effective_from: Millis,
    pub min_billable_seconds: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuUsage {
    pub cluster_id: String,
    pub region: String,
    pub gpu_model: String,
    pub tier: Tier,
    pub gpu_count: i64,
    pub started_at: Millis,
    pub ended_at: Millis,
    pub job_id: Option<String>,
}

/// The facts the ledger folds, one variant per CloudEvents `type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    DealSigned(DealSigned),
    CreditGranted(CreditGranted),
    GrantExtended { grant_id: String, expires_at: Millis },
    GrantRevoked { grant_id: String },
    DealCancelled { deal_id: String },
    RatePublished(RatePublished),
    GpuUsage(GpuUsage),
    ClockTick,
}

impl Payload {
    pub fn type_name(&self) -> &'static str {
        match self {
            Payload::DealSigned(_) => "gpuledger.deal.signed",
            Payload::CreditGranted(_) => "gpuledger.credit.granted",
            Payload::GrantExtended { .. } => "gpuledger.grant.extended",
            Payload::GrantRevoked { .. } => "gpuledger.grant.revoked",
            Payload::DealCancelled { .. } => "gpuledger.deal.cancelled",
            Payload::RatePublished(_) => "gpuledger.rate.published",
            Payload::GpuUsage(_) => "gpuledger.gpu.usage",
            Payload::ClockTick => "gpuledger.clock.tick",
        }
    }
}

/// A decoded, schema-valid event with its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub source: String,
    /// The start-up id; `None` for rates and ticks (ignored there).
    pub subject: Option<String>,
    pub time: Millis,
    /// Canonical digest of the whole event, for duplicate detection.
    pub digest: Digest,
    pub payload: Payload,
}

impl Event {
    /// Every time the event carries, by field name: `time` first, then
    /// those of its data (no allocation: it is checked for every event).
    pub fn times(&self) -> [Option<(&'static str, Millis)>; 3] {
        let time = Some(("time", self.time));
        match &self.payload {
            Payload::CreditGranted(grant) => [
                time,
                Some(("data.effective_at", grant.effective_at)),
                grant.expires_at.map(|expires_at| ("data.expires_at", expires_at)),
            ],
            Payload::GrantExtended { expires_at, .. } => [time, Some(("data.expires_at", *expires_at)), None],
            Payload::RatePublished(rate) => [time, Some(("data.effective_from", rate.effective_from)), None],
            Payload::GpuUsage(usage) => {
                [time, Some(("data.started_at", usage.started_at)), Some(("data.ended_at", usage.ended_at))]
            }
            Payload::DealSigned(_) | Payload::GrantRevoked { .. } | Payload::DealCancelled { .. } => [time, None, None],
            Payload::ClockTick => [time, None, None],
        }
    }

    /// The start-up of a deal or usage event (empty for rates and ticks).
    pub fn startup(&self) -> &str {
        self.subject.as_deref().unwrap_or("")
    }
}

/// What the merge needs of a record before the fold judges it: its event
/// time if one can be read, and the decoded event or why it was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub time: Option<Millis>,
    pub event: Result<Event, Rejection>,
}

/// Bounds on what the decoder reads (config `[limits]`): a record beyond
/// them is refused before it can cost memory or time downstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A larger record is `undecodable` (not parsed at all).
    pub max_record_bytes: usize,
    /// Deeper JSON (objects and arrays in each other) is `undecodable`.
    pub max_json_depth: usize,
    /// An event with a longer string (key or value) is `invalid_field`.
    pub max_string_bytes: usize,
    /// A dead letter keeps at most this many bytes of the original value
    /// (then also its full length and SHA-256), so it always fits.
    pub dead_letter_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 1 << 20,
            max_json_depth: 64,
            max_string_bytes: 64 << 10,
            dead_letter_value_bytes: 64 << 10,
        }
    }
}

/// Decodes a record's value, sniffing the wire format: Avro single-object
/// encoding starts with `C3 01`, the Confluent wire format with a zero byte,
/// anything else is taken as JSON.
pub fn decode_record(topic: Topic, value: &[u8], registry: &avro::SchemaRegistry, limits: &Limits) -> Decoded {
    if let Some(refused) = oversize(value, limits) {
        return refused;
    }
    let parsed = if avro::is_avro(value) { registry.to_cloudevent(value) } else { json::parse(value) };
    decode_parsed(topic, parsed, limits)
}

/// The size check of [`decode_record`], for callers that parse themselves.
pub fn oversize(value: &[u8], limits: &Limits) -> Option<Decoded> {
    (value.len() > limits.max_record_bytes).then(|| Decoded {
        time: None,
        event: reject(
            Reason::Undecodable,
            format!("record of {} bytes exceeds limits.max_record_bytes ({})", value.len(), limits.max_record_bytes),
        ),
    })
}

/// From a parsed record to a [`Decoded`], with the depth and string limits:
/// depth before any other check (`undecodable`), string length after all
/// stateless checks passed (`invalid_field`, a field validity check).
pub fn decode_parsed(topic: Topic, parsed: Result<serde_json::Value, Rejection>, limits: &Limits) -> Decoded {
    let cloudevent = match parsed {
        Ok(cloudevent) => cloudevent,
        Err(rejection) => return Decoded { time: None, event: Err(rejection) },
    };
    let mut longest = 0;
    if depth_and_longest(&cloudevent, &mut longest) > limits.max_json_depth {
        return Decoded {
            time: None,
            event: reject(
                Reason::Undecodable,
                format!("JSON nested deeper than limits.max_json_depth ({})", limits.max_json_depth),
            ),
        };
    }
    let mut decoded = decode::decode_value(topic, &cloudevent);
    if decoded.event.is_ok() && longest > limits.max_string_bytes {
        decoded.event = reject(
            Reason::InvalidField,
            format!("a string of {longest} bytes exceeds limits.max_string_bytes ({})", limits.max_string_bytes),
        );
    }
    decoded
}

/// The nesting depth of a value (a scalar is 0) and, in `longest`, the
/// longest string in it, keys included.
fn depth_and_longest(value: &serde_json::Value, longest: &mut usize) -> usize {
    use serde_json::Value;
    match value {
        Value::String(text) => {
            *longest = (*longest).max(text.len());
            0
        }
        Value::Array(items) => 1 + items.iter().map(|item| depth_and_longest(item, longest)).max().unwrap_or(0),
        Value::Object(members) => {
            1 + members
                .iter()
                .map(|(key, member)| {
                    *longest = (*longest).max(key.len());
                    depth_and_longest(member, longest)
                })
                .max()
                .unwrap_or(0)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}
