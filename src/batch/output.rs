//! Batch outputs: the five JSONL files (with the lengths a state commit
//! records, so a resumed run cuts what the state does not cover), the lock
//! on the output directory, and `balances.json` with its tables.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::records::{Balances, Output, Stream};

pub(crate) struct OutputFiles {
    paths: Vec<PathBuf>,
    writers: Vec<BufWriter<File>>,
    counts: [u64; 5],
    /// Bytes written to each file, from its start.
    pub(super) lengths: [u64; 5],
}

/// The output file lengths a batch commit records with the state it writes
/// (meta column, [`BATCH_OUTPUTS_KEY`]): a resume cuts the files to them,
/// so outputs of records the state does not cover are not kept twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct RecordedOutputs {
    /// The output directory, resolved.
    pub(super) out: PathBuf,
    /// Byte length of each output file, in [`Stream::ALL`] order.
    pub(super) lengths: [u64; 5],
}

pub(super) const BATCH_OUTPUTS_KEY: &[u8] = b"batch_outputs";

impl OutputFiles {
    pub(crate) fn create(dir: &Path) -> crate::Result<OutputFiles> {
        Self::open(dir, None)
    }

    /// Opens the five output files: new and empty, or (`resume`) cut to the
    /// recorded lengths and appended to.
    pub(super) fn open(dir: &Path, resume: Option<&[u64; 5]>) -> crate::Result<OutputFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
        let mut files = OutputFiles { paths: Vec::new(), writers: Vec::new(), counts: [0; 5], lengths: [0; 5] };
        for (index, stream) in Stream::ALL.into_iter().enumerate() {
            let path = dir.join(format!("{}.jsonl", stream.name()));
            let file = match resume {
                None => File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                Some(lengths) => {
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    let actual = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
                    anyhow::ensure!(
                        actual >= lengths[index],
                        "{} holds {actual} bytes but the state directory's last commit covers {}: these are not \
                         the outputs of this state (give the --out of the run that wrote it, or a fresh --state-dir)",
                        path.display(),
                        lengths[index]
                    );
                    // Outputs written after the last state commit are
                    // written again by this run: cut them off.
                    file.set_len(lengths[index]).with_context(|| format!("truncating {}", path.display()))?;
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
                        .with_context(|| format!("seeking {}", path.display()))?;
                    files.lengths[index] = lengths[index];
                    file
                }
            };
            files.writers.push(BufWriter::with_capacity(1 << 20, file));
            files.paths.push(path);
        }
        Ok(files)
    }

    /// Writes outputs with their JSON bytes (as [`Task::fold_encoded`] gives them).
    pub(crate) fn write(&mut self, outputs: &mut Vec<Output>, encoded: &mut Vec<Vec<u8>>) -> crate::Result<()> {
        debug_assert_eq!(outputs.len(), encoded.len());
        for (output, bytes) in outputs.drain(..).zip(encoded.drain(..)) {
            let stream = output.stream() as usize;
            let writer = &mut self.writers[stream];
            let written = writer.write_all(&bytes).and_then(|()| writer.write_all(b"\n"));
            written.with_context(|| format!("writing {}", self.paths[stream].display()))?;
            self.counts[stream] += 1;
            self.lengths[stream] += bytes.len() as u64 + 1;
        }
        Ok(())
    }

    /// Flushes and fsyncs every file, so what the lengths say is on disk
    /// before a state commit records them.
    pub(super) fn sync(&mut self) -> crate::Result<()> {
        for (writer, path) in self.writers.iter_mut().zip(&self.paths) {
            writer.flush().with_context(|| format!("writing {}", path.display()))?;
            writer.get_ref().sync_data().with_context(|| format!("syncing {}", path.display()))?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> crate::Result<[u64; 5]> {
        for (writer, path) in self.writers.iter_mut().zip(&self.paths) {
            writer.flush().with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(self.counts)
    }
}

/// An exclusive lock on an output directory for the length of a run, so two
/// runs cannot interleave their records in one set of files.
pub(super) struct OutLock {
    _file: File,
}

impl OutLock {
    pub(super) fn take(dir: &Path) -> crate::Result<OutLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
        let path = dir.join(".gpuledger.lock");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(OutLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                anyhow::bail!("{} is in use by another gpuledger run (lock file {})", dir.display(), path.display())
            }
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// `balances.json`: a JSON array, one start-up per line, sorted by start-up.
pub fn write_balances(path: &Path, balances: &[Balances]) -> crate::Result<()> {
    // Written aside and renamed: a crash leaves the old file or the new one.
    let partial = path.with_extension("json.partial");
    let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut writer = BufWriter::new(file);
    let mut write = || -> std::io::Result<()> {
        writer.write_all(b"[")?;
        for (index, balance) in balances.iter().enumerate() {
            writer.write_all(if index == 0 { b"\n" } else { b",\n" })?;
            serde_json::to_writer(&mut writer, balance)?;
        }
        writer.write_all(b"\n]\n")?;
        writer.flush()?;
        writer.get_ref().sync_data()
    };
    write().with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
}

pub fn read_balances(path: &Path) -> crate::Result<Vec<Balances>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// A per-start-up table of the headline figures, in whole currency units.
pub fn balance_table(balances: &[Balances]) -> String {
    use std::fmt::Write as _;
    let money = |micros: i64| {
        let units = micros / 1_000_000;
        let text = units.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (index, digit) in text.chars().enumerate() {
            if index > 0 && (text.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if micros < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<20} {:>4} {:>14} {:>14} {:>14} {:>12} {:>14} {:>14}",
        "startup", "cur", "granted", "consumed", "remaining", "overage", "revenue", "liability"
    );
    for balance in balances {
        for currency in &balance.currencies {
            let revenue = currency.revenue_compute + currency.revenue_overage + currency.revenue_breakage;
            let _ = writeln!(
                table,
                "{:<20} {:>4} {:>14} {:>14} {:>14} {:>12} {:>14} {:>14}",
                balance.startup,
                currency.currency,
                money(currency.granted_face),
                money(currency.consumed_face),
                money(currency.remaining_face),
                money(currency.overage),
                money(revenue),
                money(currency.contract_liability)
            );
        }
    }
    table
}

/// One start-up's figures (spec §10) as a readable table, amounts in micros.
pub fn balance_detail(balance: &Balances) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let clock = balance.clock.map(|clock| crate::units::format_millis(clock.0)).unwrap_or_default();
    let _ = writeln!(
        text,
        "{}  (task {}, clock {clock}, duplicates dropped {})",
        balance.startup, balance.task, balance.duplicates_dropped
    );
    for currency in &balance.currencies {
        let _ = writeln!(text, "\n{} (micros)", currency.currency);
        for (name, value) in [
            ("granted_face", currency.granted_face),
            ("consumed_face", currency.consumed_face),
            ("expired_face", currency.expired_face),
            ("revoked_face", currency.revoked_face),
            ("remaining_face", currency.remaining_face),
            ("usage_cost", currency.usage_cost),
            ("usage_count", currency.usage_count),
            ("overage", currency.overage),
            ("revenue_compute", currency.revenue_compute),
            ("revenue_overage", currency.revenue_overage),
            ("revenue_breakage", currency.revenue_breakage),
            ("revocation_reversal", currency.revocation_reversal),
            ("contract_liability", currency.contract_liability),
            ("escrow_remaining_face", currency.escrow_remaining_face),
            ("rpo", currency.rpo),
        ] {
            let _ = writeln!(text, "  {name:<22} {value:>20}");
        }
        let _ =
            writeln!(text, "  {:<24} {:<9} {:>16} {:>16} {:>16}", "grant", "state", "face", "consumed", "remaining");
        for grant in &currency.grants {
            let _ = writeln!(
                text,
                "  {:<24} {:<9} {:>16} {:>16} {:>16}",
                grant.grant_id, grant.state, grant.face, grant.consumed_face, grant.remaining_face
            );
        }
    }
    text
}
