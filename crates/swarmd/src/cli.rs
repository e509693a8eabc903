//! Command-line interface. Precedence for server settings: flags > `SWARMD_*`
//! environment > `--config` file > defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// SwarmDirector: a swarm of AI agents behind an HTTP API that stays fast,
/// fair and correct when many requests arrive at once.
#[derive(Debug, Parser)]
#[command(name = "swarmd", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Submit a task to a running server and print it.
    Submit(SubmitArgs),
    /// Print a running server's pools, database pool and uptime.
    Status(StatusArgs),
    /// Load-test a running server: concurrent submissions, latency percentiles.
    Bench(BenchArgs),
    /// Print the SHA-256 of an API key, for `key_sha256` in `[[tenants]]`.
    HashKey(HashKeyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (TOML); see README "Configuration".
    #[arg(long, env = "SWARMD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SWARMD_LISTEN")]
    pub(crate) listen: Option<String>,
    /// `sqlite://path` or `postgres://…` [default: sqlite://swarmd.db].
    #[arg(long, env = "SWARMD_DATABASE_URL")]
    pub(crate) database_url: Option<String>,
    /// Database connection-pool size [default: 8].
    #[arg(long, env = "SWARMD_DB_MAX_CONNECTIONS")]
    pub(crate) db_max_connections: Option<u32>,
    /// This node's id in a shared database [default: `local` on SQLite,
    /// `<hostname>:<port>` on PostgreSQL].
    #[arg(long, env = "SWARMD_NODE_ID")]
    pub(crate) node_id: Option<String>,
    /// Log format.
    #[arg(long, env = "SWARMD_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub(crate) log_format: LogFormat,
    /// Log filter, `tracing` syntax (e.g. `info,swarm_engine=debug`).
    #[arg(long, env = "SWARMD_LOG", default_value = "info")]
    pub(crate) log: String,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct ClientArgs {
    /// Server base URL.
    #[arg(long, env = "SWARMD_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// API key (when the server has `[[tenants]]`).
    #[arg(long, env = "SWARMD_API_KEY")]
    pub(crate) api_key: Option<String>,
    /// Tenant name (only when the server has no keys).
    #[arg(long, env = "SWARMD_TENANT")]
    pub(crate) tenant: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Task type (`email`, `communications`, `sim`, `echo`, `general`, …).
    #[arg(long = "type")]
    pub(crate) task_type: String,
    /// Agent input, a JSON object.
    #[arg(long, default_value = "{}")]
    pub(crate) args: String,
    /// Title.
    #[arg(long)]
    pub(crate) title: Option<String>,
    /// Description.
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// critical | high | normal | low.
    #[arg(long)]
    pub(crate) priority: Option<String>,
    /// Route to this agent/department explicitly.
    #[arg(long)]
    pub(crate) agent: Option<String>,
    /// Deadline for the task, milliseconds.
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    /// Idempotency key (safe retries).
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Wait for the result (up to --wait-ms).
    #[arg(long)]
    pub(crate) wait: bool,
    /// How long --wait waits, milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) wait_ms: u64,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Print the raw JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Concurrent clients (closed loop: each sends its next request when the
    /// previous one is answered).
    #[arg(long, default_value_t = 10)]
    pub(crate) concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 1000)]
    pub(crate) requests: usize,
    /// Task type.
    #[arg(long = "type", default_value = "echo")]
    pub(crate) task_type: String,
    /// Agent input, a JSON object.
    #[arg(long, default_value = "{}")]
    pub(crate) args: String,
    /// Ask the server to hold each response until the task ends (up to this
    /// many ms), so response latency is end-to-end.
    #[arg(long)]
    pub(crate) wait_ms: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct HashKeyArgs {
    /// The key (read from standard input when absent).
    pub(crate) key: Option<String>,
}
