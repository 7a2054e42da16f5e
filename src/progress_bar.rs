//! The progress bar of long ops commands (not the progress *record* of
//! `kafka::progress`): a bar on a terminal, plain `tracing` lines
//! (every 5 s) otherwise, both with events/s, partitions done and an ETA.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar as Bar, ProgressStyle};

const LINE_EVERY: Duration = Duration::from_secs(5);

pub struct ProgressBar {
    what: &'static str,
    bar: Option<Bar>,
    total: Option<u64>,
    done: u64,
    partitions: u32,
    partitions_done: u32,
    started: Instant,
    last_line: Instant,
}

impl ProgressBar {
    /// `total` records over `partitions` partitions, when known.
    pub fn new(what: &'static str, total: Option<u64>, partitions: u32) -> ProgressBar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(total) => Bar::new(total),
                None => Bar::new_spinner(),
            };
            let template = "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {per_sec} eta {eta}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_message(format!("{what} 0/{partitions} partitions"));
            bar
        });
        ProgressBar {
            what,
            bar,
            total,
            done: 0,
            partitions,
            partitions_done: 0,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    pub fn advance(&mut self, records: u64) {
        self.done += records;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        } else if self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            self.line();
        }
    }

    pub fn partition_done(&mut self) {
        self.partitions_done += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} {}/{} partitions", self.what, self.partitions_done, self.partitions));
        }
    }

    pub fn records_per_second(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    fn line(&self) {
        let rate = self.records_per_second();
        let eta = self
            .total
            .filter(|_| rate > 0.0)
            .map(|total| format!("{:.0}s", total.saturating_sub(self.done) as f64 / rate))
            .unwrap_or_else(|| "unknown".to_owned());
        tracing::info!(
            what = self.what,
            records = self.done,
            total = ?self.total,
            records_per_second = rate as u64,
            partitions_done = self.partitions_done,
            partitions = self.partitions,
            eta = %eta,
            "progress"
        );
    }

    pub fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.line(),
        }
    }
}
