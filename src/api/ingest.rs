//! `POST /api/series/{series}/events` and `POST /api/data`: read the body (bounded, gunzipped when asked), parse
//! it off the async threads, hand it to the store, answer 202 once it is durable.

use std::hash::{Hash, Hasher};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::{AppState, SeriesPath, blocking};
use crate::ingest::parse::{self, Format, TimeSpec, TimeUnit};
use crate::ingest::wal::BatchKey;
use crate::store::SeriesName;
use crate::time;

pub async fn events_post(
    State(state): State<AppState>,
    SeriesPath(name): SeriesPath,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    ingest(state, name, &uri, headers, body).await
}

pub async fn data_post(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = SeriesName::default_series();
    ingest(state, name, &uri, headers, body).await
}

/// Where events without `ts` have their time, when the query says: `time_field=` and `time_unit=` (`auto`, `s`,
/// `ms`, `us`, `ns`), set together (one left out is its default); other parameters are ignored.
fn time_spec(uri: &Uri) -> Result<Option<TimeSpec>, ApiError> {
    let mut spec = None::<TimeSpec>;
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    for (name, value) in pairs {
        match name.as_str() {
            "time_field" => spec.get_or_insert_default().field = Some(time_field(value)?),
            "time_unit" => spec.get_or_insert_default().unit = time_unit(&value)?,
            _ => {}
        }
    }
    Ok(spec)
}

/// A time field as a request or series names it: a key, or a dotted path into nested objects.
pub fn time_field(name: String) -> Result<String, ApiError> {
    if name.is_empty() || name.len() > 256 {
        return Err(ApiError::bad_request(
            "time_field: expected the name of a field, 1 to 256 bytes",
        ));
    }
    Ok(name)
}

pub fn time_unit(unit: &str) -> Result<TimeUnit, ApiError> {
    TimeUnit::parse(unit).ok_or_else(|| {
        ApiError::bad_request(format!(
            "time_unit {unit:?}: expected auto, s, ms, us or ns"
        ))
    })
}

async fn ingest(
    state: AppState,
    name: SeriesName,
    uri: &Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.tokens.check_write(&headers)?;
    let spec = match time_spec(uri)? {
        Some(spec) => spec,
        None => state.store.time_spec(&name),
    };
    let format = body_format(&headers)?;
    let key = idempotency_key(&headers)?;
    let received = receive(&state, &headers, body).await?;
    let t = time::now();
    let (key, parsed, _received) = blocking(move || {
        // The same body read with another time field is another batch.
        let read_as = if spec == TimeSpec::default() {
            0
        } else {
            let mut h = super::StableHasher::default();
            spec.hash(&mut h);
            h.finish()
        };
        let key = key.map(|key| BatchKey {
            key,
            digest: digest(&received.bytes) ^ read_as,
        });
        let parsed = parse::parse_with(&received.bytes, format, t, &spec)?;
        Ok((key, parsed, received))
    })
    .await?;
    let ack = state.store.ingest(&name, key, parsed).await?;
    let mut answer = json!({"accepted": ack.accepted, "series": name.as_str()});
    if ack.replayed {
        answer["replayed"] = json!(true);
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// A request body, read within `--max-body-bytes` and `--request-timeout` and inflated when it came compressed
/// (`Content-Encoding`: gzip or zstd), with its room in `--max-inflight-bytes` held until it is dropped.
pub struct Received {
    pub bytes: Vec<u8>,
    _room: OwnedSemaphorePermit,
    _inflated_room: Option<OwnedSemaphorePermit>,
}

pub async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Received, ApiError> {
    let encoding = body_encoding(headers)?;
    let limit = state.max_body_bytes;
    // Room for the body before its first byte is read (all of `limit` when its length is not declared), and
    // for the inflated body once it is known.
    let declared = declared_length(headers).map_or(limit as u64, |n| n.min(limit as u64));
    let room = state.intake.reserve(declared)?;
    let bytes = read_body(body, headers, limit, state.request_timeout).await?;
    if encoding == BodyEncoding::Identity {
        return Ok(Received {
            bytes,
            _room: room,
            _inflated_room: None,
        });
    }
    let intake = state.intake.clone();
    let (bytes, inflated_room) = blocking(move || {
        let inflated = inflate(&bytes, limit, encoding)?;
        let room = intake.reserve(inflated.len() as u64)?;
        Ok((inflated, room))
    })
    .await?;
    Ok(Received {
        bytes,
        _room: room,
        _inflated_room: Some(inflated_room),
    })
}

/// Memory for request bodies, from the first byte read to the answer: one permit per KiB of
/// `--max-inflight-bytes`, taken without waiting.
#[derive(Clone)]
pub struct Intake {
    permits: Arc<Semaphore>,
    total: u32,
}

impl Intake {
    pub fn new(bytes: u64) -> Intake {
        let total = (bytes / 1024).clamp(1, u64::from(u32::MAX)) as u32;
        Intake {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Room for `bytes` (at most the whole budget, so any body fits when alone), or 503 at once: a server that
    /// cannot keep up says so rather than grow.
    pub fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, ApiError> {
        let kib = bytes.div_ceil(1024).min(u64::from(self.total)) as u32;
        self.permits
            .clone()
            .try_acquire_many_owned(kib.max(1))
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the server holds as many incoming batches as it may (--max-inflight-bytes): retry later",
                )
            })
    }
}

/// The `Idempotency-Key` header: 1 to 255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<Box<str>>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        // Which one would name the batch? A retry sent with the other would be stored twice.
        return Err(ApiError::bad_request(
            "more than one Idempotency-Key header: a batch has one key",
        ));
    }
    let bytes = value.as_bytes();
    // Structured-field strings arrive quoted; the quotes are not part of the key.
    let bytes = match bytes {
        [b'"', inner @ .., b'"'] => inner,
        _ => bytes,
    };
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into()))
}

/// 64 bits that tell one body from another, so a key reused for a different batch is refused rather than taken
/// for a retry: FNV-1a over 8-byte words (stable across builds, as digests outlive the process in the log).
fn digest(body: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ body.len() as u64;
    let mut words = body.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap_or_default())).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    h
}

fn body_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // No type given: an array if it looks like one, NDJSON otherwise.
        return Ok(Format::JsonArray);
    };
    let text = value.to_str().unwrap_or("");
    let mime = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Ok(Format::Ndjson),
        "application/json" => Ok(Format::JsonArray),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type {text:?} is not accepted: send application/x-ndjson (one JSON object per line) \
                 or application/json (an array of objects)"
            ),
        )),
    }
}

/// How a request body is compressed (`Content-Encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyEncoding {
    Identity,
    Gzip,
    Zstd,
}

fn body_encoding(headers: &HeaderMap) -> Result<BodyEncoding, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(BodyEncoding::Identity);
    };
    match value
        .to_str()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "gzip" | "x-gzip" => Ok(BodyEncoding::Gzip),
        "zstd" => Ok(BodyEncoding::Zstd),
        "identity" | "" => Ok(BodyEncoding::Identity),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content encoding {other:?} is not accepted: send gzip, zstd or none"),
        )),
    }
}

pub fn too_large(limit: usize, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("{what} exceeds the limit of {limit} bytes: send smaller batches"),
    )
}

/// Reads a whole request body of at most `limit` bytes, within `timeout` (408 after it: a client that trickles
/// its body cannot hold a request open).
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    tokio::time::timeout(timeout, read_body_within(body, headers, limit))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs()
                ),
            ))
        })
}

async fn read_body_within(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit, "request body"));
    }
    let mut body = body;
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("request body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large(limit, "request body"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The most memory a zstd frame may ask for its window (`2^24`, 16 MiB): every level up to 19 stays below it;
/// a frame that wants more is refused rather than given it.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Inflates a gzip (one member or several) or zstd body, refusing it once the output passes `limit` bytes, so a
/// small body that inflates to gigabytes costs no more than `limit`.
fn inflate(bytes: &[u8], limit: usize, encoding: BodyEncoding) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(limit));
    let bad = |what: &str, e: std::io::Error| {
        ApiError::bad_request(format!("body is not valid {what}: {e}"))
    };
    match encoding {
        BodyEncoding::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(bytes).map_err(|e| bad("zstd", e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| bad("zstd", e))?;
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad("zstd", e))?;
        }
        _ => {
            flate2::read::MultiGzDecoder::new(bytes)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad("gzip", e))?;
        }
    }
    if out.len() > limit {
        return Err(too_large(limit, "inflated request body"));
    }
    Ok(out)
}
