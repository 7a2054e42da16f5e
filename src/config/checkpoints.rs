//! `[checkpoints]`: where tasks' state checkpoints go, how often, and how
//! many are kept.

use std::collections::BTreeMap;

use super::{parse_duration, RawCheckpoints};
use crate::units::{Millis, MINUTE_MS, SECOND_MS};

/// The validated `[checkpoints]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// `file:///absolute/path` or `s3://bucket[/prefix]`; off when `None`.
    pub store: Option<String>,
    /// A task is checkpointed when this much time has passed since its
    /// last checkpoint …
    pub interval: Millis,
    /// … or this many records were folded since (0: time only).
    pub interval_records: u64,
    /// Complete checkpoints kept per task (at least 1).
    pub keep: usize,
    /// Object store options (`endpoint`, `region`, `allow_http`,
    /// `access_key_id`, …), on top of the `AWS_*` environment.
    pub options: BTreeMap<String, String>,
}

impl Default for CheckpointConfig {
    fn default() -> CheckpointConfig {
        CheckpointConfig {
            store: None,
            interval: 5 * MINUTE_MS,
            interval_records: 1_000_000,
            keep: 3,
            options: BTreeMap::new(),
        }
    }
}

pub(super) fn validate(raw: &RawCheckpoints, problems: &mut Vec<String>) -> CheckpointConfig {
    let defaults = CheckpointConfig::default();
    let store = raw.store.as_deref().map(str::trim).filter(|url| !url.is_empty()).map(|url| {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                problems.push(format!(
                    "checkpoints.store: a file URL needs an absolute path (file:///var/lib/…), not {url:?}"
                ));
            }
        } else if let Some(rest) = url.strip_prefix("s3://") {
            if rest.split('/').next().unwrap_or_default().is_empty() {
                problems.push(format!("checkpoints.store: an s3 URL names a bucket (s3://bucket/prefix), not {url:?}"));
            }
        } else {
            problems.push(format!("checkpoints.store must be a file:/// or s3:// URL, not {url:?}"));
        }
        url.trim_end_matches('/').to_owned()
    });
    let interval = match raw.interval.as_deref().map(parse_duration) {
        None => defaults.interval,
        Some(Ok(millis)) if millis >= SECOND_MS => millis,
        Some(Ok(_)) => {
            problems.push("checkpoints.interval must be at least 1s".to_owned());
            defaults.interval
        }
        Some(Err(error)) => {
            problems.push(format!("checkpoints.interval: {error}"));
            defaults.interval
        }
    };
    let keep = match raw.keep {
        None => defaults.keep,
        Some(0) => {
            problems.push("checkpoints.keep must be at least 1".to_owned());
            defaults.keep
        }
        Some(keep) => keep as usize,
    };
    for (option, value) in &raw.options {
        if super::is_secret(option) {
            super::remember_secret(value);
        }
    }
    CheckpointConfig {
        store,
        interval,
        interval_records: raw.interval_records.unwrap_or(defaults.interval_records),
        keep,
        options: raw.options.clone(),
    }
}
