//! `GET /metrics` in the Prometheus text format, and the layer that counts and times every request. The same
//! layer writes one access-log event per request at debug level, target `hourglass::access`
//! (`HOURGLASS_LOG=info,hourglass::access=debug`); it names the route, never a header, so no token is logged.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::AppState;
use crate::metrics::{self, Histogram, describe, get, sample};

/// The error code of an error answer, put in its extensions for the counts here.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

const METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::OPTIONS,
];

/// The statuses counted one by one; any other counts in a last slot, labelled `other`.
const STATUSES: &[u16] = &[
    200, 201, 202, 204, 304, 308, 400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 422, 500, 503,
    507,
];

/// Error codes of refused ingest batches, as `ApiError` names them; any other counts as `other`.
const REFUSALS: &[&str] = &[
    "bad_request",
    "malformed_event",
    "unauthorized",
    "forbidden",
    "not_found",
    "unknown_series",
    "request_timeout",
    "payload_too_large",
    "unsupported_media_type",
    "late_event",
    "future_event",
    "clock_behind",
    "idempotency_key_reused",
    "gone",
    "overloaded",
    "storage_full",
    "storage_error",
    "other",
];

/// Fixed tables of atomics, one slot per method and route: counting a request takes no lock and allocates
/// nothing.
pub struct ApiMetrics {
    /// The router's route templates, then `unmatched` for requests no route matched.
    names: Vec<&'static str>,
    routes: Vec<RouteStats>,
    refused: Vec<AtomicU64>,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

#[derive(Default)]
struct RouteStats {
    statuses: [AtomicU64; STATUSES.len() + 1],
    latency: Histogram,
}

impl ApiMetrics {
    /// Slots for the router's route templates (`api::route_paths`).
    pub fn new(paths: impl IntoIterator<Item = &'static str>) -> ApiMetrics {
        let mut names: Vec<&'static str> = paths.into_iter().collect();
        names.push("unmatched");
        ApiMetrics {
            routes: (0..METHODS.len() * names.len())
                .map(|_| RouteStats::default())
                .collect(),
            refused: (0..REFUSALS.len()).map(|_| AtomicU64::new(0)).collect(),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            names,
        }
    }

    /// The slot of a method and route template; `None` for a method no route answers.
    fn slot(&self, method: &Method, route: Option<&str>) -> Option<usize> {
        let m = METHODS.iter().position(|x| x == method)?;
        let r = route
            .and_then(|p| self.names.iter().position(|k| *k == p))
            .unwrap_or(self.names.len() - 1);
        Some(m * self.names.len() + r)
    }

    /// The route name of a slot, for the access log.
    fn name(&self, slot: Option<usize>) -> &'static str {
        slot.map_or("unmatched", |s| self.names[s % self.names.len()])
    }
}

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len())
}

/// The layer around every route: counts and times each request by method, route and status, counts refused
/// writes by error code, writes the access-log event, and lets cross-origin scripts read every answer.
/// Hand-written rather than `from_fn` plus header layers: a request costs no boxed future and one pass.
#[derive(Clone)]
pub struct Edge(pub AppState);

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let method = req.method().clone();
        let matched = req.extensions().get::<MatchedPath>();
        let route = self
            .state
            .metrics
            .slot(&method, matched.map(MatchedPath::as_str));
        EdgeFuture {
            inner: self.inner.call(req),
            state: self.state.clone(),
            began: Instant::now(),
            method,
            route,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct EdgeFuture<F> {
        #[pin]
        inner: F,
        state: AppState,
        began: Instant,
        method: Method,
        route: Option<usize>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for EdgeFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = ready!(this.inner.poll(cx));
        this.state
            .metrics
            .finish(this.method, *this.route, *this.began, &mut res);
        Poll::Ready(Ok(res))
    }
}

impl ApiMetrics {
    /// Counts, times and logs an answered request, and lets cross-origin scripts read the answer: what `Edge`
    /// does after the router, and `api::Front` for the pages it answers itself.
    pub fn finish_route(&self, method: &Method, route: &str, began: Instant, res: &mut Response) {
        self.finish(method, self.slot(method, Some(route)), began, res);
    }

    fn finish(&self, method: &Method, route: Option<usize>, began: Instant, res: &mut Response) {
        let took = began.elapsed();
        let status = res.status().as_u16();
        if let Some(stats) = route.and_then(|r| self.routes.get(r)) {
            stats.latency.observe(took);
            metrics::add(&stats.statuses[status_slot(status)], 1);
        }
        if *method == Method::POST
            && let Some(ErrorCode(code)) = res.extensions().get::<ErrorCode>()
        {
            let i = REFUSALS
                .iter()
                .position(|r| r == code)
                .unwrap_or(REFUSALS.len() - 1);
            metrics::add(&self.refused[i], 1);
        }
        let h = res.headers_mut();
        h.entry(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .or_insert(HeaderValue::from_static("*"));
        h.entry(header::ACCESS_CONTROL_EXPOSE_HEADERS)
            .or_insert(super::EXPOSED_HEADERS);
        tracing::debug!(
            target: "hourglass::access",
            method = %method,
            route = self.name(route),
            status,
            micros = took.as_micros() as u64,
            "request"
        );
    }
}

/// What kind of page a route serves, if it serves pages.
fn page_kind(route: &str) -> Option<&'static str> {
    if route.contains("/data/before/") {
        Some("before")
    } else if route.contains("/data/after/") {
        Some("after")
    } else if route.ends_with("/data") {
        Some("head")
    } else {
        None
    }
}

/// `/metrics` holds no events, but it tells how much traffic a deployment has and what is failing: where reads
/// need a token, so does it (Prometheus sends one with `authorization: {credentials: ...}`).
pub async fn metrics_get(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, super::error::ApiError> {
    state.tokens.check_read(&headers)?;
    let mut out = String::with_capacity(16 << 10);
    let store = state.store.metrics();
    let api = &state.metrics;

    describe(
        &mut out,
        "hourglass_events_accepted_total",
        "counter",
        "Events acknowledged (durable in the log).",
    );
    sample(
        &mut out,
        "hourglass_events_accepted_total",
        "",
        get(&store.events_accepted),
    );
    describe(
        &mut out,
        "hourglass_batches_accepted_total",
        "counter",
        "Ingest batches acknowledged.",
    );
    sample(
        &mut out,
        "hourglass_batches_accepted_total",
        "",
        get(&store.batches_accepted),
    );
    describe(
        &mut out,
        "hourglass_batches_refused_total",
        "counter",
        "Ingest batches refused, by reason (the error code); a refused batch stores none of its events.",
    );
    for (code, n) in REFUSALS
        .iter()
        .zip(&api.refused)
        .filter(|(_, n)| get(n) > 0)
    {
        let labels = format!("reason=\"{code}\",");
        sample(&mut out, "hourglass_batches_refused_total", &labels, get(n));
    }
    describe(
        &mut out,
        "hourglass_fsyncs_total",
        "counter",
        "Appends to the write-ahead log, each ending in one fdatasync (group commit).",
    );
    sample(&mut out, "hourglass_fsyncs_total", "", get(&store.fsyncs));
    describe(
        &mut out,
        "hourglass_fsync_seconds",
        "histogram",
        "Time of a log append and its fdatasync.",
    );
    store
        .fsync_seconds
        .write(&mut out, "hourglass_fsync_seconds", "");
    describe(
        &mut out,
        "hourglass_chunks_sealed_total",
        "counter",
        "Chunks sealed into hour archives.",
    );
    sample(
        &mut out,
        "hourglass_chunks_sealed_total",
        "",
        get(&store.chunks_sealed),
    );
    describe(
        &mut out,
        "hourglass_seal_failures_total",
        "counter",
        "Sealer ticks that failed, sealing or removing expired hours (retried).",
    );
    sample(
        &mut out,
        "hourglass_seal_failures_total",
        "",
        get(&store.seal_failures),
    );
    for (name, kind, help, value) in [
        (
            "hourglass_hours_uploaded_total",
            "counter",
            "With --archive: complete hours uploaded to the object store.",
            &store.hours_uploaded,
        ),
        (
            "hourglass_upload_failures_total",
            "counter",
            "With --archive: upload passes that failed (the hours wait in the data folder and are tried again).",
            &store.upload_failures,
        ),
        (
            "hourglass_upload_backlog_hours",
            "gauge",
            "With --archive: complete hours waiting for upload, over every series.",
            &store.upload_backlog_hours,
        ),
    ] {
        describe(&mut out, name, kind, help);
        sample(&mut out, name, "", get(value));
    }
    describe(
        &mut out,
        "hourglass_log_repairs_total",
        "counter",
        "Stretches of the write-ahead log set aside at start (kept as files beside their segment), by kind: damaged (whole records failing their checksum; the records after them were replayed), torn_tail (an unfinished append), refused (an append that failed).",
    );
    let kinds = || crate::ingest::wal::RepairKind::ALL.iter().enumerate();
    for (i, kind) in kinds() {
        let labels = format!("kind=\"{}\",", kind.name());
        sample(
            &mut out,
            "hourglass_log_repairs_total",
            &labels,
            get(&store.log_repairs[i]),
        );
    }
    describe(
        &mut out,
        "hourglass_log_repaired_bytes_total",
        "counter",
        "Bytes of those stretches, by kind.",
    );
    for (i, kind) in kinds() {
        let labels = format!("kind=\"{}\",", kind.name());
        sample(
            &mut out,
            "hourglass_log_repaired_bytes_total",
            &labels,
            get(&store.log_repaired_bytes[i]),
        );
    }
    let (lag, backlog) = state.store.lag_and_backlog();
    describe(
        &mut out,
        "hourglass_seal_lag_seconds",
        "gauge",
        "The clock minus the oldest sealed watermark of any series.",
    );
    sample(
        &mut out,
        "hourglass_seal_lag_seconds",
        "",
        lag as f64 / 1000.0,
    );
    describe(
        &mut out,
        "hourglass_damaged_members",
        "gauge",
        "Stored gzip members found damaged (at start or when read); each is refused to readers and logged once.",
    );
    sample(
        &mut out,
        "hourglass_damaged_members",
        "",
        state.store.damaged_members(),
    );
    describe(
        &mut out,
        "hourglass_backlog_bytes",
        "gauge",
        "Bytes of events not sealed yet.",
    );
    sample(&mut out, "hourglass_backlog_bytes", "", backlog);

    let slots = || {
        METHODS
            .iter()
            .flat_map(|m| api.names.iter().map(move |r| (m, *r)))
            .zip(&api.routes)
    };
    let mut pages: BTreeMap<(&str, String), u64> = BTreeMap::new();
    describe(
        &mut out,
        "hourglass_http_requests_total",
        "counter",
        "Requests answered, by method, route and status.",
    );
    for ((method, route), stats) in slots() {
        for (i, n) in stats
            .statuses
            .iter()
            .enumerate()
            .filter(|(_, n)| get(n) > 0)
        {
            let status = STATUSES.get(i).map_or("other".to_string(), u16::to_string);
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\",");
            sample(&mut out, "hourglass_http_requests_total", &labels, get(n));
            if let Some(kind) = page_kind(route) {
                *pages.entry((kind, status)).or_default() += get(n);
            }
        }
    }
    describe(
        &mut out,
        "hourglass_http_request_seconds",
        "histogram",
        "Time to answer, by method and route (to the end of the headers for streamed answers).",
    );
    for ((method, route), stats) in slots().filter(|(_, s)| s.latency.count() > 0) {
        let labels = format!("method=\"{method}\",route=\"{route}\",");
        stats
            .latency
            .write(&mut out, "hourglass_http_request_seconds", &labels);
    }
    describe(
        &mut out,
        "hourglass_pages_total",
        "counter",
        "Pages answered, by kind (head, before, after) and status; 304s are status 304.",
    );
    for ((kind, status), n) in &pages {
        sample(
            &mut out,
            "hourglass_pages_total",
            &format!("kind=\"{kind}\",status=\"{status}\","),
            n,
        );
    }
    describe(
        &mut out,
        "hourglass_page_cache_hits_total",
        "counter",
        "Final pages answered from the in-memory page cache.",
    );
    sample(
        &mut out,
        "hourglass_page_cache_hits_total",
        "",
        get(&api.cache_hits),
    );
    describe(
        &mut out,
        "hourglass_page_cache_misses_total",
        "counter",
        "Final pages read from the archive and rendered.",
    );
    sample(
        &mut out,
        "hourglass_page_cache_misses_total",
        "",
        get(&api.cache_misses),
    );
    describe(
        &mut out,
        "hourglass_held_requests",
        "gauge",
        "Requests held by Prefer: wait.",
    );
    sample(
        &mut out,
        "hourglass_held_requests",
        "",
        state.held_limit - state.held.available_permits(),
    );
    describe(
        &mut out,
        "hourglass_open_files",
        "gauge",
        "File descriptors open in the process.",
    );
    sample(&mut out, "hourglass_open_files", "", open_files());

    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// 200 while serving; 503 once the server begins to stop. Nothing listens before recovery is over, so a
/// readiness probe fails while it runs. Series whose watermark is ahead of the clock (a clock that went back)
/// are named in `warnings`: the node serves, but refuses their events until the clock catches up.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if *state.stopping.borrow() {
        let body = axum::Json(serde_json::json!({"status": "stopping"}));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let behind = state.store.clock_behind();
    let mut body = serde_json::json!({"status": "ready"});
    if !behind.is_empty() {
        let warnings: Vec<String> = behind
            .iter()
            .take(10)
            .map(|(name, ahead)| {
                format!(
                    "series {name:?}: the sealed watermark is {} s ahead of the clock; events before it are refused until the clock reaches it",
                    (ahead + 999) / 1000
                )
            })
            .collect();
        body["warnings"] = serde_json::json!(warnings);
        body["series_with_clock_behind"] = serde_json::json!(behind.len());
    }
    axum::Json(body).into_response()
}
