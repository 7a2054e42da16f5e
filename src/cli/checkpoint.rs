//! `gpuledger checkpoint list|verify|create`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use gpuledger::checkpoint::{self, CheckpointStore, Manifest};
use gpuledger::config::Config;

use super::KafkaArgs;

#[derive(Subcommand)]
pub(crate) enum CheckpointCommand {
    /// List each task's checkpoints: id, records folded, offsets, size, when
    /// taken; incomplete or unreadable ones are marked.
    List {
        #[command(flatten)]
        target: StoreArgs,
        /// Only this task (partition).
        #[arg(long)]
        task: Option<u32>,
        /// One JSON manifest per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore checkpoints into a scratch directory and compare the state
    /// with their manifests (checksums, offsets, records, digest). Default:
    /// the newest complete checkpoint of every task.
    Verify {
        #[command(flatten)]
        target: StoreArgs,
        #[arg(long)]
        task: Option<u32>,
        /// Only this checkpoint (with --task).
        #[arg(long, requires = "task")]
        id: Option<String>,
        /// Every complete checkpoint, not only the newest.
        #[arg(long)]
        all: bool,
        /// Where to restore (default: a directory under the system's temp dir, removed after).
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
    /// Checkpoint a state directory's tasks now, as it is committed (read
    /// only: works while a processor runs on it). Needs the broker for the
    /// input partition count.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Checkpoint store URL (overrides `[checkpoints] store`).
        #[arg(long)]
        store: Option<String>,
        /// RocksDB state directory (overrides processor.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Only these tasks, e.g. `0,2` (default: every task in the directory).
        #[arg(long, value_delimiter = ',')]
        tasks: Option<Vec<u32>>,
    },
}

#[derive(clap::Args)]
pub(crate) struct StoreArgs {
    /// TOML configuration file (its `[checkpoints]` and `kafka.group_id`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Checkpoint store URL (overrides `[checkpoints] store`).
    #[arg(long)]
    store: Option<String>,
}

impl StoreArgs {
    fn open(&self) -> anyhow::Result<(Config, CheckpointStore)> {
        let environment = std::env::vars().filter(|(name, _)| name.starts_with("GPULEDGER_")).collect();
        let overrides = gpuledger::config::Overrides {
            checkpoint_store: self.store.clone(),
            without_kafka: true,
            ..Default::default()
        };
        let config = Config::load(self.config.as_deref(), &environment, &overrides)?;
        let store = CheckpointStore::open(&config.checkpoints, &config.group_id)?;
        Ok((config, store))
    }
}

pub(crate) fn run(command: CheckpointCommand) -> anyhow::Result<ExitCode> {
    match command {
        CheckpointCommand::List { target, task, json } => list(&target, task, json),
        CheckpointCommand::Verify { target, task, id, all, scratch } => {
            verify(&target, task, id.as_deref(), all, scratch)
        }
        CheckpointCommand::Create { kafka, store, state_dir, tasks } => create(&kafka, store, state_dir, tasks),
    }
}

fn tasks_of(store: &CheckpointStore, task: Option<u32>) -> anyhow::Result<Vec<u32>> {
    Ok(match task {
        Some(task) => vec![task],
        None => store.tasks()?,
    })
}

fn list(target: &StoreArgs, task: Option<u32>, json: bool) -> anyhow::Result<ExitCode> {
    let (config, store) = target.open()?;
    let tasks = tasks_of(&store, task)?;
    if !json {
        println!("checkpoints of group {} in {}", config.group_id, store.url());
        println!("{:>5}  {:<37}  {:>12}  {:>28}  {:>12}  taken", "task", "id", "records", "offsets r/d/m", "bytes");
    }
    let mut count = 0;
    for task in tasks {
        for listed in store.list(task)? {
            count += 1;
            match (&listed.manifest, json) {
                (Ok(manifest), true) => println!("{}", serde_json::to_string(manifest)?),
                (Err(reason), true) => {
                    println!("{}", serde_json::json!({"task": task, "id": listed.id, "unusable": reason}))
                }
                (Ok(manifest), false) => {
                    let offsets = manifest.offsets;
                    println!(
                        "{task:>5}  {:<37}  {:>12}  {:>28}  {:>12}  {}",
                        manifest.id,
                        manifest.records,
                        format!("{}/{}/{}", offsets.rates, offsets.deals, offsets.metering),
                        manifest.bytes(),
                        manifest.created_at
                    )
                }
                (Err(reason), false) => println!("{task:>5}  {:<37}  {reason}", listed.id),
            }
        }
    }
    if count == 0 && !json {
        println!("(none)");
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(
    target: &StoreArgs,
    task: Option<u32>,
    id: Option<&str>,
    all: bool,
    scratch: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let (_, store) = target.open()?;
    let (scratch, remove) = match scratch {
        Some(dir) => (dir, false),
        None => (std::env::temp_dir().join(format!("gpuledger-checkpoint-verify-{}", std::process::id())), true),
    };
    let mut chosen: Vec<Manifest> = Vec::new();
    for task in tasks_of(&store, task)? {
        let mut complete: Vec<Manifest> =
            store.list(task)?.into_iter().filter_map(|entry| entry.manifest.ok()).collect();
        complete.sort_by_key(|manifest| manifest.records);
        match id {
            Some(id) => chosen.extend(complete.into_iter().filter(|manifest| manifest.id == id)),
            None if all => chosen.extend(complete),
            None => chosen.extend(complete.pop()),
        }
    }
    anyhow::ensure!(!chosen.is_empty(), "no complete checkpoint to verify in {}", store.url());
    let mut failed = 0;
    for manifest in &chosen {
        match checkpoint::restore::verify(&store, manifest, &scratch) {
            Ok(()) => println!(
                "ok      task {} checkpoint {}: {} records, offsets {:?}, digest {}",
                manifest.task,
                manifest.id,
                manifest.records,
                manifest.offsets(),
                manifest.digest
            ),
            Err(error) => {
                failed += 1;
                println!("FAILED  task {} checkpoint {}: {error:#}", manifest.task, manifest.id);
            }
        }
    }
    if remove {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if failed > 0 {
        println!("{failed} of {} checkpoints failed verification", chosen.len());
        return Ok(ExitCode::FAILURE);
    }
    println!("{} checkpoints verified", chosen.len());
    Ok(ExitCode::SUCCESS)
}

fn create(
    kafka: &KafkaArgs,
    store_url: Option<String>,
    state_dir: Option<PathBuf>,
    tasks: Option<Vec<u32>>,
) -> anyhow::Result<ExitCode> {
    let mut config = kafka.connect(state_dir)?;
    if store_url.is_some() {
        config.checkpoints.store = store_url;
    }
    let store = CheckpointStore::open(&config.checkpoints, &config.group_id)?;
    let metadata = gpuledger::kafka::client::metadata_consumer(&config)?;
    let partitions = gpuledger::kafka::cluster::check_copartitioned(&config, &metadata)?;
    let rocks = gpuledger::store::rocks::RocksStore::open_read_only(&config.state_dir)?;
    let tasks = match tasks {
        Some(tasks) => tasks,
        None => gpuledger::store::task_partitions(&rocks)?,
    };
    anyhow::ensure!(!tasks.is_empty(), "{} holds no task state", config.state_dir.display());
    let staging = std::env::temp_dir().join(format!("gpuledger-checkpoint-create-{}", std::process::id()));
    let reader = rocks.snapshot_reader();
    for task in tasks {
        let newest = store.list(task)?.into_iter().filter_map(|entry| entry.manifest.ok()).max_by_key(|m| m.records);
        let taken = checkpoint::take::take(
            &store,
            &reader,
            &config.group_id,
            task,
            partitions,
            &staging,
            config.checkpoints.keep,
            newest.as_ref().map(|manifest| manifest.id.as_str()),
        )
        .with_context(|| format!("checkpointing task {task}"))?;
        match taken {
            Some(taken) => println!(
                "task {task}: checkpoint {} ({} records, {} bytes) in {} ms",
                taken.manifest.id,
                taken.manifest.records,
                taken.manifest.bytes(),
                taken.export_millis + taken.upload_millis
            ),
            None => println!("task {task}: nothing new to checkpoint (no state, or the newest checkpoint holds it)"),
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(ExitCode::SUCCESS)
}
