//! `swarmd`: run SwarmDirector, talk to it, measure it.
//!
//! Thin on purpose: parse arguments, set up logging, call into the crates.

mod bench;
mod cli;
mod client;
mod serve;
mod sim_backend;
mod telemetry;
mod top;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before any HTTP client (the CLI's, the OTLP exporter's, the agents'):
    // reqwest is built with `rustls-no-provider` and panics without one.
    swarm_agents::install_crypto_provider();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Serve(args) => serve::run(args).await,
            cli::Command::Submit(args) => client::submit(args).await,
            cli::Command::Status(args) => client::status(args).await,
            cli::Command::Top(args) => top::run(args).await,
            cli::Command::Bench(args) => bench::run(*args).await,
            cli::Command::BenchReport(args) => bench::report(args),
            cli::Command::HashKey(args) => client::hash_key(args),
            cli::Command::SimBackend(args) => sim_backend::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
