//! The write-ahead log: every accepted batch is appended here and fsync'd before it is acknowledged, and
//! replayed at start for whatever is not sealed yet.
//!
//! Segments are files `{data}/_wal/{n:016}.log`, appended by one writer, rotated at `SEGMENT_BYTES`, and
//! removed once every event in them lies below its series' sealed watermark. A record is
//! `len(u32 LE) crc32(u32 LE) payload`; a payload is one batch of one series:
//! `kind=1(u8) series_len(u8) series count(u32)` then per event `ts(i64) len(u32) line`; a batch sent with an
//! `Idempotency-Key` is `kind=2(u8) series_len(u8) series key_len(u8) key digest(u64) count(u32)` then the same.
//! Replay stops at the first record that is short or fails its CRC: that is the torn tail of a crash, never
//! acknowledged (the ack waits for the fsync that covers the whole record), and it is cut off.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::parse::Batch;
use crate::time::Millis;

const SEGMENT_BYTES: u64 = 64 << 20;
const KIND_EVENTS: u8 = 1;
const KIND_KEYED: u8 = 2;
const FRAME: usize = 8;

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
    len: u64,
    /// Every segment still on disk, oldest first; the last one is the one being appended.
    segments: Vec<Segment>,
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

/// A replayed record: one batch of one series.
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
#[error("write-ahead log _wal/{}: {source}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())]
pub struct WalError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError {
        path: path.to_owned(),
        source,
    }
}

impl Wal {
    /// Opens the log folder, hands every intact record to `replay` in write order, cuts torn tails, and starts
    /// a fresh segment for new appends. Returns the log and notes on what was repaired.
    pub fn open(
        dir: &Path,
        mut replay: impl FnMut(Replayed),
    ) -> Result<(Wal, Vec<String>), WalError> {
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
        let mut notes = Vec::new();
        let mut segments = Vec::with_capacity(ids.len() + 1);
        for &id in &ids {
            let path = segment_path(dir, id);
            let bytes = fs::read(&path).map_err(at(&path))?;
            let mut newest: HashMap<Arc<str>, Millis> = HashMap::new();
            let good = read_records(&bytes, id, |r| {
                if let Some(max) = r.events.iter().map(|e| e.ts).max() {
                    let e = newest.entry(Arc::from(r.series.as_str())).or_insert(max);
                    *e = (*e).max(max);
                }
                replay(r);
            });
            if good < bytes.len() {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(at(&path))?;
                file.set_len(good as u64).map_err(at(&path))?;
                file.sync_all().map_err(at(&path))?;
                let what = if Some(&id) == ids.last() {
                    "cut a torn tail"
                } else {
                    "cut damaged records (not the last segment: events after them are lost)"
                };
                notes.push(format!(
                    "{}: {what} of {} bytes at offset {good}",
                    path.display(),
                    bytes.len() - good
                ));
            }
            segments.push(Segment { id, path, newest });
        }
        let id = ids.last().map_or(1, |last| last + 1);
        let (file, segment) = create_segment(dir, id)?;
        segments.push(segment);
        let wal = Wal {
            dir: dir.to_owned(),
            file,
            len: 0,
            segments,
        };
        Ok((wal, notes))
    }

    /// Appends encoded records and makes them durable: one write and one fsync for all of them. Returns where
    /// the first record begins. On failure the segment is cut back, so no refused record can come back at replay.
    pub fn append(&mut self, records: &[u8]) -> Result<Position, WalError> {
        let result = self
            .file
            .write_all(records)
            .and_then(|()| self.file.sync_data());
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
                let _ = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data());
                Err(WalError {
                    path: self.current_path(),
                    source: e,
                })
            }
        }
    }

    /// Records that the current segment holds events of `series` up to `newest`.
    pub fn note(&mut self, series: &Arc<str>, newest: Millis) {
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
    pub fn rotate_if_full(&mut self) -> Result<(), WalError> {
        if self.len < SEGMENT_BYTES {
            return Ok(());
        }
        let id = self.segments.last().map_or(1, |s| s.id + 1);
        let (file, segment) = create_segment(&self.dir, id)?;
        self.file = file;
        self.len = 0;
        self.segments.push(segment);
        Ok(())
    }

    /// Removes every closed segment whose events are all sealed, as told by `sealed(series, newest)`.
    pub fn collect(&mut self, sealed: impl Fn(&str, Millis) -> bool) -> usize {
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

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// A reader of lines from this log's segments.
    pub fn reader(&self) -> LineReader {
        LineReader::new(&self.dir)
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

fn create_segment(dir: &Path, id: u64) -> Result<(File, Segment), WalError> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(at(&path))?;
    crate::durable::sync_dir(dir).map_err(at(dir))?;
    let segment = Segment {
        id,
        path,
        newest: HashMap::new(),
    };
    Ok((file, segment))
}

/// Appends one framed record for `batch` of `series` to `out`.
pub fn encode(series: &str, key: Option<&BatchKey>, batch: &Batch, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME]);
    out.push(if key.is_some() {
        KIND_KEYED
    } else {
        KIND_EVENTS
    });
    out.push(series.len() as u8);
    out.extend_from_slice(series.as_bytes());
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
    let payload_len = (out.len() - start - FRAME) as u32;
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Where `encode` put the lines of `batch`, given where its record begins: the one other place that knows the
/// record layout.
pub fn line_refs(at: Position, series: &str, key: Option<&BatchKey>, batch: &Batch) -> Vec<Logged> {
    let key_len = key.map_or(0, |k| 1 + k.key.len() + 8);
    let mut offset = at.offset + (FRAME + 2 + series.len() + key_len + 4) as u64;
    batch
        .iter()
        .map(|(ts, line)| {
            offset += 12;
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

/// Reads records from the start of `bytes` (segment `segment`), handing each to `each`; returns the length of
/// the intact prefix.
fn read_records(bytes: &[u8], segment: u64, mut each: impl FnMut(Replayed)) -> usize {
    let mut at = 0;
    while let Some(frame) = bytes.get(at..at + FRAME) {
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let Some(payload) = bytes.get(at + FRAME..at + FRAME + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let payload_at = Position {
            segment: segment as u32,
            offset: (at + FRAME) as u64,
        };
        let Some(record) = decode(payload, payload_at) else {
            break;
        };
        each(record);
        at += FRAME + len;
    }
    at
}

/// Decodes a payload that begins at `at` (just past its frame) into its series and line references.
fn decode(p: &[u8], at: Position) -> Option<Replayed> {
    let mut r = Reader(p);
    let kind = r.take(1)?[0];
    if kind != KIND_EVENTS && kind != KIND_KEYED {
        return None;
    }
    let name_len = usize::from(r.take(1)?[0]);
    let series = std::str::from_utf8(r.take(name_len)?).ok()?.to_string();
    let key = if kind == KIND_KEYED {
        let key_len = usize::from(r.take(1)?[0]);
        let key = std::str::from_utf8(r.take(key_len)?).ok()?.into();
        let digest = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        Some(BatchKey { key, digest })
    } else {
        None
    };
    let count = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
    let mut events = Vec::with_capacity(count.min(p.len() / 12));
    for _ in 0..count {
        let ts = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let len = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let offset = at.offset + (p.len() - r.0.len()) as u64;
        r.take(len as usize)?;
        let line = LineRef {
            segment: at.segment,
            len,
            offset,
        };
        events.push(Logged { ts, line });
    }
    r.0.is_empty().then_some(Replayed {
        series,
        key,
        events,
    })
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

    /// Another reader of the same log, with its own open files: one per thread.
    pub fn fresh(&self) -> LineReader {
        LineReader::new(&self.dir)
    }

    pub fn new(dir: &Path) -> LineReader {
        LineReader {
            dir: dir.to_owned(),
            files: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Appends the lines of `refs` to `out` in the order given, each followed by `\n`.
    pub fn read_lines(&mut self, refs: &[LineRef], out: &mut Vec<u8>) -> io::Result<()> {
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
        let mut seen = Vec::new();
        assert_eq!(read_records(&bytes, 7, |r| seen.push(r)), bytes.len());
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

        for cut in first_len..bytes.len() {
            let mut seen = 0;
            assert_eq!(read_records(&bytes[..cut], 7, |_| seen += 1), first_len);
            assert_eq!(seen, 1);
        }
        let mut flipped = bytes.clone();
        flipped[first_len + 12] ^= 1;
        assert_eq!(read_records(&flipped, 7, |_| {}), first_len);
    }

    #[test]
    fn replay_cuts_the_tail_and_collect_keeps_the_current_segment() {
        let dir = std::env::temp_dir().join(format!("hourglass-wal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (mut wal, notes) = Wal::open(&dir, |_| panic!("empty log")).unwrap();
        assert!(notes.is_empty());
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
        wal.reader().read_lines(&refs, &mut out).unwrap();
        assert_eq!(out, b"[]\n{\"x\":1}\n{}\n");
        drop(wal);
        // A torn second record.
        let seg = segment_path(&dir, 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&rec[..rec.len() - 1]).unwrap();

        let mut n = 0;
        let (mut wal, notes) = Wal::open(&dir, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(fs::metadata(&seg).unwrap().len(), rec.len() as u64);
        assert_eq!(wal.segments(), 2);
        assert_eq!(wal.collect(|_, t| t < 6), 0);
        assert_eq!(wal.collect(|_, t| t < 7), 1);
        assert_eq!(wal.segments(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
