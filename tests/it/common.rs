//! Shared helpers: workloads, runs, and reading output directories.

use std::path::{Path, PathBuf};

use gpuledger::batch::{BatchOptions, BatchSummary};
use gpuledger::fold::FoldConfig;

pub fn philly_trace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/philly/philly-sample.csv")
}

/// A small workload from the first `jobs` jobs of the Philly trace.
pub fn workload(dir: &Path, jobs: usize, slice_ms: i64) -> PathBuf {
    let out = dir.join("workload");
    gpuledger::workload::generate(&gpuledger::workload::GenOptions {
        trace: philly_trace(),
        out: out.clone(),
        seed: 7,
        jobs: Some(jobs),
        slice: slice_ms,
    })
    .expect("generating a workload");
    out
}

pub fn options(inputs: &Path, out: &Path) -> BatchOptions {
    BatchOptions {
        rates: inputs.join("rates.jsonl"),
        deals: inputs.join("deals.jsonl"),
        metering: inputs.join("metering.jsonl"),
        out: out.to_owned(),
        state_dir: None,
        partitions: 1,
        fold: FoldConfig::default(),
        commit_every: 1_000,
        until: None,
        inject_crash: None,
    }
}

pub fn fold(options: &BatchOptions) -> BatchSummary {
    gpuledger::batch::run(options).expect("batch run")
}

pub const STREAMS: [&str; 5] = ["usage-rated", "journal", "statements", "alerts", "dead-letter"];

pub fn lines(dir: &Path, stream: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(format!("{stream}.jsonl"))).expect("reading an output file");
    text.lines().map(str::to_owned).collect()
}

pub fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}
