//! Loki's push API (`POST /loki/api/v1/push`), so that Promtail, Alloy and the `loki` outputs of Vector and Fluent
//! Bit write here: JSON (`application/json`), or Loki's protobuf `PushRequest` compressed with snappy's block
//! format (any other content type, as those clients send it). Each entry is stored as
//! `{"ts", "line", "labels", "metadata"}` at its own time (nanoseconds kept in `ts`); a stream's series is the
//! first of `--loki-series-label` it has. Answers are Loki's: 204 with no body, errors as plain text.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde_json::Value;

use super::Parts;
use crate::api::AppState;
use crate::api::error::ApiError;

/// The messages of Loki's push protocol, as its published `push.proto` numbers their fields.
pub mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<Stream>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Stream {
        /// The stream's labels in Prometheus' notation: `{job="app", level="info"}`.
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<Entry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPair>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

pub async fn push_post(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match push(&state, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => plain(e),
    }
}

/// One entry as the push protocol has it, whichever encoding it came in.
struct Entry {
    nanos: u64,
    line: String,
    metadata: BTreeMap<String, String>,
}

async fn push(state: &AppState, headers: &HeaderMap, body: Body) -> Result<(), ApiError> {
    state.tokens.check_write(headers)?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let received = crate::api::ingest::receive(state, headers, body).await?;
    let labels = state.shippers.loki.clone();
    let limit = state.max_body_bytes;
    let intake = state.intake.clone();
    let (parts, _inflated_room) = crate::api::blocking(move || {
        let (streams, room) = if json {
            (from_json(&received.bytes)?, None)
        } else {
            let (streams, room) = from_protobuf(&received.bytes, limit, &intake)?;
            (streams, Some(room))
        };
        Ok((lines(streams, &labels)?, room))
    })
    .await?;
    let stored = super::store(state, parts).await?;
    match super::first_refusal(stored) {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

type Streams = Vec<(BTreeMap<String, String>, Vec<Entry>)>;

/// Each entry as a stored line, `{"ts","line","labels","metadata"}`, in the series of its stream.
fn lines(streams: Streams, series_labels: &[String]) -> Result<Parts, ApiError> {
    let mut parts = Parts::new("entry");
    let mut number = 0;
    let mut line = Vec::new();
    for (labels, entries) in streams {
        let series = series_labels
            .iter()
            .find_map(|l| labels.get(l))
            .map_or_else(crate::store::SeriesName::default_series, |v| {
                super::series_name(v)
            });
        // A map of strings always serialises.
        let labels_json = serde_json::to_vec(&labels).unwrap_or_default();
        for entry in entries {
            number += 1;
            let (ts, millis) = super::rfc3339_nanos(entry.nanos).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "entry {number}: timestamp {} ns is outside the times events may have",
                    entry.nanos
                ))
            })?;
            line.clear();
            line.extend_from_slice(b"{\"ts\":\"");
            line.extend_from_slice(ts.as_bytes());
            line.extend_from_slice(b"\",\"line\":");
            super::json_string(&mut line, &entry.line);
            line.extend_from_slice(b",\"labels\":");
            line.extend_from_slice(&labels_json);
            if !entry.metadata.is_empty() {
                line.extend_from_slice(b",\"metadata\":");
                let _ = serde_json::to_writer(&mut line, &entry.metadata);
            }
            line.push(b'}');
            parts.push_written(&series, number, millis, &line);
        }
    }
    Ok(parts)
}

/// The streams of a snappy-compressed `PushRequest`, and the room its inflated bytes take in
/// `--max-inflight-bytes` (held until the answer).
fn from_protobuf(
    body: &[u8],
    limit: usize,
    intake: &crate::api::Intake,
) -> Result<(Streams, tokio::sync::OwnedSemaphorePermit), ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("body: {why}"));
    let not_snappy = |e: snap::Error| {
        bad(format!(
            "not snappy-compressed protobuf (send application/json for JSON): {e}"
        ))
    };
    let size = snap::raw::decompress_len(body).map_err(not_snappy)?;
    if size > limit {
        return Err(crate::api::ingest::too_large(
            limit,
            "inflated request body",
        ));
    }
    let room = intake.reserve(size as u64)?;
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(not_snappy)?;
    let request = wire::PushRequest::decode(&raw[..])
        .map_err(|e| bad(format!("not a Loki PushRequest: {e}")))?;
    let mut streams = Vec::with_capacity(request.streams.len());
    for (i, stream) in request.streams.into_iter().enumerate() {
        let labels = parse_labels(&stream.labels).map_err(|why| {
            bad(format!(
                "stream {}: labels {:?}: {why}",
                i + 1,
                stream.labels
            ))
        })?;
        let entries = stream
            .entries
            .into_iter()
            .map(|e| {
                let t = e.timestamp.unwrap_or_default();
                let nanos = u64::try_from(t.seconds)
                    .ok()
                    .and_then(|s| s.checked_mul(1_000_000_000))
                    .and_then(|n| n.checked_add(u64::try_from(t.nanos).ok()?))
                    .unwrap_or(u64::MAX);
                Entry {
                    nanos,
                    line: e.line,
                    metadata: e
                        .structured_metadata
                        .into_iter()
                        .map(|p| (p.name, p.value))
                        .collect(),
                }
            })
            .collect();
        streams.push((labels, entries));
    }
    Ok((streams, room))
}

/// `{"streams": [{"stream": {labels}, "values": [["<unix ns>", "<line>", {metadata}?], ...]}]}`.
fn from_json(body: &[u8]) -> Result<Streams, ApiError> {
    #[derive(serde::Deserialize)]
    struct Push {
        streams: Vec<JsonStream>,
    }
    #[derive(serde::Deserialize)]
    struct JsonStream {
        #[serde(default)]
        stream: BTreeMap<String, String>,
        values: Vec<Vec<Value>>,
    }
    let push: Push = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "body: not a Loki push {{\"streams\": [{{\"stream\": {{...}}, \"values\": [...]}}]}}: {e}"
        ))
    })?;
    let mut number = 0;
    let mut streams = Vec::with_capacity(push.streams.len());
    for stream in push.streams {
        let mut entries = Vec::with_capacity(stream.values.len());
        for value in stream.values {
            number += 1;
            let bad = |why: &str| ApiError::bad_request(format!("entry {number}: {why}"));
            let (t, line, metadata) = match value.as_slice() {
                [t, Value::String(line)] => (t, line, None),
                [t, Value::String(line), Value::Object(m)] => (t, line, Some(m)),
                _ => {
                    return Err(bad(
                        "expected [\"<unix nanoseconds>\", \"<line>\"], optionally with {metadata}",
                    ));
                }
            };
            let nanos = match t {
                Value::String(s) => s.parse::<u64>().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            }
            .ok_or_else(|| bad("the timestamp is not a string of Unix nanoseconds"))?;
            let metadata = metadata
                .into_iter()
                .flatten()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(bad("structured metadata values are strings")),
                })
                .collect::<Result<_, _>>()?;
            entries.push(Entry {
                nanos,
                line: line.clone(),
                metadata,
            });
        }
        streams.push((stream.stream, entries));
    }
    Ok(streams)
}

/// A label set in Prometheus' notation, `{name="value", ...}`, values with `\"`, `\\` and `\n` escapes.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("expected {name=\"value\", ...}")?;
    let mut labels = BTreeMap::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("a label without =")?;
        let name = rest[..eq].trim();
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("{name:?} is not a label name"));
        }
        let after = rest[eq + 1..].trim_start();
        let mut chars = after
            .strip_prefix('"')
            .ok_or("a value is not quoted")?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('"' | '\\'))) => value.push(c),
                    _ => return Err("a bad escape in a value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("a value is not closed".into()),
            }
        };
        labels.insert(name.to_string(), value);
        rest = after[1 + end + 1..].trim_start();
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return Err("labels are not separated by commas".into()),
        };
    }
    Ok(labels)
}

/// A refusal as Loki answers: the status, the message as plain text.
fn plain(e: ApiError) -> Response {
    let message = format!("{}\n", e.message);
    let mut res = e.into_response();
    let h = res.headers_mut();
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    *res.body_mut() = Body::from(message);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_parse_with_their_escapes_and_bad_ones_are_named() {
        let got = parse_labels(r#"{job="app", level="a \"b\"\\n", _x="1\n"}"#).unwrap();
        assert_eq!(got["job"], "app");
        assert_eq!(got["level"], "a \"b\"\\n");
        assert_eq!(got["_x"], "1\n");
        assert_eq!(parse_labels("{}").unwrap().len(), 0);
        assert_eq!(parse_labels(r#"{a="1",}"#).unwrap()["a"], "1");
        for bad in [
            r#"job="app""#,
            r#"{job=app}"#,
            r#"{1a="x"}"#,
            r#"{a="x" b="y"}"#,
            r#"{a="x}"#,
            r#"{a="\q"}"#,
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }
}
