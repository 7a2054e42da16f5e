//! The `gpuledger` command line: a thin shell over the library (the
//! subcommands are in `cli`).

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("GPULEDGER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    if cli.json_logs() {
        logs.json().with_current_span(false).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            // A client's error may echo a property's value: never a secret.
            eprintln!("error: {}", gpuledger::config::redact(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}
