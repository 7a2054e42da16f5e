//! The command line: clap's types, and one short function per subcommand
//! (in [`commands`]) over the library.

mod checkpoint;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gpuledger::units::Millis;

#[derive(Parser)]
#[command(
    name = "gpuledger",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BUILT_FROM_COMMIT"), ")"),
    about = "Exactly-once compute-credit ledger: GPU usage and compute-for-equity deals into ASC 606 revenue"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (default) or json (one object per line, with the
    /// event's fields). Else GPULEDGER_LOG__FORMAT, else the config file's
    /// `[log] format`.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

impl Cli {
    /// Whether log lines are JSON: the flag, the environment, the config file.
    pub fn json_logs(&self) -> bool {
        let from_file = || {
            self.kafka_args().and_then(|kafka| kafka.config.as_deref()).and_then(gpuledger::config::log_format_of_file)
        };
        let format = self.log_format.clone().or_else(|| std::env::var("GPULEDGER_LOG__FORMAT").ok()).or_else(from_file);
        format.as_deref() == Some("json")
    }

    fn kafka_args(&self) -> Option<&KafkaArgs> {
        match &self.command {
            Command::Topics { command: TopicsCommand::Create { kafka, .. } }
            | Command::Produce { kafka, .. }
            | Command::Run { kafka, .. }
            | Command::Reset { kafka, .. }
            | Command::Export { kafka, .. }
            | Command::Verify { kafka, .. } => Some(kafka),
            Command::Replay(args) => Some(&args.kafka),
            _ => None,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Fold three JSONL input files in batch mode (no Kafka).
    Fold(FoldArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `gpuledger manpage > gpuledger.1`.
    Manpage,
    /// Check the invariants of the rules' §11 (docs/ledger-rules.md) on an output directory.
    Audit {
        dir: PathBuf,
        /// The directory holds only part of a history (a resumed run):
        /// skip reconciling the journal with the balances.
        #[arg(long)]
        partial: bool,
    },
    /// Generate a workload (rates, deals, metering) from the Philly GPU trace.
    Gen {
        #[arg(long, default_value = "data/philly/philly.csv")]
        trace: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Use only the first N jobs of the trace.
        #[arg(long)]
        jobs: Option<usize>,
        /// Length of one usage event (e.g. 5m, 60s, 1h).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        slice: Millis,
    },
    /// Print a per-start-up table of a balances.json.
    Table { balances: PathBuf },
    /// Compare two state directories task by task: where their offsets and
    /// output digests agree, and the first checkpoint where they part.
    Verify {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        against: PathBuf,
        /// With a broker (--config and/or --bootstrap-servers): also print
        /// the input records in which the runs parted.
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// A start-up's balance figures from a state directory (read-only; works
    /// while a processor runs on it).
    Balance {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        startup: String,
        /// Only this currency.
        #[arg(long)]
        currency: Option<String>,
        /// The balances record as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Kafka topics of gpuledger.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Publish JSONL files to the input topics (each line as-is).
    Produce {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long)]
        rates: Option<PathBuf>,
        #[arg(long)]
        deals: Option<PathBuf>,
        #[arg(long)]
        metering: Option<PathBuf>,
        /// Give each record its event `time` as Kafka timestamp (for
        /// consumers that order by timestamps; gpuledger does not need it).
        #[arg(long)]
        event_timestamps: bool,
    },
    /// Run the streaming processor: exactly once from the input topics to the outputs.
    Run {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// RocksDB state directory (overrides processor.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Commit and stop once every owned input partition is at its end.
        #[arg(long)]
        exit_when_caught_up: bool,
        /// Serve metrics, health and queries on ADDR:PORT (overrides `[http] listen`).
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<String>,
    },
    /// Rebuild state from the input topics into a fresh state directory
    /// (own consumers, no group commits: the live processor is untouched).
    Replay(ReplayArgs),
    /// Move the consumer group's committed offsets back, safely: refuses
    /// while the group has live members, shows the plan, moves invalidated
    /// local state aside.
    Reset {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// RocksDB state directory (overrides processor.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Back to offset 0: everything is processed (and published) again.
        #[arg(long, conflicts_with = "to_datetime", required_unless_present = "to_datetime")]
        to_earliest: bool,
        /// Back to the processor's committed position at this wall-clock
        /// instant (RFC 3339): the last cycle committed at or before it.
        #[arg(long, value_parser = parse_time)]
        to_datetime: Option<Millis>,
        /// Show what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Checkpoints of task state in the checkpoint store (`[checkpoints] store`).
    Checkpoint {
        #[command(subcommand)]
        command: checkpoint::CheckpointCommand,
    },
    /// Read the output topics (deduplicated by identity) into batch-mode files.
    Export {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long)]
        out: PathBuf,
        /// Only these streams (usage-rated, journal, balances, statements, alerts, dead-letter, progress).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the input and output topics (inputs keep everything; balances is compacted).
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Partitions of deals, metering and the outputs (rates has one).
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
    },
}

#[derive(clap::Args)]
pub(crate) struct KafkaArgs {
    /// TOML configuration file (see deploy/gpuledger.toml).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the file and the environment).
    #[arg(long)]
    pub(crate) bootstrap_servers: Option<String>,
}

impl KafkaArgs {
    /// The configuration (file < environment < flags), once the cluster it
    /// names has answered: a wrong address, an untrusted certificate or
    /// refused credentials stop the command here, with the reason.
    pub(crate) fn connect(&self, state_dir: Option<PathBuf>) -> anyhow::Result<gpuledger::config::Config> {
        self.connect_serving(state_dir, None)
    }

    /// [`KafkaArgs::connect`], with `--http-listen` over `[http] listen`.
    pub(crate) fn connect_serving(
        &self,
        state_dir: Option<PathBuf>,
        http_listen: Option<String>,
    ) -> anyhow::Result<gpuledger::config::Config> {
        let environment = std::env::vars().filter(|(name, _)| name.starts_with("GPULEDGER_")).collect();
        let config = gpuledger::config::Config::load(
            self.config.as_deref(),
            &environment,
            &gpuledger::config::Overrides {
                bootstrap_servers: self.bootstrap_servers.clone(),
                state_dir,
                http_listen,
                ..Default::default()
            },
        )?;
        gpuledger::kafka::client::check_reachable(&config)?;
        Ok(config)
    }
}

#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// The fresh state directory to build (must hold no task state).
    #[arg(long)]
    pub(crate) state_dir: PathBuf,
    /// Fold exactly the records with `time` at or before T (RFC 3339): the ledger as of T.
    #[arg(long, value_parser = parse_time)]
    pub(crate) until: Option<Millis>,
    /// Only these tasks (partitions), e.g. `0,2`.
    #[arg(long, value_delimiter = ',')]
    pub(crate) partitions: Option<Vec<u32>>,
    /// Write the outputs as JSONL files (and balances.json) into DIR.
    #[arg(long, conflicts_with = "emit_prefix")]
    pub(crate) out: Option<PathBuf>,
    /// Publish the outputs to topics P.usage-rated, P.journal, ..., P.balances.
    #[arg(long)]
    pub(crate) emit_prefix: Option<String>,
    /// Fold the history a second time with these rate cards (JSONL) and
    /// compare per start-up and month; the state directory and outputs get the what-if.
    #[arg(long)]
    pub(crate) what_if_rates: Option<PathBuf>,
    /// Where the what-if comparison CSV goes.
    #[arg(long, default_value = "what-if.csv", requires = "what_if_rates")]
    pub(crate) what_if_csv: PathBuf,
    /// Serve metrics and health on ADDR:PORT while replaying (overrides `[http] listen`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) http_listen: Option<String>,
    /// Start each task from a checkpoint (`[checkpoints] store`) instead of
    /// offset 0: the newest on the committed history, or the one with this
    /// id (one task, with --partitions). Reads and folds only what came after it.
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "newest")]
    pub(crate) from_checkpoint: Option<String>,
}

/// An RFC 3339 instant.
fn parse_time(text: &str) -> Result<Millis, String> {
    gpuledger::units::parse_rfc3339(text)
        .ok_or_else(|| format!("{text:?} is not an RFC 3339 instant (e.g. 2017-10-31T23:59:59Z)"))
}

#[derive(clap::Args)]
pub(crate) struct FoldArgs {
    #[arg(long)]
    pub(crate) rates: PathBuf,
    #[arg(long)]
    pub(crate) deals: PathBuf,
    #[arg(long)]
    pub(crate) metering: PathBuf,
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// RocksDB state directory; reuse it to continue over longer inputs.
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
    /// Split the inputs as Kafka topics with N partitions would.
    #[arg(long, default_value_t = 1)]
    pub(crate) partitions: u32,
    #[arg(long, default_value = "35d", value_parser = parse_duration)]
    pub(crate) dedup_window: Millis,
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub(crate) expiry_grace: Millis,
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    pub(crate) close_grace: Millis,
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub(crate) max_future: Millis,
    /// Earliest accepted event time (RFC 3339); earlier is `invalid_field`.
    #[arg(long, default_value = "1970-01-01T00:00:00Z", value_parser = parse_time)]
    pub(crate) earliest_time: Millis,
    /// Latest accepted event time (RFC 3339, at most 9999-12-31T23:59:59.999Z).
    #[arg(long, default_value = "9999-12-31T23:59:59.999Z", value_parser = parse_time)]
    pub(crate) latest_time: Millis,
    /// Accept ticks only from these sources (comma-separated; default any).
    #[arg(long, value_delimiter = ',')]
    pub(crate) tick_sources: Option<Vec<String>>,
    /// Refuse a tick more than this past the task's latest tick (default unlimited).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) max_tick_jump: Option<Millis>,
    /// Keep at most this many bytes of a refused value in its dead letter.
    #[arg(long, default_value_t = gpuledger::events::Limits::default().dead_letter_value_bytes)]
    pub(crate) dead_letter_value_bytes: usize,
    /// Fault injection for tests: panic after folding TOPIC:OFFSET.
    #[arg(long, hide = true, value_parser = gpuledger::config::parse_record_position)]
    pub(crate) inject_panic_at: Option<(gpuledger::events::Topic, i64)>,
    /// Fault injection for tests: abort the process at record:N or commit:N.
    #[arg(long, hide = true)]
    pub(crate) inject_crash: Option<gpuledger::batch::CrashPoint>,
    /// Records folded between two commits to the state directory.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) commit_every: u64,
    /// Fold exactly the records with `time` at or before T (RFC 3339), in
    /// the order the merge takes them from the whole files: the ledger as of T.
    #[arg(long, value_parser = parse_time)]
    pub(crate) until: Option<Millis>,
}

/// `90s`, `5m`, `72h`, `35d`, `250ms` (the config file's syntax).
fn parse_duration(text: &str) -> Result<Millis, String> {
    gpuledger::config::parse_duration(text)
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Fold(args) => commands::fold(args),
        Command::Completions { shell } => commands::completions(shell),
        Command::Manpage => commands::manpage(),
        Command::Audit { dir, partial } => commands::audit(&dir, partial),
        Command::Gen { trace, out, seed, jobs, slice } => {
            commands::generate(gpuledger::workload::GenOptions { trace, out, seed, jobs, slice })
        }
        Command::Topics { command: TopicsCommand::Create { kafka, partitions, replication_factor } } => {
            commands::create_topics(&kafka.connect(None)?, partitions, replication_factor)
        }
        Command::Produce { kafka, rates, deals, metering, event_timestamps } => {
            commands::produce(&kafka.connect(None)?, [rates, deals, metering], event_timestamps)
        }
        Command::Run { kafka, state_dir, exit_when_caught_up, http_listen } => {
            commands::run(&kafka.connect_serving(state_dir, http_listen)?, exit_when_caught_up)
        }
        Command::Replay(args) => commands::replay(args),
        Command::Reset { kafka, state_dir, to_earliest: _, to_datetime, dry_run } => {
            commands::reset(&kafka.connect(state_dir)?, to_datetime, dry_run)
        }
        Command::Export { kafka, out, topics } => commands::export(&kafka.connect(None)?, &out, &topics),
        Command::Balance { state_dir, startup, currency, json } => {
            commands::balance(&state_dir, &startup, currency.as_deref(), json)
        }
        Command::Verify { state_dir, against, kafka } => commands::verify(&state_dir, &against, &kafka),
        Command::Table { balances } => commands::table(&balances),
        Command::Checkpoint { command } => checkpoint::run(command),
    }
}
