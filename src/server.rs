//! Serving: `run` takes a bound listener and an open store and serves until `shutdown` resolves, then lets
//! in-flight requests finish and stops the store. Tests bind `127.0.0.1:0` and call it, as `main` does.

use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::api::auth::Tokens;
use crate::api::{self, AppState, Shared};
use crate::config::{ServeArgs, StoreArgs};
use crate::store::{Store, StoreError};

pub async fn open_store(args: &StoreArgs) -> Result<Store, StoreError> {
    let cfg = args.store_config();
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
    let state = AppState::new(Shared {
        store: store.clone(),
        tokens: Tokens {
            write: args.write_token.clone(),
            read: args.read_token.clone(),
        },
        max_body_bytes: args.max_body_bytes,
        request_timeout: args.request_timeout(),
        pages: crate::api::pages::page_cache(args.page_cache_bytes),
        gzip_level: args.store.gzip_level,
        intake: api::Intake::new(args.store.max_inflight_bytes),
        held: Arc::new(tokio::sync::Semaphore::new(args.max_held_requests)),
        held_limit: args.max_held_requests,
        metrics: api::metrics::ApiMetrics::new(api::route_paths()),
        stopping,
    });
    let served = serve(
        listener,
        api::Front::new(state),
        args.request_timeout(),
        shutdown,
    )
    .await;
    tracing::info!("no more requests; stopping the store");
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .ok();
    served
}

/// Accepts connections until `shutdown`, then lets the requests in flight finish. A client gets `timeout` to
/// send its request's headers (after that the connection is closed; request bodies have their own limit, see
/// `api::ingest`), so slow or silent clients cannot hold connections forever.
async fn serve(
    listener: TcpListener,
    front: api::Front,
    timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // TCP_NODELAY: a response written in pieces must not wait for the client's delayed ACK (Nagle).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), front.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}
