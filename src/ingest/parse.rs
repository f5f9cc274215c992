//! Turning a request body into a `Batch`: every event checked to be one JSON object, its time read from `ts`
//! (RFC 3339 string or Unix milliseconds) or, when absent, the receive time written into the stored line.
//!
//! Stored lines are the client's bytes as sent (trimmed, and folded onto one line for pretty-printed array
//! elements), so an export gives back exactly what was ingested. Nothing here allocates per event beyond the
//! batch's own buffers, and nothing panics on input.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::time::{self, Millis};

/// A batch of events in arrival order: times, and the stored lines (without their newline) back to back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    ts: Vec<Millis>,
    ends: Vec<u32>,
    lines: Vec<u8>,
}

impl Batch {
    pub fn with_capacity(events: usize, bytes: usize) -> Batch {
        Batch {
            ts: Vec::with_capacity(events),
            ends: Vec::with_capacity(events),
            lines: Vec::with_capacity(bytes),
        }
    }

    pub fn push(&mut self, ts: Millis, line: &[u8]) {
        self.lines.extend_from_slice(line);
        self.ts.push(ts);
        self.ends.push(self.lines.len() as u32);
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Bytes of stored lines.
    pub fn bytes(&self) -> usize {
        self.lines.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Millis, &[u8])> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.ts
            .iter()
            .zip(starts.zip(self.ends.iter()))
            .map(|(&ts, (s, &e))| (ts, &self.lines[s as usize..e as usize]))
    }

    pub fn ts(&self) -> &[Millis] {
        &self.ts
    }
}

/// A parsed body: the batch, and where each event came from, for error messages.
#[derive(Debug)]
pub struct Parsed {
    pub batch: Batch,
    /// The line (NDJSON) or element (array) number of each event, 1-based.
    pub positions: Vec<u32>,
    pub unit: Unit,
}

impl Parsed {
    /// Where event `i` came from, as users count: `line 17`.
    pub fn position(&self, i: usize) -> Position {
        Position {
            unit: self.unit,
            number: self.positions.get(i).copied().unwrap_or(0) as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Line,
    Element,
    /// What a shipper's protocol calls one event (`item`, `entry`, `log record`).
    Named(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub unit: Unit,
    pub number: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            Unit::Line => "line",
            Unit::Element => "element",
            Unit::Named(name) => name,
        };
        write!(f, "{unit} {}", self.number)
    }
}

/// Why a body was refused. `position` is `None` when the body as a whole is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    pub position: Option<Position>,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{p}: {}", self.reason),
            None => write!(f, "body: {}", self.reason),
        }
    }
}

/// The two body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
    /// One JSON array of objects (`application/json`); a body starting with `{` is read as NDJSON.
    JsonArray,
}

/// The fields where shippers put an event's time, looked for in this order when an event has no `ts`: Vector's
/// `timestamp`, Beats' and Logstash's `@timestamp`, Fluent Bit's `date`. (`time`, which many events hold as
/// data, only when a request or series names it.)
pub const SHIPPER_TIME_FIELDS: [&str; 3] = ["timestamp", "@timestamp", "date"];

/// Where an event without `ts` has its time, and in what unit a number there is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TimeSpec {
    /// The field; `None`: the first of `SHIPPER_TIME_FIELDS` an event has that holds a time (a field of those
    /// names holding something else is taken for data).
    pub field: Option<String>,
    pub unit: TimeUnit,
}

/// The unit of a number in a time field other than `ts` (`ts` numbers are always milliseconds); spelt `auto`,
/// `s`, `ms`, `us`, `ns` in URLs and series settings.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum TimeUnit {
    /// By its size: below 10^11 seconds, below 10^14 milliseconds, below 10^17 microseconds, else nanoseconds
    /// (so every time from 1973 to 5138 is read right in each unit).
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "us")]
    Micros,
    #[serde(rename = "ns")]
    Nanos,
}

impl TimeUnit {
    pub fn parse(s: &str) -> Option<TimeUnit> {
        Some(match s {
            "auto" => TimeUnit::Auto,
            "s" => TimeUnit::Seconds,
            "ms" => TimeUnit::Millis,
            "us" => TimeUnit::Micros,
            "ns" => TimeUnit::Nanos,
            _ => return None,
        })
    }

    /// Milliseconds in one of this unit, for `v` (a number as sent).
    fn scale(self, v: f64) -> f64 {
        let unit = match self {
            TimeUnit::Auto if v.abs() < 1e11 => TimeUnit::Seconds,
            TimeUnit::Auto if v.abs() < 1e14 => TimeUnit::Millis,
            TimeUnit::Auto if v.abs() < 1e17 => TimeUnit::Micros,
            TimeUnit::Auto => TimeUnit::Nanos,
            unit => unit,
        };
        match unit {
            TimeUnit::Seconds => 1e3,
            TimeUnit::Micros => 1e-3,
            TimeUnit::Nanos => 1e-6,
            _ => 1.0,
        }
    }
}

/// Parses a body. `received` is written into events that carry no time.
pub fn parse(body: &[u8], format: Format, received: Millis) -> Result<Parsed, ParseError> {
    parse_with(body, format, received, &TimeSpec::default())
}

/// Parses a body, reading the time of events without `ts` as `time` says; that time (or `received`) is written
/// into the stored line as `ts`, first, and nothing else of the line changes.
pub fn parse_with(
    body: &[u8],
    format: Format,
    received: Millis,
    time: &TimeSpec,
) -> Result<Parsed, ParseError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let fields: Vec<&str> = match &time.field {
        Some(f) => vec!["ts", f.as_str()],
        None => std::iter::once("ts").chain(SHIPPER_TIME_FIELDS).collect(),
    };
    let reading = Reading {
        fields: &fields,
        path: time.field.as_deref().filter(|f| f.contains('.')),
        unit: time.unit,
        strict: time.field.is_some(),
        received,
    };
    match (format, first) {
        (Format::JsonArray, Some(b'[')) => parse_array(body, &reading),
        _ => parse_ndjson(body, &reading),
    }
}

/// How a body's events are read: time fields in order of preference, `ts` first.
struct Reading<'a> {
    fields: &'a [&'a str],
    /// The named field, when it is a dotted path into nested objects.
    path: Option<&'a str>,
    unit: TimeUnit,
    /// The field was named: a value there that is no time is refused, not taken for data.
    strict: bool,
    received: Millis,
}

fn parse_ndjson(body: &[u8], reading: &Reading) -> Result<Parsed, ParseError> {
    let mut parsed = Parsed {
        batch: Batch::with_capacity(body.len() / 128, body.len() + body.len() / 8),
        positions: Vec::with_capacity(body.len() / 128),
        unit: Unit::Line,
    };
    let mut scratch = Vec::new();
    // Lines found with SIMD (memchr), not byte by byte.
    let mut from = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (i, end) in ends.enumerate() {
        let line = body[from..end].trim_ascii();
        from = end + 1;
        if line.is_empty() {
            continue;
        }
        let position = Position {
            unit: Unit::Line,
            number: i + 1,
        };
        add_event(&mut parsed, line, position, reading, &mut scratch)?;
    }
    Ok(parsed)
}

fn parse_array(body: &[u8], reading: &Reading) -> Result<Parsed, ParseError> {
    let elements: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| ParseError {
        position: None,
        reason: format!("not a JSON array of objects: {e}"),
    })?;
    let mut parsed = Parsed {
        batch: Batch::with_capacity(elements.len(), body.len() + body.len() / 8),
        positions: Vec::with_capacity(elements.len()),
        unit: Unit::Element,
    };
    let mut scratch = Vec::new();
    for (i, element) in elements.iter().enumerate() {
        let text = element.get().as_bytes();
        let position = Position {
            unit: Unit::Element,
            number: i + 1,
        };
        if text.contains(&b'\n') || text.contains(&b'\r') {
            // A raw newline cannot be inside a JSON string, so these are all layout: drop them.
            let folded: Vec<u8> = text
                .iter()
                .copied()
                .filter(|&b| b != b'\n' && b != b'\r')
                .collect();
            add_event(&mut parsed, &folded, position, reading, &mut scratch)?;
        } else {
            add_event(&mut parsed, text, position, reading, &mut scratch)?;
        }
    }
    Ok(parsed)
}

fn add_event(
    parsed: &mut Parsed,
    line: &[u8],
    position: Position,
    reading: &Reading,
    scratch: &mut Vec<u8>,
) -> Result<(), ParseError> {
    let fail = |reason: String| ParseError {
        position: Some(position),
        reason,
    };
    // serde_json skips ignored strings without checking them, so the whole line is checked here: a stored line
    // must be valid UTF-8 JSON for every reader after us.
    let text = std::str::from_utf8(line)
        .map_err(|e| fail(format!("not valid UTF-8 at byte {}", e.valid_up_to() + 1)))?;
    // One pass looks for `ts` and the other time fields together (over text known to be UTF-8, which
    // serde_json then does not check again).
    let mut probe =
        probe_fields(text, reading.fields, reading.unit, reading.strict).map_err(fail)?;
    if let (None, None, Some(path)) = (probe.time, probe.other, reading.path) {
        let found =
            json_at_path(line, path).map(|raw| event_time_in(path, raw.get(), reading.unit));
        if let Some(t) = found.transpose().map_err(fail)? {
            probe.other = Some((1, t));
        }
    }
    match (probe.time, probe.other) {
        (Some(ts), _) => parsed.batch.push(ts, line),
        (None, other) => {
            // Write the time in as `ts`, first, so that every stored line and every export says its time.
            let t = other.map_or(reading.received, |(_, t)| t);
            with_ts(line, &probe, t, scratch);
            parsed.batch.push(t, scratch);
        }
    }
    parsed.positions.push(position.number as u32);
    Ok(())
}

/// The value at a dotted path into nested objects (`http.request.time`): at each level, a key equal to the rest
/// of the path, or to its next segments (`http`, then `request.time`; or `http.request`, then `time`), leads on.
/// Only for named paths not found as a key of their own: it parses each level it passes into a map.
pub fn json_at_path<'a>(json: &'a [u8], path: &str) -> Option<&'a RawValue> {
    let map: HashMap<String, &'a RawValue> = serde_json::from_slice(json).ok()?;
    if let Some(value) = map.get(path) {
        return Some(value);
    }
    map.iter().find_map(|(key, value)| {
        let rest = path.strip_prefix(key.as_str())?.strip_prefix('.')?;
        json_at_path(value.get().as_bytes(), rest)
    })
}

/// `line` with `"ts":"<t>"` written in as its first field.
fn with_ts(line: &[u8], probe: &Probe, t: Millis, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(time::format_rfc3339(t).as_bytes());
    out.push(b'"');
    if probe.fields > 0 {
        out.push(b',');
        let open = line.iter().position(|&b| b == b'{').unwrap_or(0);
        out.extend_from_slice(&line[open + 1..]);
    } else {
        out.push(b'}');
    }
}

/// One event from an archive written by another tool, as it will be stored, in `out`; returns its time. The time
/// is the field `field` (the forms `ts` takes) or, without it, `fallback`. A stored line always carries `ts`, so
/// it is written in first when the line has none; a line that has a `ts` besides another time field is refused
/// rather than guessed at.
pub fn import_line(
    line: &[u8],
    field: &str,
    fallback: Millis,
    out: &mut Vec<u8>,
) -> Result<Millis, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("not valid UTF-8 at byte {}", e.valid_up_to() + 1))?;
    let probe = probe(text, field)?;
    if probe.has_ts {
        return Err(format!(
            "has both \"ts\" and {field:?}; stored events keep their time in \"ts\""
        ));
    }
    match probe.time {
        Some(t) if field == "ts" => {
            out.clear();
            out.extend_from_slice(line);
            Ok(t)
        }
        time => {
            let t = time.unwrap_or(fallback);
            with_ts(line, &probe, t, out);
            Ok(t)
        }
    }
}

/// The time of a stored line (every stored line has a valid `ts`); `None` for anything else.
pub fn event_time(line: &[u8]) -> Option<Millis> {
    probe(std::str::from_utf8(line).ok()?, "ts").ok()?.time
}

/// What one event's JSON says about itself.
struct Probe {
    /// The value of the time field (the first one looked for).
    time: Option<Millis>,
    /// The most preferred of the other time fields that holds a time: its rank and the time.
    other: Option<(usize, Millis)>,
    /// Whether it has a `ts` besides a time field of another name.
    has_ts: bool,
    fields: usize,
}

/// Checks that `line` is exactly one JSON object and reads its time field `key`, skipping every other value.
fn probe(line: &str, key: &str) -> Result<Probe, String> {
    probe_fields(line, &[key], TimeUnit::Millis, true)
}

/// `probe` for a time field `keys[0]` (numbers in milliseconds) and others to fall back on, in order of
/// preference (numbers in `unit`). `strict`: a fallback field that holds no time is an error, not data.
fn probe_fields(line: &str, keys: &[&str], unit: TimeUnit, strict: bool) -> Result<Probe, String> {
    let mut de = serde_json::Deserializer::from_str(line);
    let visitor = ObjectVisitor { keys, unit, strict };
    let probe = de::Deserializer::deserialize_any(&mut de, visitor).map_err(describe)?;
    de.end().map_err(describe)?;
    Ok(probe)
}

/// serde_json ends its messages with a position in the line; the caller already names the line, so keep
/// only the column, and only for syntax errors.
fn describe(e: serde_json::Error) -> String {
    let text = e.to_string();
    let text = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    // What serde_json refuses beyond syntax, said so that a user knows what to change.
    let text = match text {
        "recursion limit exceeded" => "nested more than 128 levels deep",
        "number out of range" => "a number is beyond the range of a 64-bit float",
        t if t.contains("surrogate") => "a string holds an unpaired UTF-16 surrogate escape",
        t => t,
    };
    if e.is_data() {
        text.to_string()
    } else {
        format!("invalid JSON at column {}: {text}", e.column())
    }
}

struct ObjectVisitor<'k> {
    keys: &'k [&'k str],
    unit: TimeUnit,
    strict: bool,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Probe;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
        let keys = self.keys;
        let key = keys[0];
        let mut probe = Probe {
            time: None,
            other: None,
            has_ts: false,
            fields: 0,
        };
        let mut refused = None;
        while let Some(kind) = map.next_key_seed(KeyKind { keys })? {
            probe.fields += 1;
            match kind {
                Key::Time => {
                    if probe.time.is_some() {
                        return Err(de::Error::custom(format!("{key:?} appears twice")));
                    }
                    let raw: &RawValue = map.next_value()?;
                    let t = event_time_in(key, raw.get(), TimeUnit::Millis);
                    probe.time = Some(t.map_err(de::Error::custom)?);
                }
                Key::Fallback(rank) => {
                    let raw: &RawValue = map.next_value()?;
                    let better = probe.other.is_none_or(|(r, _)| rank < r);
                    match event_time_in(keys[rank], raw.get(), self.unit) {
                        Ok(t) if better => probe.other = Some((rank, t)),
                        Ok(_) => {}
                        // A named field that holds no time is refused, unless `ts` is there (it wins).
                        Err(e) if self.strict => {
                            refused.get_or_insert(e);
                            raw_checked(raw).map_err(de::Error::custom)?
                        }
                        // Not a time: data that happens to have a time field's name. Checked as data is.
                        Err(_) => raw_checked(raw).map_err(de::Error::custom)?,
                    }
                }
                Key::Ts => {
                    probe.has_ts = true;
                    map.next_value_seed(Checked)?;
                }
                Key::Other => {
                    map.next_value_seed(Checked)?;
                }
            }
        }
        match refused {
            Some(e) if probe.time.is_none() => Err(de::Error::custom(e)),
            _ => Ok(probe),
        }
    }
}

enum Key {
    /// The time field.
    Time,
    /// Another time field, by its rank in the keys looked for.
    Fallback(usize),
    /// `ts`, when the time field has another name.
    Ts,
    Other,
}

/// Reads an object key and tells what it is, without allocating it.
struct KeyKind<'k> {
    keys: &'k [&'k str],
}

impl<'de> DeserializeSeed<'de> for KeyKind<'_> {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyKind<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(if key == self.keys[0] {
            Key::Time
        } else if let Some(rank) = self.keys.iter().position(|k| *k == key) {
            Key::Fallback(rank)
        } else if key == "ts" {
            Key::Ts
        } else {
            Key::Other
        })
    }
}

/// Reads a time field as sent (`raw`, its JSON text): an RFC 3339 string or a number of Unix time in `unit`,
/// within the range of times stored. Errors quote the value as it was sent.
fn event_time_in(key: &str, raw: &str, unit: TimeUnit) -> Result<Millis, String> {
    let outside = || {
        format!(
            "{key:?} {raw} is outside 1970-01-01T00:00:00Z..{}",
            time::format_rfc3339(time::MAX_TIME)
        )
    };
    let numbers = match unit {
        TimeUnit::Auto => "Unix seconds, milliseconds, microseconds or nanoseconds",
        TimeUnit::Seconds => "Unix seconds",
        TimeUnit::Millis => "Unix milliseconds",
        TimeUnit::Micros => "Unix microseconds",
        TimeUnit::Nanos => "Unix nanoseconds",
    };
    let expected = || format!("{key:?} is not an RFC 3339 string or a number of {numbers}");
    let t = match raw.as_bytes().first() {
        Some(b'"') => {
            // Borrowed when it has no escapes, which is every time field ever seen; checked either way.
            let text: std::borrow::Cow<str> = match serde_json::from_str::<&str>(raw) {
                Ok(text) => text.into(),
                Err(_) => serde_json::from_str::<String>(raw)
                    .map_err(describe)?
                    .into(),
            };
            let t = time::parse_rfc3339(&text)
                .ok_or_else(|| format!("{key:?} {raw} is not RFC 3339"))?;
            return if time::in_range(t) {
                Ok(t)
            } else {
                Err(outside())
            };
        }
        Some(b'-' | b'0'..=b'9') => match raw.parse::<i64>() {
            Ok(t) if unit == TimeUnit::Millis => t,
            _ => {
                let v: f64 = raw.parse().map_err(|_| expected())?;
                // To the microsecond first: 1411952350.2 seconds is not 1411952350199.99 ms.
                let v = (v * unit.scale(v) * 1e3).round() / 1e3;
                if !(v.is_finite() && v >= time::MIN_TIME as f64 && v <= time::MAX_TIME as f64) {
                    return Err(outside());
                }
                v.floor() as Millis
            }
        },
        _ => return Err(expected()),
    };
    if time::in_range(t) {
        Ok(t)
    } else {
        Err(outside())
    }
}

/// `Checked` for a value already taken apart as raw JSON text.
fn raw_checked(raw: &RawValue) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Checked.deserialize(&mut de).map_err(describe)
}

/// Checks a value the probe does not otherwise read, by serde_json's own rules for what it parses: numbers
/// within a 64-bit float's range, strings whose escapes are whole (no unpaired surrogate), at most 128 levels
/// of nesting. Skipping it unparsed let through lines that strict readers of pages and exports cannot read.
struct Checked;

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Checked)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(KeyKind { keys: &[""] })?.is_some() {
            map.next_value_seed(Checked)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_411_952_350_000;

    fn lines(p: &Parsed) -> Vec<(Millis, String)> {
        p.batch
            .iter()
            .map(|(t, l)| (t, String::from_utf8(l.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn ndjson_keeps_lines_as_sent_and_reads_both_time_forms() {
        let body = b"{\"ts\":1000,\"a\":1}\r\n\n  {\"a\":[1,{\"ts\":5}],\"ts\":\"1970-01-01T00:00:02Z\"}\n";
        let p = parse(body, Format::Ndjson, NOW).unwrap();
        assert_eq!(
            lines(&p),
            vec![
                (1000, "{\"ts\":1000,\"a\":1}".into()),
                (
                    2000,
                    "{\"a\":[1,{\"ts\":5}],\"ts\":\"1970-01-01T00:00:02Z\"}".into()
                ),
            ]
        );
        assert_eq!(p.position(1).to_string(), "line 3");
    }

    #[test]
    fn shippers_time_fields_are_read_when_there_is_no_ts() {
        let t = 1_411_952_350_123; // 2014-09-29T00:59:10.123Z
        let spec = TimeSpec::default();
        let cases: [(&str, Millis); 9] = [
            // Vector's http sink, Beats and Logstash, Fluent Bit's float seconds.
            (r#"{"timestamp":"2014-09-29T00:59:10.123Z","m":1}"#, t),
            (r#"{"@timestamp":"2014-09-29T00:59:10.123Z"}"#, t),
            (r#"{"date":1411952350.123}"#, t),
            (r#"{"date":1411952350.2}"#, t - 123 + 200),
            (r#"{"date":1411952350.7}"#, t - 123 + 700),
            // Numbers by their size: seconds, milliseconds, microseconds, nanoseconds.
            (r#"{"timestamp":1411952350}"#, t - 123),
            (r#"{"timestamp":1411952350123}"#, t),
            (r#"{"date":1411952350123456}"#, t),
            (r#"{"@timestamp":1411952350123456789}"#, t),
        ];
        for (line, want) in cases {
            let p = parse_with(line.as_bytes(), Format::Ndjson, NOW, &spec).unwrap();
            let (got, stored) = &lines(&p)[0];
            assert_eq!(*got, want, "{line}");
            // The line as sent, with the time written in first as `ts`.
            let expected = format!("{{\"ts\":\"{}\",{}", time::format_rfc3339(want), &line[1..]);
            assert_eq!(stored, &expected, "{line}");
        }
        // `ts` wins and nothing is written; earlier fields in the list win over later ones, wherever they are.
        let p = parse_with(
            br#"{"timestamp":"2020-01-01T00:00:00Z","ts":5}"#,
            Format::Ndjson,
            NOW,
            &spec,
        );
        assert_eq!(lines(&p.unwrap())[0].0, 5);
        let p = parse_with(
            br#"{"date":1,"timestamp":"2014-09-29T00:59:10.123Z"}"#,
            Format::Ndjson,
            NOW,
            &spec,
        );
        assert_eq!(lines(&p.unwrap())[0].0, t);
        // A field of those names that holds no time is data: the receive time is written in.
        let p = parse_with(
            br#"{"timestamp":"lunch","date":{"d":1},"time":7}"#,
            Format::Ndjson,
            NOW,
            &spec,
        )
        .unwrap();
        assert_eq!(lines(&p)[0].0, NOW);
        assert!(
            lines(&p)[0]
                .1
                .ends_with(r#""timestamp":"lunch","date":{"d":1},"time":7}"#)
        );
    }

    #[test]
    fn a_named_time_field_and_unit_are_read_strictly() {
        let spec = TimeSpec {
            field: Some("at".into()),
            unit: TimeUnit::Seconds,
        };
        let p = parse_with(
            b"{\"at\":1411952350}\n{\"at\":\"2014-09-29T00:59:10Z\"}\n{}\n",
            Format::Ndjson,
            NOW,
            &spec,
        )
        .unwrap();
        let got: Vec<Millis> = lines(&p).iter().map(|(t, _)| *t).collect();
        assert_eq!(got, [1_411_952_350_000, 1_411_952_350_000, NOW]);
        // The shippers' fields are not looked at then.
        let p = parse_with(
            br#"{"timestamp":"2020-01-01T00:00:00Z"}"#,
            Format::Ndjson,
            NOW,
            &spec,
        )
        .unwrap();
        assert_eq!(lines(&p)[0].0, NOW);
        let e = parse_with(b"{}\n{\"at\":\"noon\"}\n", Format::Ndjson, NOW, &spec).unwrap_err();
        assert_eq!(e.to_string(), "line 2: \"at\" \"noon\" is not RFC 3339");
        let e = parse_with(br#"{"at":true}"#, Format::Ndjson, NOW, &spec).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: \"at\" is not an RFC 3339 string or a number of Unix seconds"
        );
        let e = parse_with(br#"{"at":1e300}"#, Format::Ndjson, NOW, &spec).unwrap_err();
        assert!(e.to_string().contains("is outside"), "{e}");
    }

    #[test]
    fn a_dotted_time_field_is_a_path_into_nested_objects() {
        let spec = TimeSpec {
            field: Some("http.request.at".into()),
            unit: TimeUnit::Millis,
        };
        let t = 1_411_952_350_123;
        let body = concat!(
            r#"{"http":{"request":{"at":1411952350123}},"m":1}"#,
            "\n",
            r#"{"http.request":{"at":"2014-09-29T00:59:10.123Z"}}"#,
            "\n",
            r#"{"http.request.at":1411952350123,"http":{"request":{"at":5}}}"#,
            "\n",
            r#"{"http":{"request":[1]}}"#,
            "\n",
            r#"{"http":{"request":{"at":"noon"}}}"#,
        );
        let e = parse_with(body.as_bytes(), Format::Ndjson, NOW, &spec).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 5: \"http.request.at\" \"noon\" is not RFC 3339"
        );
        let (ok, _) = body.rsplit_once('\n').unwrap();
        let p = parse_with(ok.as_bytes(), Format::Ndjson, NOW, &spec).unwrap();
        let got: Vec<Millis> = lines(&p).iter().map(|(t, _)| *t).collect();
        // A key of the whole name wins over the nested path; where the path leads nowhere, the receive time.
        assert_eq!(got, [t, t, t, NOW]);
        assert!(
            lines(&p)[0]
                .1
                .ends_with(r#""http":{"request":{"at":1411952350123}},"m":1}"#)
        );
    }

    #[test]
    fn missing_ts_gets_the_receive_time_written_in() {
        let p = parse(b"{}\n{ \"a\" : 1 }\n", Format::Ndjson, NOW).unwrap();
        assert_eq!(
            lines(&p),
            vec![
                (NOW, "{\"ts\":\"2014-09-29T00:59:10.000Z\"}".into()),
                (
                    NOW,
                    "{\"ts\":\"2014-09-29T00:59:10.000Z\", \"a\" : 1 }".into()
                ),
            ]
        );
        for (_, l) in lines(&p) {
            serde_json::from_str::<serde_json::Value>(&l).unwrap();
        }
    }

    #[test]
    fn arrays_are_folded_onto_one_line_per_element() {
        let body = b" [ {\"ts\": 7,\n  \"s\": \"a b\"},\r\n {\"ts\":8} ] ";
        let p = parse(body, Format::JsonArray, NOW).unwrap();
        assert_eq!(
            lines(&p),
            vec![
                (7, "{\"ts\": 7,  \"s\": \"a b\"}".into()),
                (8, "{\"ts\":8}".into())
            ]
        );
        // application/json with objects per line is read as NDJSON.
        let p = parse(b"{\"ts\":1}\n{\"ts\":2}", Format::JsonArray, NOW).unwrap();
        assert_eq!(p.batch.len(), 2);
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"ts\":1}\n{\"ts\":1", "line 2: invalid JSON"),
            (
                b"[1,2]",
                "line 1: invalid type: sequence, expected a JSON object",
            ),
            (b"{\"ts\":null}", "line 1: \"ts\" is not an RFC 3339 string"),
            (b"{\"ts\":true}", "line 1: \"ts\" is not an RFC 3339 string"),
            (b"{\"ts\":{}}", "line 1: \"ts\" is not an RFC 3339 string"),
            (
                b"{\"ts\":\"monday\"}",
                "line 1: \"ts\" \"monday\" is not RFC 3339",
            ),
            (b"{\"ts\":-1}", "line 1: \"ts\" -1 is outside"),
            (b"{\"ts\":1,\"ts\":2}", "line 1: \"ts\" appears twice"),
            (b"{\"ts\":1} {\"ts\":2}", "line 1: invalid JSON"),
            (b"{\"s\":\"\xff\"}", "line 1: not valid UTF-8 at byte 7"),
        ];
        for (body, want) in cases {
            let e = parse(body, Format::Ndjson, NOW).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
        let e = parse(b"[{\"ts\":1}, 3]", Format::JsonArray, NOW).unwrap_err();
        assert_eq!(e.position.unwrap().to_string(), "element 2");
        let e = parse(b"[{\"ts\":1}", Format::JsonArray, NOW).unwrap_err();
        assert!(e.to_string().starts_with("body: not a JSON array"), "{e}");
    }

    #[test]
    fn values_strict_readers_cannot_read_back_are_refused_naming_the_line() {
        let deep = format!("{{\"ts\":1,\"a\":{}1{}}}", "[".repeat(130), "]".repeat(130));
        let cases: [(&str, &str); 5] = [
            (
                "{\"ts\":1,\"x\":1e400}",
                "line 1: invalid JSON at column 17: a number is beyond the range",
            ),
            (
                "{\"ts\":1,\"s\":\"\\ud800\"}",
                "line 1: invalid JSON at column 20: ",
            ),
            (
                "{\"ts\":1,\"\\udfff\":2}",
                "line 1: invalid JSON at column 15: a string holds an unpaired",
            ),
            (&deep, "line 1: invalid JSON at column "),
            (
                "{\"ts\":1,\"n\":[{\"m\":-1e999}]}",
                "line 1: invalid JSON at column ",
            ),
        ];
        for (body, want) in cases {
            let e = parse(body.as_bytes(), Format::Ndjson, NOW)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
        let e = parse(deep.as_bytes(), Format::Ndjson, NOW)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("nested more than 128 levels deep"), "{e}");
        // Within the limits, everything passes as sent: big integers, paired surrogates, 120 levels.
        let ok = format!(
            "{{\"ts\":1,\"big\":123456789012345678901234567890,\"e\":\"\\ud83d\\ude00\",\"d\":{}1{}}}",
            "[".repeat(120),
            "]".repeat(120)
        );
        let p = parse(ok.as_bytes(), Format::Ndjson, NOW).unwrap();
        assert_eq!(p.batch.iter().next().unwrap().1, ok.as_bytes());
    }

    #[test]
    fn a_bad_time_is_reported_as_it_was_sent() {
        for (body, want) in [
            (
                "{\"ts\":18446744073709551616}",
                "\"ts\" 18446744073709551616 is outside",
            ),
            (
                "{\"ts\":-9223372036854775809}",
                "\"ts\" -9223372036854775809 is outside",
            ),
            ("{\"ts\":1e300}", "\"ts\" 1e300 is outside"),
            (
                "{\"ts\":\"1969-12-31T23:59:59Z\"}",
                "\"ts\" \"1969-12-31T23:59:59Z\" is outside",
            ),
            ("{\"ts\":\"soon\"}", "\"ts\" \"soon\" is not RFC 3339"),
        ] {
            let e = parse(body.as_bytes(), Format::Ndjson, NOW)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        // An escaped time string is read like any other.
        let p = parse(
            b"{\"ts\":\"\\u0031970-01-01T00:00:01Z\"}",
            Format::Ndjson,
            NOW,
        )
        .unwrap();
        assert_eq!(p.batch.ts(), &[1000]);
    }

    #[test]
    fn an_escaped_ts_key_is_still_ts() {
        let p = parse(b"{\"t\\u0073\":5,\"tsx\":1}", Format::Ndjson, NOW).unwrap();
        assert_eq!(p.batch.ts(), &[5]);
        let e = parse(b"{\"ts\":5,\"t\\u0073\":6}", Format::Ndjson, NOW).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn numbers_may_be_floats_of_milliseconds() {
        let p = parse(b"{\"ts\":1.5e3}", Format::Ndjson, NOW).unwrap();
        assert_eq!(p.batch.ts(), &[1500]);
    }

    #[test]
    fn imported_lines_get_ts_from_their_field_or_the_fallback() {
        let mut out = Vec::new();
        let import = |line: &str, field: &str, out: &mut Vec<u8>| {
            import_line(line.as_bytes(), field, 3_600_000, out)
                .map(|t| (t, String::from_utf8(out.clone()).unwrap()))
        };
        assert_eq!(
            import(r#"{"ts":5000,"a":1}"#, "ts", &mut out),
            Ok((5000, r#"{"ts":5000,"a":1}"#.into()))
        );
        assert_eq!(
            import(r#"{"a":1}"#, "ts", &mut out),
            Ok((
                3_600_000,
                r#"{"ts":"1970-01-01T01:00:00.000Z","a":1}"#.into()
            ))
        );
        assert_eq!(
            import(r#"{"time":"1970-01-01T00:00:02Z"}"#, "time", &mut out),
            Ok((
                2000,
                r#"{"ts":"1970-01-01T00:00:02.000Z","time":"1970-01-01T00:00:02Z"}"#.into()
            ))
        );
        let err = import(r#"{"time":1,"ts":2}"#, "time", &mut out).unwrap_err();
        assert!(err.contains("both"), "{err}");
        let err = import(r#"{"time":true}"#, "time", &mut out).unwrap_err();
        assert!(err.contains("\"time\" is not an RFC 3339"), "{err}");
        assert!(import("{\"a\":", "ts", &mut out).is_err());
        assert!(import("[1]", "ts", &mut out).is_err());
    }
}
