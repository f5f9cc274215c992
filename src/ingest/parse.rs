//! Turning a request body into a `Batch`: every event checked to be one JSON object, its time read from `ts`
//! (RFC 3339 string or Unix milliseconds) or, when absent, the receive time written into the stored line.
//!
//! Stored lines are the client's bytes as sent (trimmed, and folded onto one line for pretty-printed array
//! elements), so an export gives back exactly what was ingested. Nothing here allocates per event beyond the
//! batch's own buffers, and nothing panics on input.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
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

/// Parses a body. `received` is written into events that carry no `ts`.
pub fn parse(body: &[u8], format: Format, received: Millis) -> Result<Parsed, ParseError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match (format, first) {
        (Format::JsonArray, Some(b'[')) => parse_array(body, received),
        _ => parse_ndjson(body, received),
    }
}

fn parse_ndjson(body: &[u8], received: Millis) -> Result<Parsed, ParseError> {
    let mut parsed = Parsed {
        batch: Batch::with_capacity(body.len() / 128, body.len() + body.len() / 8),
        positions: Vec::with_capacity(body.len() / 128),
        unit: Unit::Line,
    };
    let mut scratch = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let position = Position {
            unit: Unit::Line,
            number: i + 1,
        };
        add_event(&mut parsed, line, position, received, &mut scratch)?;
    }
    Ok(parsed)
}

fn parse_array(body: &[u8], received: Millis) -> Result<Parsed, ParseError> {
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
            add_event(&mut parsed, &folded, position, received, &mut scratch)?;
        } else {
            add_event(&mut parsed, text, position, received, &mut scratch)?;
        }
    }
    Ok(parsed)
}

fn add_event(
    parsed: &mut Parsed,
    line: &[u8],
    position: Position,
    received: Millis,
    scratch: &mut Vec<u8>,
) -> Result<(), ParseError> {
    let fail = |reason: String| ParseError {
        position: Some(position),
        reason,
    };
    // serde_json skips ignored strings without checking them, so the whole line is checked here: a stored line
    // must be valid UTF-8 JSON for every reader after us.
    if let Err(e) = std::str::from_utf8(line) {
        return Err(fail(format!(
            "not valid UTF-8 at byte {}",
            e.valid_up_to() + 1
        )));
    }
    let probe = probe(line, "ts").map_err(fail)?;
    match probe.time {
        Some(ts) => parsed.batch.push(ts, line),
        None => {
            // Write the receive time in, first, so that an export is self-describing.
            with_ts(line, &probe, received, scratch);
            parsed.batch.push(received, scratch);
        }
    }
    parsed.positions.push(position.number as u32);
    Ok(())
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
    if let Err(e) = std::str::from_utf8(line) {
        return Err(format!("not valid UTF-8 at byte {}", e.valid_up_to() + 1));
    }
    let probe = probe(line, field)?;
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
    probe(line, "ts").ok()?.time
}

/// What one event's JSON says about itself.
struct Probe {
    /// The value of the time field.
    time: Option<Millis>,
    /// Whether it has a `ts` besides a time field of another name.
    has_ts: bool,
    fields: usize,
}

/// Checks that `line` is exactly one JSON object and reads its time field `key`, skipping every other value.
fn probe(line: &[u8], key: &str) -> Result<Probe, String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let probe =
        de::Deserializer::deserialize_any(&mut de, ObjectVisitor { key }).map_err(describe)?;
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
    if e.is_data() {
        text.to_string()
    } else {
        format!("invalid JSON at column {}: {text}", e.column())
    }
}

struct ObjectVisitor<'k> {
    key: &'k str,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Probe;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
        let key = self.key;
        let mut probe = Probe {
            time: None,
            has_ts: false,
            fields: 0,
        };
        while let Some(kind) = map.next_key_seed(KeyKind { key })? {
            probe.fields += 1;
            match kind {
                Key::Time => {
                    if probe.time.is_some() {
                        return Err(de::Error::custom(format!("{key:?} appears twice")));
                    }
                    probe.time = Some(map.next_value_seed(TimeVisitor { key })?);
                }
                Key::Ts => {
                    probe.has_ts = true;
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(probe)
    }
}

enum Key {
    /// The time field.
    Time,
    /// `ts`, when the time field has another name.
    Ts,
    Other,
}

/// Reads an object key and tells what it is, without allocating it.
struct KeyKind<'k> {
    key: &'k str,
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
        Ok(if key == self.key {
            Key::Time
        } else if key == "ts" {
            Key::Ts
        } else {
            Key::Other
        })
    }
}

/// Reads a time field: an RFC 3339 string or a number of Unix milliseconds.
struct TimeVisitor<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for TimeVisitor<'_> {
    type Value = Millis;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Millis, D::Error> {
        d.deserialize_any(self)
    }
}

impl TimeVisitor<'_> {
    fn in_range<E: de::Error>(&self, t: Millis) -> Result<Millis, E> {
        if time::in_range(t) {
            Ok(t)
        } else {
            Err(E::custom(format!(
                "{:?} {t} is outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59.999Z",
                self.key
            )))
        }
    }

    fn expected<E: de::Error>(&self) -> E {
        E::custom(format!(
            "{:?} is not an RFC 3339 string or a number of Unix milliseconds",
            self.key
        ))
    }
}

impl<'de> Visitor<'de> for TimeVisitor<'_> {
    type Value = Millis;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} as RFC 3339 or Unix milliseconds", self.key)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Millis, E> {
        match time::parse_rfc3339(s) {
            Some(t) => self.in_range(t),
            None => Err(E::custom(format!("{:?} {s:?} is not RFC 3339", self.key))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
        self.in_range(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
        self.in_range(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millis, E> {
        if v.is_finite() && v >= time::MIN_TIME as f64 && v <= time::MAX_TIME as f64 {
            Ok(v.floor() as Millis)
        } else {
            self.in_range(i64::MIN)
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Millis, E> {
        Err(self.expected())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Millis, E> {
        Err(self.expected())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Millis, A::Error> {
        Err(self.expected())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Millis, A::Error> {
        Err(self.expected())
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
