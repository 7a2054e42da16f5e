//! One function per subcommand: turn its arguments into the library's
//! options, call the library, print what it reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use gpuledger::config::Config;
use gpuledger::kafka;
use gpuledger::units::Millis;

use super::{Cli, FoldArgs, KafkaArgs, ReplayArgs};

pub fn fold(args: FoldArgs) -> anyhow::Result<ExitCode> {
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

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "gpuledger", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn manpage() -> anyhow::Result<ExitCode> {
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(command).render(&mut std::io::stdout()).context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}

pub fn audit(dir: &Path, partial: bool) -> anyhow::Result<ExitCode> {
    let report = gpuledger::audit::audit(dir, partial).with_context(|| format!("auditing {}", dir.display()))?;
    for violation in &report.violations {
        println!("violation: {violation}");
    }
    if !report.violations.is_empty() {
        println!("audit failed: {} violations", report.violations.len());
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "audit ok: {} journal entries, {} usage records, {} statements, {} grants of {} start-ups; no violation",
        report.journal_entries, report.usage_records, report.statements, report.grants, report.startups
    );
    Ok(ExitCode::SUCCESS)
}

pub fn generate(options: gpuledger::workload::GenOptions) -> anyhow::Result<ExitCode> {
    let summary = gpuledger::workload::generate(&options)?;
    println!(
        "generated {} jobs into {}: {} usage events ({} metering lines), {} deal lines, {} rate lines",
        summary.jobs,
        options.out.display(),
        summary.usage_events,
        summary.metering_lines,
        summary.deal_lines,
        summary.rate_lines
    );
    Ok(ExitCode::SUCCESS)
}

pub fn create_topics(config: &Config, partitions: u32, replication_factor: i32) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(kafka::admin::create_topics(config, partitions, replication_factor))?;
    for (topic, outcome) in report {
        println!("{outcome:>8} {topic}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn produce(config: &Config, files: [Option<PathBuf>; 3], event_timestamps: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(files.iter().any(Option::is_some), "nothing to produce: give --rates, --deals and/or --metering");
    let [rates, deals, metering] = &files;
    let summary =
        kafka::produce::produce(config, [rates.as_deref(), deals.as_deref(), metering.as_deref()], event_timestamps)?;
    println!(
        "produced {} records from {} rate, {} deal and {} metering lines",
        summary.records, summary.lines[0], summary.lines[1], summary.lines[2]
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(config: &Config, exit_when_caught_up: bool) -> anyhow::Result<ExitCode> {
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
    let service = serve_http(&runtime, config, &config.state_dir, config.http.token.clone())?;
    let options = kafka::live::RunOptions { exit_when_caught_up };
    let stats = kafka::live::run(config, &options, shutdown, service)?;
    println!("{}", serde_json::to_string(&stats)?);
    runtime.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

/// The HTTP endpoints on `runtime` when `[http] listen` is set: metrics of
/// the state in `state_dir`, `/v1` behind `token`.
fn serve_http(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    state_dir: &Path,
    token: Option<String>,
) -> anyhow::Result<Option<std::sync::Arc<gpuledger::serve::Service>>> {
    if config.http.listen.is_none() {
        return Ok(None);
    }
    let metrics = gpuledger::serve::Metrics::new(input_names(config), Some(state_dir));
    let service = gpuledger::serve::Service::new(metrics, token);
    runtime.block_on(gpuledger::serve::start(&config.http, std::sync::Arc::clone(&service)))?;
    Ok(Some(service))
}

/// The inputs' topic names, rates, deals, metering (the metrics' labels).
fn input_names(config: &Config) -> [String; 3] {
    [config.topics.rates.clone(), config.topics.deals.clone(), config.topics.metering.clone()]
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = args.kafka.connect_serving(None, args.http_listen.clone())?;
    // Metrics and health while it runs; replay answers no queries.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let service = serve_http(&runtime, &config, &args.state_dir, None)?;
    let sink = match (&args.out, &args.emit_prefix) {
        (Some(dir), _) => kafka::replay::Sink::Files(dir.clone()),
        (None, Some(prefix)) => kafka::replay::Sink::Topics(prefix.clone()),
        (None, None) => kafka::replay::Sink::Suppressed,
    };
    let options = kafka::replay::ReplayOptions {
        state_dir: args.state_dir,
        until: args.until,
        partitions: args.partitions,
        sink,
        what_if_rates: args.what_if_rates,
        service,
        from_checkpoint: args.from_checkpoint.as_deref().map(kafka::replay::FromCheckpoint::parse),
    };
    let summary = kafka::replay::replay(&config, &options)?;
    if let Some(comparison) = &summary.what_if {
        print!("{}", comparison.table());
        std::fs::write(&args.what_if_csv, comparison.csv())
            .with_context(|| format!("writing {}", args.what_if_csv.display()))?;
        println!("what-if comparison written to {}", args.what_if_csv.display());
    }
    println!("{}", serde_json::to_string(&summary)?);
    runtime.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

pub fn reset(config: &Config, to_datetime: Option<Millis>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let to = to_datetime.map_or(kafka::reset::ResetTo::Earliest, kafka::reset::ResetTo::Datetime);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the wall clock is before 1970")?
        .as_millis() as i64;
    let plan = kafka::reset::plan(config, to, now)?;
    print!("{}", plan.describe(dry_run));
    if dry_run {
        println!("dry run: nothing changed");
    } else {
        kafka::reset::apply(config, &plan)?;
        println!("offsets committed for group {}", plan.group);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export(config: &Config, out: &Path, topics: &[String]) -> anyhow::Result<ExitCode> {
    let summary = kafka::export::export(config, out, topics)?;
    for (stream, (kept, duplicates)) in &summary.streams {
        println!("{stream}: {kept} records, {duplicates} duplicates dropped");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn balance(state_dir: &Path, startup: &str, currency: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let store = gpuledger::store::rocks::RocksStore::open_read_only(state_dir)?;
    let Some(mut balances) = gpuledger::store::load_balances(&store, startup)? else {
        anyhow::bail!("no start-up {startup:?} in {}", state_dir.display());
    };
    if let Some(currency) = currency {
        balances.currencies.retain(|block| block.currency == currency);
        anyhow::ensure!(!balances.currencies.is_empty(), "start-up {startup:?} has no figures in {currency}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&balances)?);
    } else {
        print!("{}", gpuledger::batch::balance_detail(&balances));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(state_dir: &Path, against: &Path, kafka_args: &KafkaArgs) -> anyhow::Result<ExitCode> {
    let left = gpuledger::store::rocks::RocksStore::open_read_only(state_dir)?;
    let right = gpuledger::store::rocks::RocksStore::open_read_only(against)?;
    let report = gpuledger::store::verify(&left, &right)?;
    for line in report.agreements.iter().chain(&report.differences) {
        println!("{line}");
    }
    if kafka_args.config.is_some() || kafka_args.bootstrap_servers.is_some() {
        let config = kafka_args.connect(None)?;
        for (partition, from, to) in &report.windows {
            println!("task {partition}: input records from offsets {from:?} to {to:?} (the first run's):");
            for line in kafka::cluster::input_records_between(&config, *partition, *from, *to)? {
                println!("  {line}");
            }
        }
    }
    if !report.differences.is_empty() {
        println!("diverged: {} of {} tasks differ", report.differences.len(), report.tasks);
        return Ok(ExitCode::FAILURE);
    }
    println!("consistent: {} tasks, no difference in offsets or output digests", report.tasks);
    Ok(ExitCode::SUCCESS)
}

pub fn table(balances: &Path) -> anyhow::Result<ExitCode> {
    let balances = gpuledger::batch::read_balances(balances)?;
    print!("{}", gpuledger::batch::balance_table(&balances));
    Ok(ExitCode::SUCCESS)
}
