//! Where replayed outputs go: nowhere, files per task joined in task order,
//! or topics under a prefix; and the sink the driver writes them to.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context as _};
use rdkafka::producer::BaseProducer;

use super::{persist, Sink, COMMIT_EVERY};
use crate::batch::{write_balances, OutputFiles};
use crate::config::Config;
use crate::drive::{Flow, Sink as OutputSink};
use crate::events::InputRecord;
use crate::fold::Task;
use crate::kafka::client::close_in_background;
use crate::kafka::produce::{bulk_producer, flush_checked, send, Deliveries};
use crate::progress_bar::ProgressBar;
use crate::records::{Balances, Output, Stream};
use crate::store::rocks::RocksStore;

/// Where outputs go, shared by the tasks (which run on parallel threads).
pub(super) enum Writer {
    Suppressed,
    /// Each task writes its own files in `dir/.replay-task-<p>`; `finish`
    /// joins them in task order, so the files do not depend on timing.
    Files {
        dir: PathBuf,
        balances: Mutex<Vec<Balances>>,
    },
    Topics {
        prefix: String,
        producer: BaseProducer<Deliveries>,
        sent: AtomicU64,
    },
}

/// One task's end of the [`Writer`].
pub(super) enum TaskOutput<'w> {
    Suppressed,
    Files(OutputFiles),
    Topics { prefix: &'w str, producer: &'w BaseProducer<Deliveries>, sent: &'w AtomicU64 },
}

impl Writer {
    pub(super) fn open(config: &Config, sink: &Sink, partitions: u32) -> crate::Result<Writer> {
        Ok(match sink {
            Sink::Suppressed => Writer::Suppressed,
            Sink::Files(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))?;
                Writer::Files { dir: dir.clone(), balances: Mutex::new(Vec::new()) }
            }
            Sink::Topics(prefix) => {
                let plans = emit_topics(config, prefix, partitions)?;
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                for (topic, outcome) in runtime.block_on(crate::kafka::admin::create_planned(config, &plans, 1))? {
                    tracing::info!(topic, outcome, "replay output topic");
                }
                Writer::Topics { prefix: prefix.clone(), producer: bulk_producer(config)?, sent: AtomicU64::new(0) }
            }
        })
    }

    pub(super) fn task_dir(dir: &Path, partition: u32) -> PathBuf {
        dir.join(format!(".replay-task-{partition}"))
    }

    pub(super) fn for_task(&self, partition: u32) -> crate::Result<TaskOutput<'_>> {
        Ok(match self {
            Writer::Suppressed => TaskOutput::Suppressed,
            Writer::Files { dir, .. } => TaskOutput::Files(OutputFiles::create(&Self::task_dir(dir, partition))?),
            Writer::Topics { prefix, producer, sent } => TaskOutput::Topics { prefix, producer, sent },
        })
    }

    pub(super) fn balances(&self, partition: u32, balances: Vec<Balances>) -> crate::Result<()> {
        match self {
            Writer::Suppressed => {}
            Writer::Files { balances: all, .. } => all.lock().expect("balances lock").extend(balances),
            Writer::Topics { prefix, producer, sent } => {
                let topic = format!("{prefix}.balances");
                for balance in balances {
                    let value = serde_json::to_vec(&balance)?;
                    send(producer, &topic, partition as i32, Some(balance.startup.as_bytes()), &value)?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    pub(super) fn finish(self, tasks: &[u32]) -> crate::Result<()> {
        match self {
            Writer::Suppressed => Ok(()),
            Writer::Files { dir, balances } => {
                for stream in Stream::ALL {
                    let name = format!("{}.jsonl", stream.name());
                    let path = dir.join(&name);
                    let mut joined = std::io::BufWriter::new(
                        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                    );
                    for task in tasks {
                        let part = Self::task_dir(&dir, *task).join(&name);
                        let mut file =
                            std::fs::File::open(&part).with_context(|| format!("opening {}", part.display()))?;
                        std::io::copy(&mut file, &mut joined)?;
                    }
                    std::io::Write::flush(&mut joined)?;
                }
                for task in tasks {
                    std::fs::remove_dir_all(Self::task_dir(&dir, *task))?;
                }
                let mut balances = balances.into_inner().expect("balances lock");
                balances.sort_by(|left, right| left.startup.cmp(&right.startup));
                write_balances(&dir.join("balances.json"), &balances)
            }
            Writer::Topics { producer, sent, .. } => {
                flush_checked(&producer, sent.into_inner())?;
                close_in_background(producer);
                Ok(())
            }
        }
    }
}

impl TaskOutput<'_> {
    pub(super) fn write(
        &mut self,
        partition: u32,
        outputs: &mut Vec<Output>,
        encoded: &mut Vec<Vec<u8>>,
    ) -> crate::Result<()> {
        match self {
            TaskOutput::Suppressed => {}
            TaskOutput::Files(files) => files.write(outputs, encoded)?,
            TaskOutput::Topics { prefix, producer, sent } => {
                for (output, bytes) in outputs.iter().zip(encoded.iter()) {
                    let topic = format!("{prefix}.{}", output.stream().name());
                    send(producer, &topic, partition as i32, output.key(), bytes)?;
                }
                sent.fetch_add(outputs.len() as u64, Ordering::Relaxed);
            }
        }
        outputs.clear();
        encoded.clear();
        Ok(())
    }

    pub(super) fn finish(self) -> crate::Result<()> {
        if let TaskOutput::Files(files) = self {
            files.finish()?;
        }
        Ok(())
    }
}

/// The topics `--emit-prefix` writes to: never a live topic.
pub(super) fn emit_topics(
    config: &Config,
    prefix: &str,
    partitions: u32,
) -> crate::Result<Vec<crate::kafka::admin::TopicPlan>> {
    anyhow::ensure!(!prefix.is_empty(), "--emit-prefix must not be empty");
    let live: Vec<&str> = config.topics.outputs().iter().map(|(_, name)| *name).collect();
    let mut plans = Vec::new();
    for role in Stream::ALL.iter().map(|stream| stream.name()).chain(["balances"]) {
        let name = format!("{prefix}.{role}");
        if live.contains(&name.as_str())
            || [&config.topics.rates, &config.topics.deals, &config.topics.metering].contains(&&name)
        {
            bail!("--emit-prefix {prefix}: {name} is a topic of the live processor; choose another prefix");
        }
        let config = if role == "balances" { vec![("cleanup.policy", "compact")] } else { Vec::new() };
        plans.push(crate::kafka::admin::TopicPlan { name, partitions, config });
    }
    Ok(plans)
}

/// Where one replayed task's outputs go, with the state persisted every
/// [`COMMIT_EVERY`] records and the progress bar advanced.
pub(super) struct ReplaySink<'a> {
    pub(super) partition: u32,
    pub(super) output: TaskOutput<'a>,
    /// Records whose outputs an earlier attempt sent already.
    pub(super) to_skip: u64,
    /// Records whose outputs were written, over all attempts.
    pub(super) written: &'a mut u64,
    pub(super) outputs: u64,
    pub(super) since_commit: u64,
    pub(super) read_since_report: u64,
    /// Records folded per input since the last report (rates, deals, metering).
    pub(super) folded_since_report: [u64; 3],
    pub(super) store: &'a Mutex<RocksStore>,
    pub(super) progress: &'a Mutex<ProgressBar>,
    pub(super) observed: &'a super::Observed,
}

impl ReplaySink<'_> {
    pub(super) fn read(&mut self) {
        self.read_since_report += 1;
        if self.read_since_report >= 4096 {
            self.progress.lock().expect("progress lock").advance(self.read_since_report);
            self.read_since_report = 0;
            self.observed.folded(std::mem::take(&mut self.folded_since_report));
        }
    }
}

impl OutputSink for ReplaySink<'_> {
    fn write(
        &mut self,
        _: &mut Task,
        record: &InputRecord,
        outputs: &mut Vec<Output>,
        encoded: &mut Vec<Vec<u8>>,
    ) -> crate::Result<()> {
        self.folded_since_report[record.topic.index()] += 1;
        self.read();
        self.outputs += outputs.len() as u64;
        if self.to_skip > 0 {
            self.to_skip -= 1;
            return Ok(());
        }
        self.output.write(self.partition, outputs, encoded)?;
        *self.written += 1;
        Ok(())
    }

    fn folded(&mut self, task: &mut Task) -> crate::Result<Flow> {
        self.since_commit += 1;
        if self.since_commit >= COMMIT_EVERY {
            self.since_commit = 0;
            persist(self.store, task)?;
        }
        Ok(Flow::Continue)
    }

    fn left_out(&mut self, _: &InputRecord) -> crate::Result<()> {
        self.read();
        Ok(())
    }
}
