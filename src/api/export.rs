//! `GET /api/series/{series}/export` and `GET /api/series/{series}/histogram`: ranges in bulk (SPEC §6), filtered
//! by `where=` and `q=` (`api::filters`), histograms grouped and aggregated (`bulk::aggregate`).
//!
//! An export runs the walk of `bulk::export` on a blocking thread that feeds the response through a small
//! bounded channel: memory does not grow with the range, and a client that goes away closes the channel, which
//! stops the walk.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::conditional::Validators;
use super::error::{self, ApiError};
use super::filters::Filtering;
use super::{AppState, SeriesPath, blocking, pages};
use crate::bulk::aggregate::{self, Agg, Aggregation, HistogramError};
use crate::bulk::export::{self, Encoding, Export, ExportError, Format, Sink};
use crate::store::{SeriesName, StoreError};
use crate::time::{self, Millis};

/// A request's range: `from` inclusive, `to` exclusive; RFC 3339 or Unix seconds.
fn range(q: &HashMap<String, String>) -> Result<(Millis, Millis), ApiError> {
    let get = |key: &str| {
        q.get(key).map(String::as_str).ok_or_else(|| {
            ApiError::bad_request(format!("missing {key}= (RFC 3339 or Unix seconds)"))
        })
    };
    export::parse_range(get("from")?, get("to")?).map_err(ApiError::bad_request)
}

fn unknown(name: &SeriesName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_series",
        format!("no series named {:?}", name.as_str()),
    )
}

/// How a bulk answer may be cached.
enum Caching {
    /// The client's copy is current.
    NotModified(HeaderMap),
    Send(HeaderMap),
}

/// Final (cached forever, ETag from the request's identity) when the whole range is below the sealed
/// watermark, `no-cache` otherwise. A range the sealer has sealed but whose watermark an idle series has not
/// persisted yet has it persisted first (on a blocking thread), so that the answer stays true after a restart.
async fn caching(
    state: &AppState,
    name: &SeriesName,
    to: Millis,
    identity: impl Hash,
    validators: &Validators,
) -> Result<Caching, ApiError> {
    let (mut sealed, swept, mut generation) =
        state.store.watermark(name).ok_or_else(|| unknown(name))?;
    if to > sealed && to <= swept {
        let (store, name) = (state.store.clone(), name.clone());
        (sealed, generation) = blocking(move || Ok(store.final_watermark(&name, to)?)).await?;
    }
    let mut h = HeaderMap::new();
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if to > sealed {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(Caching::Send(h));
    }
    let mut hasher = super::StableHasher::default();
    (name.as_str(), generation, identity).hash(&mut hasher);
    let etag = format!("\"hg1x.{:016x}\"", hasher.finish());
    let control = if state.tokens.read.is_some() {
        "private, max-age=31536000, immutable"
    } else {
        "public, max-age=31536000, immutable"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(control));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(if validators.not_modified(&etag, None) {
        Caching::NotModified(h)
    } else {
        Caching::Send(h)
    })
}

/// A filter's query in an answer's identity: hashed when there is one, nothing at all otherwise, so that an
/// unfiltered answer keeps the identity (and ETag) it had before filters existed.
struct FilterKey<'a>(&'a str);

impl Hash for FilterKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        if !self.0.is_empty() {
            ("filter", self.0).hash(h);
        }
    }
}

fn not_modified(h: HeaderMap) -> Response {
    let mut res = StatusCode::NOT_MODIFIED.into_response();
    *res.headers_mut() = h;
    res
}

/// A request for a range of a series: read-token checked, `from`/`to` parsed, the rest of its query kept,
/// its validators and the encoding it prefers.
pub struct Ranged {
    name: SeriesName,
    from: Millis,
    to: Millis,
    q: HashMap<String, String>,
    validators: Validators,
    encoding: Encoding,
    /// `where=` and `q=`.
    filtering: Option<Filtering>,
}

impl Ranged {
    /// The filter's query, which an answer's identity names (empty without one).
    fn filter_query(&self) -> &str {
        self.filtering.as_ref().map_or("", |f| f.query.as_str())
    }
}

impl FromRequestParts<AppState> for Ranged {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let refuse = IntoResponse::into_response;
        state.tokens.check_read(&parts.headers).map_err(refuse)?;
        let SeriesPath(name) = SeriesPath::from_request_parts(parts, state)
            .await
            .map_err(refuse)?;
        let Query(q) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad query: {e}")).into_response())?;
        let filtering = Filtering::read(parts.uri.query(), None).map_err(refuse)?;
        let (from, to) = range(&q).map_err(refuse)?;
        // One filter, one URL: the filter's terms in another order or spelling are sent to the one spelling.
        if let Some(f) = &filtering
            && f.respelled(parts.uri.query())
        {
            return Err(error::redirect(&format!(
                "{}?{}",
                parts.uri.path(),
                f.canonical
            )));
        }
        let headers = &parts.headers;
        Ok(Ranged {
            name,
            from,
            to,
            q,
            filtering,
            validators: Validators::from_headers(headers),
            encoding: headers
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map_or(Encoding::Identity, pages::preferred_encoding),
        })
    }
}

/// An export's `format` (ndjson by default) and, for csv, its `fields`.
fn format_and_fields(q: &HashMap<String, String>) -> Result<(Format, Vec<String>), ApiError> {
    let format = Format::parse(q.get("format").map_or("ndjson", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = export::csv_fields(format, q.get("fields").map(String::as_str))
        .map_err(ApiError::bad_request)?;
    Ok((format, fields))
}

pub async fn export_get(State(state): State<AppState>, r: Ranged) -> Result<Response, ApiError> {
    let query = r.filter_query().to_string();
    let Ranged {
        name,
        from,
        to,
        q,
        validators,
        encoding,
        filtering,
    } = r;
    let (format, fields) = format_and_fields(&q)?;
    state.store.check_kept(&name, from)?;
    // The identity the ETag names: gzip and none as ever, zstd apart; a filter's query when filtered.
    let gzip = encoding == Encoding::Gzip;
    let identity = (from, to, format, &fields, gzip, FilterKey(&query));
    let cached = match encoding {
        Encoding::Zstd => caching(&state, &name, to, (identity, "zstd"), &validators).await?,
        _ => caching(&state, &name, to, identity, &validators).await?,
    };
    let mut h = match cached {
        Caching::NotModified(h) => return Ok(not_modified(h)),
        Caching::Send(h) => h,
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    match encoding {
        Encoding::Gzip => {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Encoding::Zstd => {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        }
        Encoding::Identity => {}
    }

    let (tx, mut rx) = mpsc::channel(4);
    let job = Export {
        name,
        from,
        to,
        format,
        fields,
        encoding,
        deflater: state.deflater,
        filter: filtering.map(|f| f.filter),
    };
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut sink = Channel::new(tx);
        let piece = match job.run(&store, &mut sink) {
            Ok(()) => Piece::End,
            Err(ExportError::Store(e)) => Piece::Failed(e),
            // The client went away: nobody to tell.
            Err(ExportError::Write(_)) => return,
        };
        // Damage is logged once, where it is found.
        if let Piece::Failed(e) = &piece
            && !matches!(e, StoreError::Damaged(_))
        {
            tracing::warn!(error = %e, "export stopped");
        }
        sink.send(piece);
    });
    // The status waits for the range's first chunk: a failure there (a damaged member, say) is a plain error
    // answer, not a 200 that breaks off.
    let first = match rx.recv().await {
        Some(Piece::Failed(e)) => return Err(e.into()),
        None => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the export stopped before it began",
            ));
        }
        Some(first) => first,
    };
    let mut res = Response::new(Body::new(Stream {
        first: Some(first),
        rx,
        ended: false,
        failing: None,
    }));
    *res.headers_mut() = h;
    Ok(res)
}

/// `GET /api/series/{series}/export/manifest?from&to[&format&fields]`: the range as one export URL per hour
/// that holds events (cut to the range), each with its events, whether it is final and, for a whole sealed
/// hour, the bytes its archive takes (compressed); a filter goes into every URL, and the counts are of the
/// events before it. Scripts fetch the hours in parallel and resume
/// where they stopped; a cache keeps each final hour. The manifest is final when the whole range is.
pub async fn manifest_get(State(state): State<AppState>, r: Ranged) -> Result<Response, ApiError> {
    let query = r.filter_query().to_string();
    let Ranged {
        name,
        from,
        to,
        q,
        validators,
        ..
    } = r;
    let (format, fields) = format_and_fields(&q)?;
    state.store.check_kept(&name, from)?;
    let h = match caching(
        &state,
        &name,
        to,
        ("manifest", from, to, format, &fields, FilterKey(&query)),
        &validators,
    )
    .await?
    {
        Caching::NotModified(h) => return Ok(not_modified(h)),
        Caching::Send(h) => h,
    };
    let (sealed, _, _) = state.store.watermark(&name).ok_or_else(|| unknown(&name))?;
    let store = state.store.clone();
    let series = name.clone();
    let hours = blocking(move || Ok(store.hours_of(&series, from, to, sealed)?)).await?;
    // Each hour's URL asks for what this request asked for.
    let mut extra = String::new();
    for key in ["format", "fields"] {
        if let Some(v) = q.get(key) {
            extra.push_str(&format!("&{key}={}", export::encode_query(v)));
        }
    }
    if !query.is_empty() {
        extra.push('&');
        extra.push_str(&query);
    }
    let entries: Vec<Value> = hours
        .iter()
        .map(|p| {
            let (a, b) = (time::format_rfc3339(p.from), time::format_rfc3339(p.to));
            json!({
                "from": a,
                "to": b,
                "url": format!("/api/series/{}/export?from={a}&to={b}{extra}", name.as_str()),
                "events": p.events,
                "archive_bytes": p.archive_bytes,
                "final": p.to <= sealed,
            })
        })
        .collect();
    let body = json!({
        "series": name.as_str(),
        "from": time::format_rfc3339(from),
        "to": time::format_rfc3339(to),
        "events": hours.iter().map(|p| p.events).sum::<u64>(),
        "final": to <= sealed,
        "hours": entries,
    });
    let mut res = Json(body).into_response();
    res.headers_mut().extend(h);
    Ok(res)
}

/// What the export thread hands the response body.
enum Piece {
    Data(Bytes),
    /// The export is complete: the body may end.
    End,
    /// The export failed: the body must break off, so that no client or cache takes it for complete.
    Failed(StoreError),
}

/// The export thread's end of the response body. Output is held back until the range's first chunk is done
/// (or `HOLD` bytes are waiting), so that the handler can still answer an error that happens there.
struct Channel {
    tx: mpsc::Sender<Piece>,
    held: Option<Vec<Bytes>>,
    held_bytes: usize,
}

impl Channel {
    const HOLD: usize = 1 << 20;

    fn new(tx: mpsc::Sender<Piece>) -> Channel {
        Channel {
            tx,
            held: Some(Vec::new()),
            held_bytes: 0,
        }
    }

    fn release(&mut self) -> io::Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        if held.is_empty() {
            return Ok(());
        }
        let mut joined = Vec::with_capacity(self.held_bytes);
        for piece in held {
            joined.extend_from_slice(&piece);
        }
        self.push(Piece::Data(Bytes::from(joined)))
    }

    fn push(&mut self, piece: Piece) -> io::Result<()> {
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// The last piece: held output goes first, unless the export failed (then the error is all there is to say).
    fn send(mut self, piece: Piece) {
        if !matches!(piece, Piece::Failed(_)) || self.held.is_none() {
            let _ = self.release();
        }
        let _ = self.push(piece);
    }
}

impl Sink for Channel {
    fn write(&mut self, piece: Bytes) -> io::Result<()> {
        match &mut self.held {
            Some(held) => {
                self.held_bytes += piece.len();
                held.push(piece);
                if self.held_bytes >= Self::HOLD {
                    self.release()?;
                }
                Ok(())
            }
            None => self.push(Piece::Data(piece)),
        }
    }

    fn reached(&mut self, _t: Millis) {
        // The first chunk is done: from here on a failure can only break the body off. A client gone away
        // shows at the next write.
        let _ = self.release();
    }
}

/// The response body: whatever the export thread sends, until it says the export is complete. A failure, or
/// a thread that stopped without saying so, ends the body with an error: the connection is closed without the
/// terminating chunk.
struct Stream {
    first: Option<Piece>,
    rx: mpsc::Receiver<Piece>,
    ended: bool,
    /// A failure to end the body with, after one `Pending` that lets hyper write out what came before it.
    failing: Option<io::Error>,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(e) = self.failing.take() {
            self.ended = true;
            return Poll::Ready(Some(Err(e)));
        }
        let piece = match self.first.take() {
            Some(p) => Some(p),
            None => std::task::ready!(self.rx.poll_recv(cx)),
        };
        let failure = match piece {
            Some(Piece::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
            Some(Piece::End) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Some(Piece::Failed(e)) => io::Error::other(e.to_string()),
            None => io::Error::other("the export stopped before its end"),
        };
        // hyper writes out what it holds when the body is not ready: the client gets every piece before the
        // failure, then a connection closed without the terminating chunk.
        self.failing = Some(failure);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// `30`, `30s`, `5m`, `1h`: a step in milliseconds.
fn parse_step(raw: &str) -> Option<Millis> {
    let (digits, unit) = match raw.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: Millis = digits.parse().ok().filter(|&n| n > 0)?;
    let scale = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

const MAX_BUCKETS: usize = 100_000;

/// A histogram's step from its `step=` parameter: a multiple of the series' width, over a range whose ends are
/// multiples of it too, so that counts are exact; at most the range (a larger step counts the same one bucket,
/// so it is taken as the range), and at most `MAX_BUCKETS` buckets.
pub(crate) fn histogram_step(
    from: Millis,
    to: Millis,
    raw: &str,
    width: crate::time::ChunkWidth,
) -> Result<Millis, String> {
    let step = parse_step(raw)
        .filter(|&s| s % width.millis() == 0)
        .ok_or_else(|| {
            format!(
                "step={raw:?} is not a multiple of the series' chunk width ({width}) as seconds or 30s, 5m, 1h"
            )
        })?;
    if !width.is_aligned(from) || !width.is_aligned(to) {
        return Err(format!(
            "from and to must be multiples of the series' chunk width ({width}), so that counts are exact"
        ));
    }
    let step = step.min(to - from);
    let buckets = time::buckets(from, to, step);
    if buckets > MAX_BUCKETS {
        return Err(format!(
            "{buckets} buckets is more than {MAX_BUCKETS}: use a larger step"
        ));
    }
    Ok(step)
}

/// `GET .../histogram?from&to&step`: counts per step, from the hour summaries and indexes alone. With a
/// filter (`where=`, `q=`), `group_by=field` (`top=N` values, 5 by default) or `agg=` (`bulk::aggregate`), the
/// range's events are read.
pub async fn histogram_get(State(state): State<AppState>, r: Ranged) -> Result<Response, ApiError> {
    let query = r.filter_query().to_string();
    let Ranged {
        name,
        from,
        to,
        q,
        validators,
        filtering,
        ..
    } = r;
    let width = state.store.width_of(&name).ok_or_else(|| unknown(&name))?;
    // What retention removed is gone, for counts as for events: never a different answer at the same URL.
    state.store.check_kept(&name, from)?;
    let raw = q.get("step").map(String::as_str).unwrap_or("");
    let step = histogram_step(from, to, raw, width).map_err(ApiError::bad_request)?;
    let what = aggregation(&q, filtering.map(|f| f.filter))?;
    let reads = what.filter.is_some() || what.group_by.is_some() || !what.aggs.is_empty();
    if reads && time::buckets(from, to, step) > MAX_AGGREGATED_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "a filtered, grouped or aggregated histogram has at most {MAX_AGGREGATED_BUCKETS} buckets: use a larger step"
        )));
    }
    let percentiles = what.aggs.iter().any(Agg::is_percentile);
    let shape = AggKey(&what);
    let h = match caching(
        &state,
        &name,
        to,
        ("histogram", from, to, step, FilterKey(&query), shape),
        &validators,
    )
    .await?
    {
        Caching::NotModified(h) => return Ok(not_modified(h)),
        Caching::Send(h) => h,
    };
    let store = state.store.clone();
    let buckets = blocking(move || {
        if reads {
            return aggregate::histogram(&store, &name, (from, to, step), &what).map_err(|e| match e {
                HistogramError::TooManyGroups(m) => ApiError::bad_request(m),
                HistogramError::Store(e) => e.into(),
            });
        }
        let counts = store.histogram(&name, from, to, step)?;
        Ok(counts
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"start": time::format_rfc3339(from + i as Millis * step), "count": n}))
            .collect())
    })
    .await?;
    let mut body = json!({"step_seconds": step / 1000, "buckets": buckets});
    if !query.is_empty() {
        body["filter"] = json!(query);
    }
    if percentiles {
        body["percentile_relative_error"] = json!(aggregate::RELATIVE_ERROR);
    }
    let mut res = Json(body).into_response();
    res.headers_mut().extend(h);
    Ok(res)
}

/// The most buckets a histogram that reads events may have: each holds its aggregations' state.
const MAX_AGGREGATED_BUCKETS: usize = 10_000;

/// `group_by`, `top` and `agg` of a histogram request, with its filter.
fn aggregation(
    q: &HashMap<String, String>,
    filter: Option<std::sync::Arc<crate::filter::Filter>>,
) -> Result<Aggregation, ApiError> {
    let group_by = match q.get("group_by") {
        None => {
            if q.contains_key("top") {
                return Err(ApiError::bad_request("top= goes with group_by=field"));
            }
            None
        }
        Some(field) => {
            let path = aggregate::path(field)
                .map_err(|e| ApiError::bad_request(format!("group_by={field:?}: {e}")))?;
            let top = match q.get("top") {
                None => 5,
                Some(raw) => raw
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=aggregate::MAX_TOP).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "top={raw:?} is not a number from 1 to {}",
                            aggregate::MAX_TOP
                        ))
                    })?,
            };
            Some((path, top))
        }
    };
    let aggs = match q.get("agg") {
        Some(raw) => Agg::parse_list(raw).map_err(ApiError::bad_request)?,
        None => Vec::new(),
    };
    Ok(Aggregation {
        filter,
        group_by,
        aggs,
    })
}

/// A histogram's grouping and aggregations in its identity: nothing when there are none, so that a plain
/// histogram keeps the identity it had before they existed.
struct AggKey<'a>(&'a Aggregation);

impl Hash for AggKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let a = self.0;
        if let Some((field, top)) = &a.group_by {
            ("group_by", field, top).hash(h);
        }
        for agg in &a.aggs {
            ("agg", &agg.name).hash(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        assert_eq!(parse_step("30"), Some(30_000));
        assert_eq!(parse_step("30s"), Some(30_000));
        assert_eq!(parse_step("5m"), Some(300_000));
        assert_eq!(parse_step("1h"), Some(3_600_000));
        for bad in ["", "0", "-5", "5x", "m", "1.5h"] {
            assert_eq!(parse_step(bad), None, "{bad}");
        }
    }
}
