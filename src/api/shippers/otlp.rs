//! OTLP/HTTP logs (`POST /v1/logs`), so that the OpenTelemetry Collector and SDKs export here: protobuf
//! (`application/x-protobuf`) or OTLP's JSON (`application/json`), answered in the same encoding. Each log record
//! is stored as one JSON object (`ts`, `severity`, `severity_number`, `body`, `attributes`, `resource`, `scope`,
//! `trace_id`, `span_id`, `event_name`; empty ones left out) at its time, or its observed time; its series is the
//! first of `--otlp-series-attribute` among the resource's attributes, then the record's.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use prost::Message;
use serde_json::{Value, json};

use super::Parts;
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::store::SeriesName;
use crate::time::{self, Millis};

/// The messages of OTLP's logs service, as its published protos (`collector/logs/v1`, `logs/v1`, `common/v1`,
/// `resource/v1`) number their fields; what is not read here is skipped by the decoder.
pub mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_logs: Vec<ResourceLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_logs: Vec<ScopeLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeLogs {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub log_records: Vec<LogRecord>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogRecord {
        #[prost(fixed64, tag = "1")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "11")]
        pub observed_time_unix_nano: u64,
        #[prost(int32, tag = "2")]
        pub severity_number: i32,
        #[prost(string, tag = "3")]
        pub severity_text: String,
        #[prost(message, optional, tag = "5")]
        pub body: Option<AnyValue>,
        #[prost(message, repeated, tag = "6")]
        pub attributes: Vec<KeyValue>,
        #[prost(bytes = "vec", tag = "9")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "10")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "12")]
        pub event_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
        #[prost(message, tag = "5")]
        Array(ArrayValue),
        #[prost(message, tag = "6")]
        Kvlist(KeyValueList),
        #[prost(bytes = "vec", tag = "7")]
        Bytes(Vec<u8>),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportLogsPartialSuccess>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsPartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_log_records: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    /// `google.rpc.Status`, the body of OTLP's error answers.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
    }
}

pub async fn logs_post(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    match export(&state, &headers, body, json).await {
        Ok(partial) => encode(
            json,
            &wire::ExportLogsServiceResponse {
                partial_success: partial,
            },
        ),
        Err(e) => refusal(json, e),
    }
}

async fn export(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    json: bool,
) -> Result<Option<wire::ExportLogsPartialSuccess>, ApiError> {
    state.tokens.check_write(headers)?;
    let received = crate::api::ingest::receive(state, headers, body).await?;
    let attributes = state.shippers.otlp.clone();
    let t = crate::time::now();
    let parts = crate::api::ingest::blocking(move || {
        let request = if json {
            let v: Value = serde_json::from_slice(&received.bytes)
                .map_err(|e| ApiError::bad_request(format!("body: not OTLP JSON: {e}")))?;
            from_json(&v).map_err(|why| ApiError::bad_request(format!("body: {why}")))?
        } else {
            wire::ExportLogsServiceRequest::decode(&received.bytes[..]).map_err(|e| {
                ApiError::bad_request(format!(
                    "body: not an OTLP ExportLogsServiceRequest in protobuf (send application/json for JSON): {e}"
                ))
            })?
        };
        lines(request, &attributes, t)
    })
    .await?;
    let stored = super::store(state, parts).await?;
    let rejected: usize = stored
        .iter()
        .filter(|s| s.outcome.is_err())
        .map(|s| s.numbers.len())
        .sum();
    if rejected == 0 {
        return Ok(None);
    }
    let stored_any = stored.iter().any(|s| s.outcome.is_ok());
    let refusal = super::first_refusal(stored);
    match refusal {
        // Nothing stored: the refusal itself, whose status tells the exporter whether to retry.
        Some(e) if !stored_any => Err(e),
        e => Ok(Some(wire::ExportLogsPartialSuccess {
            rejected_log_records: rejected as i64,
            error_message: e.map(|e| e.message).unwrap_or_default(),
        })),
    }
}

/// Each log record as a stored line, in the series its attributes name; records with no time at all get
/// `received`.
fn lines(
    request: wire::ExportLogsServiceRequest,
    names: &[String],
    received: Millis,
) -> Result<Parts, ApiError> {
    let mut parts = Parts::new("log record");
    let mut number = 0;
    let mut line = Vec::new();
    for resource_logs in request.resource_logs {
        let resource = resource_logs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let mut resource_json = Vec::new();
        if !resource.is_empty() {
            write_attributes(&mut resource_json, &resource);
        }
        let from_resource = names.iter().find_map(|n| string_attribute(&resource, n));
        for scope_logs in resource_logs.scope_logs {
            let mut scope_json = Vec::new();
            if let Some(scope) = scope_logs
                .scope
                .filter(|s| !s.name.is_empty() || !s.version.is_empty())
            {
                scope_json.extend_from_slice(b"{\"name\":");
                super::json_string(&mut scope_json, &scope.name);
                scope_json.extend_from_slice(b",\"version\":");
                super::json_string(&mut scope_json, &scope.version);
                scope_json.push(b'}');
            }
            for record in &scope_logs.log_records {
                number += 1;
                let series = from_resource
                    .clone()
                    .or_else(|| {
                        names
                            .iter()
                            .find_map(|n| string_attribute(&record.attributes, n))
                    })
                    .map_or_else(SeriesName::default_series, |s| super::series_name(&s));
                let ts = write_record(&mut line, record, &resource_json, &scope_json, received)
                    .map_err(|why| ApiError::bad_request(format!("log record {number}: {why}")))?;
                parts.push_written(series, number, ts, &line);
            }
        }
    }
    Ok(parts)
}

/// Writes a record as its stored line into `out` (empty parts left out); returns its time.
fn write_record(
    out: &mut Vec<u8>,
    record: &wire::LogRecord,
    resource: &[u8],
    scope: &[u8],
    received: Millis,
) -> Result<Millis, String> {
    out.clear();
    let nanos = if record.time_unix_nano != 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    };
    let (ts, millis) = if nanos != 0 {
        super::rfc3339_nanos(nanos)
            .ok_or_else(|| format!("time {nanos} ns is outside the times events may have"))?
    } else {
        (time::format_rfc3339(received), received)
    };
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(ts.as_bytes());
    out.push(b'"');
    let field = |out: &mut Vec<u8>, name: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    };
    if !record.severity_text.is_empty() {
        field(out, "severity");
        super::json_string(out, &record.severity_text);
    }
    if record.severity_number != 0 {
        field(out, "severity_number");
        out.extend_from_slice(record.severity_number.to_string().as_bytes());
    }
    if let Some(body) = &record.body {
        field(out, "body");
        write_any(out, body);
    }
    if !record.attributes.is_empty() {
        field(out, "attributes");
        write_attributes(out, &record.attributes);
    }
    if !resource.is_empty() {
        field(out, "resource");
        out.extend_from_slice(resource);
    }
    if !scope.is_empty() {
        field(out, "scope");
        out.extend_from_slice(scope);
    }
    for (name, id) in [("trace_id", &record.trace_id), ("span_id", &record.span_id)] {
        if !id.is_empty() {
            field(out, name);
            out.push(b'"');
            out.extend_from_slice(hex(id).as_bytes());
            out.push(b'"');
        }
    }
    if !record.event_name.is_empty() {
        field(out, "event_name");
        super::json_string(out, &record.event_name);
    }
    out.push(b'}');
    Ok(millis)
}

fn string_attribute(attributes: &[wire::KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(wire::AnyValue {
                value: Some(wire::Value::String(s)),
            }) => Some(s.clone()),
            _ => None,
        })
}

/// Key-value pairs as a JSON object; a key given twice keeps its first value (JSON readers disagree on
/// duplicates).
fn write_attributes(out: &mut Vec<u8>, list: &[wire::KeyValue]) {
    out.push(b'{');
    let mut first = true;
    for (i, kv) in list.iter().enumerate() {
        if list[..i].iter().any(|earlier| earlier.key == kv.key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        super::json_string(out, &kv.key);
        out.push(b':');
        match &kv.value {
            Some(v) => write_any(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

/// An `AnyValue` as JSON: bytes as base64 (as OTLP's JSON has them), doubles JSON cannot hold as strings.
fn write_any(out: &mut Vec<u8>, v: &wire::AnyValue) {
    match &v.value {
        None => out.extend_from_slice(b"null"),
        Some(wire::Value::String(s)) => super::json_string(out, s),
        Some(wire::Value::Bool(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Some(wire::Value::Int(i)) => out.extend_from_slice(i.to_string().as_bytes()),
        Some(wire::Value::Double(d)) if d.is_finite() => {
            let _ = serde_json::to_writer(&mut *out, d);
        }
        Some(wire::Value::Double(d)) => super::json_string(out, &d.to_string()),
        Some(wire::Value::Array(a)) => {
            out.push(b'[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_any(out, v);
            }
            out.push(b']');
        }
        Some(wire::Value::Kvlist(l)) => write_attributes(out, &l.values),
        Some(wire::Value::Bytes(b)) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(b);
            super::json_string(out, &encoded);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// OTLP's JSON encoding as the protobuf messages: lowerCamelCase names (snake_case taken too), 64-bit integers
/// as strings or numbers, trace and span ids in hex, bytes in base64.
fn from_json(v: &Value) -> Result<wire::ExportLogsServiceRequest, String> {
    if !v.is_object() {
        return Err("not an ExportLogsServiceRequest object {\"resourceLogs\": [...]}".into());
    }
    let mut request = wire::ExportLogsServiceRequest::default();
    for rl in list(v, "resourceLogs")? {
        let resource = match field(rl, "resource") {
            Some(r) => Some(wire::Resource {
                attributes: key_values(r, "attributes")?,
            }),
            None => None,
        };
        let mut scope_logs = Vec::new();
        for sl in list(rl, "scopeLogs")? {
            let scope = field(sl, "scope").map(|s| wire::InstrumentationScope {
                name: text(s, "name"),
                version: text(s, "version"),
            });
            let mut log_records = Vec::new();
            for r in list(sl, "logRecords")? {
                log_records.push(wire::LogRecord {
                    time_unix_nano: integer(r, "timeUnixNano")?.unwrap_or(0) as u64,
                    observed_time_unix_nano: integer(r, "observedTimeUnixNano")?.unwrap_or(0)
                        as u64,
                    severity_number: integer(r, "severityNumber")?.unwrap_or(0) as i32,
                    severity_text: text(r, "severityText"),
                    body: field(r, "body").map(json_any_value).transpose()?,
                    attributes: key_values(r, "attributes")?,
                    trace_id: unhex(&text(r, "traceId"))?,
                    span_id: unhex(&text(r, "spanId"))?,
                    event_name: text(r, "eventName"),
                });
            }
            scope_logs.push(wire::ScopeLogs { scope, log_records });
        }
        request.resource_logs.push(wire::ResourceLogs {
            resource,
            scope_logs,
        });
    }
    Ok(request)
}

/// A field by its lowerCamelCase name, or its snake_case one.
fn field<'a>(v: &'a Value, camel: &str) -> Option<&'a Value> {
    let object = v.as_object()?;
    object.get(camel).or_else(|| {
        let snake: String = camel
            .chars()
            .flat_map(|c| match c.is_ascii_uppercase() {
                true => vec!['_', c.to_ascii_lowercase()],
                false => vec![c],
            })
            .collect();
        object.get(&snake)
    })
}

/// An array of objects (messages), empty when absent.
fn list<'a>(v: &'a Value, name: &str) -> Result<&'a [Value], String> {
    match field(v, name) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => match a.iter().position(|m| !m.is_object()) {
            None => Ok(a),
            Some(i) => Err(format!("{name:?} item {} is not an object", i + 1)),
        },
        Some(_) => Err(format!("{name:?} is not an array")),
    }
}

fn text(v: &Value, name: &str) -> String {
    field(v, name)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// A 64-bit integer field, as a number or a string of one.
fn integer(v: &Value, name: &str) -> Result<Option<i64>, String> {
    match field(v, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .map(Some)
            .ok_or_else(|| format!("{name:?} is not an integer")),
        Some(Value::String(s)) => s
            .parse::<i64>()
            .or_else(|_| s.parse::<u64>().map(|u| u as i64))
            .map(Some)
            .map_err(|_| format!("{name:?} {s:?} is not an integer")),
        Some(_) => Err(format!("{name:?} is not an integer")),
    }
}

fn key_values(v: &Value, name: &str) -> Result<Vec<wire::KeyValue>, String> {
    list(v, name)?
        .iter()
        .map(|kv| {
            Ok(wire::KeyValue {
                key: text(kv, "key"),
                value: field(kv, "value").map(json_any_value).transpose()?,
            })
        })
        .collect()
}

fn json_any_value(v: &Value) -> Result<wire::AnyValue, String> {
    let value = if let Some(s) = field(v, "stringValue") {
        Some(wire::Value::String(
            s.as_str().ok_or("stringValue is not a string")?.to_string(),
        ))
    } else if let Some(b) = field(v, "boolValue") {
        Some(wire::Value::Bool(
            b.as_bool().ok_or("boolValue is not a boolean")?,
        ))
    } else if field(v, "intValue").is_some() {
        integer(v, "intValue")?.map(wire::Value::Int)
    } else if let Some(d) = field(v, "doubleValue") {
        let d = match d {
            Value::String(s) => s.parse().ok(),
            d => d.as_f64(),
        };
        Some(wire::Value::Double(d.ok_or("doubleValue is not a number")?))
    } else if let Some(a) = field(v, "arrayValue") {
        let values = list(a, "values")?
            .iter()
            .map(json_any_value)
            .collect::<Result<_, _>>()?;
        Some(wire::Value::Array(wire::ArrayValue { values }))
    } else if let Some(l) = field(v, "kvlistValue") {
        Some(wire::Value::Kvlist(wire::KeyValueList {
            values: key_values(l, "values")?,
        }))
    } else if let Some(b) = field(v, "bytesValue") {
        let b = b.as_str().ok_or("bytesValue is not a string")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("bytesValue is not base64: {e}"))?;
        Some(wire::Value::Bytes(bytes))
    } else {
        None
    };
    Ok(wire::AnyValue { value })
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("id {s:?} is not hex"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// A message in the request's encoding.
fn encode<M: Message + OtlpJson>(json: bool, message: &M) -> Response {
    let (body, kind) = if json {
        (
            message.to_json().to_string().into_bytes(),
            "application/json",
        )
    } else {
        (message.encode_to_vec(), "application/x-protobuf")
    };
    let mut res = Body::from(body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    res
}

/// OTLP's JSON of the two messages this endpoint answers with.
trait OtlpJson {
    fn to_json(&self) -> Value;
}

impl OtlpJson for wire::ExportLogsServiceResponse {
    fn to_json(&self) -> Value {
        match &self.partial_success {
            Some(p) => json!({"partialSuccess": {
                "rejectedLogRecords": p.rejected_log_records.to_string(),
                "errorMessage": p.error_message,
            }}),
            None => json!({}),
        }
    }
}

impl OtlpJson for wire::Status {
    fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

/// A refusal as OTLP answers: the status (and `Retry-After`) of the native one, with a `google.rpc.Status` body.
fn refusal(json: bool, e: ApiError) -> Response {
    // gRPC's codes: INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE, INTERNAL.
    let code = match e.status.as_u16() {
        401 => 16,
        403 => 7,
        413 | 429 => 8,
        503 => 14,
        400..=499 => 3,
        _ => 13,
    };
    let status = wire::Status {
        code,
        message: e.message.clone(),
    };
    let body = encode(json, &status);
    let mut res = e.into_response();
    let h = res.headers_mut();
    h.remove(header::CONTENT_LENGTH);
    if let Some(kind) = body.headers().get(header::CONTENT_TYPE) {
        h.insert(header::CONTENT_TYPE, kind.clone());
    }
    *res.body_mut() = body.into_body();
    res
}
