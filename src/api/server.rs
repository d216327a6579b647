//! The HTTP/1.1 server of the API and admin ports, with the limits `axum::serve` lacks:
//! a connection cap, a header-read timeout, an idle keep-alive timeout, and a bound on a
//! write the client never takes.
//!
//! - The cap is a semaphore permit taken *before* `accept` (as in mini-redis): at the cap
//!   new connections wait in the kernel's backlog instead of taking descriptors, so a
//!   flood of one port cannot exhaust the process (the admin port keeps answering probes,
//!   the file source keeps opening files).
//! - Every connection is watched by a pure rule ([`verdict`]) over what its I/O and its
//!   requests did: waiting for a request longer than `idle_timeout` with no byte of it
//!   read, longer than `header_read_timeout` since the first byte of a request whose head
//!   is still incomplete, or a response write pending for longer than `write_stall`:
//!   the connection is closed.
//! - At `stop`, accepting ends, every connection shuts down gracefully (an idle one at
//!   once, a busy one after its response), and [`serve`] returns when all are closed.

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A port's connection limits (from `[api]` or `[admin]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From the first byte of a request to the end of its head.
    pub header_read_timeout: Duration,
    /// Waiting for a request (a new connection, or keep-alive after a response).
    pub idle_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection.
    pub write_stall: Duration,
}

/// What a connection has been doing, updated by its I/O and its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnState {
    /// Requests whose response is not fully written yet.
    pub in_flight: usize,
    /// Since when the connection waits for a request (no request in flight).
    pub waiting_since: Instant,
    /// When the first byte arrived after `waiting_since` (a request head being read).
    pub head_started: Option<Instant>,
    /// Since when a write is pending (the client is not reading).
    pub write_pending_since: Option<Instant>,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    Idle,
    SlowHeaders,
    WriteStalled,
}

impl Close {
    fn as_str(self) -> &'static str {
        match self {
            Close::Idle => "idle for longer than the idle timeout",
            Close::SlowHeaders => "request head not complete within the header-read timeout",
            Close::WriteStalled => "the client took no response data for too long",
        }
    }
}

/// Whether a connection in state `s` must be closed at `now`. Pure.
pub fn verdict(s: &ConnState, now: Instant, limits: &Limits) -> Option<Close> {
    if let Some(t) = s.write_pending_since {
        if now.duration_since(t) > limits.write_stall {
            return Some(Close::WriteStalled);
        }
    }
    if s.in_flight > 0 {
        return None;
    }
    match s.head_started {
        Some(t) if now.duration_since(t) > limits.header_read_timeout => Some(Close::SlowHeaders),
        Some(_) => None,
        None if now.duration_since(s.waiting_since) > limits.idle_timeout => Some(Close::Idle),
        None => None,
    }
}

type Shared = Arc<Mutex<ConnState>>;

/// Serves `app` on `listener` within `limits` until `stop`; `port` names the port in logs.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
    port: &'static str,
) where
    L: axum::serve::Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let io = tokio::select! {
            _ = stop.cancelled() => break,
            (io, _) = listener.accept() => io,
        };
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            connection(io, app, limits, stop, port).await;
        });
    }
    // Every permit back: every connection closed.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

async fn connection<I>(io: I, app: Router, limits: Limits, stop: CancellationToken, port: &str)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state: Shared = Arc::new(Mutex::new(ConnState {
        in_flight: 0,
        waiting_since: Instant::now(),
        head_started: None,
        write_pending_since: None,
    }));
    let io = TokioIo::new(Watched {
        inner: io,
        state: state.clone(),
    });
    let svc = Tracked {
        inner: TowerToHyperService::new(app),
        state: state.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let shortest = limits
        .header_read_timeout
        .min(limits.idle_timeout)
        .min(limits.write_stall);
    let mut tick = tokio::time::interval(
        (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(port, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let s = *state.lock().expect("connection state");
                if let Some(why) = verdict(&s, Instant::now(), &limits) {
                    tracing::debug!(port, reason = why.as_str(), "closing a connection");
                    return;
                }
            }
        }
    }
}

/// The connection's I/O, noting reads (a request head starting) and pending writes.
struct Watched<I> {
    inner: I,
    state: Shared,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let mut s = self.state.lock().expect("connection state");
            if s.in_flight == 0 && s.head_started.is_none() {
                s.head_started = Some(Instant::now());
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> Watched<I> {
    fn note_write<T>(&self, r: &Poll<T>) {
        let mut s = self.state.lock().expect("connection state");
        match r {
            Poll::Pending => {
                s.write_pending_since.get_or_insert_with(Instant::now);
            }
            Poll::Ready(_) => s.write_pending_since = None,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note_write(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service, counting each request in flight until its response
/// body is done (or dropped).
struct Tracked {
    inner: TowerToHyperService<Router>,
    state: Shared,
}

/// One request in flight; when the last one ends, the connection waits again.
struct InFlight(Shared);

impl InFlight {
    fn start(state: &Shared) -> InFlight {
        let mut s = state.lock().expect("connection state");
        s.in_flight += 1;
        s.head_started = None;
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock().expect("connection state");
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.waiting_since = Instant::now();
        }
    }
}

/// A response body that ends its request's [`InFlight`] when it is dropped.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = hyper::Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.state);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        write_stall: Duration::from_secs(30),
    };

    #[test]
    fn idle_slow_headers_and_stalled_writes_are_closed() {
        let t0 = Instant::now();
        let s = |f: &dyn Fn(&mut ConnState)| {
            let mut s = ConnState {
                in_flight: 0,
                waiting_since: t0,
                head_started: None,
                write_pending_since: None,
            };
            f(&mut s);
            s
        };
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let idle = s(&|_| {});
        assert_eq!(verdict(&idle, at(59), &LIMITS), None);
        assert_eq!(verdict(&idle, at(61), &LIMITS), Some(Close::Idle));
        // A head started at 50 s: the header timeout runs from there, not the idle one.
        let head = s(&|s| s.head_started = Some(at(50)));
        assert_eq!(verdict(&head, at(59), &LIMITS), None);
        assert_eq!(verdict(&head, at(61), &LIMITS), Some(Close::SlowHeaders));
        // A request in flight is never idle, however long it streams...
        let busy = s(&|s| s.in_flight = 1);
        assert_eq!(verdict(&busy, at(3600), &LIMITS), None);
        // ...unless its client stops taking the response.
        let stuck = s(&|s| {
            s.in_flight = 1;
            s.write_pending_since = Some(at(100));
        });
        assert_eq!(verdict(&stuck, at(129), &LIMITS), None);
        assert_eq!(verdict(&stuck, at(131), &LIMITS), Some(Close::WriteStalled));
    }
}
