//! Elasticsearch's `_bulk` API (`POST /_bulk`, `POST /{index}/_bulk`), so that Beats, Logstash, Fluent Bit's `es`
//! output, Vector's `elasticsearch` sink and the official clients' bulk helpers write here. `create` and `index`
//! actions are taken, each document stored as sent (its time from `@timestamp` by default); the series is the
//! index, or a field of the document (`--elastic-series-field`). `delete` and `update` are refused: events are
//! appended, never changed. Answers carry `X-Elastic-Product: Elasticsearch`, which official clients check.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Parts, Stored, Times};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::ingest::parse::json_at_path;

pub async fn bulk_post(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    answer(bulk(&state, None, &headers, body).await)
}

pub async fn index_bulk_post(
    State(state): State<AppState>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(bulk(&state, Some(index), &headers, body).await)
}

/// `GET /` as Elasticsearch answers it, for clients that ask for JSON there (a version check before writing).
pub fn info() -> Response {
    product(
        axum::Json(json!({
            "name": "hourglass",
            "cluster_name": "hourglass",
            "version": {
                "number": "8.17.0",
                "build_flavor": "default",
                "lucene_version": "9.12.0",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0",
            },
            "tagline": "You Know, for Search",
        }))
        .into_response(),
    )
}

/// One action line: `{"create": {...}}` or `{"index": {...}}`.
#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "_index")]
    index: Option<String>,
    #[serde(rename = "_id")]
    id: Option<String>,
}

struct Item {
    action: String,
    index: String,
    id: String,
}

async fn bulk(
    state: &AppState,
    path_index: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let began = Instant::now();
    state.tokens.check_write(headers)?;
    let received = crate::api::ingest::receive(state, headers, body).await?;
    let fields = state.shippers.elastic.clone();
    let (parts, items) =
        crate::api::ingest::blocking(move || read(&received.bytes, path_index.as_deref(), &fields))
            .await?;
    if items.is_empty() {
        return Err(ApiError::bad_request("the body holds no actions"));
    }
    let stored = super::store(state, parts, Times::AsSeriesSays).await?;
    if stored.iter().all(|s| s.outcome.is_err()) {
        return Err(super::first_refusal(stored)
            .unwrap_or_else(|| ApiError::bad_request("the body holds no actions")));
    }
    Ok(product(
        axum::Json(results(began, &items, stored)).into_response(),
    ))
}

/// The documents of a bulk body by series, and each item's action, index and id.
fn read(
    body: &[u8],
    path_index: Option<&str>,
    fields: &[String],
) -> Result<(Parts, Vec<Item>), ApiError> {
    let mut parts = Parts::new("item");
    let mut items = Vec::new();
    let mut lines = body
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .enumerate()
        .filter(|(_, l)| !l.is_empty());
    while let Some((at, line)) = lines.next() {
        let number = items.len() + 1;
        let fail =
            |why: String| ApiError::bad_request(format!("item {number} (line {}): {why}", at + 1));
        let action: HashMap<String, Meta> = serde_json::from_slice(line)
            .map_err(|e| fail(format!("not an action line {{\"create\": {{...}}}}: {e}")))?;
        let (kind, meta) = match action.into_iter().next() {
            Some(pair) if line.starts_with(b"{") => pair,
            _ => return Err(fail("not an action line {\"create\": {...}}".into())),
        };
        if !matches!(kind.as_str(), "create" | "index") {
            return Err(fail(format!(
                "the {kind:?} action is not taken: events are appended, never changed or removed; send create or index"
            )));
        }
        let Some((_, document)) = lines.next() else {
            return Err(fail(format!("the {kind} action has no document after it")));
        };
        let index = match meta.index.as_deref().or(path_index) {
            Some(index) => index.to_string(),
            None => return Err(fail("no index: name one in the action or the URL".into())),
        };
        let from_field = fields
            .iter()
            .find_map(|f| json_at_path(document, f))
            .map(|raw| serde_json::from_str::<String>(raw.get()).unwrap_or(raw.get().to_string()));
        let series = super::series_name(from_field.as_deref().unwrap_or(&index));
        parts.push(series, number, document);
        let id = meta.id.unwrap_or_else(|| generated_id(number));
        items.push(Item {
            action: kind,
            index,
            id,
        });
    }
    Ok((parts, items))
}

/// An id for a document sent without one: the time received and the item, unique within this server.
fn generated_id(number: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{number}")
}

/// The answer Elasticsearch gives: per item its status, `errors` when any failed.
fn results(began: Instant, items: &[Item], stored: Vec<Stored>) -> Value {
    let mut status = vec![None::<&ApiError>; items.len()];
    let mut errors = false;
    for part in &stored {
        if let Err(e) = &part.outcome {
            errors = true;
            for &n in &part.numbers {
                if let Some(s) = status.get_mut(n as usize - 1) {
                    *s = Some(e);
                }
            }
        }
    }
    let answers: Vec<Value> = items
        .iter()
        .zip(&status)
        .enumerate()
        .map(|(i, (item, failed))| {
            let body = match failed {
                None => json!({
                    "_index": item.index, "_id": item.id, "_version": 1, "result": "created",
                    "_shards": {"total": 1, "successful": 1, "failed": 0},
                    "_seq_no": i, "_primary_term": 1, "status": 201,
                }),
                Some(e) => json!({
                    "_index": item.index, "_id": item.id, "status": e.status.as_u16(),
                    "error": {"type": error_type(e.status), "reason": e.message},
                }),
            };
            json!({ item.action.as_str(): body })
        })
        .collect();
    json!({
        "took": began.elapsed().as_millis() as u64,
        "errors": errors,
        "items": answers,
    })
}

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "security_exception",
        429 | 503 => "es_rejected_execution_exception",
        400..=499 => "illegal_argument_exception",
        _ => "exception",
    }
}

/// A refusal in Elasticsearch's shape, keeping the status and headers (`Retry-After`) of the native one.
fn answer(result: Result<Response, ApiError>) -> Response {
    let e = match result {
        Ok(res) => return res,
        Err(e) => e,
    };
    let kind = error_type(e.status);
    let body = json!({
        "error": {
            "root_cause": [{"type": kind, "reason": e.message}],
            "type": kind,
            "reason": e.message,
        },
        "status": e.status.as_u16(),
    });
    let mut res = e.into_response();
    res.headers_mut().remove(header::CONTENT_LENGTH);
    *res.body_mut() = Body::from(body.to_string());
    product(res)
}

fn product(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
