//! Command-line interface. Precedence for server settings: flags > `SWARMD_*`
//! environment > `--config` file > defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// SwarmDirector: a swarm of AI agents behind an HTTP API that stays fast,
/// fair and correct when many requests arrive at once.
#[derive(Debug, Parser)]
// No bare `about`: it would take Cargo.toml's `description` instead of the
// doc comment above.
#[command(name = "swarmd", version, long_about = None)]
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
    /// Show `status` live, with per-pool rates, until Ctrl-C.
    ///
    /// Redraws the `status` picture every `--interval`, with tasks done,
    /// rejections and timeouts per second for each pool.
    Top(TopArgs),
    /// Measure a server (or any HTTP endpoint) under load.
    ///
    /// Closed or open loop, sweeps, HDR latency percentiles, JSON, Markdown
    /// and SVG results.
    Bench(Box<BenchArgs>),
    /// Print Markdown tables from `swarmd bench --out` results.
    BenchReport(BenchReportArgs),
    /// Print the SHA-256 of an API key, for `key_sha256` in `[[tenants]]`.
    HashKey(HashKeyArgs),
    /// Run a simulated LLM provider (OpenAI-compatible).
    ///
    /// It saturates, rate limits and fails like a real one, for benchmarks
    /// and agent tests.
    SimBackend(SimBackendArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SimBackendArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub(crate) listen: String,
    /// Model file (TOML: latency_ms, jitter_ms, capacity, hard_limit,
    /// retry_after_s, rpm, tpm, window_ms, error_rate, error_status, stall_rate, stall_ms,
    /// token_ms, reply_tokens, seed, sample_ms, [[schedule]], repeat_s,
    /// [[replies]] with contains and reply);
    /// the flags below override it.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Base service time, ms.
    #[arg(long)]
    pub(crate) latency_ms: Option<u64>,
    /// Uniform extra 0..=jitter, ms.
    #[arg(long)]
    pub(crate) jitter_ms: Option<u64>,
    /// Knee: past this many in flight, latency grows in proportion (0: none).
    #[arg(long)]
    pub(crate) capacity: Option<u64>,
    /// Past this many in flight, answer 429 with Retry-After (0: none).
    #[arg(long)]
    pub(crate) hard_limit: Option<u64>,
    /// Requests per window (a minute) before answering 429 with
    /// Retry-After and x-ratelimit-* headers (0: none).
    #[arg(long)]
    pub(crate) rpm: Option<u64>,
    /// Tokens (prompt + completion) per window before answering 429 (0: none).
    #[arg(long)]
    pub(crate) tpm: Option<u64>,
    /// Length of the --rpm/--tpm window, ms (fixed windows from start).
    #[arg(long)]
    pub(crate) window_ms: Option<u64>,
    /// Share of requests answered with an injected 5xx.
    #[arg(long)]
    pub(crate) error_rate: Option<f64>,
    /// Share of requests that stall for --stall-ms first.
    #[arg(long)]
    pub(crate) stall_rate: Option<f64>,
    /// How long a stall lasts, ms.
    #[arg(long)]
    pub(crate) stall_ms: Option<u64>,
    /// Streaming: gap between tokens, ms.
    #[arg(long)]
    pub(crate) token_ms: Option<u64>,
    /// Seed for the random draws (repeatable runs).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
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
    /// Serve on an address other machines reach although no API keys
    /// (`[[tenants]]`) are configured: anyone who reaches it may submit,
    /// read and cancel tasks. Without it, `serve` refuses such an address.
    #[arg(long, env = "SWARMD_ALLOW_UNAUTHENTICATED")]
    pub(crate) allow_unauthenticated: bool,
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
pub(crate) struct TopArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Time between polls (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s")]
    pub(crate) interval: String,
    /// Stop after this many frames [default: run until Ctrl-C].
    #[arg(long)]
    pub(crate) iterations: Option<u64>,
}

/// What `swarmd bench` starts for each step.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LaunchArg {
    /// Nothing: measure `--server`.
    None,
    /// A fresh `swarmd serve` (this binary).
    Swarmd,
    /// The axum hello-world ceiling (`cargo build --release -p swarm-hello`).
    Hello,
    /// `swarmd sim-backend`.
    SimBackend,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DatabaseArg {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on SWARMD_BENCH_PG_URL (or SWARMD_TEST_PG_URL).
    Postgres,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum E2eArg {
    /// Measure the acknowledgement only.
    None,
    /// `wait_ms` in each submission: the answer is the finished task.
    Wait,
    /// Poll each task until it ends.
    Poll,
    /// Follow each task's server-sent events until `result`.
    Sse,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Scenario file (TOML, see bench/scenarios/); the flags below override it.
    #[arg(long)]
    pub(crate) scenario: Option<PathBuf>,
    /// Name of the run (names the output files).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Target base URL, when nothing is launched [default: http://127.0.0.1:8080].
    #[arg(long, env = "SWARMD_URL")]
    pub(crate) server: Option<String>,
    /// API key (when the target has `[[tenants]]`).
    #[arg(long, env = "SWARMD_API_KEY")]
    pub(crate) api_key: Option<String>,
    /// Start a fresh target for each step.
    #[arg(long, value_enum)]
    pub(crate) launch: Option<LaunchArg>,
    /// Config file for a launched swarmd or sim-backend.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Database of a launched swarmd.
    #[arg(long, value_enum)]
    pub(crate) database: Option<DatabaseArg>,
    /// Closed loop: client counts, one step each (e.g. 1,10,100,1000,10000).
    #[arg(long, conflicts_with = "rate")]
    pub(crate) concurrency: Option<String>,
    /// Open loop: arrival rates per second, one step each (e.g. 100,1000).
    #[arg(long)]
    pub(crate) rate: Option<String>,
    /// Load before measuring, per step (e.g. 2s).
    #[arg(long)]
    pub(crate) warmup: Option<String>,
    /// Measured time per step (e.g. 10s).
    #[arg(long)]
    pub(crate) duration: Option<String>,
    /// Stop a step after this many measured requests (closed loop).
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    /// Open loop: most requests in flight.
    #[arg(long)]
    pub(crate) max_inflight: Option<usize>,
    /// Task type.
    #[arg(long = "type")]
    pub(crate) task_type: Option<String>,
    /// Agent input, a JSON object.
    #[arg(long)]
    pub(crate) args: Option<String>,
    /// Task priority.
    #[arg(long)]
    pub(crate) priority: Option<String>,
    /// Tenant (sent as X-Tenant).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Task deadline, ms.
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    /// Explicit department.
    #[arg(long)]
    pub(crate) agent: Option<String>,
    /// What end-to-end latency waits for [default: none, or wait with --wait-ms].
    #[arg(long, value_enum)]
    pub(crate) e2e: Option<E2eArg>,
    /// `wait_ms` sent with each task (implies --e2e wait).
    #[arg(long)]
    pub(crate) wait_ms: Option<u64>,
    /// Plain HTTP requests instead of task submissions (any server).
    #[arg(long)]
    pub(crate) raw: bool,
    /// --raw: method.
    #[arg(long, requires = "raw")]
    pub(crate) method: Option<String>,
    /// --raw: path and query.
    #[arg(long, requires = "raw")]
    pub(crate) path: Option<String>,
    /// --raw: JSON body.
    #[arg(long, requires = "raw")]
    pub(crate) body: Option<String>,
    /// Seed for the request mix.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Write <name>.json, <name>.md and <name>.svg here.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Print the results as JSON instead of a Markdown table.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress display.
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BenchReportArgs {
    /// Results files (`<name>.json` from `swarmd bench --out`), in the order
    /// to print them.
    #[arg(required = true)]
    pub(crate) results: Vec<PathBuf>,
    /// A results file to report throughput against (the hello ceiling).
    #[arg(long)]
    pub(crate) ceiling: Option<PathBuf>,
    /// Link each table's chart as `<DIR>/<name>.svg`.
    #[arg(long)]
    pub(crate) charts: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct HashKeyArgs {
    /// The key (read from standard input when absent).
    pub(crate) key: Option<String>,
}
