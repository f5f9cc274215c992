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
/// `resource/v1`) number their fields; what is not read here is skipped by the decoder. Each request message
/// also reads OTLP's JSON (`serde`, `json`): lowerCamelCase names, snake_case taken too, `null` as empty,
/// messages only from objects, unknown fields skipped.
pub mod wire {
    use super::json;
    use serde::Deserialize;

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        #[serde(
            default,
            rename = "resourceLogs",
            alias = "resource_logs",
            deserialize_with = "json::objects"
        )]
        pub resource_logs: Vec<ResourceLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        #[serde(default, deserialize_with = "json::object")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        #[serde(
            default,
            rename = "scopeLogs",
            alias = "scope_logs",
            deserialize_with = "json::objects"
        )]
        pub scope_logs: Vec<ScopeLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        #[serde(default, deserialize_with = "json::objects")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct ScopeLogs {
        #[prost(message, optional, tag = "1")]
        #[serde(default, deserialize_with = "json::object")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        #[serde(
            default,
            rename = "logRecords",
            alias = "log_records",
            deserialize_with = "json::objects"
        )]
        pub log_records: Vec<LogRecord>,
    }

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        #[serde(default, deserialize_with = "json::or_empty")]
        pub name: String,
        #[prost(string, tag = "2")]
        #[serde(default, deserialize_with = "json::or_empty")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct LogRecord {
        #[prost(fixed64, tag = "1")]
        #[serde(
            default,
            rename = "timeUnixNano",
            alias = "time_unix_nano",
            deserialize_with = "json::uint64"
        )]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "11")]
        #[serde(
            default,
            rename = "observedTimeUnixNano",
            alias = "observed_time_unix_nano",
            deserialize_with = "json::uint64"
        )]
        pub observed_time_unix_nano: u64,
        #[prost(int32, tag = "2")]
        #[serde(
            default,
            rename = "severityNumber",
            alias = "severity_number",
            deserialize_with = "json::int32"
        )]
        pub severity_number: i32,
        #[prost(string, tag = "3")]
        #[serde(
            default,
            rename = "severityText",
            alias = "severity_text",
            deserialize_with = "json::or_empty"
        )]
        pub severity_text: String,
        #[prost(message, optional, tag = "5")]
        #[serde(default, deserialize_with = "json::object")]
        pub body: Option<AnyValue>,
        #[prost(message, repeated, tag = "6")]
        #[serde(default, deserialize_with = "json::objects")]
        pub attributes: Vec<KeyValue>,
        #[prost(bytes = "vec", tag = "9")]
        #[serde(
            default,
            rename = "traceId",
            alias = "trace_id",
            deserialize_with = "json::hex_id"
        )]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "10")]
        #[serde(
            default,
            rename = "spanId",
            alias = "span_id",
            deserialize_with = "json::hex_id"
        )]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "12")]
        #[serde(
            default,
            rename = "eventName",
            alias = "event_name",
            deserialize_with = "json::or_empty"
        )]
        pub event_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        #[serde(default, deserialize_with = "json::or_empty")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        #[serde(default, deserialize_with = "json::object")]
        pub value: Option<AnyValue>,
    }

    /// In JSON, an object with one of `stringValue`, `boolValue`, `intValue`, `doubleValue`, `arrayValue`,
    /// `kvlistValue`, `bytesValue` (`super::json::AnyValueFields`).
    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    #[serde(try_from = "json::AnyValueFields")]
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

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        #[serde(default, deserialize_with = "json::objects")]
        pub values: Vec<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message, Deserialize)]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        #[serde(default, deserialize_with = "json::objects")]
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
    let parts = crate::api::blocking(move || {
        let request = if json {
            json::request(&received.bytes).map_err(|e| {
                ApiError::bad_request(format!("body: not an OTLP ExportLogsServiceRequest in JSON: {e}"))
            })?
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
        // The resource's series, named once for all its records.
        let from_resource = names
            .iter()
            .find_map(|n| string_attribute(&resource, n))
            .map(|s| super::series_name(&s));
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
                let ts = write_record(&mut line, record, &resource_json, &scope_json, received)
                    .map_err(|why| ApiError::bad_request(format!("log record {number}: {why}")))?;
                match &from_resource {
                    Some(series) => parts.push_written(series, number, ts, &line),
                    None => {
                        let series = names
                            .iter()
                            .find_map(|n| string_attribute(&record.attributes, n))
                            .map_or_else(SeriesName::default_series, |s| super::series_name(&s));
                        parts.push_written(&series, number, ts, &line);
                    }
                }
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
            hex(out, id);
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

/// `bytes` in lowercase hex, into `out`.
fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]);
    }
}

/// What OTLP's JSON encoding needs beyond names: `null` as empty, 64-bit integers as strings or numbers,
/// trace and span ids in hex, bytes in base64, `AnyValue`'s one field.
mod json {
    use std::fmt;
    use std::marker::PhantomData;

    use base64::Engine;
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, de};

    use super::wire;

    /// A message: from a JSON object only (serde would take an array for a struct too).
    pub struct Message<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Message<T> {
        type Value = T;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Message<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }

    /// A request: one object.
    pub fn request(body: &[u8]) -> Result<wire::ExportLogsServiceRequest, serde_json::Error> {
        let mut d = serde_json::Deserializer::from_slice(body);
        let request = Message(PhantomData).deserialize(&mut d)?;
        d.end()?;
        Ok(request)
    }

    /// An optional message.
    pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        struct Opt<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Opt<T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
                Message(PhantomData).deserialize(d).map(Some)
            }
        }
        d.deserialize_option(Opt(PhantomData))
    }

    /// A repeated message: an array of objects, or `null`.
    pub fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        struct Seq<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Seq<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of objects or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
                Ok(Vec::new())
            }
            fn visit_none<E: de::Error>(self) -> Result<Vec<T>, E> {
                Ok(Vec::new())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
                d.deserialize_seq(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(m) = seq.next_element_seed(Message(PhantomData))? {
                    out.push(m);
                }
                Ok(out)
            }
        }
        d.deserialize_option(Seq(PhantomData))
    }

    /// `null` as the empty value, as proto3's JSON has it.
    pub fn or_empty<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
        d: D,
    ) -> Result<T, D::Error> {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }

    /// A number, or a string of one (how 64-bit integers are written).
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Integer<'a> {
        Number(i128),
        Text(&'a str),
    }

    fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i128>, D::Error> {
        Ok(match Option::<Integer>::deserialize(d)? {
            None => None,
            Some(Integer::Number(n)) => Some(n),
            Some(Integer::Text(s)) => Some(
                s.parse()
                    .map_err(|_| de::Error::custom(format!("{s:?} is not an integer")))?,
            ),
        })
    }

    fn ranged<'de, D: Deserializer<'de>, T: TryFrom<i128> + Default>(
        d: D,
        what: &str,
    ) -> Result<T, D::Error> {
        match integer(d)? {
            None => Ok(T::default()),
            Some(n) => {
                T::try_from(n).map_err(|_| de::Error::custom(format!("{n} is not a {what}")))
            }
        }
    }

    pub fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        ranged(d, "64-bit unsigned integer")
    }

    pub fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        ranged(d, "32-bit integer")
    }

    pub fn hex_id<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = or_empty(d)?;
        if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(de::Error::custom(format!("id {s:?} is not hex")));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(de::Error::custom))
            .collect()
    }

    /// An `AnyValue` as JSON has it: at most one of these.
    #[derive(Deserialize)]
    pub struct AnyValueFields {
        #[serde(default, rename = "stringValue", alias = "string_value")]
        string_value: Option<String>,
        #[serde(default, rename = "boolValue", alias = "bool_value")]
        bool_value: Option<bool>,
        #[serde(
            default,
            rename = "intValue",
            alias = "int_value",
            deserialize_with = "integer"
        )]
        int_value: Option<i128>,
        #[serde(
            default,
            rename = "doubleValue",
            alias = "double_value",
            deserialize_with = "double"
        )]
        double_value: Option<f64>,
        #[serde(
            default,
            rename = "arrayValue",
            alias = "array_value",
            deserialize_with = "object"
        )]
        array_value: Option<wire::ArrayValue>,
        #[serde(
            default,
            rename = "kvlistValue",
            alias = "kvlist_value",
            deserialize_with = "object"
        )]
        kvlist_value: Option<wire::KeyValueList>,
        #[serde(default, rename = "bytesValue", alias = "bytes_value")]
        bytes_value: Option<String>,
    }

    /// A double, or a string of one (`"NaN"`, `"Infinity"`).
    fn double<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Double<'a> {
            Number(f64),
            Text(&'a str),
        }
        Ok(match Option::<Double>::deserialize(d)? {
            None => None,
            Some(Double::Number(n)) => Some(n),
            Some(Double::Text(s)) => Some(
                s.parse()
                    .map_err(|_| de::Error::custom(format!("doubleValue {s:?} is not a number")))?,
            ),
        })
    }

    impl TryFrom<AnyValueFields> for wire::AnyValue {
        type Error = String;

        fn try_from(f: AnyValueFields) -> Result<wire::AnyValue, String> {
            let value = if let Some(s) = f.string_value {
                Some(wire::Value::String(s))
            } else if let Some(b) = f.bool_value {
                Some(wire::Value::Bool(b))
            } else if let Some(i) = f.int_value {
                let i = i64::try_from(i)
                    .map_err(|_| format!("intValue {i} is not a 64-bit integer"))?;
                Some(wire::Value::Int(i))
            } else if let Some(d) = f.double_value {
                Some(wire::Value::Double(d))
            } else if let Some(a) = f.array_value {
                Some(wire::Value::Array(a))
            } else if let Some(l) = f.kvlist_value {
                Some(wire::Value::Kvlist(l))
            } else if let Some(b) = f.bytes_value {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&b)
                    .map_err(|e| format!("bytesValue is not base64: {e}"))?;
                Some(wire::Value::Bytes(bytes))
            } else {
                None
            };
            Ok(wire::AnyValue { value })
        }
    }
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
