//! The HTTP face: routes, handlers and wire types. Handlers translate between HTTP and the store; all the rules
//! about events and time live below. Every answer that is not a success goes through `error::ApiError`.

pub mod auth;
pub(crate) mod conditional;
pub mod error;
pub(crate) mod export;
mod filters;
mod front;
pub use front::Front;
mod ingest;
pub use ingest::Intake;
pub mod metrics;
pub mod pages;
pub mod replica;
mod series;
pub mod shippers;
pub mod standby;
mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::store::{SeriesName, Store};
use auth::Tokens;
use error::ApiError;

/// Runs blocking work (inflating, parsing, reading storage) off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// What every handler gets: one `Arc`, so that a clone per request costs one increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub store: Store,
    pub tokens: Tokens,
    /// The most bytes a request body may have, before and after gzip inflation.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive.
    pub request_timeout: std::time::Duration,
    /// Rendered final pages.
    pub pages: pages::PageCache,
    /// How pages compressed on the fly are deflated.
    pub deflater: crate::archive::deflate::Deflater,
    /// `--max-page-entries`: also the most events a filtered page collects.
    pub max_page_entries: usize,
    /// `--filter-scan-bytes`: what one filtered page may read.
    pub filter_scan_bytes: u64,
    /// Memory for request bodies being read, parsed and logged; 503 past it.
    pub intake: Intake,
    /// Permits for requests held by `Prefer: wait`, of `held_limit`.
    pub held: Arc<tokio::sync::Semaphore>,
    pub held_limit: usize,
    pub metrics: metrics::ApiMetrics,
    /// Turns true when the server begins to stop: held requests are answered at once.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// With `--replica`: what it answers itself and where the rest goes.
    pub replica: Option<replica::Replica>,
    /// Where the shippers' protocols find each event's series.
    pub shippers: shippers::SeriesFrom,
}

/// Every route: its path template and what answers it. The router and the request metrics both read it.
fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    let mut routes: Vec<(&'static str, MethodRouter<AppState>)> = vec![
        ("/api/series", get(series::series_list)),
        (
            "/api/series/{series}",
            get(series::series_show).put(series::series_put),
        ),
        ("/api/series/{series}/events", post(ingest::events_post)),
        ("/api/series/{series}/export", get(export::export_get)),
        (
            "/api/series/{series}/export/manifest",
            get(export::manifest_get),
        ),
        ("/api/series/{series}/histogram", get(export::histogram_get)),
        ("/api/series/{series}/data", get(pages::head)),
        (pages::BEFORE, get(pages::before)),
        (pages::BEFORE_PART, get(pages::before)),
        ("/api/series/{series}/data/after/{t}", get(pages::after)),
        ("/api/data", get(pages::head).post(ingest::data_post)),
        (pages::SHORT_BEFORE, get(pages::before)),
        (pages::SHORT_BEFORE_PART, get(pages::before)),
        ("/api/data/after/{t}", get(pages::after)),
        ("/healthz", get(healthz)),
        ("/readyz", get(metrics::readyz)),
        ("/metrics", get(metrics::metrics_get)),
        ("/loki/api/v1/push", post(shippers::loki::push_post)),
        ("/v1/logs", post(shippers::otlp::logs_post)),
        (
            "/_bulk",
            post(shippers::elastic::bulk_post).put(shippers::elastic::bulk_post),
        ),
        (
            "/{index}/_bulk",
            post(shippers::elastic::index_bulk_post).put(shippers::elastic::index_bulk_post),
        ),
    ];
    routes.extend(ui::paths().map(|path| (path, get(ui::asset))));
    routes
}

/// The path templates of every route, for the request metrics' labels.
pub fn route_paths() -> impl Iterator<Item = &'static str> {
    routes().into_iter().map(|(path, _)| path)
}

fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (path, method_router) in routes() {
        router = router.route(path, method_router);
    }
    if state.replica.is_some() {
        router = router.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            replica::route,
        ));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(metrics::Edge(state.clone()))
        .with_state(state)
}

/// What cross-origin scripts may read of an answer.
pub const EXPOSED_HEADERS: HeaderValue =
    HeaderValue::from_static("Link, ETag, Last-Modified, Retry-After, Preference-Applied");

/// The answer to a CORS preflight (an `OPTIONS` request, which no route has).
fn preflight() -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Accept, Authorization, Content-Type, Content-Encoding, If-None-Match, If-Modified-Since, Prefer, Idempotency-Key",
        ),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    res
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method) -> Response {
    if method == Method::OPTIONS {
        return preflight();
    }
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this URL",
    )
    .into_response()
}

/// FNV-1a, 64 bits: the same digest on every build, for ETags that outlive the process (std's `DefaultHasher`
/// makes no such promise across releases). For validators only, never for hash tables of untrusted keys.
pub(crate) struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> StableHasher {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The `{series}` path segment, checked to be a valid series name.
pub struct SeriesPath(pub SeriesName);

impl<S: Send + Sync> FromRequestParts<S> for SeriesPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))?;
        SeriesName::parse(&raw)
            .map(SeriesPath)
            .map_err(ApiError::bad_request)
    }
}
