//! `GET /api/series/{series}/export` and `GET /api/series/{series}/histogram`: ranges in bulk (SPEC §6).
//!
//! An export walks the non-empty chunks of its range in time order, one part at a time, on a blocking thread
//! that feeds the response through a small bounded channel: memory does not grow with the range, and a client
//! that goes away closes the channel, which stops the walk. Only the two edge chunks are filtered line by
//! line; for gzip'd NDJSON, a stored member wholly inside the range is sent as it is (no inflate, no deflate).
//! With gzip every piece is its own gzip member, and members back to back are one valid gzip stream.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
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
use super::error::ApiError;
use super::{AppState, SeriesPath, pages};
use crate::ingest::parse::event_time;
use crate::store::{PageRef, SeriesName, Store, StoreError};
use crate::time::{self, Millis};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Format {
    Ndjson,
    Json,
    Csv,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

fn parse_time(key: &str, raw: &str) -> Result<Millis, ApiError> {
    time::parse_rfc3339(raw)
        .or_else(|| {
            raw.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite())
                .map(|s| (s * 1000.0).floor() as Millis)
        })
        .filter(|&t| time::in_range(t))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{key}={raw:?} is not an RFC 3339 time or Unix seconds"
            ))
        })
}

/// A request's range: `from` inclusive, `to` exclusive; RFC 3339 or Unix seconds.
fn range(q: &HashMap<String, String>) -> Result<(Millis, Millis), ApiError> {
    let get = |key: &str| {
        let raw = q.get(key).ok_or_else(|| {
            ApiError::bad_request(format!("missing {key}= (RFC 3339 or Unix seconds)"))
        })?;
        parse_time(key, raw)
    };
    let (from, to) = (get("from")?, get("to")?);
    if from >= to {
        return Err(ApiError::bad_request(format!(
            "from ({}) must be before to ({}): the range is [from, to)",
            time::format_rfc3339(from),
            time::format_rfc3339(to)
        )));
    }
    Ok((from, to))
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
/// watermark, `no-cache` otherwise.
fn caching(
    state: &AppState,
    name: &SeriesName,
    to: Millis,
    identity: impl Hash,
    validators: &Validators,
) -> Result<Caching, ApiError> {
    let (sealed, created) = state.store.watermark(name).ok_or_else(|| unknown(name))?;
    let mut h = HeaderMap::new();
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if to > sealed {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(Caching::Send(h));
    }
    let mut hasher = DefaultHasher::new();
    (name.as_str(), created, identity).hash(&mut hasher);
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

fn not_modified(h: HeaderMap) -> Response {
    let mut res = StatusCode::NOT_MODIFIED.into_response();
    *res.headers_mut() = h;
    res
}

/// A request for a range of a series: read-token checked, `from`/`to` parsed, the rest of its query kept,
/// its validators and whether it takes gzip.
pub struct Ranged {
    name: SeriesName,
    from: Millis,
    to: Millis,
    q: HashMap<String, String>,
    validators: Validators,
    gzip: bool,
}

impl FromRequestParts<AppState> for Ranged {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.tokens.check_read(&parts.headers)?;
        let SeriesPath(name) = SeriesPath::from_request_parts(parts, state).await?;
        let Query(q) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
        let (from, to) = range(&q)?;
        let headers = &parts.headers;
        Ok(Ranged {
            name,
            from,
            to,
            q,
            validators: Validators::from_headers(headers),
            gzip: headers
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(pages::accepts_gzip),
        })
    }
}

pub async fn export_get(State(state): State<AppState>, r: Ranged) -> Result<Response, ApiError> {
    let Ranged {
        name,
        from,
        to,
        q,
        validators,
        gzip,
    } = r;
    let format = match q.get("format").map(String::as_str).unwrap_or("ndjson") {
        "ndjson" => Format::Ndjson,
        "json" => Format::Json,
        "csv" => Format::Csv,
        other => {
            return Err(ApiError::bad_request(format!(
                "format={other:?} is not one of ndjson, json, csv"
            )));
        }
    };
    let fields: Vec<String> = match (format, q.get("fields")) {
        (Format::Csv, Some(f)) if !f.trim().is_empty() => {
            f.split(',').map(|s| s.trim().to_string()).collect()
        }
        (Format::Csv, _) => {
            return Err(ApiError::bad_request(
                "format=csv needs fields=a,b,c (top-level fields)",
            ));
        }
        _ => Vec::new(),
    };
    let mut h = match caching(
        &state,
        &name,
        to,
        (from, to, format, &fields, gzip),
        &validators,
    )? {
        Caching::NotModified(h) => return Ok(not_modified(h)),
        Caching::Send(h) => h,
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }

    let (tx, rx) = mpsc::channel(4);
    let job = Export {
        store: state.store.clone(),
        name,
        from,
        to,
        format,
        fields,
        gzip,
        level: state.gzip_level,
        tx,
        sent: std::cell::Cell::new(false),
    };
    tokio::task::spawn_blocking(move || {
        if let Err(e) = job.run() {
            tracing::warn!(error = %e, "export stopped");
        }
    });
    let mut res = Response::new(Body::new(Stream(rx)));
    *res.headers_mut() = h;
    Ok(res)
}

/// The response body: whatever the export thread sends, until it is done or fails.
struct Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|r| r.map(Frame::data)))
    }
}

/// Why an export stopped early.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the client went away")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Export {
    store: Store,
    name: SeriesName,
    from: Millis,
    to: Millis,
    format: Format,
    fields: Vec<String>,
    gzip: bool,
    level: u32,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// Whether anything was sent: an empty gzip body would not be valid gzip.
    sent: std::cell::Cell<bool>,
}

impl Export {
    fn run(&self) -> Result<(), Stop> {
        let result = self.walk();
        if let Err(Stop::Store(e)) = &result {
            // The status is sent already: break the body, so the client sees a failed transfer, not a short one.
            let _ = self
                .tx
                .blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        result
    }

    fn walk(&self) -> Result<(), Stop> {
        let width = self
            .store
            .width_of(&self.name)
            .ok_or_else(|| StoreError::UnknownSeries(self.name.to_string()))?;
        let mut first = true;
        match self.format {
            Format::Json => self.send_text(b"[".to_vec())?,
            Format::Csv => self.send_text(csv_header(&self.fields))?,
            Format::Ndjson => {}
        }
        let mut cursor = width.align_down(self.from);
        while cursor < self.to {
            let at = self
                .store
                .locate(&self.name, PageRef::After { start: cursor })?;
            let Some(start) = at.start.filter(|&s| at.parts > 0 && s < self.to) else {
                break;
            };
            let end = start + width.millis();
            let whole = start >= self.from && end <= self.to;
            for part in 0..at.parts {
                let page = PageRef::Before {
                    end,
                    part: Some(part),
                };
                let at = self.store.locate(&self.name, page)?;
                let pass_through = self.gzip && self.format == Format::Ndjson;
                if pass_through
                    && let Some((meta, member)) = self.store.read_stored(&self.name, &at)?
                    && meta.first_ts >= self.from
                    && meta.last_ts < self.to
                {
                    self.send(Bytes::from(member))?;
                    continue;
                }
                let lines = self.store.read_page(&self.name, &at)?.lines;
                let out = self.render(&lines, whole, &mut first);
                if !out.is_empty() {
                    self.send_text(out)?;
                }
            }
            cursor = end;
        }
        if self.format == Format::Json {
            self.send_text(b"]\n".to_vec())?;
        }
        if self.gzip && !self.sent.get() {
            self.send_text(Vec::new())?;
        }
        Ok(())
    }

    /// The lines of one page in the export's format, filtered to the range unless `whole`.
    fn render(&self, lines: &[u8], whole: bool, first: &mut bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(lines.len() + lines.len() / 8);
        let in_range =
            |line: &[u8]| whole || event_time(line).is_some_and(|t| t >= self.from && t < self.to);
        for line in lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty() && in_range(l))
        {
            match self.format {
                Format::Ndjson => {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
                Format::Json => {
                    if !*first {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                }
                Format::Csv => csv_row(line, &self.fields, &mut out),
            }
            *first = false;
        }
        out
    }

    fn send_text(&self, text: Vec<u8>) -> Result<(), Stop> {
        let bytes = if self.gzip {
            pages::gzip(&text, self.level)
        } else {
            text
        };
        self.send(Bytes::from(bytes))
    }

    fn send(&self, bytes: Bytes) -> Result<(), Stop> {
        self.sent.set(true);
        self.tx.blocking_send(Ok(bytes)).map_err(|_| Stop::Gone)
    }
}

/// RFC 4180: a field is quoted when it holds a comma, a quote or a line break; quotes are doubled.
fn csv_cell(text: &str, out: &mut Vec<u8>) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(text.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

fn csv_header(fields: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_cell(f, &mut out);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One event as a CSV row: strings as they are, other values as compact JSON, missing fields empty.
fn csv_row(line: &[u8], fields: &[String], out: &mut Vec<u8>) {
    let event: serde_json::Map<String, Value> = serde_json::from_slice(line).unwrap_or_default();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match event.get(f) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => csv_cell(s, out),
            Some(other) => csv_cell(&other.to_string(), out),
        }
    }
    out.extend_from_slice(b"\r\n");
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

const MAX_BUCKETS: Millis = 100_000;

pub async fn histogram_get(State(state): State<AppState>, r: Ranged) -> Result<Response, ApiError> {
    let Ranged {
        name,
        from,
        to,
        q,
        validators,
        ..
    } = r;
    let width = state.store.width_of(&name).ok_or_else(|| unknown(&name))?;
    let raw = q.get("step").map(String::as_str).unwrap_or("");
    let step = parse_step(raw)
        .filter(|&s| s % width.millis() == 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "step={raw:?} is not a multiple of the series' chunk width ({width}) as seconds or 30s, 5m, 1h"
            ))
        })?;
    if !width.is_aligned(from) || !width.is_aligned(to) {
        return Err(ApiError::bad_request(format!(
            "from and to must be multiples of the series' chunk width ({width}), so that counts are exact"
        )));
    }
    if (to - from) / step > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "{} buckets is more than {MAX_BUCKETS}: use a larger step",
            (to - from) / step
        )));
    }
    let h = match caching(
        &state,
        &name,
        to,
        ("histogram", from, to, step),
        &validators,
    )? {
        Caching::NotModified(h) => return Ok(not_modified(h)),
        Caching::Send(h) => h,
    };
    let counts = state.store.histogram(&name, from, to, step)?;
    let buckets: Vec<Value> = counts
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"start": time::format_rfc3339(from + i as Millis * step), "count": n}))
        .collect();
    let mut res = Json(json!({"step_seconds": step / 1000, "buckets": buckets})).into_response();
    res.headers_mut().extend(h);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_by_rfc_4180_and_leaves_missing_fields_empty() {
        let fields: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut out = Vec::new();
        csv_row(
            br#"{"a":"x,y","b":"say \"hi\"","c":1.5,"e":{"k":[1]}}"#,
            &fields,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"x,y\",\"say \"\"hi\"\"\",1.5,,\"{\"\"k\"\":[1]}\"\r\n"
        );
        assert_eq!(csv_header(&fields), b"a,b,c,d,e\r\n");
    }

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
