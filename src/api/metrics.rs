//! `GET /metrics` in the Prometheus text format, and the layer that counts and times every request. The same
//! layer writes one access-log event per request at debug level, target `hourglass::access`
//! (`HOURGLASS_LOG=info,hourglass::access=debug`); it names the route, never a header, so no token is logged.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text, text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tower_layer::Layer;
use tower_service::Service;

use super::AppState;
use crate::metrics::{self, Histogram, get};

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
    200, 201, 202, 204, 304, 308, 400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 422, 500, 502,
    503, 507,
];

/// `STATUSES` as labels, then `other`.
const STATUS_NAMES: [&str; STATUSES.len() + 1] = [
    "200", "201", "202", "204", "304", "308", "400", "401", "403", "404", "405", "408", "409",
    "410", "413", "415", "422", "500", "502", "503", "507", "other",
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

/// What kind of page a request for a route was, if it was one.
fn page_kind(method: &str, route: &str) -> Option<&'static str> {
    if !matches!(method, "GET" | "HEAD") {
        None
    } else if route.contains("/data/before/") {
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
/// need a token, so does it (Prometheus sends one with `authorization: {credentials: ...}`). OpenMetrics when
/// the scraper asks for it (Prometheus does), the Prometheus text format otherwise; both written by the
/// Prometheus client library from the counters where they are kept.
pub async fn metrics_get(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, super::error::ApiError> {
    state.tokens.check_read(&headers)?;
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(state)));
    let mut out = String::with_capacity(16 << 10);
    let (written, content_type) = if openmetrics {
        (text::encode(&mut out, &registry), OPENMETRICS)
    } else {
        (
            prometheus_text::encode(&mut out, &registry),
            prometheus_text::CONTENT_TYPE,
        )
    };
    written.map_err(|_| {
        super::error::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be written",
        )
    })?;
    let mut res = out.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape: every metric read where it is counted (lock-free atomics), described and encoded through the
/// client library's collector interface.
struct Scrape(AppState);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

/// A metric's name (without its unit and `_total`), help, and unit.
type Describe = (&'static str, &'static str, Option<Unit>);

fn one(
    enc: &mut DescriptorEncoder,
    (name, help, unit): Describe,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?;
    metric.encode(m)
}

/// A family: one descriptor, then each label set and its value.
fn family<'a, L: EncodeLabelSet + 'a, M: EncodeMetric + 'a>(
    enc: &mut DescriptorEncoder,
    (name, help, unit): Describe,
    kind: MetricType,
    members: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, metric) in members {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: &AtomicU64) -> ConstCounter<u64> {
    ConstCounter::new(get(v))
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let state = &self.0;
        let store = state.store.metrics();
        let api = &state.metrics;
        let e = &mut enc;
        let counters: [(Describe, &AtomicU64); 11] = [
            (
                (
                    "hourglass_events_accepted",
                    "Events acknowledged (durable in the log).",
                    None,
                ),
                &store.events_accepted,
            ),
            (
                (
                    "hourglass_batches_accepted",
                    "Ingest batches acknowledged.",
                    None,
                ),
                &store.batches_accepted,
            ),
            (
                (
                    "hourglass_fsyncs",
                    "Appends to the write-ahead log, each ending in one fdatasync (group commit; with --log nats://, one publish).",
                    None,
                ),
                &store.fsyncs,
            ),
            (
                (
                    "hourglass_chunks_sealed",
                    "Chunks sealed into hour archives.",
                    None,
                ),
                &store.chunks_sealed,
            ),
            (
                (
                    "hourglass_members_scanned",
                    "Sealed members a filtered page, export or histogram inflated.",
                    None,
                ),
                &store.members_scanned,
            ),
            (
                (
                    "hourglass_members_skipped",
                    "Sealed members a filtered read skipped without inflating them: their summary rules the filter out.",
                    None,
                ),
                &store.members_skipped,
            ),
            (
                (
                    "hourglass_seal_failures",
                    "Sealer ticks that failed, sealing or removing expired hours (retried).",
                    None,
                ),
                &store.seal_failures,
            ),
            (
                (
                    "hourglass_archives_uploaded",
                    "With --archive: complete hour archives uploaded to the object store.",
                    None,
                ),
                &store.hours_uploaded,
            ),
            (
                (
                    "hourglass_upload_failures",
                    "With --archive: upload passes that failed (the hours wait in the data folder and are tried again).",
                    None,
                ),
                &store.upload_failures,
            ),
            (
                (
                    "hourglass_page_cache_hits",
                    "Final pages answered from the in-memory page cache.",
                    None,
                ),
                &api.cache_hits,
            ),
            (
                (
                    "hourglass_page_cache_misses",
                    "Final pages read from the archive and rendered.",
                    None,
                ),
                &api.cache_misses,
            ),
        ];
        for (describe, value) in counters {
            one(e, describe, &counter(value))?;
        }
        family(
            e,
            (
                "hourglass_batches_refused",
                "Ingest batches refused, by reason (the error code); a refused batch stores none of its events.",
                None,
            ),
            MetricType::Counter,
            REFUSALS
                .iter()
                .zip(&api.refused)
                .filter(|(_, n)| get(n) > 0)
                .map(|(code, n)| ([("reason", *code)], counter(n))),
        )?;
        let kinds = || crate::ingest::wal::RepairKind::ALL.iter().enumerate();
        family(
            e,
            (
                "hourglass_log_repairs",
                "Stretches of the write-ahead log set aside at start (kept as files beside their segment), by kind: damaged (whole records failing their checksum; the records after them were replayed), torn_tail (an unfinished append), refused (an append that failed).",
                None,
            ),
            MetricType::Counter,
            kinds().map(|(i, k)| ([("kind", k.name())], counter(&store.log_repairs[i]))),
        )?;
        family(
            e,
            (
                "hourglass_log_repaired",
                "Bytes of those stretches, by kind.",
                Some(Unit::Bytes),
            ),
            MetricType::Counter,
            kinds().map(|(i, k)| ([("kind", k.name())], counter(&store.log_repaired_bytes[i]))),
        )?;
        one(
            e,
            (
                "hourglass_fsync_duration",
                "Time of a log append and its fdatasync (with --log nats://, of its publish until the stream acknowledged it).",
                Some(Unit::Seconds),
            ),
            &store.fsync_seconds,
        )?;

        let (lag, backlog) = state.store.lag_and_backlog();
        let held = state.held_limit - state.held.available_permits();
        one(
            e,
            (
                "hourglass_seal_lag",
                "The clock minus the oldest sealed watermark of any series.",
                Some(Unit::Seconds),
            ),
            &ConstGauge::new(lag as f64 / 1000.0),
        )?;
        let gauges: [(Describe, ConstGauge<i64>); 7] = [
            (
                (
                    "hourglass_upload_backlog_archives",
                    "With --archive: complete hour archives waiting for upload, over every series.",
                    None,
                ),
                ConstGauge::new(get(&store.upload_backlog_hours) as i64),
            ),
            (
                (
                    "hourglass_log_pending_messages",
                    "With --log nats://: messages the stream still holds, not all of whose events are sealed yet.",
                    None,
                ),
                ConstGauge::new(get(&store.log_pending_messages) as i64),
            ),
            (
                (
                    "hourglass_log_pending",
                    "With --log nats://: bytes of those messages.",
                    Some(Unit::Bytes),
                ),
                ConstGauge::new(get(&store.log_pending_bytes) as i64),
            ),
            (
                (
                    "hourglass_damaged_members",
                    "Stored gzip members found damaged (at start or when read); each is refused to readers and logged once.",
                    None,
                ),
                ConstGauge::new(state.store.damaged_members() as i64),
            ),
            (
                (
                    "hourglass_backlog",
                    "Bytes of events not sealed yet.",
                    Some(Unit::Bytes),
                ),
                ConstGauge::new(backlog as i64),
            ),
            (
                (
                    "hourglass_held_requests",
                    "Requests held by Prefer: wait.",
                    None,
                ),
                ConstGauge::new(held as i64),
            ),
            (
                (
                    "hourglass_open_files",
                    "File descriptors open in the process.",
                    None,
                ),
                ConstGauge::new(open_files() as i64),
            ),
        ];
        for (describe, value) in &gauges {
            one(e, describe.clone(), value)?;
        }

        let slots = || {
            METHODS
                .iter()
                .flat_map(|m| api.names.iter().map(move |r| (m.as_str(), *r)))
                .zip(&api.routes)
        };
        let mut pages: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut requests = Vec::new();
        for ((method, route), stats) in slots() {
            for (i, n) in stats
                .statuses
                .iter()
                .enumerate()
                .filter(|(_, n)| get(n) > 0)
            {
                let status = STATUS_NAMES[i];
                requests.push((
                    [("method", method), ("route", route), ("status", status)],
                    counter(n),
                ));
                if let Some(kind) = page_kind(method, route) {
                    *pages.entry((kind, status)).or_default() += get(n);
                }
            }
        }
        family(
            e,
            (
                "hourglass_http_requests",
                "Requests answered, by method, route and status.",
                None,
            ),
            MetricType::Counter,
            requests,
        )?;
        family(
            e,
            (
                "hourglass_http_request_duration",
                "Time to answer, by method and route (to the end of the headers for streamed answers).",
                Some(Unit::Seconds),
            ),
            MetricType::Histogram,
            slots()
                .filter(|(_, s)| s.latency.count() > 0)
                .map(|((method, route), s)| ([("method", method), ("route", route)], &s.latency)),
        )?;
        family(
            e,
            (
                "hourglass_pages",
                "Pages answered, by kind (head, before, after) and status; 304s are status 304.",
                None,
            ),
            MetricType::Counter,
            pages.into_iter().map(|((kind, status), n)| {
                ([("kind", kind), ("status", status)], ConstCounter::new(n))
            }),
        )
    }
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
    if let Some(trouble) = state.store.log_trouble() {
        let body = axum::Json(serde_json::json!({"status": "not ready", "reason": trouble}));
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
