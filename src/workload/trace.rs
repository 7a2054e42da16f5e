//! The Philly trace as jobs, and the generator's seeded random numbers.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context as _};

use crate::units::{parse_rfc3339, Millis};

/// SplitMix64: small, fast, and the same on every platform.
pub(super) struct Random(pub(super) u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..bound.
    pub(super) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// True with probability parts / 1,000,000.
    pub(super) fn chance(&mut self, parts_per_million: u64) -> bool {
        self.below(1_000_000) < parts_per_million
    }
}

/// One job of the trace: its tenant, when it ran (shifted) and on how many GPUs.
pub(super) struct Job {
    pub(super) tenant: String,
    pub(super) start: Millis,
    pub(super) end: Millis,
    pub(super) gpus: i64,
}

/// "66.0" seconds → 66000 ms, exactly (no floats).
fn seconds_to_ms(text: &str) -> Option<Millis> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole: i64 = whole.parse().ok()?;
    let mut millis = 0i64;
    for position in 0..3 {
        let digit = fraction
            .as_bytes()
            .get(position)
            .map_or(Some(0), |byte| byte.is_ascii_digit().then(|| i64::from(byte - b'0')))?;
        millis = millis * 10 + digit;
    }
    Some(whole * 1000 + millis)
}

/// Reads the trace's jobs (at most `limit`), shifted by `shift`.
pub(super) fn read_trace(path: &Path, limit: Option<usize>, shift: Millis) -> crate::Result<Vec<Job>> {
    let file = File::open(path).with_context(|| format!("opening trace {}", path.display()))?;
    let mut jobs = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if index == 0 {
            if !line.starts_with("timestamp,duration,num_gpus") {
                bail!("{}: not a Philly trace (header {line:?})", path.display());
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|limit| jobs.len() >= limit) {
            break;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let bad = || anyhow::anyhow!("{}:{}: malformed row {line:?}", path.display(), index + 1);
        if fields.len() != 5 {
            return Err(bad());
        }
        let start = parse_rfc3339(&format!("{}Z", fields[0].replacen(' ', "T", 1))).ok_or_else(bad)?;
        let duration = seconds_to_ms(fields[1]).ok_or_else(bad)?.max(1000);
        let gpus: i64 = fields[2].parse().map_err(|_| bad())?;
        jobs.push(Job {
            tenant: fields[4].to_owned(),
            start: start + shift,
            end: start + shift + duration,
            gpus: gpus.max(1),
        });
    }
    Ok(jobs)
}
