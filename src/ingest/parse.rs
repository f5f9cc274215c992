//! Turning a request body into a `Batch`: every event checked to be one JSON object, its time read from `ts`
//! (RFC 3339 string or Unix milliseconds) or, when absent, the receive time written into the stored line.
//!
//! Stored lines are the client's bytes as sent (trimmed, and folded onto one line for pretty-printed array
//! elements), so an export gives back exactly what was ingested. Nothing here allocates per event beyond the
//! batch's own buffers, and nothing panics on input.

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
                    let raw: &RawValue = map.next_value()?;
                    probe.time = Some(event_time_of(key, raw.get()).map_err(de::Error::custom)?);
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

/// Reads a time field as sent (`raw`, its JSON text): an RFC 3339 string or a number of Unix milliseconds,
/// within the range of times stored. Errors quote the value as it was sent.
fn event_time_of(key: &str, raw: &str) -> Result<Millis, String> {
    let outside = || {
        format!(
            "{key:?} {raw} is outside 1970-01-01T00:00:00Z..{}",
            time::format_rfc3339(time::MAX_TIME)
        )
    };
    let expected = || format!("{key:?} is not an RFC 3339 string or a number of Unix milliseconds");
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
            Ok(t) => t,
            Err(_) => {
                let v: f64 = raw.parse().map_err(|_| expected())?;
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
        while map.next_key_seed(KeyKind { key: "" })?.is_some() {
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
