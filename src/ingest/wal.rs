//! The write-ahead log: every accepted batch is appended here and fsync'd before it is acknowledged, and
//! replayed at start for whatever is not sealed yet.
//!
//! Segments are files `{data}/_wal/{n:016}.log`, written by one writer at the offset it knows (never in append
//! mode), rotated at `SEGMENT_BYTES`, and removed once every event in them lies below its series' sealed
//! watermark. A record is `len(u32 LE) crc32(u32 LE) payload`; a payload is one batch of one series:
//! `kind=1(u8) series_len(u8) series count(u32)` then per event `ts(i64) len(u32) line`; a batch sent with an
//! `Idempotency-Key` is `kind=2(u8) series_len(u8) series key_len(u8) key digest(u64) count(u32)` then the same.
//! Every segment but the first begins with `kind=3(u8) segment(u64) len(u64)`: where the segment before it
//! ends. `kind=4(u8) series_len(u8) series boundary(i64) at(i64)` says the series' closing boundary was raised
//! to `boundary` at `at` (written where another writer may take the log over: `Log::marks`).
//! `kind=5(u8) series_len(u8) series width_secs(u32) created(i64)` says a series was made (by its first batch,
//! in the same append), so a series remade from the log keeps its width and its creation time, which its
//! ETags name. Bytes past that end were never acknowledged (an append that failed and could not be cut back), so
//! replay never reads them.
//!
//! Replay tells damage from a torn tail. A whole record whose checksum fails, followed by intact records, is
//! damage: it is skipped by its length frame (or, when the length itself is bad, by finding the next record
//! that checks out) and every intact record after it is replayed. An incomplete last record is the torn tail of
//! a crash, never acknowledged (the ack waits for the fsync that covers the whole record). Either way the bytes
//! are kept aside (`{segment}.log.damaged-{offset}`, `.tail-{offset}`) before anything is cut.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::log::{Lines, Log};
use super::parse::Batch;
use crate::time::Millis;

const SEGMENT_BYTES: u64 = 64 << 20;
/// A spool's segments are smaller: what it lets go of also leaves the replicated log, sooner.
const SPOOL_SEGMENT_BYTES: u64 = 8 << 20;
const KIND_EVENTS: u8 = 1;
const KIND_KEYED: u8 = 2;
const KIND_END: u8 = 3;
const KIND_CLOSE: u8 = 4;
const KIND_SERIES: u8 = 5;
const FRAME: usize = 8;
/// A `KIND_END` record, frame included.
const END_RECORD: usize = FRAME + 1 + 8 + 8;

/// One segment file and, for garbage collection, the newest event time it holds per series.
#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    newest: HashMap<Arc<str>, Millis>,
}

/// The log. Owned behind a mutex by the store: the commit thread appends, the sealer collects.
pub struct Wal {
    dir: PathBuf,
    file: File,
    /// Where the next record goes: every byte before it is acknowledged records.
    len: u64,
    /// Every segment still on disk, oldest first; the last one is the one being appended.
    segments: Vec<Segment>,
    /// An append failed and could not be cut back: the segment may hold refused bytes past `len`, so nothing
    /// more is appended to it; the next append starts a segment that says where this one ends.
    poisoned: bool,
    /// Whether appends are fsync'd: a spool (`Wal::open_spool`) is a local copy of a replicated log, which
    /// is what makes a batch durable, so its appends are not.
    sync: bool,
    segment_bytes: u64,
}

/// What replay found wrong in a segment and set aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub kind: RepairKind,
    pub segment: u64,
    pub offset: u64,
    pub bytes: u64,
    /// Where the bytes were kept.
    pub aside: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairKind {
    /// Whole records that fail their checksum (or lost bytes): acknowledged batches may be in them.
    Damaged,
    /// An incomplete last record: a crash's unfinished append, never acknowledged.
    TornTail,
    /// Bytes past where the next segment says this one ends: an append that failed, never acknowledged.
    Refused,
}

impl RepairKind {
    pub const ALL: [RepairKind; 3] = [
        RepairKind::Damaged,
        RepairKind::TornTail,
        RepairKind::Refused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RepairKind::Damaged => "damaged",
            RepairKind::TornTail => "torn_tail",
            RepairKind::Refused => "refused",
        }
    }
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            RepairKind::Damaged => {
                "damaged records skipped, every intact record after them replayed"
            }
            RepairKind::TornTail => "a torn tail cut (an unfinished append, never acknowledged)",
            RepairKind::Refused => {
                "refused records cut (an append that failed, never acknowledged)"
            }
        };
        write!(
            f,
            "write-ahead log _wal/{:016}.log: {what}: {} bytes at offset {}, kept as _wal/{}",
            self.segment, self.bytes, self.offset, self.aside
        )
    }
}

/// Where one event's line lies in the log: what open chunks hold instead of the line itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineRef {
    pub segment: u32,
    pub len: u32,
    pub offset: u64,
}

/// An event in the log: its time and where its line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logged {
    pub ts: Millis,
    pub line: LineRef,
}

/// A client's name for a batch (`Idempotency-Key`) and a digest of the batch's body, kept in its record so a
/// retry is known after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchKey {
    pub key: Box<str>,
    pub digest: u64,
}

/// A replayed record.
pub enum Entry {
    Batch(Replayed),
    Close(Close),
    Made(Made),
}

/// A series made with `width_secs` at `created`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub series: String,
    pub width_secs: u32,
    pub created: Millis,
}

/// A series' closing boundary raised to `boundary` at `at`: nothing below it is taken from then on, and
/// chunks below it sealed after say `at` as their seal time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub series: String,
    pub boundary: Millis,
    pub at: Millis,
}

/// A replayed batch of one series.
pub struct Replayed {
    pub series: String,
    pub key: Option<BatchKey>,
    pub events: Vec<Logged>,
}

/// Where an append put its first byte.
#[derive(Clone, Copy, Debug)]
pub struct Position {
    pub segment: u32,
    pub offset: u64,
}

/// A failed read or write of the log. Shown with the segment's name under `_wal/`, never the machine's path.
#[derive(Debug, thiserror::Error)]
#[error("write-ahead log {}: {source}", log_name(path))]
pub struct WalError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A log file as `_wal/{file}` (a spool's as `_spool/{file}`), or a replicated log as `nats:{stream}`.
fn log_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name.starts_with("nats:") {
        return name.into_owned();
    }
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .filter(|f| *f == "_spool")
        .map_or("_wal", |_| "_spool");
    format!("{folder}/{name}")
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError {
        path: path.to_owned(),
        source,
    }
}

impl Wal {
    /// Opens the log folder, hands every intact record to `replay` in write order, sets damaged records and torn
    /// tails aside, and starts a fresh segment for new appends. Returns the log and what was repaired.
    pub fn open(dir: &Path, replay: impl FnMut(Entry)) -> Result<(Wal, Vec<Repair>), WalError> {
        Wal::open_with(dir, true, SEGMENT_BYTES, replay)
    }

    /// Opens a spool: the same segments and replay, but appends are not fsync'd and segments are smaller.
    /// What it holds is durable elsewhere (`ingest::nats`) and copied back into it at start.
    pub fn open_spool(
        dir: &Path,
        replay: impl FnMut(Entry),
    ) -> Result<(Wal, Vec<Repair>), WalError> {
        Wal::open_with(dir, false, SPOOL_SEGMENT_BYTES, replay)
    }

    fn open_with(
        dir: &Path,
        sync: bool,
        rotate_at: u64,
        mut replay: impl FnMut(Entry),
    ) -> Result<(Wal, Vec<Repair>), WalError> {
        crate::durable::create_dir_all(dir).map_err(at(dir))?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(at(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_suffix(".log")?.parse().ok()?;
                Some(id)
            })
            .collect();
        ids.sort_unstable();
        let mut repairs = Vec::new();
        let mut segments = Vec::with_capacity(ids.len() + 1);
        let mut segment_bytes = Vec::with_capacity(ids.len());
        for &id in &ids {
            let path = segment_path(dir, id);
            segment_bytes.push((id, path.clone(), fs::read(&path).map_err(at(&path))?));
        }
        // Where each segment ends, as the first record of the next one says.
        let mut ends: HashMap<u64, u64> = HashMap::new();
        for (_, _, bytes) in &segment_bytes {
            if let Some((Record::End { segment, len }, _)) = record_at(bytes, 0, 0) {
                ends.insert(segment, len);
            }
        }
        let mut last_len = 0;
        for (id, path, mut bytes) in segment_bytes {
            let mut newest: HashMap<Arc<str>, Millis> = HashMap::new();
            let mut cut = None;
            if let Some(&end) = ends.get(&id) {
                let end = usize::try_from(end).unwrap_or(usize::MAX);
                if end < bytes.len() {
                    repairs.push(set_aside(dir, id, RepairKind::Refused, end, &bytes[end..])?);
                    bytes.truncate(end);
                    cut = Some(end);
                } else if end > bytes.len() {
                    repairs.push(Repair {
                        kind: RepairKind::Damaged,
                        segment: id,
                        offset: bytes.len() as u64,
                        bytes: (end - bytes.len()) as u64,
                        aside: "(nothing: the bytes are gone, the file is shorter than it was)"
                            .into(),
                    });
                }
            }
            let scan = read_records(&bytes, id, |entry| {
                // A raise of the closing boundary is kept like an event at the boundary, until sealed past.
                let (series, max) = match &entry {
                    Entry::Batch(r) => (&r.series, r.events.iter().map(|e| e.ts).max()),
                    Entry::Close(c) => (&c.series, Some(c.boundary)),
                    Entry::Made(m) => (&m.series, None),
                };
                if let Some(max) = max {
                    let e = newest.entry(Arc::from(series.as_str())).or_insert(max);
                    *e = (*e).max(max);
                }
                replay(entry);
            });
            for range in &scan.damaged {
                repairs.push(set_aside(
                    dir,
                    id,
                    RepairKind::Damaged,
                    range.start,
                    &bytes[range.clone()],
                )?);
            }
            if let Some((kind, from)) = scan.tail {
                repairs.push(set_aside(dir, id, kind, from, &bytes[from..])?);
                cut = Some(from);
            }
            if let Some(len) = cut {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(at(&path))?;
                file.set_len(len as u64).map_err(at(&path))?;
                file.sync_all().map_err(at(&path))?;
            }
            last_len = cut.unwrap_or(bytes.len()) as u64;
            segments.push(Segment { id, path, newest });
        }
        let previous = ids.last().map(|&id| (id, last_len));
        let id = ids.last().map_or(1, |last| last + 1);
        let (file, segment, len) = create_segment(dir, id, previous)?;
        segments.push(segment);
        let wal = Wal {
            dir: dir.to_owned(),
            file,
            len,
            segments,
            poisoned: false,
            sync,
            segment_bytes: rotate_at,
        };
        Ok((wal, repairs))
    }

    /// Starts the next segment, its first record saying where the current one ends.
    fn start_segment(&mut self) -> Result<(), WalError> {
        let current = self.segments.last().map_or(0, |s| s.id);
        let (file, segment, len) =
            create_segment(&self.dir, current + 1, Some((current, self.len)))?;
        self.file = file;
        self.len = len;
        self.segments.push(segment);
        self.poisoned = false;
        Ok(())
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The oldest segment still kept (the current one when it is the only one).
    pub fn oldest_segment(&self) -> Option<u64> {
        self.segments.first().map(|s| s.id)
    }

    /// Takes back an append that began at `at` and was then refused elsewhere (its replicated copy failed):
    /// cut off when it is in the current segment, which otherwise takes no more appends (see `poisoned`).
    pub fn cut_back(&mut self, at: Position) {
        let current = self.segments.last().map_or(0, |s| s.id as u32);
        let cut = if at.segment == current && at.offset <= self.len {
            self.file.set_len(at.offset).map(|()| self.len = at.offset)
        } else {
            Err(io::Error::other("the append is not in the current segment"))
        };
        if let Err(e) = cut {
            tracing::error!(error = %e, "write-ahead log: a refused append could not be cut back; the next append starts a new segment");
            self.poisoned = true;
        }
    }

    fn current_path(&self) -> PathBuf {
        self.segments
            .last()
            .map_or_else(|| self.dir.clone(), |s| s.path.clone())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.log"))
}

/// Creates segment `id`, durable in its folder; when `previous` names the segment before it and its length,
/// the new one begins with a record saying so. Returns the file, its entry and its length.
fn create_segment(
    dir: &Path,
    id: u64,
    previous: Option<(u64, u64)>,
) -> Result<(File, Segment, u64), WalError> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(at(&path))?;
    let mut len = 0;
    if let Some((segment, end)) = previous {
        let mut record = Vec::with_capacity(END_RECORD);
        record.extend_from_slice(&[0u8; FRAME]);
        record.push(KIND_END);
        record.extend_from_slice(&segment.to_le_bytes());
        record.extend_from_slice(&end.to_le_bytes());
        frame(&mut record, 0);
        let written = file
            .write_all_at(&record, 0)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // A segment that does not say where the last one ends must not be taken for one.
            let _ = fs::remove_file(&path);
            return Err(at(&path)(e));
        }
        len = record.len() as u64;
    }
    crate::durable::sync_dir(dir).map_err(at(dir))?;
    let segment = Segment {
        id,
        path,
        newest: HashMap::new(),
    };
    Ok((file, segment, len))
}

/// Keeps bytes of segment `segment` from `offset` aside, durably, for inspection.
fn set_aside(
    dir: &Path,
    segment: u64,
    kind: RepairKind,
    offset: usize,
    bytes: &[u8],
) -> Result<Repair, WalError> {
    let suffix = match kind {
        RepairKind::Damaged => "damaged",
        RepairKind::TornTail => "tail",
        RepairKind::Refused => "refused",
    };
    let aside = format!("{segment:016}.log.{suffix}-{offset}");
    let path = dir.join(&aside);
    crate::durable::write_aside(&path, bytes).map_err(at(&path))?;
    Ok(Repair {
        kind,
        segment,
        offset: offset as u64,
        bytes: bytes.len() as u64,
        aside,
    })
}

/// Fills in the frame (length and CRC-32 of the payload) of the record that begins at `start` of `out`.
fn frame(out: &mut [u8], start: usize) {
    let payload_len = (out.len() - start - FRAME) as u32;
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

impl Log for Wal {
    /// Appends encoded records and makes them durable: one write at the known end and one fsync for all of
    /// them. Returns where the first record begins. On failure the segment is cut back, so no refused record
    /// can come back at replay; if even that fails, the segment takes no more appends (see `poisoned`).
    fn append(&mut self, records: &[u8]) -> Result<Position, WalError> {
        if self.poisoned {
            self.start_segment()?;
        }
        let sync = self.sync;
        let result = self
            .file
            .write_all_at(records, self.len)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                let at = Position {
                    segment: self.segments.last().map_or(0, |s| s.id as u32),
                    offset: self.len,
                };
                self.len += records.len() as u64;
                Ok(at)
            }
            Err(e) => {
                let cut = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data());
                if let Err(cut) = cut {
                    tracing::error!(error = %cut, "write-ahead log: a failed append could not be cut back; the next append starts a new segment");
                    self.poisoned = true;
                }
                Err(WalError {
                    path: self.current_path(),
                    source: e,
                })
            }
        }
    }

    /// Records that the current segment holds events of `series` up to `newest`.
    fn note(&mut self, series: &Arc<str>, newest: Millis) {
        if let Some(seg) = self.segments.last_mut() {
            match seg.newest.get_mut(series) {
                Some(t) => *t = (*t).max(newest),
                None => {
                    seg.newest.insert(series.clone(), newest);
                }
            }
        }
    }

    /// Starts a new segment once the current one is full.
    fn rotate_if_full(&mut self) -> Result<(), WalError> {
        if self.len < self.segment_bytes {
            return Ok(());
        }
        self.start_segment()
    }

    /// Removes every closed segment whose events are all sealed, as told by `sealed(series, newest)`.
    fn collect(&mut self, sealed: &dyn Fn(&str, Millis) -> bool) -> usize {
        let current = self.segments.len().saturating_sub(1);
        let mut removed = 0;
        let mut keep = Vec::with_capacity(self.segments.len());
        for (i, seg) in self.segments.drain(..).enumerate() {
            let done = i < current && seg.newest.iter().all(|(s, &t)| sealed(s, t));
            if done && fs::remove_file(&seg.path).is_ok() {
                removed += 1;
            } else {
                keep.push(seg);
            }
        }
        self.segments = keep;
        removed
    }

    /// A reader of lines from this log's segments.
    fn lines(&self) -> Box<dyn Lines> {
        Box::new(LineReader::new(&self.dir))
    }
}

/// Appends one framed record for `batch` of `series` to `out`.
pub fn encode(series: &str, key: Option<&BatchKey>, batch: &Batch, out: &mut Vec<u8>) {
    let kind = if key.is_some() {
        KIND_KEYED
    } else {
        KIND_EVENTS
    };
    let start = begin(kind, series, out);
    if let Some(k) = key {
        out.push(k.key.len() as u8);
        out.extend_from_slice(k.key.as_bytes());
        out.extend_from_slice(&k.digest.to_le_bytes());
    }
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for (ts, line) in batch.iter() {
        out.extend_from_slice(&ts.to_le_bytes());
        out.extend_from_slice(&(line.len() as u32).to_le_bytes());
        out.extend_from_slice(line);
    }
    frame(out, start);
}

/// Appends one framed record saying that `series`' closing boundary was raised to `boundary` at `at`.
pub fn encode_close(series: &str, boundary: Millis, at: Millis, out: &mut Vec<u8>) {
    let start = begin(KIND_CLOSE, series, out);
    out.extend_from_slice(&boundary.to_le_bytes());
    out.extend_from_slice(&at.to_le_bytes());
    frame(out, start);
}

/// Appends one framed record saying that `series` was made with `width_secs` at `created`.
pub fn encode_made(series: &str, width_secs: u32, created: Millis, out: &mut Vec<u8>) {
    let start = begin(KIND_SERIES, series, out);
    out.extend_from_slice(&width_secs.to_le_bytes());
    out.extend_from_slice(&created.to_le_bytes());
    frame(out, start);
}

/// Begins a record of `kind` about `series` (its frame to be filled in by `frame`): where it starts.
fn begin(kind: u8, series: &str, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME]);
    out.push(kind);
    out.push(series.len() as u8);
    out.extend_from_slice(series.as_bytes());
    start
}

/// The bytes before each line of a batch record: its time and its length. The lines of a batch lie this far
/// apart.
pub const EVENT_HEADER: u64 = 12;

/// Where `encode` put the lines of `batch`, given where its record begins: the one other place that knows the
/// record layout.
pub fn line_refs(at: Position, series: &str, key: Option<&BatchKey>, batch: &Batch) -> Vec<Logged> {
    let key_len = key.map_or(0, |k| 1 + k.key.len() + 8);
    let mut offset = at.offset + (FRAME + 2 + series.len() + key_len + 4) as u64;
    batch
        .iter()
        .map(|(ts, line)| {
            offset += EVENT_HEADER;
            let logged = Logged {
                ts,
                line: LineRef {
                    segment: at.segment,
                    len: line.len() as u32,
                    offset,
                },
            };
            offset += line.len() as u64;
            logged
        })
        .collect()
}

/// What one pass over a segment found besides its intact records.
struct Scan {
    /// Stretches that hold no intact record, with intact records after them.
    damaged: Vec<Range<usize>>,
    /// Where a tail with no intact record begins, and what it is.
    tail: Option<(RepairKind, usize)>,
}

/// One record, decoded.
enum Record {
    Entry(Entry),
    /// The segment before this one ends at `len`.
    End {
        segment: u64,
        len: u64,
    },
}

/// Reads every intact record of `bytes` (segment `segment`) in order, handing each batch to `each`, skipping
/// damaged stretches (see the module's rules).
fn read_records(bytes: &[u8], segment: u64, mut each: impl FnMut(Entry)) -> Scan {
    let mut scan = Scan {
        damaged: Vec::new(),
        tail: None,
    };
    let mut at = 0;
    while at < bytes.len() {
        if let Some((record, next)) = record_at(bytes, at, segment) {
            if let Record::Entry(e) = record {
                each(e);
            }
            at = next;
            continue;
        }
        match resync(bytes, at, segment) {
            Some(next) => {
                scan.damaged.push(at..next);
                at = next;
            }
            None => {
                scan.tail = Some((tail_kind(&bytes[at..]), at));
                break;
            }
        }
    }
    scan
}

/// The record that begins at `at`, if it is whole, checks out and decodes, and where the next one begins.
fn record_at(bytes: &[u8], at: usize, segment: u64) -> Option<(Record, usize)> {
    let frame = bytes.get(at..at + FRAME)?;
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let payload = bytes.get(at + FRAME..(at + FRAME).checked_add(len)?)?;
    // Cheap before the checksum: what every payload begins with.
    if !matches!(
        payload.first(),
        Some(&(KIND_EVENTS | KIND_KEYED | KIND_END | KIND_CLOSE | KIND_SERIES))
    ) {
        return None;
    }
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let payload_at = Position {
        segment: segment as u32,
        offset: (at + FRAME) as u64,
    };
    let record = decode(payload, payload_at)?;
    Some((record, at + FRAME + len))
}

/// Where the next intact record after a bad one at `at` begins: past the bad one by its length frame when that
/// lands on one, otherwise at the first byte from which a record checks out. `None`: nothing intact follows.
fn resync(bytes: &[u8], at: usize, segment: u64) -> Option<usize> {
    if let Some(frame) = bytes.get(at..at + FRAME) {
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let next = at + FRAME + len;
        if next < bytes.len() && record_at(bytes, next, segment).is_some() {
            return Some(next);
        }
    }
    (at + 1..bytes.len().saturating_sub(FRAME)).find(|&p| record_at(bytes, p, segment).is_some())
}

/// What a tail with no intact record is: one whole record (its length frame spans exactly to the end) that is
/// not just zeros is a damaged record; anything else is an unfinished append.
fn tail_kind(tail: &[u8]) -> RepairKind {
    let whole = tail.get(..4).is_some_and(|f| {
        let len = u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize;
        FRAME.checked_add(len) == Some(tail.len())
    });
    if whole && tail.iter().any(|&b| b != 0) {
        RepairKind::Damaged
    } else {
        RepairKind::TornTail
    }
}

/// Decodes a payload that begins at `at` (just past its frame) into its series and line references.
fn decode(p: &[u8], at: Position) -> Option<Record> {
    let mut r = Reader(p);
    let kind = r.take(1)?[0];
    let record = match kind {
        KIND_END => Record::End {
            segment: r.u64()?,
            len: r.u64()?,
        },
        KIND_CLOSE => Record::Entry(Entry::Close(Close {
            series: r.short_str()?.to_string(),
            boundary: r.i64()?,
            at: r.i64()?,
        })),
        KIND_SERIES => Record::Entry(Entry::Made(Made {
            series: r.short_str()?.to_string(),
            width_secs: r.u32()?,
            created: r.i64()?,
        })),
        KIND_EVENTS | KIND_KEYED => return decode_batch(kind, r, p.len(), at),
        _ => return None,
    };
    r.0.is_empty().then_some(record)
}

/// The rest of a batch's payload (`payload_len` bytes in all, beginning at `at`) after its kind.
fn decode_batch(kind: u8, mut r: Reader, payload_len: usize, at: Position) -> Option<Record> {
    let series = r.short_str()?.to_string();
    let key = if kind == KIND_KEYED {
        let key = r.short_str()?.into();
        let digest = r.u64()?;
        Some(BatchKey { key, digest })
    } else {
        None
    };
    let count = r.u32()? as usize;
    let mut events = Vec::with_capacity(count.min(payload_len / 12));
    for _ in 0..count {
        let ts = r.i64()?;
        let len = r.u32()?;
        let offset = at.offset + (payload_len - r.0.len()) as u64;
        r.take(len as usize)?;
        let line = LineRef {
            segment: at.segment,
            len,
            offset,
        };
        events.push(Logged { ts, line });
    }
    r.0.is_empty()
        .then_some(Record::Entry(Entry::Batch(Replayed {
            series,
            key,
            events,
        })))
}

/// Reads lines back from log segments by their references, coalescing neighbours into one `pread`.
/// Files stay open for the reader's life, so a segment removed meanwhile can still be read through it.
pub struct LineReader {
    dir: PathBuf,
    files: HashMap<u32, File>,
    buf: Vec<u8>,
}

impl LineReader {
    /// Lines closer than this are read in one call, gap included.
    const GAP: u64 = 4096;

    pub fn new(dir: &Path) -> LineReader {
        LineReader {
            dir: dir.to_owned(),
            files: HashMap::new(),
            buf: Vec::new(),
        }
    }
}

impl Lines for LineReader {
    /// Another reader of the same log, with its own open files: one per thread.
    fn fresh(&self) -> Box<dyn Lines> {
        Box::new(LineReader::new(&self.dir))
    }

    /// Appends the lines of `refs` to `out` in the order given, each followed by `\n`.
    fn read_lines(&mut self, refs: &[LineRef], out: &mut Vec<u8>) -> io::Result<()> {
        let mut order: Vec<usize> = (0..refs.len()).collect();
        order.sort_unstable_by_key(|&i| (refs[i].segment, refs[i].offset));
        // Where each line landed in `buf`.
        let mut at = vec![0usize; refs.len()];
        self.buf.clear();
        let mut i = 0;
        while i < order.len() {
            let first = refs[order[i]];
            let mut end = first.offset + u64::from(first.len);
            let mut j = i + 1;
            while j < order.len() {
                let r = refs[order[j]];
                if r.segment != first.segment || r.offset > end + Self::GAP {
                    break;
                }
                end = end.max(r.offset + u64::from(r.len));
                j += 1;
            }
            let base = self.buf.len();
            self.buf.resize(base + (end - first.offset) as usize, 0);
            let file = match self.files.entry(first.segment) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let path = segment_path(&self.dir, u64::from(first.segment));
                    e.insert(File::open(&path)?)
                }
            };
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut self.buf[base..], first.offset)?;
            for &k in &order[i..j] {
                at[k] = base + (refs[k].offset - first.offset) as usize;
            }
            i = j;
        }
        out.reserve(refs.iter().map(|r| r.len as usize + 1).sum());
        for (k, r) in refs.iter().enumerate() {
            out.extend_from_slice(&self.buf[at[k]..at[k] + r.len as usize]);
            out.push(b'\n');
        }
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    /// A string of at most 255 bytes after its length byte (a series name, a key).
    fn short_str(&mut self) -> Option<&'a str> {
        let len = usize::from(self.take(1)?[0]);
        std::str::from_utf8(self.take(len)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(events: &[(Millis, &str)]) -> Batch {
        let mut b = Batch::default();
        for (ts, line) in events {
            b.push(*ts, line.as_bytes());
        }
        b
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hourglass-wal-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Six records of series `s`, one event each, tagged 0..6.
    fn six_records() -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 0..6 {
            starts.push(bytes.len());
            let line = format!("{{\"ts\":{i},\"pad\":\"{}\"}}", "x".repeat(40 + i));
            encode("s", None, &batch(&[(i as Millis, &line)]), &mut bytes);
        }
        (bytes, starts)
    }

    fn replayed(bytes: &[u8]) -> (Vec<Millis>, Scan) {
        let mut seen = Vec::new();
        let scan = read_records(bytes, 7, |e| {
            if let Entry::Batch(r) = e {
                seen.push(r.events[0].ts)
            }
        });
        (seen, scan)
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_not_read() {
        let a = batch(&[(1, "{\"a\":1}"), (2, "{\"a\":2}")]);
        let b = batch(&[(3, "{\"b\":3}")]);
        let key = BatchKey {
            key: "retry-7".into(),
            digest: 0x0123_4567_89ab_cdef,
        };
        let mut bytes = Vec::new();
        encode("alpha", None, &a, &mut bytes);
        let first_len = bytes.len();
        encode("beta", Some(&key), &b, &mut bytes);
        let before_close = bytes.len();
        encode_close("beta", 7_000, 9_000, &mut bytes);
        encode_made("beta", 10, 5_000, &mut bytes);
        let mut seen = Vec::new();
        let mut closes = Vec::new();
        let mut made = Vec::new();
        let scan = read_records(&bytes, 7, |e| match e {
            Entry::Batch(r) => seen.push(r),
            Entry::Close(c) => closes.push(c),
            Entry::Made(m) => made.push(m),
        });
        let beta = Made {
            series: "beta".into(),
            width_secs: 10,
            created: 5_000,
        };
        assert_eq!(made, [beta]);
        assert!(scan.damaged.is_empty() && scan.tail.is_none());
        let close = Close {
            series: "beta".into(),
            boundary: 7_000,
            at: 9_000,
        };
        assert_eq!(closes, [close]);
        let bytes = &bytes[..before_close];
        assert_eq!(
            (seen[0].series.as_str(), seen[1].series.as_str()),
            ("alpha", "beta")
        );
        // The references found at replay are the ones worked out at append, and point at the lines.
        let at = |offset| Position { segment: 7, offset };
        assert_eq!(seen[0].events, line_refs(at(0), "alpha", None, &a));
        assert_eq!(
            seen[1].events,
            line_refs(at(first_len as u64), "beta", Some(&key), &b)
        );
        assert_eq!(
            (seen[0].key.as_ref(), seen[1].key.as_ref()),
            (None, Some(&key))
        );
        for (logged, (ts, line)) in seen[0].events.iter().zip(a.iter()) {
            let r = logged.line;
            assert_eq!(logged.ts, ts);
            assert_eq!(&bytes[r.offset as usize..][..r.len as usize], line);
        }
        // Cut anywhere inside the second record: the first is read, the rest is a torn tail.
        for cut in first_len + 1..bytes.len() {
            let mut seen = 0;
            let scan = read_records(&bytes[..cut], 7, |_| seen += 1);
            assert_eq!(seen, 1);
            assert_eq!(
                scan.tail,
                Some((RepairKind::TornTail, first_len)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_damaged_record_is_skipped_and_every_intact_one_after_it_is_kept() {
        let (bytes, starts) = six_records();
        // Every single flipped bit, anywhere: every record but the one holding it comes back.
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut bad = bytes.clone();
                bad[at] ^= bit;
                let (seen, scan) = replayed(&bad);
                let hit = starts.iter().rposition(|&s| s <= at).unwrap_or(0) as Millis;
                let want: Vec<Millis> = (0..6).filter(|&i| i != hit).collect();
                assert_eq!(seen, want, "flip {bit:#x} at {at}");
                if hit < 5 {
                    assert_eq!(scan.damaged.len(), 1, "flip at {at}");
                    assert_eq!(scan.damaged[0].start, starts[hit as usize]);
                    assert!(scan.tail.is_none());
                } else {
                    assert!(scan.damaged.is_empty());
                    assert_eq!(scan.tail.map(|t| t.1), Some(starts[5]));
                }
            }
        }
        // A whole last record whose checksum fails is damage, an unfinished one a torn tail.
        let mut bad = bytes.clone();
        let last = bytes.len() - 3;
        bad[last] ^= 1;
        assert_eq!(
            replayed(&bad).1.tail,
            Some((RepairKind::Damaged, starts[5]))
        );
        assert_eq!(
            replayed(&bytes[..bytes.len() - 1]).1.tail,
            Some((RepairKind::TornTail, starts[5]))
        );
        // Garbage in place of the lengths: the records after it are found by their checksums.
        let mut bad = bytes.clone();
        bad[starts[2]..starts[2] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        bad[starts[3]..starts[3] + 4].copy_from_slice(&7u32.to_le_bytes());
        let (seen, scan) = replayed(&bad);
        assert_eq!(seen, [0, 1, 4, 5]);
        assert_eq!(scan.damaged, vec![starts[2]..starts[4]]);
    }

    #[test]
    fn replay_keeps_what_it_cuts_and_collect_keeps_the_current_segment() {
        let dir = temp_dir("replay");
        let (mut wal, repairs) = Wal::open(&dir, |_| panic!("empty log")).unwrap();
        assert!(repairs.is_empty());
        let mut rec = Vec::new();
        let b = batch(&[(5, "{}"), (4, "{\"x\":1}"), (6, "[]")]);
        encode("s", None, &b, &mut rec);
        let at = wal.append(&rec).unwrap();
        wal.note(&Arc::from("s"), 6);
        // Lines come back in whatever order they are asked for.
        let refs: Vec<LineRef> = line_refs(at, "s", None, &b)
            .iter()
            .rev()
            .map(|l| l.line)
            .collect();
        let mut out = Vec::new();
        wal.lines().read_lines(&refs, &mut out).unwrap();
        assert_eq!(out, b"[]\n{\"x\":1}\n{}\n");
        drop(wal);
        // A torn second record.
        let seg = segment_path(&dir, 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, &rec[..rec.len() - 1]).unwrap();

        let mut n = 0;
        let (mut wal, repairs) = Wal::open(&dir, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        assert_eq!(repairs.len(), 1, "{repairs:?}");
        assert_eq!(repairs[0].kind, RepairKind::TornTail);
        assert_eq!(fs::metadata(&seg).unwrap().len(), rec.len() as u64);
        let aside = fs::read(dir.join(&repairs[0].aside)).unwrap();
        assert_eq!(aside, rec[..rec.len() - 1]);
        assert_eq!(wal.segments(), 2);
        assert_eq!(wal.collect(&|_, t| t < 6), 0);
        assert_eq!(wal.collect(&|_, t| t < 7), 1);
        assert_eq!(wal.segments(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bytes_past_where_the_next_segment_says_a_segment_ends_are_never_replayed() {
        let dir = temp_dir("refused");
        let (mut wal, _) = Wal::open(&dir, |_| {}).unwrap();
        let (records, starts) = six_records();
        wal.append(&records[..starts[3]]).unwrap();
        // An append that failed and could not be cut back leaves whole, checksummed records past the end.
        let seg = segment_path(&dir, 1);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .write_all_at(&records[starts[3]..], starts[3] as u64)
            .unwrap();
        wal.poisoned = true;
        wal.append(&records[starts[4]..starts[5]]).unwrap();
        assert_eq!(
            wal.segments(),
            2,
            "a poisoned segment takes no more appends"
        );
        drop(wal);
        let mut seen = Vec::new();
        let (_, repairs) = Wal::open(&dir, |e| {
            if let Entry::Batch(r) = e {
                seen.push(r.events[0].ts)
            }
        })
        .unwrap();
        assert_eq!(seen, [0, 1, 2, 4]);
        assert_eq!(repairs.len(), 1, "{repairs:?}");
        assert_eq!(
            (repairs[0].kind, repairs[0].offset),
            (RepairKind::Refused, starts[3] as u64)
        );
        assert_eq!(fs::metadata(&seg).unwrap().len(), starts[3] as u64);
        fs::remove_dir_all(&dir).unwrap();
    }
}
