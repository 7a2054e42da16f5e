//! The `gpuledger` command line: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gpuledger::units::Millis;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gpuledger",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BUILT_FROM_COMMIT"), ")"),
    about = "Exactly-once compute-credit ledger: GPU usage and compute-for-equity deals into ASC 606 revenue"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
struct KafkaArgs {
    /// TOML configuration file (see deploy/gpuledger.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the file and the environment).
    #[arg(long)]
    bootstrap_servers: Option<String>,
}

impl KafkaArgs {
    fn load(&self, state_dir: Option<PathBuf>) -> anyhow::Result<gpuledger::config::Config> {
        let environment = std::env::vars().filter(|(name, _)| name.starts_with("GPULEDGER_")).collect();
        gpuledger::config::Config::load(
            self.config.as_deref(),
            &environment,
            &gpuledger::config::Overrides { bootstrap_servers: self.bootstrap_servers.clone(), state_dir },
        )
    }
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The fresh state directory to build (must hold no task state).
    #[arg(long)]
    state_dir: PathBuf,
    /// Fold exactly the records with `time` at or before T (RFC 3339): the ledger as of T.
    #[arg(long, value_parser = parse_time)]
    until: Option<Millis>,
    /// Only these tasks (partitions), e.g. `0,2`.
    #[arg(long, value_delimiter = ',')]
    partitions: Option<Vec<u32>>,
    /// Write the outputs as JSONL files (and balances.json) into DIR.
    #[arg(long, conflicts_with = "emit_prefix")]
    out: Option<PathBuf>,
    /// Publish the outputs to topics P.usage-rated, P.journal, ..., P.balances.
    #[arg(long)]
    emit_prefix: Option<String>,
    /// Fold the history a second time with these rate cards (JSONL) and
    /// compare per start-up and month; the state directory and outputs get the what-if.
    #[arg(long)]
    what_if_rates: Option<PathBuf>,
    /// Where the what-if comparison CSV goes.
    #[arg(long, default_value = "what-if.csv", requires = "what_if_rates")]
    what_if_csv: PathBuf,
}

/// An RFC 3339 instant.
fn parse_time(text: &str) -> Result<Millis, String> {
    gpuledger::units::parse_rfc3339(text)
        .ok_or_else(|| format!("{text:?} is not an RFC 3339 instant (e.g. 2017-10-31T23:59:59Z)"))
}

#[derive(clap::Args)]
struct FoldArgs {
    #[arg(long)]
    rates: PathBuf,
    #[arg(long)]
    deals: PathBuf,
    #[arg(long)]
    metering: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// RocksDB state directory; reuse it to continue over longer inputs.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Split the inputs as Kafka topics with N partitions would.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    #[arg(long, default_value = "35d", value_parser = parse_duration)]
    dedup_window: Millis,
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    expiry_grace: Millis,
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    close_grace: Millis,
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_future: Millis,
    /// Earliest accepted event time (RFC 3339); earlier is `invalid_field`.
    #[arg(long, default_value = "1970-01-01T00:00:00Z", value_parser = parse_time)]
    earliest_time: Millis,
    /// Latest accepted event time (RFC 3339, at most 9999-12-31T23:59:59.999Z).
    #[arg(long, default_value = "9999-12-31T23:59:59.999Z", value_parser = parse_time)]
    latest_time: Millis,
    /// Accept ticks only from these sources (comma-separated; default any).
    #[arg(long, value_delimiter = ',')]
    tick_sources: Option<Vec<String>>,
    /// Refuse a tick more than this past the task's latest tick (default unlimited).
    #[arg(long, value_parser = parse_duration)]
    max_tick_jump: Option<Millis>,
    /// Keep at most this many bytes of a refused value in its dead letter.
    #[arg(long, default_value_t = gpuledger::events::Limits::default().dead_letter_value_bytes)]
    dead_letter_value_bytes: usize,
    /// Fault injection for tests: panic after folding TOPIC:OFFSET.
    #[arg(long, hide = true, value_parser = gpuledger::config::parse_record_position)]
    inject_panic_at: Option<(gpuledger::events::Topic, i64)>,
    /// Fault injection for tests: abort the process at record:N or commit:N.
    #[arg(long, hide = true)]
    inject_crash: Option<gpuledger::batch::CrashPoint>,
    /// Records folded between two commits to the state directory.
    #[arg(long, default_value_t = 50_000)]
    commit_every: u64,
    /// Fold exactly the records with `time` at or before T (RFC 3339), in
    /// the order the merge takes them from the whole files: the ledger as of T.
    #[arg(long, value_parser = parse_time)]
    until: Option<Millis>,
}

/// `90s`, `5m`, `72h`, `35d`, `250ms` (the config file's syntax).
fn parse_duration(text: &str) -> Result<Millis, String> {
    gpuledger::config::parse_duration(text)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("GPULEDGER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            // A client's error may echo a property's value: never a secret.
            eprintln!("error: {}", gpuledger::config::redact(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Fold(args) => {
            let options = gpuledger::batch::BatchOptions {
                rates: args.rates,
                deals: args.deals,
                metering: args.metering,
                out: args.out.clone(),
                state_dir: args.state_dir,
                partitions: args.partitions,
                fold: gpuledger::fold::FoldConfig {
                    dedup_window: args.dedup_window,
                    expiry_grace: args.expiry_grace,
                    close_grace: args.close_grace,
                    max_future: args.max_future,
                    earliest_time: args.earliest_time,
                    latest_time: args.latest_time,
                    tick_sources: args.tick_sources.map(std::sync::Arc::from),
                    max_tick_jump: args.max_tick_jump,
                    limits: gpuledger::events::Limits {
                        dead_letter_value_bytes: args.dead_letter_value_bytes,
                        ..gpuledger::events::Limits::default()
                    },
                    inject_panic_at: args.inject_panic_at,
                },
                commit_every: args.commit_every.max(1),
                until: args.until,
                inject_crash: args.inject_crash,
            };
            let started = std::time::Instant::now();
            let summary = gpuledger::batch::run(&options)?;
            let seconds = started.elapsed().as_secs_f64();
            if args.until.is_some() {
                println!("left out {} records later than --until (or without a readable time)", summary.after_until);
            }
            println!(
                "folded {} records ({} usage accepted, {} dead letters, {} duplicates dropped) for {} start-ups in {:.2}s ({:.0} records/s) into {}",
                summary.records,
                summary.usage_accepted,
                summary.dead_letters,
                summary.duplicates_dropped,
                summary.startups,
                seconds,
                summary.records as f64 / seconds.max(1e-9),
                args.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "gpuledger", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout()).context("writing the man page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { dir, partial } => {
            let report =
                gpuledger::audit::audit(&dir, partial).with_context(|| format!("auditing {}", dir.display()))?;
            for violation in &report.violations {
                println!("violation: {violation}");
            }
            if report.violations.is_empty() {
                println!(
                    "audit ok: {} journal entries, {} usage records, {} statements, {} grants of {} start-ups; no violation",
                    report.journal_entries, report.usage_records, report.statements, report.grants, report.startups
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("audit failed: {} violations", report.violations.len());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Gen { trace, out, seed, jobs, slice } => {
            let summary =
                gpuledger::gen::generate(&gpuledger::gen::GenOptions { trace, out: out.clone(), seed, jobs, slice })?;
            println!(
                "generated {} jobs into {}: {} usage events ({} metering lines), {} deal lines, {} rate lines",
                summary.jobs,
                out.display(),
                summary.usage_events,
                summary.metering_lines,
                summary.deal_lines,
                summary.rate_lines
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics { command: TopicsCommand::Create { kafka, partitions, replication_factor } } => {
            let config = kafka.load(None)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let report =
                runtime.block_on(gpuledger::kafka::admin::create_topics(&config, partitions, replication_factor))?;
            for (topic, outcome) in report {
                println!("{outcome:>8} {topic}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce { kafka, rates, deals, metering, event_timestamps } => {
            let config = kafka.load(None)?;
            anyhow::ensure!(
                rates.is_some() || deals.is_some() || metering.is_some(),
                "nothing to produce: give --rates, --deals and/or --metering"
            );
            let summary = gpuledger::kafka::produce::produce(
                &config,
                [rates.as_deref(), deals.as_deref(), metering.as_deref()],
                event_timestamps,
            )?;
            println!(
                "produced {} records from {} rate, {} deal and {} metering lines",
                summary.records, summary.lines[0], summary.lines[1], summary.lines[2]
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { kafka, state_dir, exit_when_caught_up } => {
            let config = kafka.load(state_dir)?;
            let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let signal_flag = std::sync::Arc::clone(&shutdown);
            runtime.spawn(async move {
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                tracing::info!("signal received; finishing the cycle");
                signal_flag.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let options = gpuledger::kafka::processor::RunOptions { exit_when_caught_up };
            let stats = gpuledger::kafka::processor::run(&config, &options, shutdown)?;
            println!("{}", serde_json::to_string(&stats)?);
            runtime.shutdown_background();
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            let config = args.kafka.load(None)?;
            let sink = match (&args.out, &args.emit_prefix) {
                (Some(dir), _) => gpuledger::kafka::replay::Sink::Files(dir.clone()),
                (None, Some(prefix)) => gpuledger::kafka::replay::Sink::Topics(prefix.clone()),
                (None, None) => gpuledger::kafka::replay::Sink::Suppressed,
            };
            let options = gpuledger::kafka::replay::ReplayOptions {
                state_dir: args.state_dir,
                until: args.until,
                partitions: args.partitions,
                sink,
                what_if_rates: args.what_if_rates,
            };
            let summary = gpuledger::kafka::replay::replay(&config, &options)?;
            if let Some(comparison) = &summary.what_if {
                print!("{}", comparison.table());
                std::fs::write(&args.what_if_csv, comparison.csv())
                    .with_context(|| format!("writing {}", args.what_if_csv.display()))?;
                println!("what-if comparison written to {}", args.what_if_csv.display());
            }
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Reset { kafka, state_dir, to_earliest, to_datetime, dry_run } => {
            let config = kafka.load(state_dir)?;
            let to = match (to_earliest, to_datetime) {
                (_, Some(at)) => gpuledger::kafka::reset::ResetTo::Datetime(at),
                _ => gpuledger::kafka::reset::ResetTo::Earliest,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the wall clock is before 1970")?
                .as_millis() as i64;
            let plan = gpuledger::kafka::reset::plan(&config, to, now)?;
            print!("{}", plan.describe(dry_run));
            if dry_run {
                println!("dry run: nothing changed");
            } else {
                gpuledger::kafka::reset::apply(&config, &plan)?;
                println!("offsets committed for group {}", plan.group);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { kafka, out, topics } => {
            let config = kafka.load(None)?;
            let summary = gpuledger::kafka::export::export(&config, &out, &topics)?;
            for (stream, (kept, duplicates)) in &summary.streams {
                println!("{stream}: {kept} records, {duplicates} duplicates dropped");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Balance { state_dir, startup, currency, json } => {
            let store = gpuledger::store::rocks::RocksStore::open_read_only(&state_dir)?;
            let Some((partition, record)) = gpuledger::store::load_startup(&store, &startup)? else {
                anyhow::bail!("no start-up {startup:?} in {}", state_dir.display());
            };
            let meta = gpuledger::store::load_task_meta(&store, partition)?;
            let offsets: Vec<gpuledger::records::InputOffset> = gpuledger::events::Topic::ALL
                .into_iter()
                .map(|topic| gpuledger::records::InputOffset {
                    topic: topic.name().to_owned(),
                    partition: if topic == gpuledger::events::Topic::Rates { 0 } else { partition },
                    offset: meta.offsets[topic.index()],
                })
                .collect();
            let mut balances = gpuledger::fold::balances_of(&record, partition, &offsets);
            balances.digest = meta.digest.hex();
            if let Some(currency) = &currency {
                balances.currencies.retain(|block| &block.currency == currency);
                anyhow::ensure!(!balances.currencies.is_empty(), "start-up {startup:?} has no figures in {currency}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&balances)?);
            } else {
                print!("{}", gpuledger::batch::balance_detail(&balances));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { state_dir, against, kafka } => {
            let left = gpuledger::store::rocks::RocksStore::open_read_only(&state_dir)?;
            let right = gpuledger::store::rocks::RocksStore::open_read_only(&against)?;
            let report = gpuledger::store::verify(&left, &right)?;
            for line in report.agreements.iter().chain(&report.differences) {
                println!("{line}");
            }
            if kafka.config.is_some() || kafka.bootstrap_servers.is_some() {
                let config = kafka.load(None)?;
                for (partition, from, to) in &report.windows {
                    println!("task {partition}: input records from offsets {from:?} to {to:?} (the first run's):");
                    for line in gpuledger::kafka::input_records_between(&config, *partition, *from, *to)? {
                        println!("  {line}");
                    }
                }
            }
            if report.differences.is_empty() {
                println!("consistent: {} tasks, no difference in offsets or output digests", report.tasks);
                Ok(ExitCode::SUCCESS)
            } else {
                println!("diverged: {} of {} tasks differ", report.differences.len(), report.tasks);
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Table { balances } => {
            let balances = gpuledger::batch::read_balances(&balances)?;
            print!("{}", gpuledger::batch::balance_table(&balances));
            Ok(ExitCode::SUCCESS)
        }
    }
}
