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
    let probe = probe(line).map_err(fail)?;
    let ts = match probe.ts {
        Some(ts) => ts,
        None => {
            // Write the receive time in, first, so that an export is self-describing.
            scratch.clear();
            scratch.extend_from_slice(b"{\"ts\":\"");
            scratch.extend_from_slice(time::format_rfc3339(received).as_bytes());
            scratch.push(b'"');
            if probe.fields > 0 {
                scratch.push(b',');
                let open = line.iter().position(|&b| b == b'{').unwrap_or(0);
                scratch.extend_from_slice(&line[open + 1..]);
            } else {
                scratch.push(b'}');
            }
            parsed.batch.push(received, scratch);
            parsed.positions.push(position.number as u32);
            return Ok(());
        }
    };
    parsed.batch.push(ts, line);
    parsed.positions.push(position.number as u32);
    Ok(())
}

/// The time of a stored line (every stored line has a valid `ts`); `None` for anything else.
pub fn event_time(line: &[u8]) -> Option<Millis> {
    probe(line).ok()?.ts
}

/// What one event's JSON says about itself.
struct Probe {
    ts: Option<Millis>,
    fields: usize,
}

/// Checks that `line` is exactly one JSON object and reads its `ts`, skipping every other value.
fn probe(line: &[u8]) -> Result<Probe, String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let probe = de::Deserializer::deserialize_any(&mut de, ObjectVisitor).map_err(describe)?;
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

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Probe;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
        let mut probe = Probe {
            ts: None,
            fields: 0,
        };
        while let Some(is_ts) = map.next_key_seed(IsTs)? {
            probe.fields += 1;
            if is_ts {
                if probe.ts.is_some() {
                    return Err(de::Error::custom("\"ts\" appears twice"));
                }
                probe.ts = Some(map.next_value_seed(TsSeed)?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(probe)
    }
}

/// Reads an object key and tells whether it is `ts`, without allocating it.
struct IsTs;

impl<'de> DeserializeSeed<'de> for IsTs {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for IsTs {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "ts")
    }
}

struct TsSeed;

impl<'de> DeserializeSeed<'de> for TsSeed {
    type Value = Millis;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Millis, D::Error> {
        d.deserialize_any(TsVisitor)
    }
}

struct TsVisitor;

const TS_EXPECTED: &str = "\"ts\" is not an RFC 3339 string or a number of Unix milliseconds";

fn in_range<E: de::Error>(t: Millis) -> Result<Millis, E> {
    if time::in_range(t) {
        Ok(t)
    } else {
        Err(E::custom(format!(
            "\"ts\" {t} is outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59.999Z"
        )))
    }
}

impl<'de> Visitor<'de> for TsVisitor {
    type Value = Millis;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TS_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Millis, E> {
        match time::parse_rfc3339(s) {
            Some(t) => in_range(t),
            None => Err(E::custom(format!("\"ts\" {s:?} is not RFC 3339"))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
        in_range(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
        in_range(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millis, E> {
        if v.is_finite() && v >= time::MIN_TIME as f64 && v <= time::MAX_TIME as f64 {
            Ok(v.floor() as Millis)
        } else {
            in_range(i64::MIN)
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Millis, E> {
        Err(E::custom(TS_EXPECTED))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Millis, E> {
        Err(E::custom(TS_EXPECTED))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Millis, A::Error> {
        Err(de::Error::custom(TS_EXPECTED))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Millis, A::Error> {
        Err(de::Error::custom(TS_EXPECTED))
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
}
