//! What a series keeps in memory of its history: one `HourSummary` (under a hundred bytes) per hour that holds
//! events, enough for series info and for links that cross hours, without the hour's index. The summaries of
//! the hours before the newest are kept in `{series}/hours.idx`, so that a start reads that file and the newest
//! hour's index, not every sidecar.
//!
//! Layout of `hours.idx`: the magic `HGHRS1\n\0`, then one 88-byte record per hour, in hour order: hour start
//! (i64), events (u64), member bytes (u64), chunks (u32), the first and the last chunk (start i64, parts u32,
//! sealed at i64), the first and the last event time (i64), CRC-32 of the 84 bytes before it; all little-endian.
//! Like a sidecar it is a cache of what the archives say: records are appended when an hour is complete, the
//! file is rewritten when hours change (retention, import, repair), and what it lacks or gets wrong is rebuilt
//! from the hours' own indexes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::ChunkSummary;
use super::index::HourIndex;
use crate::time::{ChunkStart, Hour, Millis};

const MAGIC: &[u8; 8] = b"HGHRS1\n\0";
const RECORD_LEN: usize = 88;

/// One hour that holds events, as memory keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HourSummary {
    pub events: u64,
    /// Bytes of its members: the archive's length.
    pub bytes: u64,
    pub chunks: u32,
    /// Its oldest and newest chunk, for links that reach into it from another hour.
    pub first: ChunkSummary,
    pub last: ChunkSummary,
    pub first_ts: Millis,
    pub last_ts: Millis,
}

impl HourSummary {
    /// The summary of an hour's index; `None` when it holds no whole chunk.
    pub fn of(index: &HourIndex) -> Option<HourSummary> {
        let last = index.entries.iter().rev().find(|e| e.meta.last_part)?;
        let first_start = index.entries.first()?.meta.chunk_start;
        let first = index
            .chunk(first_start)
            .last()
            .filter(|e| e.meta.last_part)?;
        let mut s = HourSummary {
            events: 0,
            bytes: 0,
            chunks: 0,
            first: super::summarize(first),
            last: super::summarize(last),
            first_ts: Millis::MAX,
            last_ts: Millis::MIN,
        };
        for e in &index.entries {
            s.events += u64::from(e.meta.entries);
            s.bytes += e.meta.member_len;
            s.chunks += u32::from(e.meta.last_part);
            s.first_ts = s.first_ts.min(e.meta.first_ts);
            s.last_ts = s.last_ts.max(e.meta.last_ts);
        }
        Some(s)
    }

    fn record(&self, hour: Hour) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            r[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&hour.start().to_le_bytes());
        put(&self.events.to_le_bytes());
        put(&self.bytes.to_le_bytes());
        put(&self.chunks.to_le_bytes());
        for c in [self.first, self.last] {
            put(&c.start.millis().to_le_bytes());
            put(&c.parts.to_le_bytes());
            put(&c.sealed_at.to_le_bytes());
        }
        put(&self.first_ts.to_le_bytes());
        put(&self.last_ts.to_le_bytes());
        let crc = crc32fast::hash(&r[..RECORD_LEN - 4]);
        r[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        r
    }

    fn from_record(r: &[u8]) -> Option<(Hour, HourSummary)> {
        if r.len() != RECORD_LEN {
            return None;
        }
        let crc = u32::from_le_bytes(r[RECORD_LEN - 4..].try_into().ok()?);
        if crc != crc32fast::hash(&r[..RECORD_LEN - 4]) {
            return None;
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let b = &r[at..at + n];
            at += n;
            b
        };
        let i64_of = |b: &[u8]| i64::from_le_bytes(b.try_into().unwrap_or_default());
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
        let start = i64_of(take(8));
        let (events, bytes, chunks) = (u64_of(take(8)), u64_of(take(8)), u32_of(take(4)));
        let mut chunk = || ChunkSummary {
            start: ChunkStart::from_stored(i64_of(take(8))),
            parts: u32_of(take(4)),
            sealed_at: i64_of(take(8)),
        };
        let (first, last) = (chunk(), chunk());
        let (first_ts, last_ts) = (i64_of(take(8)), i64_of(take(8)));
        let hour = Hour::of(start);
        let consistent = hour.start() == start
            && first.start.hour() == hour
            && last.start.hour() == hour
            && first.start <= last.start
            && chunks > 0;
        consistent.then_some((
            hour,
            HourSummary {
                events,
                bytes,
                chunks,
                first,
                last,
                first_ts,
                last_ts,
            },
        ))
    }
}

/// The summaries in `path`, as far as they are whole and in order; nothing when it is missing or foreign.
pub fn read(path: &Path) -> io::Result<BTreeMap<Hour, HourSummary>> {
    match fs::read(path) {
        Ok(b) => Ok(decode(&b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// The summaries in a file's bytes (or an object's), as far as they are whole and in order.
pub fn decode(bytes: &[u8]) -> BTreeMap<Hour, HourSummary> {
    let mut hours = BTreeMap::new();
    if bytes.get(..MAGIC.len()) != Some(MAGIC) {
        return hours;
    }
    for r in bytes[MAGIC.len()..].chunks(RECORD_LEN) {
        match HourSummary::from_record(r) {
            Some((hour, s)) if hours.last_key_value().is_none_or(|(h, _)| *h < hour) => {
                hours.insert(hour, s);
            }
            _ => break,
        }
    }
    hours
}

/// The file's bytes for `hours`.
pub fn encode<'a>(hours: impl IntoIterator<Item = (&'a Hour, &'a HourSummary)>) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    for (hour, s) in hours {
        bytes.extend_from_slice(&s.record(*hour));
    }
    bytes
}

/// Writes the whole file, atomically (a temporary file, then a rename).
pub fn write(path: &Path, hours: &BTreeMap<Hour, HourSummary>) -> io::Result<()> {
    let bytes = encode(hours);
    let tmp = path.with_extension("idx.tmp");
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_data()))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Appends the record of an hour that just became complete. Not fsync'd: a record lost in a crash is rebuilt
/// from the hour's own index at the next start.
pub fn append(path: &Path, hour: Hour, summary: &HourSummary) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut bytes = Vec::with_capacity(MAGIC.len() + RECORD_LEN);
    if len == 0 {
        bytes.extend_from_slice(MAGIC);
    }
    bytes.extend_from_slice(&summary.record(hour));
    f.write_all(&bytes).inspect_err(|_| {
        // A torn record would hide every later one: keep whole records only.
        let _ = f.set_len(len);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::index::IndexEntry;
    use crate::archive::member::MemberMeta;

    fn entry(offset: u64, start: i64, part: u32, last: bool, len: u64) -> IndexEntry {
        IndexEntry {
            offset,
            meta: MemberMeta {
                chunk_start: ChunkStart::from_stored(start),
                width_secs: 10,
                part,
                last_part: last,
                entries: 3,
                sealed_at: start + 40_000 + i64::from(part),
                first_ts: start + 1,
                last_ts: start + 9_000,
                raw_len: 10,
                member_len: len,
            },
            data_crc: None,
        }
    }

    #[test]
    fn summaries_round_trip_and_a_bad_record_ends_the_file() {
        let h0 = Hour::of(1_411_948_800_000);
        let t = h0.start();
        let mut index = HourIndex::new(h0);
        index.entries = vec![
            entry(0, t, 0, false, 100),
            entry(100, t, 1, true, 90),
            entry(190, t + 20_000, 0, true, 80),
        ];
        let s = HourSummary::of(&index).unwrap();
        assert_eq!((s.events, s.bytes, s.chunks), (9, 270, 2));
        assert_eq!(
            (s.first.start.millis(), s.first.parts, s.first.sealed_at),
            (t, 2, t + 40_001)
        );
        assert_eq!((s.last.start.millis(), s.last.parts), (t + 20_000, 1));
        assert_eq!((s.first_ts, s.last_ts), (t + 1, t + 29_000));
        assert_eq!(HourSummary::of(&HourIndex::new(h0)), None);

        let dir = std::env::temp_dir().join(format!("hourglass-hours-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hours.idx");
        let h1 = Hour::of(t + 3_600_000);
        let mut later = index.clone();
        later.hour = h1;
        for e in &mut later.entries {
            e.meta.chunk_start = ChunkStart::from_stored(e.meta.chunk_start.millis() + 3_600_000);
        }
        let s1 = HourSummary::of(&later).unwrap();
        append(&path, h0, &s).unwrap();
        append(&path, h1, &s1).unwrap();
        let read_back = read(&path).unwrap();
        assert_eq!(
            read_back.into_iter().collect::<Vec<_>>(),
            vec![(h0, s), (h1, s1)]
        );
        // A flipped byte ends the file there; a record out of order too.
        let mut bytes = fs::read(&path).unwrap();
        bytes[MAGIC.len() + RECORD_LEN + 5] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
        let mut swapped = BTreeMap::new();
        swapped.insert(h0, s);
        write(&path, &swapped).unwrap();
        append(&path, h0, &s).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
