//! The accept loop and per-connection lifecycle: connection limit, header
//! read / idle / body read timeouts, graceful drain. See the crate docs for
//! why this replaces `axum::serve`.
//!
//! # Timeouts per connection
//!
//! A connection alternates between two phases:
//!
//! - **waiting for a request head** (no request in flight): from accept, or
//!   from the end of the previous response, until hyper hands the parsed head
//!   to the service;
//! - **busy** (at least one request in flight): from the parsed head until
//!   the response body has been written out (or dropped). Long `wait_ms`
//!   requests and server-sent event streams are busy, never idle.
//!
//! While waiting, one deadline applies:
//!
//! | situation | deadline | on expiry |
//! | --- | --- | --- |
//! | no request yet on this connection | accept + `header_read_timeout_ms` | dropped |
//! | a later request, no byte of it yet | end of last response + `idle_timeout_ms` | graceful close |
//! | a later request, some bytes of it read | first byte + `header_read_timeout_ms` | dropped |
//!
//! A per-connection watchdog enforces these from [`Activity`], which the
//! socket wrapper ([`TrackedIo`]: first byte read) and the service wrapper
//! ([`ConnService`]: head parsed, response finished) keep up to date.
//!
//! hyper's own `header_read_timeout` is set as well, but only as a backstop
//! (`header_read_timeout + idle_timeout`): in hyper 1.12 its timer starts
//! when hyper begins to read a head, which is at accept *and again as soon as
//! the previous response is written* (`State::idle` sets `notify_read`; see
//! hyperium/hyper#3185 and #3828). It therefore counts idle keep-alive time
//! as header time, and with our defaults (header 10 s, idle 60 s) it would
//! close idle keep-alive connections after 10 s.
//!
//! The request body has its own deadline, `body_read_timeout_ms` from the
//! parsed head ([`tower_http::timeout::DeadlineBody`], a total deadline, so a
//! client trickling one byte at a time cannot stretch it). A handler whose
//! body read fails that way answers 408 `request_timeout` with the JSON error
//! envelope and `Connection: close`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use swarm_core::config::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::{DeadlineBody, TimeoutError};
use tracing::{debug, error, trace, warn};

use crate::error::ApiError;

/// Connection counters of one server (see [`crate::AppState::connections`]).
#[derive(Debug, Default)]
pub struct ConnStats {
    open: AtomicU64,
    accepted: AtomicU64,
    closed_header_timeout: AtomicU64,
    closed_idle_timeout: AtomicU64,
    body_timeouts: AtomicU64,
    closed_write_timeout: AtomicU64,
    early_too_large: AtomicU64,
    accept_errors: AtomicU64,
}

/// A point-in-time copy of [`ConnStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConnCounts {
    /// Connections being served now.
    pub open: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections dropped because a request head did not arrive in time.
    pub closed_header_timeout: u64,
    /// Keep-alive connections closed for being idle.
    pub closed_idle_timeout: u64,
    /// Requests answered 408 because their body did not arrive in time.
    pub body_timeouts: u64,
    /// Connections cut because a response made no write progress for
    /// `server.write_timeout_ms` (the client stopped reading).
    pub closed_write_timeout: u64,
    /// Requests answered 413 from their `Content-Length`, body unread.
    pub early_too_large: u64,
    /// `accept()` failures other than a peer that went away (e.g. `EMFILE`).
    pub accept_errors: u64,
}

impl ConnStats {
    /// The counters now.
    pub fn snapshot(&self) -> ConnCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnCounts {
            open: g(&self.open),
            accepted: g(&self.accepted),
            closed_header_timeout: g(&self.closed_header_timeout),
            closed_idle_timeout: g(&self.closed_idle_timeout),
            body_timeouts: g(&self.body_timeouts),
            closed_write_timeout: g(&self.closed_write_timeout),
            early_too_large: g(&self.early_too_large),
            accept_errors: g(&self.accept_errors),
        }
    }

    fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }
}

/// The server's connection settings; a zero timeout disables it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    header: Option<Duration>,
    idle: Option<Duration>,
    body: Option<Duration>,
    write: Option<Duration>,
    max_connections: usize,
    max_body_bytes: usize,
}

impl Limits {
    pub(crate) fn from_config(c: &ServerConfig) -> Self {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        Self {
            header: ms(c.header_read_timeout_ms),
            idle: ms(c.idle_timeout_ms),
            body: ms(c.body_read_timeout_ms),
            write: ms(c.write_timeout_ms),
            max_connections: c.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            max_body_bytes: c.max_body_bytes,
        }
    }

    /// hyper's own header timer, a backstop that never fires before ours.
    fn hyper_backstop(&self) -> Option<Duration> {
        match (self.header, self.idle) {
            (Some(h), Some(i)) => Some(h.saturating_add(i)),
            // Without an idle timeout hyper's timer would cut idle
            // keep-alive connections; the watchdog alone bounds heads.
            _ => None,
        }
    }
}

/// Everything a connection task needs besides its socket.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) limits: Limits,
    pub(crate) stats: Arc<ConnStats>,
    /// Fired when shutdown begins: connections close once idle.
    pub(crate) closing: CancellationToken,
    /// Fired when the drain grace has passed: connections are dropped.
    pub(crate) force: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// Accepts connections until the future is dropped, at most
/// `max_connections` at once: a permit is taken *before* `accept()`, so
/// excess connections wait in the kernel's backlog rather than being
/// accepted and starved.
pub(crate) async fn accept_loop(listener: &TcpListener, shared: Shared) {
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    loop {
        let permit = match permits.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => return,
        };
        let (stream, remote) = loop {
            match listener.accept().await {
                Ok(conn) => break conn,
                Err(e) if is_connection_error(&e) => {
                    trace!(error = %e, "peer went away before accept");
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the condition may pass
                    // once connections close; keep the loop alive.
                    ConnStats::bump(&shared.stats.accept_errors);
                    error!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        ConnStats::bump(&shared.stats.accepted);
        let shared2 = shared.clone();
        shared
            .tracker
            .spawn(serve_connection(stream, remote, shared2, permit));
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Decrements `open` when the connection task ends, however it ends.
struct OpenGuard(Arc<ConnStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Header,
    Idle,
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Shared,
    _permit: OwnedSemaphorePermit,
) {
    shared.stats.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(shared.stats.clone());
    if let Err(e) = stream.set_nodelay(true) {
        trace!(error = %e, "set_nodelay failed");
    }
    let limits = shared.limits;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        activity: activity.clone(),
        write_timeout: limits.write,
        stalled: None,
        stats: shared.stats.clone(),
    });
    let service = TowerToHyperService::new(ConnService {
        router: shared.router.clone(),
        activity: activity.clone(),
        remote,
        body_timeout: limits.body,
        max_body_bytes: limits.max_body_bytes,
        stats: shared.stats.clone(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Bounds what one connection's request head may cost (431 beyond);
        // hyper's default allows about 400 KiB.
        .max_buf_size(READ_BUF_LIMIT)
        .header_read_timeout(limits.hyper_backstop());
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut sleep = pin!(tokio::time::sleep_until(Instant::now()));
    // Once graceful shutdown has begun (idle or server shutdown), only the
    // header deadline still matters: a half-sent head is not waited for.
    let mut draining = false;
    loop {
        let due = activity.deadline(&limits, draining);
        if let Some((at, _)) = due {
            sleep.as_mut().reset(at);
        }
        let notified = activity.wake.notified();
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    if e.is_timeout() {
                        ConnStats::bump(&shared.stats.closed_header_timeout);
                    }
                    debug!(%remote, error = %e, "connection ended with an error");
                }
                break;
            }
            () = notified => {}
            () = sleep.as_mut(), if due.is_some() => {
                // Re-check: activity may have moved the deadline.
                match activity.deadline(&limits, draining) {
                    Some((at, Expiry::Header)) if at <= Instant::now() => {
                        ConnStats::bump(&shared.stats.closed_header_timeout);
                        debug!(%remote, "no request head in time; closing");
                        break;
                    }
                    Some((at, Expiry::Idle)) if at <= Instant::now() => {
                        ConnStats::bump(&shared.stats.closed_idle_timeout);
                        trace!(%remote, "idle keep-alive connection; closing");
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                    _ => {}
                }
            }
            () = shared.closing.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = shared.force.cancelled() => {
                debug!(%remote, "drain grace over; dropping connection");
                break;
            }
        }
    }
}

/// What the watchdog of one connection knows. Times are milliseconds since
/// `epoch` (the accept).
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Requests whose head is parsed and whose response is not finished.
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    started: AtomicU64,
    /// When `in_flight` last fell to zero.
    idle_since: AtomicU64,
    /// First byte read while nothing was in flight, plus one; 0 = none.
    head_started: AtomicU64,
    /// Wakes the watchdog when a deadline may have moved earlier or appeared.
    wake: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64, plus: Duration) -> Instant {
        self.epoch + Duration::from_millis(ms) + plus
    }

    /// Bytes arrived on the socket.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
            && self
                .head_started
                .compare_exchange(0, self.now_ms() + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// A request head was parsed; the returned guard ends the request.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The deadline that applies now, if any.
    fn deadline(&self, limits: &Limits, draining: bool) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.started.load(Ordering::Relaxed) == 0 {
            return limits.header.map(|h| (self.at(0, h), Expiry::Header));
        }
        match self.head_started.load(Ordering::Acquire) {
            0 if draining => None,
            0 => limits.idle.map(|i| {
                let since = self.idle_since.load(Ordering::Acquire);
                (self.at(since, i), Expiry::Idle)
            }),
            first => limits
                .header
                .map(|h| (self.at(first - 1, h), Expiry::Header)),
        }
    }
}

/// One request in flight; dropping it (when hyper has written or dropped the
/// response body, or dropped the request) may start the idle phase.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.idle_since.store(a.now_ms(), Ordering::Release);
            a.head_started.store(0, Ordering::Release);
            a.wake.notify_one();
        }
    }
}

/// hyper's `max_buf_size`: a head still incomplete once this much is
/// buffered is refused with 431. One read may land past it (hyper reads
/// into the buffer's whole spare capacity, which grows by doubling), so the
/// read buffer of a connection stays within twice this: 64 KiB.
const READ_BUF_LIMIT: usize = 32 * 1024;

/// The TCP stream, reporting reads to [`Activity`] and failing writes that
/// make no progress for `write_timeout`.
///
/// A client that stops reading leaves hyper holding the rest of the
/// response (a list page, an event stream) for as long as the socket stays
/// open; the idle and header timers never fire because a request is in
/// flight. The write timer starts when a write would block and is reset by
/// any progress, so a slow but moving reader is served and a stalled one is
/// cut off: the write fails with `TimedOut`, hyper ends the connection, and
/// the response is freed.
struct TrackedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
    write_timeout: Option<Duration>,
    /// Since when writes have been blocked, as a timer.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<ConnStats>,
}

impl TrackedIo {
    /// Passes a write's outcome through, arming or clearing the stall timer.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if res.is_ready() {
            self.stalled = None;
            return res;
        }
        let Some(limit) = self.write_timeout else {
            return res;
        };
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            ConnStats::bump(&self.stats.closed_write_timeout);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no write progress for {} ms (server.write_timeout_ms)",
                    limit.as_millis()
                ),
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_write(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as one connection sees it: adds `ConnectInfo`, the body
/// deadline, and in-flight tracking.
#[derive(Clone)]
struct ConnService {
    router: Router,
    activity: Arc<Activity>,
    remote: SocketAddr,
    body_timeout: Option<Duration>,
    max_body_bytes: usize,
    stats: Arc<ConnStats>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Request<Incoming>> for ConnService {
    type Response = Response<GuardedBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.begin();
        // A body that will be refused is refused before a byte of it is
        // read: hyper sends `100 Continue` only once the body is polled, so
        // a client that asked for it learns the answer without uploading.
        if declared_length(&req).is_some_and(|n| n > self.max_body_bytes as u64) {
            ConnStats::bump(&self.stats.early_too_large);
            let resp = too_large_response(self.max_body_bytes);
            return Box::pin(async move {
                Ok(resp.map(|inner| GuardedBody {
                    inner,
                    _guard: guard,
                }))
            });
        }
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.remote));
        let (body, timed_out) = match self.body_timeout {
            Some(d) if !http_body::Body::is_end_stream(&body) => {
                let flag = Arc::new(AtomicBool::new(false));
                let body = Body::new(FlagBody {
                    inner: Body::new(DeadlineBody::new(d, body)),
                    timed_out: flag.clone(),
                });
                (body, Some((flag, d)))
            }
            _ => (Body::new(body), None),
        };
        let fut = self
            .router
            .clone()
            .oneshot(Request::from_parts(parts, body));
        let stats = self.stats.clone();
        Box::pin(async move {
            let mut resp = match fut.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if let Some((flag, d)) = timed_out
                && flag.load(Ordering::Acquire)
            {
                ConnStats::bump(&stats.body_timeouts);
                resp = body_timeout_response(d);
            }
            Ok(resp.map(|inner| GuardedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// The request's `Content-Length`, when it has a valid one.
fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// 413 with the error envelope; the connection closes after it (the body
/// is unread).
fn too_large_response(max: usize) -> Response<Body> {
    let mut resp = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than server.max_body_bytes ({max} bytes)"),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// 408 with the error envelope; the connection closes after it (the rest of
/// the body is still unread).
fn body_timeout_response(d: Duration) -> Response<Body> {
    let mut resp = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} ms (server.body_read_timeout_ms)",
            d.as_millis()
        ),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The request body, noting when it failed for want of time.
struct FlagBody {
    inner: Body,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for FlagBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let res = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Err(e)) = &res
            && is_body_timeout(e)
        {
            self.timed_out.store(true, Ordering::Release);
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<TimeoutError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The response body, holding the request's [`InFlight`] until it is
/// written out or dropped (so a streaming response is never idle).
pub(crate) struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Waits for connection tasks after shutdown began, at most `grace`; then
/// drops whatever is left.
pub(crate) async fn drain(shared: &Shared, grace: Duration) {
    shared.tracker.close();
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open = shared.tracker.len(),
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "connections still open after the drain grace; dropping them"
        );
        shared.force.cancel();
        shared.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header: Some(Duration::from_millis(100)),
            idle: Some(Duration::from_millis(1000)),
            body: None,
            write: None,
            max_connections: 1,
            max_body_bytes: 1024,
        }
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let a = Arc::new(Activity::new());
        let l = limits();
        // Fresh connection: header deadline from accept, even after a byte.
        assert_eq!(a.deadline(&l, false).map(|d| d.1), Some(Expiry::Header));
        a.on_read();
        assert_eq!(
            a.deadline(&l, false),
            Some((a.epoch + Duration::from_millis(100), Expiry::Header))
        );
        // Busy: none.
        let g = a.begin();
        a.on_read(); // body bytes do not start a head
        assert_eq!(a.deadline(&l, false), None);
        drop(g);
        // Idle after a response: idle deadline; none while draining.
        assert_eq!(a.deadline(&l, false).map(|d| d.1), Some(Expiry::Idle));
        assert_eq!(a.deadline(&l, true), None);
        // A byte of the next request: header deadline again.
        a.on_read();
        assert_eq!(a.deadline(&l, false).map(|d| d.1), Some(Expiry::Header));
        assert_eq!(a.deadline(&l, true).map(|d| d.1), Some(Expiry::Header));
    }

    #[test]
    fn backstop_covers_idle_then_header() {
        assert_eq!(limits().hyper_backstop(), Some(Duration::from_millis(1100)));
        let no_idle = Limits {
            idle: None,
            ..limits()
        };
        assert_eq!(no_idle.hyper_backstop(), None);
    }

    #[tokio::test]
    async fn a_stalled_body_is_flagged() {
        let stalled = Body::from_stream(futures_util::stream::pending::<io::Result<Bytes>>());
        let flag = Arc::new(AtomicBool::new(false));
        let body = Body::new(FlagBody {
            inner: Body::new(DeadlineBody::new(Duration::from_millis(10), stalled)),
            timed_out: flag.clone(),
        });
        assert!(axum::body::to_bytes(body, usize::MAX).await.is_err());
        assert!(flag.load(Ordering::Acquire));
        assert!(!is_body_timeout(&axum::Error::new(io::Error::other("x"))));
    }
}
