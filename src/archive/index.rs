//! The index of one hour archive: where each member starts and what it holds. It lives in memory and in a
//! sidecar file (`{YYYYMMDDHH}.idx`) that is only a cache of what the archive's own headers say: it is
//! checked against the archive on load, and rebuilt from the archive whenever it is missing, short or wrong.
//!
//! Sidecar layout: the magic `HGIDX2\n\0`, then one 79-byte record per member: offset (u64 LE), the member's
//! 62-byte metadata (as in its FEXTRA subfield), the CRC-32 of the member's bytes after its header (u32 LE) and
//! whether that is known (u8), CRC-32 of those 75 bytes. The data CRC lets a member be sent as it is after a
//! check that costs a CRC over its compressed bytes instead of inflating it; it is known for every member sealed,
//! imported or scanned (inflated and checked) since, not for those of an older `HGIDX1` sidecar (74-byte records
//! without it), which is read and rewritten in this layout.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::member::{self, HEADER_LEN, MemberMeta};
use crate::time::{ChunkStart, Hour, Millis};

const MAGIC: &[u8; 8] = b"HGIDX2\n\0";
const MAGIC_V1: &[u8; 8] = b"HGIDX1\n\0";
const RECORD_LEN: usize = 8 + MemberMeta::BYTES + 4 + 1 + 4;
const RECORD_LEN_V1: usize = 8 + MemberMeta::BYTES + 4;

/// One member's place in its archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub meta: MemberMeta,
    /// The CRC-32 of the member's bytes after its 80-byte header, taken when they were known good (written, or
    /// inflated and checked); `None` for members indexed by an older sidecar.
    pub data_crc: Option<u32>,
}

impl IndexEntry {
    pub fn end(&self) -> u64 {
        self.offset + self.meta.member_len
    }

    /// The entry of a member whose bytes are known good.
    pub fn of(offset: u64, meta: MemberMeta, bytes: &[u8]) -> IndexEntry {
        IndexEntry {
            offset,
            meta,
            data_crc: bytes.get(HEADER_LEN..).map(crc32fast::hash),
        }
    }
}

/// The members of one hour archive, in file order, which is time order.
#[derive(Clone, Debug)]
pub struct HourIndex {
    pub hour: Hour,
    pub entries: Vec<IndexEntry>,
}

impl HourIndex {
    pub fn new(hour: Hour) -> HourIndex {
        HourIndex {
            hour,
            entries: Vec::new(),
        }
    }

    /// The archive length that the index accounts for.
    pub fn end(&self) -> u64 {
        self.entries.last().map_or(0, IndexEntry::end)
    }

    /// The members of one chunk (several when it was split into parts); empty when the chunk is not here.
    pub fn chunk(&self, start: ChunkStart) -> &[IndexEntry] {
        let lo = self.entries.partition_point(|e| e.meta.chunk_start < start);
        let hi = self
            .entries
            .partition_point(|e| e.meta.chunk_start <= start);
        &self.entries[lo..hi]
    }

    pub fn events(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.meta.entries)).sum()
    }

    /// Whether `next` may follow the entries so far: contiguous, in time order, parts numbered from 0, and a
    /// new chunk only after the previous one's last part.
    fn accepts(&self, next: &IndexEntry) -> bool {
        match self.entries.last() {
            None => next.offset == 0 && next.meta.part == 0,
            Some(prev) => {
                next.offset == prev.end()
                    && if prev.meta.last_part {
                        next.meta.part == 0 && next.meta.chunk_start > prev.meta.chunk_start
                    } else {
                        next.meta.part == prev.meta.part + 1
                            && next.meta.chunk_start == prev.meta.chunk_start
                    }
            }
        }
    }

    fn push_checked(&mut self, entry: IndexEntry) -> bool {
        let ok = entry.meta.chunk_start.hour() == self.hour && self.accepts(&entry);
        if ok {
            self.entries.push(entry);
        }
        ok
    }

    /// Drops members at the end that belong to a chunk whose last part is missing.
    pub fn drop_incomplete_tail(&mut self) {
        while self.entries.last().is_some_and(|e| !e.meta.last_part) {
            self.entries.pop();
        }
    }
}

pub fn record(entry: &IndexEntry) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    let m = 8 + MemberMeta::BYTES;
    r[..8].copy_from_slice(&entry.offset.to_le_bytes());
    r[8..m].copy_from_slice(&entry.meta.to_bytes());
    r[m..m + 4].copy_from_slice(&entry.data_crc.unwrap_or(0).to_le_bytes());
    r[m + 4] = u8::from(entry.data_crc.is_some());
    let crc = crc32fast::hash(&r[..RECORD_LEN - 4]);
    r[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    r
}

/// A sidecar as read: the valid, consistent prefix of its records.
pub struct Sidecar {
    pub index: HourIndex,
    /// The file held anything beyond that prefix (or was missing), so it should be rewritten.
    pub stale: bool,
    /// Records past the prefix that are whole and checksummed, but name members beyond the archive's end:
    /// members that were durable once (the sidecar is appended after them) and are gone now.
    pub beyond: usize,
}

/// Reads the valid, consistent prefix of a sidecar; a missing or foreign file gives an empty index.
pub fn read_sidecar(path: &Path, hour: Hour, archive_len: u64) -> io::Result<Sidecar> {
    match fs::read(path) {
        Ok(bytes) => Ok(decode(&bytes, hour, archive_len)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Sidecar {
            index: HourIndex::new(hour),
            stale: true,
            beyond: 0,
        }),
        Err(e) => Err(e),
    }
}

/// The valid, consistent prefix of a sidecar's bytes (a file's, or an index object's).
pub fn decode(bytes: &[u8], hour: Hour, archive_len: u64) -> Sidecar {
    let mut index = HourIndex::new(hour);
    let record_len = match bytes.get(..MAGIC.len()) {
        Some(m) if m == MAGIC => RECORD_LEN,
        Some(m) if m == MAGIC_V1 => RECORD_LEN_V1,
        _ => {
            return Sidecar {
                index,
                stale: true,
                beyond: 0,
            };
        }
    };
    let records = bytes[MAGIC.len()..].chunks(record_len);
    // An older layout is read, then rewritten in this one.
    let total = if record_len == RECORD_LEN {
        records.len()
    } else {
        usize::MAX
    };
    let mut beyond = 0;
    for r in records {
        let Some(entry) = entry_of(r, record_len) else {
            break;
        };
        if entry.end() > archive_len && (index.accepts(&entry) || beyond > 0) {
            beyond += 1;
            continue;
        }
        if beyond > 0 || !index.push_checked(entry) {
            break;
        }
    }
    let stale = index.entries.len() != total;
    Sidecar {
        index,
        stale,
        beyond,
    }
}

/// One sidecar record of `len` bytes (this layout's or the older one's), if it is whole and its checksum and
/// metadata are right.
fn entry_of(r: &[u8], len: usize) -> Option<IndexEntry> {
    if r.len() != len {
        return None;
    }
    let crc = u32::from_le_bytes(r[len - 4..].try_into().ok()?);
    if crc != crc32fast::hash(&r[..len - 4]) {
        return None;
    }
    let m = 8 + MemberMeta::BYTES;
    let meta = MemberMeta::from_bytes(&r[8..m]).ok()?;
    let offset = u64::from_le_bytes(r[..8].try_into().ok()?);
    let data_crc = (len == RECORD_LEN && r[m + 4] == 1)
        .then(|| r[m..m + 4].try_into().ok().map(u32::from_le_bytes))
        .flatten();
    Some(IndexEntry {
        offset,
        meta,
        data_crc,
    })
}

/// A sidecar's bytes for `index`.
pub fn encode(index: &HourIndex) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MAGIC.len() + index.entries.len() * RECORD_LEN);
    bytes.extend_from_slice(MAGIC);
    for e in &index.entries {
        bytes.extend_from_slice(&record(e));
    }
    bytes
}

/// Writes a whole sidecar atomically (temporary file, then rename).
pub fn write_sidecar(path: &Path, index: &HourIndex) -> io::Result<()> {
    let bytes = encode(index);
    let tmp = path.with_extension("idx.tmp");
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_data()))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Appends records for new members to a sidecar (creating it with its magic when absent). Not fsync'd: a
/// sidecar that lags its archive is completed from the archive on the next load.
pub fn append_sidecar(path: &Path, entries: &[IndexEntry]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut len = f.metadata()?.len();
    let mut magic = [0u8; 8];
    if len > 0 && (f.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC) {
        // Another layout: start it again; what it named is found again in the archive at the next open.
        f.set_len(0)?;
        len = 0;
    }
    let mut bytes = Vec::with_capacity(MAGIC.len() + entries.len() * RECORD_LEN);
    if len == 0 {
        bytes.extend_from_slice(MAGIC);
    }
    for e in entries {
        bytes.extend_from_slice(&record(e));
    }
    f.write_all(&bytes).inspect_err(|_| {
        // A torn record would shift every later one (a full disk): keep whole records only.
        let _ = f.set_len(len);
    })
}

/// What a scan of an archive added to its index.
pub struct Scanned {
    pub added: usize,
    /// Offsets of members indexed although their data does not check out (see `scan`).
    pub damaged: Vec<u64>,
}

/// Extends `index` by reading member headers from the archive itself, starting where the index ends, and
/// inflating each found member to check it whole. Stops at the first member that is missing, torn or out of
/// order, and at a corrupt one of a chunk that ends after `sealed`; a corrupt member of a chunk at or below
/// `sealed` (durable whole before the watermark passed it) is damage: indexed, and reported in `damaged`.
pub fn scan(
    archive: &File,
    archive_len: u64,
    index: &mut HourIndex,
    sealed: Millis,
) -> io::Result<Scanned> {
    let mut scanned = Scanned {
        added: 0,
        damaged: Vec::new(),
    };
    let mut offset = index.end();
    let mut header = [0u8; HEADER_LEN];
    while offset + HEADER_LEN as u64 <= archive_len {
        archive.read_exact_at(&mut header, offset)?;
        let Ok(meta) = member::parse_header(&header) else {
            break;
        };
        if offset + meta.member_len > archive_len {
            break;
        }
        let mut bytes = vec![0u8; meta.member_len as usize];
        archive.read_exact_at(&mut bytes, offset)?;
        let whole = member::decode(&bytes).is_ok();
        let entry = if whole {
            IndexEntry::of(offset, meta, &bytes)
        } else {
            IndexEntry {
                offset,
                meta,
                data_crc: None,
            }
        };
        let chunk_end = meta.chunk_start.millis() + Millis::from(meta.width_secs) * 1000;
        if !whole && chunk_end > sealed {
            break;
        }
        if !index.push_checked(entry) {
            break;
        }
        if !whole {
            scanned.damaged.push(offset);
        }
        offset += meta.member_len;
        scanned.added += 1;
    }
    Ok(scanned)
}

/// Whether any member header in `[from, to)` of the archive (at any byte, checksum right) satisfies `test`:
/// what a cut tail held, when it began with a damaged header.
pub fn any_member(
    archive: &File,
    from: u64,
    to: u64,
    test: impl Fn(&MemberMeta) -> bool,
) -> io::Result<bool> {
    let mut tail = vec![0u8; (to - from) as usize];
    archive.read_exact_at(&mut tail, from)?;
    Ok((0..tail.len())
        .any(|i| tail[i] == 0x1f && member::parse_header(&tail[i..]).is_ok_and(|m| test(&m))))
}

/// Inflates the last member that `index` names, to check it whole.
pub fn verify_last(archive: &File, index: &HourIndex) -> io::Result<bool> {
    let Some(last) = index.entries.last() else {
        return Ok(true);
    };
    let mut bytes = vec![0u8; last.meta.member_len as usize];
    archive.read_exact_at(&mut bytes, last.offset)?;
    Ok(member::decode(&bytes).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, start: i64, len: u64, data_crc: Option<u32>) -> IndexEntry {
        IndexEntry {
            offset,
            meta: MemberMeta {
                chunk_start: ChunkStart::from_stored(start),
                width_secs: 10,
                part: 0,
                last_part: true,
                entries: 1,
                sealed_at: start + 20_000,
                first_ts: start,
                last_ts: start,
                raw_len: 10,
                member_len: len,
            },
            data_crc,
        }
    }

    #[test]
    fn sidecars_round_trip_and_an_older_layout_is_read_then_rewritten() {
        let dir = std::env::temp_dir().join(format!("hourglass-idx-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (t, hour) = (1_411_952_400_000, Hour::of(1_411_952_400_000));
        let path = dir.join("x.idx");
        let mut index = HourIndex::new(hour);
        index.entries = vec![entry(0, t, 100, Some(7)), entry(100, t + 10_000, 50, None)];
        write_sidecar(&path, &index).unwrap();
        append_sidecar(&path, &[entry(150, t + 20_000, 60, Some(9))]).unwrap();
        let read = read_sidecar(&path, hour, 210).unwrap();
        assert!(!read.stale && read.beyond == 0);
        assert_eq!(read.index.entries.len(), 3);
        assert_eq!(read.index.entries[0], index.entries[0]);
        assert_eq!(read.index.entries[1].data_crc, None);
        assert_eq!(read.index.entries[2].data_crc, Some(9));
        // An archive shorter than the sidecar says: the records past it are counted, not believed.
        let short = read_sidecar(&path, hour, 150).unwrap();
        assert_eq!((short.index.entries.len(), short.beyond), (2, 1));

        // The older layout: 74-byte records without the data CRC.
        let mut v1 = MAGIC_V1.to_vec();
        for e in &index.entries {
            let mut r = Vec::new();
            r.extend_from_slice(&e.offset.to_le_bytes());
            r.extend_from_slice(&e.meta.to_bytes());
            let crc = crc32fast::hash(&r);
            r.extend_from_slice(&crc.to_le_bytes());
            v1.extend_from_slice(&r);
        }
        fs::write(&path, &v1).unwrap();
        let read = read_sidecar(&path, hour, 150).unwrap();
        assert!(read.stale, "an older layout is rewritten");
        assert_eq!(read.index.entries.len(), 2);
        assert!(read.index.entries.iter().all(|e| e.data_crc.is_none()));
        // Appending to it starts it again rather than mixing layouts.
        append_sidecar(&path, &[entry(150, t + 20_000, 60, Some(9))]).unwrap();
        assert_eq!(
            read_sidecar(&path, hour, 210).unwrap().index.entries.len(),
            0
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
