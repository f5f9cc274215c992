//! A node that does not hold the log's lease (`lease`): it answers its own health, readiness and metrics (a
//! gauge saying it stands by: a scrape of every node counts the writer's once), and sends
//! every other request to the holder as it came, with the holder's answer back as it comes, so that any node
//! takes writes and serves reads with the writer's bytes, ETags and links. With no holder known (one being
//! elected, or this node opening its store after it won), requests are `503 no_writer` with `Retry-After`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;

use super::Front;
use super::error::ApiError;
use super::replica::Upstream;
use crate::lease::Holder;

/// Where this node's requests go: its own front once it holds the lease and its store is open, the holder
/// before that.
#[derive(Clone, Default)]
pub struct Node {
    /// A std lock: held to clone or swap, never across `.await`.
    front: Arc<RwLock<Option<Front>>>,
    holder: Arc<RwLock<Option<Writer>>>,
}

/// The lease's holder as last seen, and the pool of connections to it.
type Writer = (Holder, Arc<Upstream>);

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Node {
    /// From now on this node answers everything itself.
    pub fn serve(&self, front: Front) {
        *self.front.write().unwrap_or_else(|e| e.into_inner()) = Some(front);
    }

    /// Who holds the lease, as last seen.
    pub fn set_holder(&self, holder: Option<Holder>) {
        let mut current = self.holder.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().map(|(h, _)| h) == holder.as_ref() {
            return;
        }
        *current = holder.and_then(|h| {
            let upstream = h
                .url
                .parse::<Uri>()
                .ok()
                .and_then(|u| Upstream::new(&u).ok())?;
            tracing::info!(writer = %h.node, url = %h.url, "the log's writer");
            Some((h, Arc::new(upstream)))
        });
    }

    async fn stand_by(self, req: Request<Incoming>) -> Response {
        let holder = read(&self.holder);
        match req.uri().path() {
            "/healthz" => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
            "/readyz" => match holder {
                Some((h, _)) => axum::Json(serde_json::json!({
                    "status": "ready", "role": "standby", "writer": h.node,
                }))
                .into_response(),
                None => {
                    let body = axum::Json(serde_json::json!({
                        "status": "not ready", "reason": "no node holds the log's lease yet",
                    }));
                    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
                }
            },
            // Its own, not the writer's: a scrape of every node must not count the writer's twice.
            "/metrics" => (
                [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                "# HELP hourglass_standby Whether this node stands by (every request but health goes to the writer).\n\
                 # TYPE hourglass_standby gauge\nhourglass_standby 1\n",
            )
                .into_response(),
            _ => match holder {
                Some((_, upstream)) => upstream.forward(req.map(Body::new)).await,
                None => {
                    let mut error = ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_writer",
                        "no node holds the log's lease yet (a writer is being chosen or is opening its store): try again",
                    );
                    error.retry_after = Some(1);
                    error.into_response()
                }
            },
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Node {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if let Some(front) = read(&self.front) {
            return Box::pin(front.call(req));
        }
        let node = self.clone();
        Box::pin(async move { Ok(node.stand_by(req).await) })
    }
}
