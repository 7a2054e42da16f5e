//! Column families and their typed keys and values.
//!
//! Every key starts with the task's partition (4 bytes, big-endian), so one
//! partition's state is one contiguous range per column family and can be
//! loaded, moved or wiped on its own. Variable-length parts are prefixed with
//! their 4-byte big-endian length, so no key is a prefix of another's part.
//! Instants in keys are big-endian with the sign bit flipped, so byte order
//! is time order.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `meta` | `task` + partition | [`TaskMeta`] (JSON) |
//! | `meta` | `layout` | [`Layout`] (JSON) |
//! | `meta` | `rstr` + partition | present while a checkpoint is installed (empty) |
//! | `meta` | `ckpt` + partition + records folded (8) | [`Checkpoint`](crate::fold::state::Checkpoint) (JSON) |
//! | `startups` | partition, startup | start-up record without grants, deals, dedup (JSON) |
//! | `grants` | partition, startup, grant id | grant (JSON) |
//! | `deals` | partition, startup, deal id | deal (JSON) |
//! | `dedup` | partition, startup, identity (16 bytes) | time (8), usage flag (1), digest (32) |
//! | `rates` | partition, gpu model, region, tier, effective_from | rate card (JSON) |
//! | `rate_ids` | partition, identity (16 bytes) | digest (32) |
//! | `statements` | partition, startup, period (`YYYY-MM`) | the statement record (JSON, as published) |

use serde::{Deserialize, Serialize};

use crate::events::Tier;
use crate::fold::state::{IdentityKey, Offsets, OutputDigest, Remembered};
use crate::units::Millis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Column {
    Meta,
    Startups,
    Grants,
    Deals,
    Dedup,
    Rates,
    RateIds,
    Statements,
}

impl Column {
    pub const ALL: [Column; 8] = [
        Column::Meta,
        Column::Startups,
        Column::Grants,
        Column::Deals,
        Column::Dedup,
        Column::Rates,
        Column::RateIds,
        Column::Statements,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Column::Meta => "meta",
            Column::Startups => "startups",
            Column::Grants => "grants",
            Column::Deals => "deals",
            Column::Dedup => "dedup",
            Column::Rates => "rates",
            Column::RateIds => "rate_ids",
            Column::Statements => "statements",
        }
    }
}

/// Per-task scalars, written with every commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub tick_clock: Option<Millis>,
    /// Next offsets of rates, deals, metering.
    pub offsets: Offsets,
    pub rates_duplicates_dropped: u64,
    /// Rolling output digest at these offsets (absent in older stores).
    #[serde(default)]
    pub digest: OutputDigest,
    /// Records folded since offset 0 (absent in older stores).
    #[serde(default)]
    pub folded: u64,
}

/// How the state directory's tasks were laid out; a run with another layout
/// would read the wrong state, so it is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub partitions: u32,
}

pub const LAYOUT_KEY: &[u8] = b"layout";

pub fn task_meta_key(partition: u32) -> Vec<u8> {
    let mut key = b"task".to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

pub fn checkpoint_prefix(partition: u32) -> Vec<u8> {
    let mut key = b"ckpt".to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

pub fn checkpoint_key(partition: u32, folded: u64) -> Vec<u8> {
    let mut key = checkpoint_prefix(partition);
    key.extend_from_slice(&folded.to_be_bytes());
    key
}

/// Present while a checkpoint is being installed into task `partition`'s
/// ranges: a task found with it has half a state and is wiped.
pub fn restore_marker_key(partition: u32) -> Vec<u8> {
    let mut key = b"rstr".to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

pub fn partition_prefix(partition: u32) -> Vec<u8> {
    partition.to_be_bytes().to_vec()
}

fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part);
}

pub fn startup_key(partition: u32, startup: &str) -> Vec<u8> {
    let mut key = partition_prefix(partition);
    push_part(&mut key, startup.as_bytes());
    key
}

/// Grants and deals: partition, startup, id.
pub fn child_key(partition: u32, startup: &str, id: &str) -> Vec<u8> {
    let mut key = startup_key(partition, startup);
    push_part(&mut key, id.as_bytes());
    key
}

pub fn dedup_key(partition: u32, startup: &str, identity: &IdentityKey) -> Vec<u8> {
    let mut key = startup_key(partition, startup);
    key.extend_from_slice(identity);
    key
}

/// Splits a startup-scoped key after the partition into (startup, rest).
pub fn split_startup_key(key: &[u8]) -> Option<(String, &[u8])> {
    let rest = key.get(4..)?;
    let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let startup = std::str::from_utf8(rest.get(4..4 + length)?).ok()?.to_owned();
    Some((startup, &rest[4 + length..]))
}

/// Reads a length-prefixed part (a grant or deal id).
pub fn read_part(bytes: &[u8]) -> Option<String> {
    let length = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    Some(std::str::from_utf8(bytes.get(4..4 + length)?).ok()?.to_owned())
}

pub fn ordered_instant(instant: Millis) -> [u8; 8] {
    ((instant as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn instant_from_ordered(bytes: [u8; 8]) -> Millis {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

pub fn tier_byte(tier: Tier) -> u8 {
    tier as u8
}

pub fn tier_from_byte(byte: u8) -> Option<Tier> {
    Tier::ALL.get(usize::from(byte)).copied()
}

pub fn rate_key(partition: u32, gpu_model: &str, region: &str, tier: Tier, effective_from: Millis) -> Vec<u8> {
    let mut key = partition_prefix(partition);
    push_part(&mut key, gpu_model.as_bytes());
    push_part(&mut key, region.as_bytes());
    key.push(tier_byte(tier));
    key.extend_from_slice(&ordered_instant(effective_from));
    key
}

/// Inverse of [`rate_key`]: (gpu_model, region, tier, effective_from).
pub fn parse_rate_key(key: &[u8]) -> Option<(String, String, Tier, Millis)> {
    let rest = key.get(4..)?;
    let gpu_model = read_part(rest)?;
    let rest = &rest[4 + gpu_model.len()..];
    let region = read_part(rest)?;
    let rest = &rest[4 + region.len()..];
    let tier = tier_from_byte(*rest.first()?)?;
    let instant = instant_from_ordered(rest.get(1..9)?.try_into().ok()?);
    Some((gpu_model, region, tier, instant))
}

pub fn rate_identity_key(partition: u32, identity: &IdentityKey) -> Vec<u8> {
    let mut key = partition_prefix(partition);
    key.extend_from_slice(identity);
    key
}

pub fn encode_remembered(remembered: &Remembered) -> Vec<u8> {
    let mut value = Vec::with_capacity(41);
    value.extend_from_slice(&remembered.time.to_be_bytes());
    value.push(u8::from(remembered.usage));
    value.extend_from_slice(&remembered.digest);
    value
}

pub fn decode_remembered(value: &[u8]) -> Option<Remembered> {
    if value.len() != 41 {
        return None;
    }
    Some(Remembered {
        time: i64::from_be_bytes(value[..8].try_into().ok()?),
        usage: value[8] != 0,
        digest: value[9..41].try_into().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_order_bytewise() {
        let instants = [i64::MIN, -1_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in instants.windows(2) {
            assert!(ordered_instant(pair[0]) < ordered_instant(pair[1]));
            assert_eq!(instant_from_ordered(ordered_instant(pair[0])), pair[0]);
        }
    }

    #[test]
    fn keys_round_trip() {
        let key = rate_key(3, "H800", "cn-north", Tier::Spot, -5);
        assert_eq!(parse_rate_key(&key), Some(("H800".into(), "cn-north".into(), Tier::Spot, -5)));
        let key = child_key(7, "acme", "g-1");
        let (startup, rest) = split_startup_key(&key).unwrap();
        assert_eq!((startup.as_str(), read_part(rest).as_deref()), ("acme", Some("g-1")));
        // One start-up's keys never fall inside another's range.
        assert!(!startup_key(0, "ab").starts_with(&startup_key(0, "a")));
    }
}
