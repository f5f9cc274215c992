//! Elasticsearch's `_bulk` API (`POST /_bulk`, `POST /{index}/_bulk`), so that Beats, Logstash, Fluent Bit's `es`
//! output, Vector's `elasticsearch` sink and the official clients' bulk helpers write here. `create` and `index`
//! actions are taken, each document stored as sent (its time from `@timestamp` by default); the series is the
//! index, or a field of the document (`--elastic-series-field`). `delete` and `update` are refused: events are
//! appended, never changed. Answers carry `X-Elastic-Product: Elasticsearch`, which official clients check.

use std::borrow::Cow;
use std::io::Write;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Parts, Stored};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::ingest::parse::json_at_path;

pub async fn bulk_post(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(bulk(&state, None, &uri, &headers, body).await)
}

pub async fn index_bulk_post(
    State(state): State<AppState>,
    Path(index): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(bulk(&state, Some(index), &uri, &headers, body).await)
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

/// One action line: `{"create": {...}}` or `{"index": {...}}`; `delete` and `update` are named to refuse them.
#[derive(Deserialize)]
struct ActionLine<'a> {
    #[serde(borrow, default)]
    create: Option<Meta<'a>>,
    #[serde(borrow, default)]
    index: Option<Meta<'a>>,
    #[serde(default)]
    delete: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    update: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "_index")]
    index: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "_id")]
    id: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Create,
    Index,
}

struct Item {
    action: Action,
    /// Of the request's index names.
    index: usize,
    /// As sent; `None`: one is made up for the answer.
    id: Option<String>,
}

async fn bulk(
    state: &AppState,
    path_index: Option<String>,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let began = Instant::now();
    let wanted = Wanted::parse(uri);
    state.tokens.check_write(headers)?;
    let received = crate::api::ingest::receive(state, headers, body).await?;
    let fields = state.shippers.elastic.clone();
    let (parts, request) =
        crate::api::blocking(move || read(&received.bytes, path_index.as_deref(), &fields)).await?;
    if request.items.is_empty() {
        return Err(ApiError::bad_request("the body holds no actions"));
    }
    let stored = super::store(state, parts).await?;
    if stored.iter().all(|s| s.outcome.is_err()) {
        return Err(super::first_refusal(stored)
            .unwrap_or_else(|| ApiError::bad_request("the body holds no actions")));
    }
    let answer =
        crate::api::blocking(move || Ok(results(began, &request, &stored, &wanted))).await?;
    let mut res = Body::from(answer).into_response();
    *res.status_mut() = StatusCode::OK;
    Ok(product(res))
}

/// A bulk request's items and the index names they use.
struct Request {
    items: Vec<Item>,
    indexes: Vec<String>,
}

/// The documents of a bulk body by series, and each item's action, index and id.
fn read(
    body: &[u8],
    path_index: Option<&str>,
    fields: &[String],
) -> Result<(Parts, Request), ApiError> {
    let mut parts = Parts::new("item");
    let mut request = Request {
        items: Vec::new(),
        indexes: Vec::new(),
    };
    // The series of each index name, worked out once.
    let mut series_of: Vec<crate::store::SeriesName> = Vec::new();
    let mut lines = body
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .enumerate()
        .filter(|(_, l)| !l.is_empty());
    while let Some((at, line)) = lines.next() {
        let number = request.items.len() + 1;
        let fail =
            |why: String| ApiError::bad_request(format!("item {number} (line {}): {why}", at + 1));
        let (kind, meta) = match plain_action(line) {
            Some(plain) => plain,
            None => action_line(line).map_err(fail)?,
        };
        let Some((_, document)) = lines.next() else {
            return Err(fail(format!(
                "the {} action has no document after it",
                kind.name()
            )));
        };
        let Some(index_name) = meta.index.as_deref().or(path_index) else {
            return Err(fail("no index: name one in the action or the URL".into()));
        };
        let index = match request.indexes.iter().position(|i| i == index_name) {
            Some(i) => i,
            None => {
                request.indexes.push(index_name.to_string());
                series_of.push(super::series_name(index_name));
                request.indexes.len() - 1
            }
        };
        let from_field = fields
            .iter()
            .find_map(|f| json_at_path(document, f))
            .map(|raw| serde_json::from_str::<String>(raw.get()).unwrap_or(raw.get().to_string()));
        match from_field {
            Some(name) => parts.push(&super::series_name(&name), number, document),
            None => parts.push(&series_of[index], number, document),
        }
        request.items.push(Item {
            action: kind,
            index,
            id: meta.id.map(Cow::into_owned),
        });
    }
    Ok((parts, request))
}

/// The action lines shippers send most (`{"create":{}}`, `{"index":{}}`, either with only an `_index` whose
/// name has no escapes), read without a JSON parser; `None` for any other line, which `action_line` reads.
fn plain_action(line: &[u8]) -> Option<(Action, Meta<'_>)> {
    let (kind, rest) = if let Some(rest) = line.strip_prefix(b"{\"create\":{") {
        (Action::Create, rest)
    } else {
        (Action::Index, line.strip_prefix(b"{\"index\":{")?)
    };
    let index = match rest {
        b"}}" => None,
        _ => {
            let name = rest.strip_prefix(b"\"_index\":\"")?.strip_suffix(b"\"}}")?;
            if name.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
                return None;
            }
            Some(Cow::Borrowed(std::str::from_utf8(name).ok()?))
        }
    };
    Some((kind, Meta { index, id: None }))
}

/// Any action line, by the JSON parser: exactly one of `create` and `index`; `delete` and `update` named to
/// refuse them.
fn action_line(line: &[u8]) -> Result<(Action, Meta<'_>), String> {
    let action: ActionLine = serde_json::from_slice(line)
        .map_err(|e| format!("not an action line {{\"create\": {{...}}}}: {e}"))?;
    match action {
        ActionLine {
            create: Some(meta),
            index: None,
            delete: None,
            update: None,
        } => Ok((Action::Create, meta)),
        ActionLine {
            create: None,
            index: Some(meta),
            delete: None,
            update: None,
        } => Ok((Action::Index, meta)),
        ActionLine {
            delete: Some(_), ..
        } => Err(refused("delete")),
        ActionLine {
            update: Some(_), ..
        } => Err(refused("update")),
        _ => Err(
            "not an action line: expected one of create or index, as {\"create\": {...}}".into(),
        ),
    }
}

fn refused(action: &str) -> String {
    format!(
        "the {action:?} action is not taken: events are appended, never changed or removed; send create or index"
    )
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Index => "index",
        }
    }
}

/// Which parts of the answer a client asked for with `filter_path` (Beats asks for
/// `errors,items.*.error,items.*.status`): `took`, `errors`, `items`, `items.*` and `items.*.KEY` are
/// understood; others match nothing, as in Elasticsearch. Without it, everything.
struct Wanted {
    took: bool,
    errors: bool,
    /// `None`: every key of an item.
    item_keys: Option<Vec<String>>,
    items: bool,
}

impl Wanted {
    fn parse(uri: &Uri) -> Wanted {
        let Query(pairs) =
            Query::<Vec<(String, String)>>::try_from_uri(uri).unwrap_or(Query(Vec::new()));
        let filter = pairs
            .into_iter()
            .find(|(k, _)| k == "filter_path")
            .map(|(_, v)| v);
        let Some(filter) = filter else {
            return Wanted {
                took: true,
                errors: true,
                item_keys: None,
                items: true,
            };
        };
        let paths: Vec<&str> = filter.split(',').map(str::trim).collect();
        let whole_items = paths.iter().any(|p| matches!(*p, "items" | "items.*"));
        let keys: Vec<String> = paths
            .iter()
            .filter_map(|p| p.strip_prefix("items.*."))
            .map(str::to_string)
            .collect();
        Wanted {
            took: paths.contains(&"took"),
            errors: paths.contains(&"errors"),
            items: whole_items || !keys.is_empty(),
            item_keys: (!whole_items).then_some(keys),
        }
    }

    fn key(&self, key: &str) -> bool {
        self.item_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k == key))
    }
}

/// The answer Elasticsearch gives, written out: per item its status, `errors` when any failed, as much of it
/// as `filter_path` asks for (an item left with nothing is left out, as Elasticsearch does). Items sent
/// without an `_id` get one made of the time received and their number.
fn results(began: Instant, request: &Request, stored: &[Stored], wanted: &Wanted) -> Vec<u8> {
    let mut failed = vec![None::<&ApiError>; request.items.len()];
    for part in stored {
        if let Err(e) = &part.outcome {
            for &n in &part.numbers {
                if let Some(s) = failed.get_mut(n as usize - 1) {
                    *s = Some(e);
                }
            }
        }
    }
    let indexes: Vec<Vec<u8>> = request
        .indexes
        .iter()
        .map(|i| {
            let mut out = Vec::new();
            super::json_string(&mut out, i);
            out
        })
        .collect();
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = Vec::with_capacity(request.items.len() * 200 + 64);
    let errors = failed.iter().any(Option::is_some);
    let mut top = Vec::new();
    if wanted.took {
        top.push(format!("\"took\":{}", began.elapsed().as_millis()));
    }
    if wanted.errors {
        top.push(format!("\"errors\":{errors}"));
    }
    out.push(b'{');
    out.extend_from_slice(top.join(",").as_bytes());
    if !wanted.items {
        out.push(b'}');
        return out;
    }
    let mut items = Vec::with_capacity(request.items.len() * 200);
    let mut any_item = false;
    let mut fields = Vec::new();
    for (i, (item, failed)) in request.items.iter().zip(&failed).enumerate() {
        fields.clear();
        let field = |fields: &mut Vec<u8>, key: &str| -> bool {
            if !wanted.key(key) {
                return false;
            }
            if !fields.is_empty() {
                fields.push(b',');
            }
            fields.push(b'"');
            fields.extend_from_slice(key.as_bytes());
            fields.extend_from_slice(b"\":");
            true
        };
        if field(&mut fields, "_index") {
            fields.extend_from_slice(&indexes[item.index]);
        }
        if field(&mut fields, "_id") {
            match &item.id {
                Some(id) => super::json_string(&mut fields, id),
                None => {
                    let _ = write!(fields, "\"{base:x}-{}\"", i + 1);
                }
            }
        }
        match failed {
            None => {
                for (key, value) in [
                    ("_version", "1"),
                    ("result", "\"created\""),
                    ("_shards", "{\"total\":1,\"successful\":1,\"failed\":0}"),
                ] {
                    if field(&mut fields, key) {
                        fields.extend_from_slice(value.as_bytes());
                    }
                }
                if field(&mut fields, "_seq_no") {
                    fields.extend_from_slice(i.to_string().as_bytes());
                }
                if field(&mut fields, "_primary_term") {
                    fields.push(b'1');
                }
                if field(&mut fields, "status") {
                    fields.extend_from_slice(b"201");
                }
            }
            Some(e) => {
                if field(&mut fields, "status") {
                    fields.extend_from_slice(e.status.as_u16().to_string().as_bytes());
                }
                if field(&mut fields, "error") {
                    let _ = write!(
                        fields,
                        "{{\"type\":\"{}\",\"reason\":",
                        error_type(e.status)
                    );
                    super::json_string(&mut fields, &e.message);
                    fields.push(b'}');
                }
            }
        }
        if fields.is_empty() {
            continue;
        }
        if any_item {
            items.push(b',');
        }
        any_item = true;
        let _ = write!(items, "{{\"{}\":{{", item.action.name());
        items.extend_from_slice(&fields);
        items.extend_from_slice(b"}}");
    }
    if any_item {
        if !top.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"items\":[");
        out.extend_from_slice(&items);
        out.push(b']');
    }
    out.push(b'}');
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_action_lines_read_as_the_json_parser_reads_them() {
        for line in [
            r#"{"create":{}}"#,
            r#"{"index":{}}"#,
            r#"{"create":{"_index":"web"}}"#,
            r#"{"index":{"_index":"logs-app.x-default"}}"#,
        ] {
            let (kind, meta) = plain_action(line.as_bytes()).unwrap();
            let (parsed_kind, parsed) = action_line(line.as_bytes()).unwrap();
            assert_eq!(kind.name(), parsed_kind.name(), "{line}");
            assert_eq!((meta.index, meta.id), (parsed.index, parsed.id), "{line}");
        }
        // Anything else is the parser's: escapes, ids, other spacing, other actions, trailing bytes.
        for line in [
            r#"{"create":{"_index":"a\"b"}}"#,
            r#"{"create":{"_index":"a\\b"}}"#,
            r#"{"create":{"_id":"1"}}"#,
            r#"{"create":{"_index":"web","_id":"1"}}"#,
            r#"{ "create":{}}"#,
            r#"{"delete":{}}"#,
            r#"{"create":{}}x"#,
        ] {
            assert!(plain_action(line.as_bytes()).is_none(), "{line}");
        }
        assert!(
            action_line(br#"{"delete":{"_id":"1"}}"#)
                .unwrap_err()
                .contains("\"delete\" action is not taken")
        );
        assert!(action_line(br#"{"create":{},"index":{}}"#).is_err());
    }
}
