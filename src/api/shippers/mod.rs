//! The push protocols that log shippers already speak: Elasticsearch's `_bulk` (`elastic.rs`), Loki's push
//! (`loki.rs`) and OTLP/HTTP logs (`otlp.rs`). Each turns its payload into one JSON line per event, grouped by
//! series (`Parts`): documents as sent (`_bulk`) go through the native parser, as native events do; lines
//! written here (Loki, OTLP) are valid JSON by construction and carry the time they were written with. Every
//! batch then meets the store's rules of `POST /api/series/{s}/events` (late, future, backlog, the log's
//! fsync); only the answers take the protocol's own shapes.
//!
//! A request is refused whole for anything wrong in it (4xx, nothing stored). One whose events go to several
//! series is stored as one batch per series, each all or nothing: every batch's event times are checked before
//! any is stored, so what can still refuse one after another was stored is the server (503, 507), and the
//! protocol's answer says which were stored where it has a way to (ARCHITECTURE.md, invariants).

pub mod elastic;
pub mod loki;
pub mod otlp;

use super::AppState;
use super::error::ApiError;
use crate::ingest::parse::{self, Batch, Format, ParseError, TimeSpec, Unit};
use crate::store::SeriesName;
use crate::time::{self, Millis};

/// Where each protocol finds the series of an event (`--otlp-series-attribute`, `--loki-series-label`,
/// `--elastic-series-field`); the first one present wins, and an event without any goes to `default`.
#[derive(Clone, Debug)]
pub struct SeriesFrom {
    /// Resource attributes, then log record attributes.
    pub otlp: Vec<String>,
    /// Stream labels.
    pub loki: Vec<String>,
    /// A field of the document; without one, the index the action names.
    pub elastic: Vec<String>,
}

/// A name a shipper sent (a service, an index, a label value) as a series name: lowercased, every character a
/// series name cannot have replaced by `_`, leading ones that cannot start it dropped, cut to 128 bytes; a name
/// with nothing left is `default`. Two names that differ only there share a series.
pub fn series_name(raw: &str) -> SeriesName {
    let mapped: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '.' | '-') => c,
            _ => '_',
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(128)
        .collect();
    SeriesName::parse(&mapped).unwrap_or_else(|_| SeriesName::default_series())
}

/// The events of one request for one series, and which event of the request each is.
pub struct Part {
    pub series: SeriesName,
    events: Events,
    numbers: Vec<u32>,
}

/// Documents as sent, to be read by the native parser (their time as their series says); or lines this
/// module wrote itself, with their time (valid JSON by construction, `ts` in them).
enum Events {
    Documents(Vec<u8>),
    Written(Batch),
}

/// A request's events by series, in the order each series first appears.
pub struct Parts {
    parts: Vec<Part>,
    /// What the protocol calls one event, for error messages (`item 3: ...`).
    unit: &'static str,
}

impl Parts {
    pub fn new(unit: &'static str) -> Parts {
        Parts {
            parts: Vec::new(),
            unit,
        }
    }

    fn part(&mut self, series: &SeriesName, documents: bool) -> &mut Part {
        match self.parts.iter().position(|p| p.series == *series) {
            Some(i) => &mut self.parts[i],
            None => {
                let events = match documents {
                    true => Events::Documents(Vec::new()),
                    false => Events::Written(Batch::default()),
                };
                self.parts.push(Part {
                    series: series.clone(),
                    events,
                    numbers: Vec::new(),
                });
                let last = self.parts.len() - 1;
                &mut self.parts[last]
            }
        }
    }

    /// Adds event `number` (1-based, as the protocol counts) of series `series`: a document as sent, one JSON
    /// object, read like a native event.
    pub fn push(&mut self, series: &SeriesName, number: usize, document: &[u8]) {
        let part = self.part(series, true);
        if let Events::Documents(lines) = &mut part.events {
            lines.extend_from_slice(document);
            lines.push(b'\n');
        }
        part.numbers.push(number as u32);
    }

    /// Adds event `number` of series `series` as a stored line written here, `ts` in it.
    pub fn push_written(&mut self, series: &SeriesName, number: usize, ts: Millis, line: &[u8]) {
        let part = self.part(series, false);
        if let Events::Written(batch) = &mut part.events {
            batch.push(ts, line);
        }
        part.numbers.push(number as u32);
    }
}

/// What became of one series' batch: the events stored, or why not.
pub struct Stored {
    pub series: SeriesName,
    pub numbers: Vec<u32>,
    pub outcome: Result<usize, ApiError>,
}

/// Reads every part, checks all of them against the store, then stores them one by one. `Err` when the
/// request is refused whole (nothing stored); otherwise what became of each part.
pub async fn store(state: &AppState, parts: Parts) -> Result<Vec<Stored>, ApiError> {
    let received = time::now();
    // Only documents are read by a series' time setting; written lines carry their time.
    let specs: Vec<TimeSpec> = parts
        .parts
        .iter()
        .map(|p| match p.events {
            Events::Documents(_) => state.store.time_spec(&p.series),
            Events::Written(_) => TimeSpec::default(),
        })
        .collect();
    let parsed = super::blocking(move || parse_parts(parts, specs, received)).await?;
    for (part, parsed) in &parsed {
        state
            .store
            .check(&part.series, parsed)
            .map_err(ApiError::from)?;
    }
    let mut stored = Vec::with_capacity(parsed.len());
    for (part, parsed) in parsed {
        let outcome = state.store.ingest(&part.series, None, parsed).await;
        stored.push(Stored {
            series: part.series,
            numbers: part.numbers,
            outcome: outcome.map(|ack| ack.accepted).map_err(ApiError::from),
        });
    }
    Ok(stored)
}

fn parse_parts(
    parts: Parts,
    specs: Vec<TimeSpec>,
    received: Millis,
) -> Result<Vec<(Part, parse::Parsed)>, ApiError> {
    let unit = parts.unit;
    let mut out = Vec::with_capacity(parts.parts.len());
    for (mut part, spec) in parts.parts.into_iter().zip(specs) {
        let events = std::mem::replace(&mut part.events, Events::Documents(Vec::new()));
        let mut parsed = match events {
            Events::Documents(lines) => parse::parse_with(&lines, Format::Ndjson, received, &spec)
                .map_err(|e| renumbered(e, &part.numbers, unit))?,
            Events::Written(batch) => parse::Parsed {
                batch,
                positions: Vec::new(),
                unit: Unit::Line,
            },
        };
        // Errors from here on name the request's events.
        parsed.positions = part.numbers.clone();
        parsed.unit = Unit::Named(unit);
        out.push((part, parsed));
    }
    Ok(out)
}

/// A parse error of a part's line, naming the request's event instead.
fn renumbered(e: ParseError, numbers: &[u32], unit: &'static str) -> ApiError {
    let e = match e.position {
        Some(p) => ParseError {
            position: Some(parse::Position {
                unit: Unit::Named(unit),
                number: numbers
                    .get(p.number.wrapping_sub(1))
                    .map_or(0, |&n| n as usize),
            }),
            reason: e.reason,
        },
        None => e,
    };
    ApiError::from(e)
}

/// The answer when some parts were stored and some not: the first refusal, its message saying what was stored.
pub fn first_refusal(stored: Vec<Stored>) -> Option<ApiError> {
    let kept: usize = stored.iter().filter_map(|s| s.outcome.as_ref().ok()).sum();
    let mut refusal = stored.into_iter().find_map(|s| s.outcome.err())?;
    if kept > 0 {
        refusal.message = format!(
            "{} ({kept} events for other series of this request were stored)",
            refusal.message
        );
    }
    Some(refusal)
}

/// A time in Unix nanoseconds as RFC 3339 with as many digits as it needs (0, 3, 6 or 9), and its millisecond;
/// `None` outside the times events may have.
pub fn rfc3339_nanos(nanos: u64) -> Option<(String, Millis)> {
    let t = i64::try_from(nanos).ok()?;
    let millis = t / 1_000_000;
    if !time::in_range(millis) {
        return None;
    }
    let at = chrono::DateTime::from_timestamp_nanos(t);
    Some((
        at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        millis,
    ))
}

/// `s` as a JSON string, into `out`.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail, and a str is always a valid JSON string.
    let _ = serde_json::to_writer(&mut *out, s);
}
