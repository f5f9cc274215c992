//! Serving: `run` takes a bound listener and an open store and serves until `shutdown` resolves, then lets
//! in-flight requests finish and stops the store. Tests bind `127.0.0.1:0` and call it, as `main` does.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::api::auth::Tokens;
use crate::api::{self, AppState, Shared};
use crate::config::ServeArgs;
use crate::lease::{Lease, Renewal};
use crate::store::{Store, StoreConfig, StoreError};

pub async fn open_store(cfg: StoreConfig) -> Result<Store, StoreError> {
    tokio::task::spawn_blocking(move || Store::open(cfg))
        .await
        .unwrap_or(Err(StoreError::ShuttingDown))
}

pub async fn run(
    listener: TcpListener,
    store: Store,
    args: &ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        // Release held requests first: graceful shutdown waits for every request in flight.
        let _ = stop.send(true);
    };
    let front = front(&store, args, stopping)?;
    let served = serve(listener, front, limits(args), shutdown).await;
    tracing::info!("no more requests; stopping the store");
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .ok();
    served
}

/// Serves as one of several nodes on a replicated log: standing by (every request sent to the lease's
/// holder) until this node takes the lease, then opening its store and serving as `run` does. It keeps the
/// lease while it serves; a renewal refused (another node holds it) or unanswered for the lease's whole
/// time ends the process at once, since another writer may be taking over. A clean stop lets the lease go
/// after the store is stopped, so that a standby takes over without waiting for it to expire.
pub async fn run_node(
    listener: TcpListener,
    args: &ServeArgs,
    lease: Lease,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, mut stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let node = api::standby::Node::default();
    let served = tokio::spawn(serve(listener, node.clone(), limits(args), shutdown));
    let look = lease.ttl / 3;
    let revision = loop {
        if *stopping.borrow() {
            return served.await.unwrap_or(Ok(()));
        }
        if let Some(revision) = lease.take().await {
            break revision;
        }
        node.set_holder(lease.holder().await);
        let _ = tokio::time::timeout(look, stopping.changed()).await;
    };
    node.set_holder(None);
    tracing::info!(node = %lease.me.node, "this node holds the log's lease: opening the store");
    let lease = Arc::new(lease);
    let revision = Arc::new(std::sync::atomic::AtomicU64::new(revision));
    let keeping = tokio::spawn(keep(lease.clone(), revision.clone()));
    let store = match open_store(args.store_config()).await {
        Ok(store) => store,
        Err(e) => {
            keeping.abort();
            lease.release(revision.load(Ordering::Acquire)).await;
            return Err(std::io::Error::other(e.to_string()));
        }
    };
    node.serve(front(&store, args, stopping.clone())?);
    tracing::info!("serving as the log's writer");
    let served = served.await.unwrap_or(Ok(()));
    tracing::info!("no more requests; stopping the store");
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .ok();
    keeping.abort();
    lease.release(revision.load(Ordering::Acquire)).await;
    served
}

/// Renews the lease every third of its time, for as long as it runs; ends the process once it may have lost
/// it.
async fn keep(lease: Arc<Lease>, revision: Arc<std::sync::atomic::AtomicU64>) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(lease.ttl / 3).await;
        match lease.renew(revision.load(Ordering::Acquire)).await {
            Ok(r) => {
                revision.store(r, Ordering::Release);
                renewed = Instant::now();
            }
            Err(Renewal::Unanswered(e)) if renewed.elapsed() < lease.ttl => {
                tracing::warn!(error = %e, "renewing the lease failed: trying again");
            }
            Err(why) => {
                tracing::error!(?why, "this node lost the log's lease: stopping at once");
                eprintln!(
                    "hourglass: lost the log's lease ({why:?}); stopping so that a supervisor starts it again"
                );
                std::process::exit(1);
            }
        }
    }
}

fn limits(args: &ServeArgs) -> Limits {
    Limits {
        header_timeout: args.request_timeout(),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        max_connections: args.max_connections as usize,
    }
}

/// The service that answers a store's requests, with the flags' settings.
fn front(
    store: &Store,
    args: &ServeArgs,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<api::Front> {
    let replica = if args.replica {
        let upstream = args.upstream.as_ref().map(api::replica::Upstream::new);
        let upstream = upstream.transpose().map_err(std::io::Error::other)?;
        Some(api::replica::Replica { upstream })
    } else {
        None
    };
    let state = AppState::new(Shared {
        store: store.clone(),
        tokens: Tokens {
            write: args.write_token.clone(),
            read: args.read_token.clone(),
        },
        max_body_bytes: args.max_body_bytes,
        request_timeout: args.request_timeout(),
        pages: crate::api::pages::page_cache(args.page_cache_bytes),
        deflater: args.store.gzip_level,
        max_page_entries: args.store.max_page_entries as usize,
        filter_scan_bytes: args.filter_scan_bytes,
        intake: api::Intake::new(args.store.max_inflight_bytes),
        held: Arc::new(tokio::sync::Semaphore::new(args.max_held_requests)),
        held_limit: args.max_held_requests,
        metrics: api::metrics::ApiMetrics::new(api::route_paths()),
        stopping,
        replica,
        shippers: api::shippers::SeriesFrom {
            otlp: args.otlp_series_attribute.clone(),
            loki: args.loki_series_label.clone(),
            elastic: args.elastic_series_field.clone(),
        },
    });
    Ok(api::Front::new(state))
}

/// What bounds the accept loop.
struct Limits {
    /// How long a client has to send a request's headers.
    header_timeout: Duration,
    /// How long requests in flight may go on once the server stops.
    shutdown_timeout: Duration,
    /// Connections served at once.
    max_connections: usize,
}

/// Accepts connections until `shutdown`, then lets the requests in flight finish, for at most the shutdown
/// timeout. A client gets the header timeout to send its request's headers (after that the connection is
/// closed; request bodies have their own limit, see `api::ingest`), so slow or silent clients cannot hold
/// connections forever. At most `max_connections` are served at once: past that the loop waits for one to
/// close, and further clients wait in the kernel's queue. A failing accept (out of file descriptors) is retried
/// after a pause that doubles, up to a second, rather than in a tight loop.
async fn serve<S>(
    listener: TcpListener,
    front: S,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    const FIRST_PAUSE: Duration = Duration::from_millis(5);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut pause = FIRST_PAUSE;
    loop {
        let accepted = tokio::select! {
            accepted = async {
                let permit = connections.clone().acquire_owned().await;
                (permit, listener.accept().await)
            } => accepted,
            () = &mut shutdown => break,
        };
        let (stream, permit) = match accepted {
            (Ok(permit), Ok((stream, _))) => (stream, permit),
            (_, Err(e)) => {
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "accept failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
            (Err(_), Ok(_)) => break,
        };
        pause = FIRST_PAUSE;
        // TCP_NODELAY: a response written in pieces must not wait for the client's delayed ACK (Nagle).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let conn = http
            .clone()
            .timer(ConnTimer::default())
            .serve_connection(TokioIo::new(JsonErrors::new(stream)), front.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        let open = limits.max_connections - connections.available_permits();
        tracing::warn!(
            connections = open,
            "requests still in flight after the shutdown timeout: their connections are closed"
        );
    }
    Ok(())
}

/// The clock of one connection's header-read timeout. hyper asks for a new timer each time it waits for a
/// request's headers and drops it once they are in: with a plain tokio sleep, that is a registration in the
/// runtime's timer wheel and a removal for every request. Here the connection keeps its one sleep: a dropped
/// one comes back to the connection, and the next wait moves its deadline later, which tokio does without
/// touching the wheel. It can only ever wake its own connection.
#[derive(Clone, Default)]
struct ConnTimer {
    spare: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let spare = self.spare.lock().ok().and_then(|mut s| s.take());
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline.into());
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline.into())),
        };
        Box::pin(ConnSleep {
            sleep: Some(sleep),
            home: self.spare.clone(),
        })
    }
}

/// A `ConnTimer`'s sleep, handed back to its connection when dropped.
struct ConnSleep {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    home: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl hyper::rt::Sleep for ConnSleep {}

impl Drop for ConnSleep {
    fn drop(&mut self) {
        if let (Some(sleep), Ok(mut home)) = (self.sleep.take(), self.home.lock()) {
            *home = Some(sleep);
        }
    }
}

/// A connection's stream that turns hyper's own answers to requests it cannot parse (a 400, 414 or 431 that
/// hyper writes by itself, with no body, before any handler runs) into JSON errors like every other answer.
/// Everything else passes through untouched: one look at the first bytes of each write.
struct JsonErrors<S> {
    inner: S,
    /// The JSON answer being written in place of hyper's, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<S> JsonErrors<S> {
    fn new(inner: S) -> JsonErrors<S> {
        JsonErrors {
            inner,
            replacing: None,
        }
    }
}

/// The status of `buf` when it is a bare error head as hyper writes one for a request it could not parse: a
/// whole head and nothing else, 400, 414 or 431, no body and no content type (every answer of ours has one).
fn bare_error(buf: &[u8]) -> Option<(u16, &str)> {
    if !buf.starts_with(b"HTTP/1.1 4") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(&buf[..buf.len() - 4]).ok()?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let lower = head.to_ascii_lowercase();
    let bare = lower.contains("\r\ncontent-length: 0") && !lower.contains("\r\ncontent-type:");
    let date = lower
        .find("\r\ndate: ")
        .and_then(|i| head[i + 2..].split("\r\n").next())
        .unwrap_or("");
    (bare && matches!(status, 400 | 414 | 431)).then_some((status, date))
}

impl<S: tokio::io::AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes out the replacement; ready once all of it is out.
    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, done)) = &mut self.replacing {
            if *done == bytes.len() {
                self.replacing = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Starts replacing `buf` if it is hyper's bare error head; whether it is.
    fn replace(&mut self, buf: &[u8]) -> bool {
        if self.replacing.is_some() {
            return true;
        }
        let Some((status, date)) = bare_error(buf) else {
            return false;
        };
        self.replacing = Some((api::error::transport_error(status, date), 0));
        true
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replace(buf) {
            std::task::ready!(self.poll_replacing(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper's bare heads come alone; a head with a body after it is never one.
        let alone = bufs.iter().filter(|b| !b.is_empty()).count() == 1;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && alone
            && self.replace(first)
        {
            std::task::ready!(self.poll_replacing(cx))?;
            return Poll::Ready(Ok(first.len()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when it is first polled:
/// call it before saying the server listens, so that a signal sent right after is never met by the default
/// action (an abrupt exit).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            () = received(term) => {},
            () = received(interrupt) => {},
        }
        tracing::info!("shutdown requested");
    }
}

/// Resolves when `signal` arrives; never when it could not be installed.
async fn received(signal: Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
