//! `process`: runs tasks on long-lived worker processes that speak JSON
//! lines on stdin/stdout, so an agent written in any language (typically an
//! existing Python one, see `examples/python-agent/`) plugs in without a
//! server of its own.
//!
//! # Protocol
//! One JSON object per line, UTF-8, `\n`-terminated, in both directions.
//! stdout is the protocol channel only; workers log to stderr.
//! 1. On start the worker prints `{"ready": true}` (other keys allowed) once
//!    it can take work, within `start_timeout_ms`. Lines before it that are
//!    not a ready line are logged and skipped (import-time banners).
//! 2. Per task it reads one line:
//!    `{"id", "type", "args", "title", "description", "deadline_ms",
//!    "request_id", "task_id", "tenant"}`; `deadline_ms` is the time left,
//!    in milliseconds, when the line was written (relative, so worker and
//!    engine clocks need not agree).
//! 3. It answers with zero or more `{"id", "progress": …}` lines (forwarded
//!    to [`AgentContext::progress`]) and then exactly one of
//!    `{"id", "result": …}` or
//!    `{"id", "error": {"code", "message", "retryable"?}}`.
//!
//! A worker has one task at a time. Anything else on stdout (not JSON, a
//! wrong `id`, a line over `max_line_bytes`, output while idle) fails the
//! task with `bad_worker_output` and the worker is replaced, because after a
//! protocol slip nothing later on that stream can be trusted.
//!
//! # Design
//! - One supervisor task per worker slot owns its process: it starts it,
//!   waits for the ready line, takes tasks from a shared bounded queue and
//!   restarts the process when it dies or is killed. Keeping the process in
//!   one task (rather than handing it to callers) means a caller's future
//!   being dropped can never leave a process half-used: the supervisor sees
//!   the reply channel close and kills the worker.
//! - Callers put a job in the queue (`max_waiting`; a full queue is
//!   [`AgentError::Overloaded`], back-pressure for the pool's limiter) and
//!   wait for the reply, the deadline or the cancellation token.
//! - A task whose worker exits fails with `worker_died` (retryable); one past
//!   its deadline gets [`AgentError::Timeout`]; a cancelled one gets no
//!   answer. In all three cases the worker is killed (SIGKILL, it may be
//!   stuck) and reaped, and a fresh one started at once. Processes that
//!   die on their own or fail to start are restarted after a backoff
//!   (100 ms doubling to 10 s, reset by a completed task) so a broken
//!   command does not spin.
//! - stdout and stderr are each drained by their own task, so a chatty
//!   worker never blocks on a full pipe; stderr lines are logged with
//!   `tracing` (target `swarm_agents::process::stderr`), stdout lines go to
//!   the supervisor through a small bounded channel.
//! - Only the worker process itself is killed, not processes it started;
//!   wrapper scripts should `exec` the real worker.
//! - Each worker runs in its own process group, so a terminal's Ctrl-C
//!   reaches the server, which drains (running tasks finish), and not the
//!   workers, which would otherwise die mid-task and be restarted.
//! - Processes are started on first use or by [`ProcessAgent::start`], not
//!   by [`ProcessAgent::new`], so configuration can be checked outside a
//!   Tokio runtime. Dropping the agent stops the workers: stdin is closed
//!   (a well-behaved worker exits), then they are killed after a grace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use swarm_core::FieldError;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::{Agent, AgentContext, AgentError, AgentInput, Progress};

/// Default `workers`.
pub const DEFAULT_WORKERS: usize = 1;
/// Most `workers`.
pub const MAX_WORKERS: usize = 256;
/// Default `start_timeout_ms`.
pub const DEFAULT_START_TIMEOUT_MS: u64 = 10_000;
/// Default `max_waiting`.
pub const DEFAULT_MAX_WAITING: usize = 1024;
/// Default `max_line_bytes` (16 MiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a stopping worker gets to exit after its stdin is closed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a killed or exiting process to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// Longest stderr line logged as one event; longer lines are split.
const STDERR_LINE_MAX: usize = 8 << 10;
/// Characters of a bad line quoted in errors and logs.
const EXCERPT_CHARS: usize = 200;

/// Configuration of a `process` agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Program and arguments, e.g. `["python3", "examples/python-agent/agent.py"]`.
    pub command: Vec<String>,
    /// Worker processes kept running (each does one task at a time).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Environment variables set for the workers.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables of the server's own environment passed on to the workers
    /// (when set); nothing else is: a worker starts with a cleared
    /// environment plus these and `env`, so the server's secrets (database
    /// URL, provider keys) do not reach code it runs. Default:
    /// [`DEFAULT_INHERIT_ENV`].
    #[serde(default = "default_inherit_env")]
    pub inherit_env: Vec<String>,
    /// Working directory of the workers (default: the server's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Time a new worker has to print its ready line.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// Tasks that may wait for a free worker; more are refused as overload.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: usize,
    /// Longest accepted stdout line, in bytes.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

/// The variables workers inherit unless `inherit_env` says otherwise.
pub const DEFAULT_INHERIT_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

fn default_inherit_env() -> Vec<String> {
    DEFAULT_INHERIT_ENV.iter().map(|v| v.to_string()).collect()
}

fn default_workers() -> usize {
    DEFAULT_WORKERS
}
fn default_start_timeout_ms() -> u64 {
    DEFAULT_START_TIMEOUT_MS
}
fn default_max_waiting() -> usize {
    DEFAULT_MAX_WAITING
}
fn default_max_line_bytes() -> usize {
    DEFAULT_MAX_LINE_BYTES
}

impl ProcessConfig {
    /// A configuration running `command` with every other field at its default.
    pub fn new<S: Into<String>>(command: impl IntoIterator<Item = S>) -> Self {
        Self {
            command: command.into_iter().map(Into::into).collect(),
            workers: DEFAULT_WORKERS,
            env: BTreeMap::new(),
            inherit_env: default_inherit_env(),
            cwd: None,
            start_timeout_ms: DEFAULT_START_TIMEOUT_MS,
            max_waiting: DEFAULT_MAX_WAITING,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// Checks every field; errors name it (`command`, `workers`, `env.KEY`, …)
    /// relative to this table, for the caller to nest under its own path.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self.command.first() {
            None => return Err(FieldError::invalid("command", "must name a program")),
            Some(p) if p.trim().is_empty() => {
                return Err(FieldError::invalid(
                    "command",
                    "the program must not be empty",
                ));
            }
            _ => {}
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(FieldError::invalid("command", "must not contain NUL bytes"));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(FieldError::invalid(
                "workers",
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
        let bad_name = |k: &str| k.is_empty() || k.contains('=') || k.contains('\0');
        for (i, k) in self.inherit_env.iter().enumerate() {
            if bad_name(k) {
                return Err(FieldError::invalid(
                    format!("inherit_env.{i}"),
                    "a variable name must be non-empty, without `=` or NUL",
                ));
            }
        }
        for (k, v) in &self.env {
            if bad_name(k) {
                return Err(FieldError::invalid(
                    format!("env.{k}"),
                    "a variable name must be non-empty, without `=` or NUL",
                ));
            }
            if v.contains('\0') {
                return Err(FieldError::invalid(
                    format!("env.{k}"),
                    "must not contain NUL bytes",
                ));
            }
        }
        if let Some(cwd) = &self.cwd
            && !cwd.is_dir()
        {
            return Err(FieldError::invalid(
                "cwd",
                format!("`{}` is not an existing directory", cwd.display()),
            ));
        }
        if !(1..=600_000).contains(&self.start_timeout_ms) {
            return Err(FieldError::invalid(
                "start_timeout_ms",
                "must be between 1 and 600000",
            ));
        }
        if self.max_waiting == 0 {
            return Err(FieldError::invalid("max_waiting", "must be at least 1"));
        }
        if self.max_line_bytes < 1024 {
            return Err(FieldError::invalid(
                "max_line_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

/// A snapshot of a [`ProcessAgent`]'s workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ProcessStats {
    /// Configured worker slots.
    pub workers: usize,
    /// Workers started and ready.
    pub alive: usize,
    /// Workers running a task.
    pub busy: usize,
    /// Tasks waiting for a free worker (including ones whose caller left
    /// and that a worker will skip).
    pub waiting: usize,
    /// Workers started to replace one that exited, was killed or failed to start.
    pub restarts: u64,
    /// Workers killed by the agent (deadline, cancel, bad output, start timeout).
    pub kills: u64,
    /// Process ids of the ready workers, by slot.
    pub pids: Vec<u32>,
}

/// A task handed to a supervisor.
struct Job {
    id: String,
    /// The request line without `deadline_ms`, which is filled in when written.
    request: Value,
    deadline: Instant,
    cancel: CancellationToken,
    progress: Progress,
    reply: oneshot::Sender<Result<Value, AgentError>>,
}

/// What the supervisors share.
struct Shared {
    cfg: ProcessConfig,
    jobs: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    shutdown: CancellationToken,
    alive: AtomicUsize,
    busy: AtomicUsize,
    restarts: AtomicU64,
    kills: AtomicU64,
    pids: Mutex<Vec<Option<u32>>>,
}

/// Runs tasks on a set of worker processes; see the module docs.
pub struct ProcessAgent {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
    started: Once,
    seq: AtomicU64,
}

impl ProcessAgent {
    /// Checks `cfg` (errors as [`ProcessConfig::validate`]); starts nothing.
    pub fn new(cfg: ProcessConfig) -> Result<Self, FieldError> {
        cfg.validate()?;
        let (tx, rx) = mpsc::channel(cfg.max_waiting);
        let workers = cfg.workers;
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                jobs: tokio::sync::Mutex::new(rx),
                shutdown: CancellationToken::new(),
                alive: AtomicUsize::new(0),
                busy: AtomicUsize::new(0),
                restarts: AtomicU64::new(0),
                kills: AtomicU64::new(0),
                pids: Mutex::new(vec![None; workers]),
            }),
            tx,
            started: Once::new(),
            seq: AtomicU64::new(0),
        })
    }

    /// Starts the worker processes (once; later calls do nothing). Called by
    /// the first [`run`](Agent::run); call it earlier to have the workers
    /// warm before the first task. Must be called inside a Tokio runtime.
    pub fn start(&self) {
        self.started.call_once(|| {
            for slot in 0..self.shared.cfg.workers {
                tokio::spawn(supervise(self.shared.clone(), slot));
            }
        });
    }

    /// Current worker counts.
    pub fn stats(&self) -> ProcessStats {
        let s = &self.shared;
        ProcessStats {
            workers: s.cfg.workers,
            alive: s.alive.load(Ordering::Relaxed),
            busy: s.busy.load(Ordering::Relaxed),
            waiting: s.cfg.max_waiting - self.tx.capacity(),
            restarts: s.restarts.load(Ordering::Relaxed),
            kills: s.kills.load(Ordering::Relaxed),
            pids: s.pids.lock().unwrap().iter().flatten().copied().collect(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ProcessConfig {
        &self.shared.cfg
    }
}

impl Drop for ProcessAgent {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl Agent for ProcessAgent {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn workers(&self) -> Option<ProcessStats> {
        Some(self.stats())
    }

    /// Only the shape: what `args` mean is the worker's business.
    fn validate(&self, args: &Value) -> Result<(), FieldError> {
        crate::agent::args_object(args)
    }

    fn run(
        self: Arc<Self>,
        ctx: AgentContext,
        input: AgentInput,
    ) -> BoxFuture<'static, Result<Value, AgentError>> {
        Box::pin(async move {
            self.start();
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let id = format!("{}.{seq}", ctx.task_id);
            let request = input.to_wire(&id, &ctx);
            let (reply, answer) = oneshot::channel();
            let job = Job {
                id,
                request,
                deadline: ctx.deadline,
                cancel: ctx.cancel.clone(),
                progress: ctx.progress.clone(),
                reply,
            };
            if let Err(e) = self.tx.try_send(job) {
                return Err(match e {
                    mpsc::error::TrySendError::Full(_) => AgentError::Overloaded {
                        message: format!(
                            "all {} workers are busy and {} tasks are waiting",
                            self.shared.cfg.workers, self.shared.cfg.max_waiting
                        ),
                        retry_after: None,
                    },
                    mpsc::error::TrySendError::Closed(_) => {
                        AgentError::failed("shutting_down", "the worker pool has stopped")
                    }
                });
            }
            // Leaving early drops `answer`; the supervisor sees that and
            // skips the job or kills the worker running it.
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => Err(AgentError::cancelled()),
                r = answer => r.unwrap_or_else(|_| {
                    Err(AgentError::failed("shutting_down", "the worker pool has stopped"))
                }),
                _ = tokio::time::sleep_until(ctx.deadline) => Err(AgentError::Timeout {
                    message: "no worker answered before the deadline".into(),
                }),
            }
        })
    }
}

/// Why a worker is being let go.
enum End {
    /// The agent is being dropped.
    Shutdown,
    /// The process exited (or closed stdout) on its own.
    Died(String),
    /// We kill it: its task was cancelled, timed out or abandoned.
    Abandoned(&'static str),
    /// We kill it: it broke the protocol.
    Broken(String),
}

/// What one exchange comes to: the reply for the caller (none when it has
/// gone) and, when the worker cannot be used again, why.
type Outcome = (Option<Result<Value, AgentError>>, Option<End>);

/// Keeps one worker slot filled until shutdown.
async fn supervise(shared: Arc<Shared>, slot: usize) {
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    while !shared.shutdown.is_cancelled() {
        if !first {
            shared.restarts.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let wait = match Worker::start(&shared, slot).await {
            Ok(mut w) => {
                shared.alive.fetch_add(1, Ordering::Relaxed);
                shared.pids.lock().unwrap()[slot] = Some(w.pid);
                info!(worker = slot, pid = w.pid, "process worker ready");
                let end = w.serve(&shared, &mut backoff).await;
                shared.pids.lock().unwrap()[slot] = None;
                shared.alive.fetch_sub(1, Ordering::Relaxed);
                let pid = w.pid;
                match end {
                    End::Shutdown => {
                        w.stop_gracefully().await;
                        return;
                    }
                    End::Died(why) => {
                        let status = w.reap().await;
                        if shared.shutdown.is_cancelled() {
                            // We are stopping: no warning, no restart.
                            debug!(worker = slot, pid, "process worker {why} ({status})");
                            return;
                        }
                        warn!(
                            worker = slot,
                            pid, "process worker {why} ({status}); restarting in {backoff:?}"
                        );
                        true
                    }
                    End::Abandoned(why) => {
                        shared.kills.fetch_add(1, Ordering::Relaxed);
                        let status = w.kill().await;
                        info!(
                            worker = slot,
                            pid, "process worker killed: {why} ({status}); replacing it"
                        );
                        false
                    }
                    End::Broken(why) => {
                        shared.kills.fetch_add(1, Ordering::Relaxed);
                        let status = w.kill().await;
                        warn!(
                            worker = slot,
                            pid,
                            "process worker killed: {why} ({status}); restarting in {backoff:?}"
                        );
                        true
                    }
                }
            }
            Err(StartError::Shutdown) => return,
            Err(StartError::Failed { why, killed }) => {
                if killed {
                    shared.kills.fetch_add(1, Ordering::Relaxed);
                }
                warn!(
                    worker = slot,
                    "process worker failed to start: {why}; retrying in {backoff:?}"
                );
                true
            }
        };
        if wait {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

enum StartError {
    Shutdown,
    Failed { why: String, killed: bool },
}

/// One line from a worker's stdout, or why it could not be read.
type Line = Result<String, String>;

/// A running worker process.
struct Worker {
    slot: usize,
    pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Closed at end of stream.
    lines: mpsc::Receiver<Line>,
}

impl Worker {
    /// Spawns the process and waits for its ready line.
    async fn start(shared: &Shared, slot: usize) -> Result<Self, StartError> {
        let cfg = &shared.cfg;
        let mut cmd = Command::new(&cfg.command[0]);
        cmd.args(&cfg.command[1..])
            .env_clear()
            .envs(
                cfg.inherit_env
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
            )
            .envs(&cfg.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // If the supervisor is dropped (runtime shutdown) the process goes too.
            .kill_on_drop(true);
        // Its own process group: Ctrl-C in a terminal signals the whole
        // foreground group, and a worker killed by it mid-task would fail
        // its task and be logged as a crash while the server is draining.
        // The server stops its workers itself.
        #[cfg(unix)]
        cmd.process_group(0);
        if let Some(cwd) = &cfg.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().map_err(|e| StartError::Failed {
            why: format!("cannot run `{}`: {e}", cfg.command[0]),
            killed: false,
        })?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel(16);
        tokio::spawn(read_lines(stdout, cfg.max_line_bytes, tx));
        tokio::spawn(log_stderr(stderr, slot, pid));
        let mut w = Worker {
            slot,
            pid,
            stdin: child.stdin.take(),
            child,
            lines,
        };
        let timeout = Duration::from_millis(cfg.start_timeout_ms);
        let ready = tokio::select! {
            _ = shared.shutdown.cancelled() => {
                w.kill().await;
                return Err(StartError::Shutdown);
            }
            r = tokio::time::timeout(timeout, w.wait_ready()) => r,
        };
        match ready {
            Ok(Ok(())) => Ok(w),
            Ok(Err(why)) => {
                let status = w.kill().await;
                Err(StartError::Failed {
                    why: format!("pid {pid}: {why} ({status})"),
                    killed: false,
                })
            }
            Err(_) => {
                let status = w.kill().await;
                Err(StartError::Failed {
                    why: format!(
                        "pid {pid}: no ready line within {} ms ({status})",
                        cfg.start_timeout_ms
                    ),
                    killed: true,
                })
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        loop {
            match self.lines.recv().await {
                None => return Err("exited before its ready line".into()),
                Some(Err(e)) => return Err(e),
                Some(Ok(line)) => {
                    let v: Option<Value> = serde_json::from_str(&line).ok();
                    if v.as_ref().and_then(|v| v.get("ready")) == Some(&Value::Bool(true)) {
                        return Ok(());
                    }
                    warn!(
                        worker = self.slot,
                        pid = self.pid,
                        "skipping output before the ready line: {}",
                        excerpt(&line)
                    );
                }
            }
        }
    }

    /// Takes jobs until the worker has to go.
    async fn serve(&mut self, shared: &Shared, backoff: &mut Duration) -> End {
        loop {
            let mut job = tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return End::Shutdown,
                line = self.lines.recv() => return match line {
                    None => End::Died("exited while idle".into()),
                    Some(Err(e)) => End::Broken(e),
                    Some(Ok(l)) => End::Broken(format!("wrote while idle: {}", excerpt(&l))),
                },
                job = async { shared.jobs.lock().await.recv().await } => match job {
                    Some(job) => job,
                    None => return End::Shutdown,
                },
            };
            if job.reply.is_closed() || job.cancel.is_cancelled() {
                continue; // its caller has gone
            }
            if Instant::now() >= job.deadline {
                let _ = job.reply.send(Err(AgentError::Timeout {
                    message: "the deadline passed before a worker was free".into(),
                }));
                continue;
            }
            shared.busy.fetch_add(1, Ordering::Relaxed);
            let (reply, end) = self.exchange(&mut job).await;
            // No longer busy before the caller hears back, so a caller that
            // reads the stats after its answer sees the worker free.
            shared.busy.fetch_sub(1, Ordering::Relaxed);
            if let Some(reply) = reply {
                let _ = job.reply.send(reply);
            }
            match end {
                None => *backoff = BACKOFF_MIN,
                Some(end) => return end,
            }
        }
    }

    /// Runs one job: writes the request, relays progress, reads the answer.
    /// Returns the reply for the caller (none when it has gone) and, when
    /// the worker cannot be used again, why.
    async fn exchange(&mut self, job: &mut Job) -> Outcome {
        let mut request = std::mem::take(&mut job.request);
        request["deadline_ms"] = json!(ms_until(job.deadline));
        let mut line = serde_json::to_vec(&request).expect("a Value serialises");
        line.push(b'\n');
        let stdin = self.stdin.as_mut().expect("stdin is open while serving");
        let write = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        match watch(job, write).await {
            Watched::Done(Ok(())) => {}
            Watched::Done(Err(e)) => {
                let why = format!("closed its stdin ({e})");
                let msg = self.died_message(&why).await;
                let reply = Err(AgentError::failed_retryable("worker_died", msg));
                return (Some(reply), Some(End::Died(why)));
            }
            other => return self.abandon(other),
        }
        loop {
            let line = match watch(job, self.lines.recv()).await {
                Watched::Done(line) => line,
                other => return self.abandon(other),
            };
            let line = match line {
                Some(Ok(l)) => l,
                None => {
                    let why = "exited while running a task";
                    let msg = self.died_message(why).await;
                    let reply = Err(AgentError::failed_retryable("worker_died", msg));
                    return (Some(reply), Some(End::Died(why.into())));
                }
                Some(Err(e)) => return self.bad_output(e),
            };
            if line.trim().is_empty() {
                continue;
            }
            match parse_reply(&line, &job.id) {
                Ok(Reply::Progress(p)) => job.progress.report(p),
                Ok(Reply::Done(r)) => return (Some(r), None),
                Err(why) => return self.bad_output(format!("{why}: {}", excerpt(&line))),
            }
        }
    }

    /// The worker broke the protocol: fail the task, replace the worker.
    fn bad_output(&mut self, why: String) -> Outcome {
        let _ = self.child.start_kill();
        let msg = format!(
            "worker {} (pid {}) wrote bad output: {why}",
            self.slot, self.pid
        );
        let reply = Err(AgentError::failed("bad_worker_output", msg));
        (Some(reply), Some(End::Broken(why)))
    }

    /// The task stopped waiting: kill at once (the worker may be stuck in
    /// it) and, past the deadline, say so.
    fn abandon<T>(&mut self, how: Watched<T>) -> Outcome {
        let _ = self.child.start_kill();
        match how {
            Watched::Deadline => {
                let reply = Err(AgentError::Timeout {
                    message: format!(
                        "worker {} (pid {}) did not answer before the deadline; it was killed",
                        self.slot, self.pid
                    ),
                });
                (Some(reply), Some(End::Abandoned("deadline passed")))
            }
            Watched::Cancelled => (None, Some(End::Abandoned("task cancelled"))),
            Watched::CallerGone | Watched::Done(_) => {
                (None, Some(End::Abandoned("caller gave up")))
            }
        }
    }

    /// The message for a task whose worker died, with its exit status when
    /// it comes promptly.
    async fn died_message(&mut self, why: &str) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await {
            Ok(Ok(s)) => describe(s),
            _ => "still running".into(),
        };
        format!("worker {} (pid {}) {why} ({status})", self.slot, self.pid)
    }

    async fn kill(&mut self) -> String {
        let _ = self.child.start_kill();
        self.reap().await
    }

    /// Waits for the process to end, killing it if it does not.
    async fn reap(&mut self) -> String {
        match tokio::time::timeout(REAP_WAIT, self.child.wait()).await {
            Ok(Ok(s)) => describe(s),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                match self.child.wait().await {
                    Ok(s) => describe(s),
                    Err(e) => format!("wait failed: {e}"),
                }
            }
        }
    }

    /// Closes stdin (the worker's cue to exit), then kills after a grace.
    async fn stop_gracefully(&mut self) {
        self.stdin = None;
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
        debug!(worker = self.slot, pid = self.pid, "process worker stopped");
    }
}

enum Watched<T> {
    Done(T),
    Cancelled,
    CallerGone,
    Deadline,
}

/// Runs `fut` until it finishes or the job stops waiting for it.
async fn watch<F: Future>(job: &mut Job, fut: F) -> Watched<F::Output> {
    tokio::select! {
        biased;
        _ = job.cancel.cancelled() => Watched::Cancelled,
        _ = job.reply.closed() => Watched::CallerGone,
        _ = tokio::time::sleep_until(job.deadline) => Watched::Deadline,
        r = fut => Watched::Done(r),
    }
}

enum Reply {
    Progress(Value),
    Done(Result<Value, AgentError>),
}

/// Parses one line a worker wrote while running task `id`.
fn parse_reply(line: &str, id: &str) -> Result<Reply, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut obj) = v else {
        return Err("not a JSON object".into());
    };
    match obj.get("id") {
        Some(Value::String(s)) if s == id => {}
        Some(other) => return Err(format!("`id` {other} is not the task's `{id}`")),
        None => return Err("no `id`".into()),
    }
    if let Some(p) = obj.remove("progress") {
        return Ok(Reply::Progress(p));
    }
    if let Some(r) = obj.remove("result") {
        return Ok(Reply::Done(Ok(r)));
    }
    let Some(e) = obj.remove("error") else {
        return Err("none of `progress`, `result`, `error`".into());
    };
    AgentError::from_wire(&e).map(|e| Reply::Done(Err(e)))
}

/// Forwards stdout lines (without the newline) until end of stream, an
/// over-long line or invalid UTF-8 (reported as the last item).
async fn read_lines(stdout: impl AsyncRead + Unpin, max: usize, tx: mpsc::Sender<Line>) {
    let mut r = BufReader::new(stdout);
    loop {
        let mut buf = Vec::new();
        // `take` bounds the buffer, so a worker cannot grow our memory
        // without limit by never writing a newline.
        let n = match (&mut r)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(format!("reading stdout failed: {e}"))).await;
                return;
            }
        };
        if n == 0 {
            return;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > max {
            let _ = tx
                .send(Err(format!("a line is longer than {max} bytes")))
                .await;
            return;
        }
        let line = match String::from_utf8(buf) {
            Ok(l) => Ok(l),
            Err(_) => Err("a line is not UTF-8".to_string()),
        };
        let stop = line.is_err();
        if tx.send(line).await.is_err() || stop {
            return;
        }
    }
}

/// Logs a worker's stderr line by line; always drains, so the worker never
/// blocks on a full pipe.
async fn log_stderr(stderr: impl AsyncRead + Unpin, slot: usize, pid: u32) {
    let mut r = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut r)
            .take(STDERR_LINE_MAX as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end();
                if !text.is_empty() {
                    info!(target: "swarm_agents::process::stderr", worker = slot, pid, "{text}");
                }
            }
        }
    }
}

fn ms_until(deadline: Instant) -> u64 {
    deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

fn describe(s: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match s.code() {
        Some(c) => format!("exit status {c}"),
        None => s.to_string(),
    }
}

fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(EXCERPT_CHARS).collect();
    if s.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    format!("`{}`", out.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(cfg: ProcessConfig) -> String {
        cfg.validate().unwrap_err().field.unwrap()
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: ProcessConfig = serde_json::from_value(json!({
            "command": ["python3", "agent.py"]
        }))
        .unwrap();
        assert_eq!(cfg, ProcessConfig::new(["python3", "agent.py"]));
        cfg.validate().unwrap();
        let err = serde_json::from_value::<ProcessConfig>(json!({
            "command": ["x"], "worker": 2
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `worker`"), "{err}");
    }

    #[test]
    fn config_errors_name_the_field() {
        let base = || ProcessConfig::new(["python3"]);
        assert_eq!(field(ProcessConfig::new(Vec::<String>::new())), "command");
        assert_eq!(field(ProcessConfig::new([" "])), "command");
        assert_eq!(
            field(ProcessConfig {
                workers: 0,
                ..base()
            }),
            "workers"
        );
        assert_eq!(
            field(ProcessConfig {
                workers: MAX_WORKERS + 1,
                ..base()
            }),
            "workers"
        );
        let mut env = BTreeMap::new();
        env.insert("A=B".into(), "x".into());
        assert_eq!(field(ProcessConfig { env, ..base() }), "env.A=B");
        assert_eq!(
            field(ProcessConfig {
                cwd: Some("/surely/not/a/dir".into()),
                ..base()
            }),
            "cwd"
        );
        assert_eq!(
            field(ProcessConfig {
                start_timeout_ms: 0,
                ..base()
            }),
            "start_timeout_ms"
        );
        assert_eq!(
            field(ProcessConfig {
                max_waiting: 0,
                ..base()
            }),
            "max_waiting"
        );
        assert_eq!(
            field(ProcessConfig {
                max_line_bytes: 10,
                ..base()
            }),
            "max_line_bytes"
        );
    }

    #[test]
    fn replies_are_parsed_strictly() {
        let done = |l: &str| match parse_reply(l, "t.1") {
            Ok(Reply::Done(r)) => r,
            Ok(Reply::Progress(_)) => panic!("progress"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            done(r#"{"id":"t.1","result":{"a":1}}"#),
            Ok(json!({"a": 1}))
        );
        assert_eq!(
            done(r#"{"id":"t.1","error":{"code":"nope","message":"m","retryable":true}}"#),
            Err(AgentError::failed_retryable("nope", "m"))
        );
        assert_eq!(
            done(r#"{"id":"t.1","error":{"code":"nope"}}"#),
            Err(AgentError::failed("nope", "nope"))
        );
        assert!(matches!(
            parse_reply(r#"{"id":"t.1","progress":{"step":1}}"#, "t.1"),
            Ok(Reply::Progress(p)) if p == json!({"step": 1})
        ));
        for bad in [
            "hello",
            "[1]",
            r#"{"result":1}"#,
            r#"{"id":"t.2","result":1}"#,
            r#"{"id":"t.1"}"#,
            r#"{"id":"t.1","error":{"message":"m"}}"#,
            r#"{"id":"t.1","error":{"code":"c","retryable":"yes"}}"#,
        ] {
            assert!(parse_reply(bad, "t.1").is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn long_lines_and_bad_utf8_end_the_stream() {
        let (tx, mut rx) = mpsc::channel(16);
        let input: &[u8] = b"short\nxxxxxxxxxxxxxxxxxxxx\nnever read\n";
        tokio::spawn(read_lines(input, 10, tx));
        assert_eq!(rx.recv().await, Some(Ok("short".into())));
        assert!(matches!(rx.recv().await, Some(Err(e)) if e.contains("longer than 10")));
        assert_eq!(rx.recv().await, None);

        let (tx, mut rx) = mpsc::channel(16);
        let input: &[u8] = b"ok\n\xff\xfe\nnever\n";
        tokio::spawn(read_lines(input, 100, tx));
        assert_eq!(rx.recv().await, Some(Ok("ok".into())));
        assert!(matches!(rx.recv().await, Some(Err(e)) if e.contains("UTF-8")));
        assert_eq!(rx.recv().await, None);

        // A last line without a newline is still a line.
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(read_lines(&b"a\nb"[..], 100, tx));
        assert_eq!(rx.recv().await, Some(Ok("a".into())));
        assert_eq!(rx.recv().await, Some(Ok("b".into())));
        assert_eq!(rx.recv().await, None);
    }
}
