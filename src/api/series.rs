//! `GET /api/series`, `GET /api/series/{series}` and `PUT /api/series/{series}`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::ingest::{read_body, time_field, time_unit};
use super::{AppState, SeriesPath};
use crate::ingest::parse::{TimeSpec, TimeUnit};
use crate::store::SeriesInfo;
use crate::time::{self, ChunkWidth};

fn info_json(i: &SeriesInfo) -> Value {
    let at = |t: Option<i64>| t.map(time::format_rfc3339);
    let mut v = json!({
        "name": i.name,
        "chunk_seconds": i.width.secs(),
        "events": i.events,
        "unsealed_events": i.unsealed_events,
        "sealed_chunks": i.sealed_chunks,
        "archive_bytes": i.archive_bytes,
        "first_event": at(i.first_ts),
        "last_event": at(i.last_ts),
        "sealed_watermark": time::format_rfc3339(i.sealed),
        "retained_from": at(i.retained_from),
        "created": time::format_rfc3339(i.created),
    });
    if let Some(field) = &i.time.field {
        v["time_field"] = json!(field);
    }
    if i.time.unit != TimeUnit::Auto {
        v["time_unit"] = json!(i.time.unit);
    }
    if let Some(t) = i.uploaded_through {
        v["uploaded_through"] = json!(time::format_rfc3339(t));
    }
    if let Some(ahead) = i.watermark_ahead {
        // A clock that went back: what an operator needs to know, where they look.
        v["watermark_ahead_of_clock_seconds"] = json!((ahead + 999) / 1000);
    }
    v
}

/// Series info changes with every batch: revalidated each time, and kept by no shared cache when reads need a
/// token.
fn current(state: &AppState, body: Value) -> Response {
    let control = if state.tokens.read.is_some() {
        "private, no-cache"
    } else {
        "no-cache"
    };
    let mut res = Json(body).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(control));
    res
}

pub async fn series_list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.tokens.check_read(&headers)?;
    let list: Vec<Value> = state
        .store
        .series_names()
        .iter()
        .filter_map(|n| state.store.info(n))
        .map(|i| info_json(&i))
        .collect();
    Ok(current(&state, json!({ "series": list })))
}

pub async fn series_show(
    State(state): State<AppState>,
    SeriesPath(name): SeriesPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.tokens.check_read(&headers)?;
    let info = state.store.info(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_series",
            format!("no series named {:?}", name.as_str()),
        )
    })?;
    Ok(current(&state, info_json(&info)))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesSettings {
    chunk_seconds: Option<u32>,
    /// Present (a name or `null`, the default) or absent (unchanged); set with `time_unit`.
    #[serde(default, deserialize_with = "present")]
    time_field: Option<Option<String>>,
    time_unit: Option<String>,
}

/// A field that is present, even as `null`, as `Some`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Creates a series with the given chunk width: 201 when created, 200 when it exists with that width, 409 when
/// it exists with another. `time_field` and `time_unit` say where later batches' events without `ts` have their
/// time; they may change at any time (stored lines never do) and are set together.
pub async fn series_put(
    State(state): State<AppState>,
    SeriesPath(name): SeriesPath,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.tokens.check_write(&headers)?;
    let bytes = read_body(body, &headers, 64 << 10, state.request_timeout).await?;
    let settings: SeriesSettings = if bytes.iter().all(u8::is_ascii_whitespace) {
        SeriesSettings::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "body: expected {{\"chunk_seconds\": N, \"time_field\": F, \"time_unit\": U}}: {e}"
            ))
        })?
    };
    let width = settings
        .chunk_seconds
        .map(ChunkWidth::from_secs)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let time = match (settings.time_field, settings.time_unit) {
        (None, None) => None,
        (field, unit) => Some(TimeSpec {
            field: field.flatten().map(time_field).transpose()?,
            unit: unit
                .as_deref()
                .map(time_unit)
                .transpose()?
                .unwrap_or_default(),
        }),
    };
    let created = state.store.ensure_series(&name, width, time).await?;
    let info = state
        .store
        .info(&name)
        .ok_or_else(|| ApiError::not_found(format!("no series named {:?}", name.as_str())))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info_json(&info))))
}
