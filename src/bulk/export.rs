//! An export: the events of `[from, to)` in time order, as NDJSON, one JSON array or CSV, optionally gzip'd.
//! The same walk feeds `GET .../export` (through a bounded channel) and `hourglass export` (to a file).
//!
//! The walk visits the non-empty chunks of the range in time order and hands their parts to a few threads
//! (one per core, at most `MAX_THREADS`), which read, inflate, filter and format them; the pieces are written
//! in order. At most `PARTS_PER_THREAD` parts per thread are in hand at once, so memory does not grow with the
//! range; the walk stops at the first piece its sink refuses. Only the two edge chunks are filtered line by
//! line, and every line when the export is filtered. With gzip the output is one gzip member, which every HTTP client can decode: pieces are deflated with
//! a sync flush and continue one deflate stream, and for NDJSON a stored member wholly inside the range
//! contributes its deflate data as it is (no inflate, no deflate; see `member::joinable`).

use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::mpsc;

use axum::body::Bytes;
use serde_json::value::RawValue;

use std::sync::Arc;

use crate::archive::deflate::{Deflater, GZIP_HEADER};
use crate::archive::member::{self, FINAL_BLOCK};
use crate::filter::Filter;
use crate::ingest::parse::event_time;
use crate::store::{Located, PartAt, SeriesName, Store, StoreError};
use crate::time::{self, Millis};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Ndjson,
    Json,
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "ndjson" => Ok(Format::Ndjson),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(format!("format {other:?} is not one of ndjson, json, csv")),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// A range `[from, to)` from RFC 3339 times or Unix seconds.
pub fn parse_range(from: &str, to: &str) -> Result<(Millis, Millis), String> {
    // A range may end anywhere up to the end of year 9999, though no event is that late.
    let (first, last) = (time::MIN_TIME, time::MAX_STAMP + 999);
    let parse = |key: &str, raw: &str| {
        let t = time::parse_rfc3339(raw)
            .or_else(|| {
                raw.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && s.abs() < 1e15)
                    .map(|s| (s * 1000.0).floor() as Millis)
            })
            .ok_or_else(|| format!("{key}={raw:?} is not an RFC 3339 time or Unix seconds"))?;
        if (first..=last).contains(&t) {
            Ok(t)
        } else {
            Err(format!(
                "{key}={raw:?} is outside {}..{}",
                time::format_rfc3339(first),
                time::format_rfc3339(last)
            ))
        }
    };
    let (from, to) = (parse("from", from)?, parse("to", to)?);
    if from >= to {
        return Err(format!(
            "from ({}) must be before to ({}): the range is [from, to)",
            time::format_rfc3339(from),
            time::format_rfc3339(to)
        ));
    }
    Ok((from, to))
}

/// The columns `a,b,c` of a CSV export, required there (top-level field names, none empty); none for the
/// other formats. The error says what is wrong, for a 400 or the command line.
pub fn csv_fields(format: Format, fields: Option<&str>) -> Result<Vec<String>, String> {
    match (format, fields) {
        (Format::Csv, Some(f)) => {
            let fields: Vec<String> = f.split(',').map(|s| s.trim().to_string()).collect();
            match fields.iter().position(String::is_empty) {
                None => Ok(fields),
                Some(i) => Err(format!(
                    "fields={f:?}: column {} has no name; give top-level field names, e.g. fields=ts,host,value",
                    i + 1
                )),
            }
        }
        (Format::Csv, None) => {
            Err("format=csv needs fields=a,b,c (top-level field names)".to_string())
        }
        _ => Ok(Vec::new()),
    }
}

/// Where the pieces of an export go.
pub trait Sink {
    /// Takes the next piece of output; an error stops the walk.
    fn write(&mut self, piece: Bytes) -> io::Result<()>;
    /// Every event before `t` has been written.
    fn reached(&mut self, _t: Millis) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing the export: {0}")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to export and how.
#[derive(Clone, Debug)]
pub struct Export {
    pub name: SeriesName,
    pub from: Millis,
    pub to: Millis,
    pub format: Format,
    /// CSV columns.
    pub fields: Vec<String>,
    pub encoding: Encoding,
    /// How what is compressed here is deflated (not stored members sent as they are).
    pub deflater: Deflater,
    /// Only the events it matches.
    pub filter: Option<Arc<Filter>>,
}

/// How an export's output is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    /// One gzip member: stored members' deflate data joined as it is, the rest deflated here.
    Gzip,
    /// One zstd frame, each piece compressed and flushed as it comes (level 3).
    Zstd,
}

impl Export {
    pub fn run<S: Sink>(&self, store: &Store, sink: &mut S) -> Result<(), ExportError> {
        let mut out = Out {
            sink,
            gzip: (self.encoding == Encoding::Gzip).then(|| Gzip {
                crc: crc32fast::Hasher::new(),
                len: 0,
                deflater: self.deflater,
            }),
            zstd: match self.encoding {
                Encoding::Zstd => Some(
                    zstd::stream::write::Encoder::new(Vec::new(), 3).map_err(ExportError::Write)?,
                ),
                _ => None,
            },
        };
        store.check_kept(&self.name, self.from)?;
        out.start()?;
        match self.format {
            Format::Json => out.text(b"[".to_vec())?,
            Format::Csv => out.text(csv_header(&self.fields))?,
            Format::Ndjson => {}
        }
        let pass_through = self.encoding == Encoding::Gzip
            && self.format == Format::Ndjson
            && self.filter.is_none();
        // A filter skips the sealed parts whose summaries rule it out.
        let tokens = self.filter.as_ref().map(|f| f.tokens()).unwrap_or_default();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS);
        // Parts being read at once: the job and result channels hold this many, so neither side ever waits on
        // a full channel while the other waits on it.
        let window = threads * PARTS_PER_THREAD;
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Located, bool)>(window);
        let job_rx = Mutex::new(job_rx);
        let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Result<Vec<u8>, StoreError>)>(window);
        std::thread::scope(|scope| {
            // Owned here, so that leaving early (an error, a client gone) ends the workers: they find no more
            // jobs, or nobody to hand a result to.
            let (job_tx, done_rx) = (job_tx, done_rx);
            for _ in 0..threads {
                let (job_rx, done_tx) = (&job_rx, done_tx.clone());
                scope.spawn(move || {
                    loop {
                        let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((seq, at, whole)) = job else {
                            break;
                        };
                        let text = store
                            .read_page(&self.name, &at)
                            .map(|lines| self.render(&lines.lines, whole, &mut true));
                        if done_tx.send((seq, text)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(done_tx);
            let mut ordered = Ordered::default();
            let mut in_flight = 0;
            let take_one =
                |ordered: &mut Ordered, out: &mut Out<'_, S>| -> Result<(), ExportError> {
                    let (seq, text) = done_rx.recv().map_err(|_| {
                        StoreError::Storage("an export thread stopped".to_string(), None)
                    })?;
                    // A failure waits for its turn too: what comes before it goes out first.
                    ordered.put(seq, text.map_or_else(Piece::Failed, Piece::Text));
                    ordered.write(out, self.format)
                };
            for part in store.parts(&self.name, self.from, self.to)? {
                let PartAt {
                    at,
                    start,
                    end,
                    last,
                } = part?;
                let whole = start >= self.from && end <= self.to;
                'part: {
                    if pass_through
                        && let Some((meta, stored)) = store.read_stored(&self.name, &at)?
                        && meta.first_ts >= self.from
                        && meta.last_ts < self.to
                        && let Some((data, crc)) = member::joinable(&stored, meta.raw_len)
                    {
                        let data = Bytes::from(stored).slice(data);
                        ordered.push(Piece::Joined(data, crc, meta.raw_len));
                        break 'part;
                    }
                    // Parts a filter cannot match are left out here, without a round trip to a thread.
                    if store.skips(&self.name, &at, &tokens)?.is_some() {
                        break 'part;
                    }
                    while in_flight >= window {
                        take_one(&mut ordered, &mut out)?;
                        in_flight -= 1;
                    }
                    let seq = ordered.reserve();
                    job_tx.send((seq, at, whole)).map_err(|_| {
                        StoreError::Storage("an export thread stopped".to_string(), None)
                    })?;
                    in_flight += 1;
                }
                if last {
                    ordered.push(Piece::Reached(end.min(self.to)));
                    ordered.write(&mut out, self.format)?;
                }
            }
            drop(job_tx);
            for _ in 0..in_flight {
                take_one(&mut ordered, &mut out)?;
            }
            Ok::<(), ExportError>(())
        })?;
        if self.format == Format::Json {
            out.text(b"]\n".to_vec())?;
        }
        out.finish()?;
        out.sink.reached(self.to);
        Ok(())
    }

    /// The lines of one page in the export's format, cut to the range unless `whole`, and to the filter.
    fn render(&self, lines: &[u8], whole: bool, first: &mut bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(lines.len() + lines.len() / 8);
        let in_range = |line: &[u8]| {
            (whole || event_time(line).is_some_and(|t| t >= self.from && t < self.to))
                && self.filter.as_ref().is_none_or(|f| f.matches(line))
        };
        for line in lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty() && in_range(l))
        {
            match self.format {
                Format::Ndjson => {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
                Format::Json => {
                    if !*first {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                }
                Format::Csv => csv_row(line, &self.fields, &mut out),
            }
            *first = false;
        }
        out
    }
}

/// The most threads an export reads parts on, and how many parts each may have in hand.
const MAX_THREADS: usize = 4;
const PARTS_PER_THREAD: usize = 4;

/// One piece of an export's output, in its place.
enum Piece {
    /// Lines in the export's format (a JSON piece without its separating comma).
    Text(Vec<u8>),
    /// A stored member's deflate data, its CRC-32 and length, joined as it is.
    Joined(Bytes, u32, u64),
    /// Every event before this time has been written.
    Reached(Millis),
    /// Reading this part failed: the export stops here.
    Failed(StoreError),
}

/// Pieces put back in order: parts are read on several threads and finish in any order.
#[derive(Default)]
struct Ordered {
    /// The next place to hand out, and the next to write.
    next: u64,
    written: u64,
    pending: std::collections::BTreeMap<u64, Piece>,
    /// Whether a JSON export has written an event yet (the next one needs a comma).
    wrote_event: bool,
}

impl Ordered {
    fn reserve(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }

    fn put(&mut self, seq: u64, piece: Piece) {
        self.pending.insert(seq, piece);
    }

    fn push(&mut self, piece: Piece) {
        let seq = self.reserve();
        self.put(seq, piece);
    }

    /// Writes every piece whose turn has come.
    fn write<S: Sink>(&mut self, out: &mut Out<'_, S>, format: Format) -> Result<(), ExportError> {
        while let Some(piece) = self.pending.remove(&self.written) {
            self.written += 1;
            match piece {
                Piece::Text(text) if text.is_empty() => {}
                Piece::Text(mut text) => {
                    if format == Format::Json && self.wrote_event {
                        text.insert(0, b',');
                    }
                    self.wrote_event = true;
                    out.text(text)?;
                }
                Piece::Joined(data, crc, len) => out.joined(data, crc, len)?,
                Piece::Reached(t) => out.sink.reached(t),
                Piece::Failed(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The sink, with the export's encoding.
struct Out<'a, S> {
    sink: &'a mut S,
    gzip: Option<Gzip>,
    zstd: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
}

/// The state of the one gzip member an export writes: the CRC-32 and length of everything so far.
struct Gzip {
    crc: crc32fast::Hasher,
    len: u64,
    deflater: Deflater,
}

impl<S: Sink> Out<'_, S> {
    fn start(&mut self) -> Result<(), ExportError> {
        match self.gzip {
            Some(_) => self.write(Bytes::from_static(&GZIP_HEADER)),
            None => Ok(()),
        }
    }

    fn text(&mut self, text: Vec<u8>) -> Result<(), ExportError> {
        let bytes = match (&mut self.gzip, &mut self.zstd) {
            (Some(gz), _) => {
                gz.crc.update(&text);
                gz.len += text.len() as u64;
                gz.deflater.flushed(&text)
            }
            (None, Some(z)) => {
                // Flushed, so that what is exported so far reaches the client now.
                z.write_all(&text)
                    .and_then(|()| z.flush())
                    .map_err(ExportError::Write)?;
                std::mem::take(z.get_mut())
            }
            (None, None) => text,
        };
        self.write(Bytes::from(bytes))
    }

    /// Deflate data that continues the stream as it is: its lines' CRC-32 and length join the member's.
    fn joined(&mut self, data: Bytes, crc: u32, len: u64) -> Result<(), ExportError> {
        if let Some(gz) = &mut self.gzip {
            gz.crc
                .combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
            gz.len += len;
        }
        self.write(data)
    }

    fn finish(&mut self) -> Result<(), ExportError> {
        if let Some(z) = self.zstd.take() {
            let end = z.finish().map_err(ExportError::Write)?;
            return self.write(Bytes::from(end));
        }
        let Some(gz) = self.gzip.take() else {
            return Ok(());
        };
        let mut end = FINAL_BLOCK.to_vec();
        end.extend_from_slice(&gz.crc.finalize().to_le_bytes());
        end.extend_from_slice(&(gz.len as u32).to_le_bytes());
        self.write(Bytes::from(end))
    }

    fn write(&mut self, bytes: Bytes) -> Result<(), ExportError> {
        self.sink.write(bytes).map_err(ExportError::Write)
    }
}

/// RFC 4180: a field is quoted when it holds a comma, a quote or a line break; quotes are doubled.
fn csv_cell(text: &str, out: &mut Vec<u8>) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(text.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

fn csv_header(fields: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_cell(f, &mut out);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One event as a CSV row: strings as they are, numbers as sent (a big integer keeps every digit), other values
/// as compact JSON, missing fields and `null` empty. Values are read raw, never through a float or a depth limit.
fn csv_row(line: &[u8], fields: &[String], out: &mut Vec<u8>) {
    let event: std::collections::HashMap<String, &RawValue> =
        serde_json::from_slice(line).unwrap_or_default();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Some(raw) = event.get(f).map(|v| v.get()) else {
            continue;
        };
        match raw.as_bytes().first() {
            Some(b'"') => match serde_json::from_str::<String>(raw) {
                Ok(text) => csv_cell(&text, out),
                Err(_) => csv_cell(raw, out),
            },
            Some(b'n') => {}
            Some(b'{' | b'[') => csv_cell(&compact(raw), out),
            _ => csv_cell(raw, out),
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// JSON text without the whitespace between its tokens; strings are left as they are.
fn compact(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii_whitespace() {
            continue;
        }
        out.push(c);
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_by_rfc_4180_and_leaves_missing_fields_empty() {
        let fields = csv_fields(Format::Csv, Some("a, b,c,d,e")).unwrap();
        let mut out = Vec::new();
        csv_row(
            br#"{"a":"x,y","b":"say \"hi\"","c":1.5,"e":{"k":[1]}}"#,
            &fields,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"x,y\",\"say \"\"hi\"\"\",1.5,,\"{\"\"k\"\":[1]}\"\r\n"
        );
        assert_eq!(csv_header(&fields), b"a,b,c,d,e\r\n");
        // Numbers as sent, nested values compact, whatever their depth.
        let mut out = Vec::new();
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let line = format!(
            r#"{{"a":123456789012345678901234567890,"b":-0.0,"c":{{ "k" : [1, "x y"] }},"d":null,"e":{deep}}}"#
        );
        csv_row(line.as_bytes(), &fields, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "123456789012345678901234567890,-0.0,\"{{\"\"k\"\":[1,\"\"x y\"\"]}}\",,{deep}\r\n"
            )
        );
        for bad in [" ", ",,,", "a,,b", "a,"] {
            assert!(csv_fields(Format::Csv, Some(bad)).is_err(), "{bad:?}");
        }
        assert!(csv_fields(Format::Csv, None).is_err());
        assert_eq!(csv_fields(Format::Json, None), Ok(vec![]));
    }
}
