//! The index of one hour archive: where each member starts and what it holds. It lives in memory and in a
//! sidecar file (`{YYYYMMDDHH}.idx`) that is only a cache of what the archive's own headers say: it is
//! checked against the archive on load, and rebuilt from the archive whenever it is missing, short or wrong.
//!
//! Sidecar layout: the magic `HGIDX1\n\0`, then one 74-byte record per member: offset (u64 LE), the member's
//! 62-byte metadata (as in its FEXTRA subfield), CRC32 of those 70 bytes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::member::{self, HEADER_LEN, MemberMeta};
use crate::time::{ChunkStart, Hour, Millis};

const MAGIC: &[u8; 8] = b"HGIDX1\n\0";
const RECORD_LEN: usize = 8 + MemberMeta::BYTES + 4;

/// One member's place in its archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub meta: MemberMeta,
}

impl IndexEntry {
    pub fn end(&self) -> u64 {
        self.offset + self.meta.member_len
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
    r[..8].copy_from_slice(&entry.offset.to_le_bytes());
    r[8..8 + MemberMeta::BYTES].copy_from_slice(&entry.meta.to_bytes());
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
    let mut index = HourIndex::new(hour);
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Sidecar {
                index,
                stale: true,
                beyond: 0,
            });
        }
        Err(e) => return Err(e),
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Ok(Sidecar {
            index,
            stale: true,
            beyond: 0,
        });
    }
    let records = bytes[MAGIC.len()..].chunks(RECORD_LEN);
    let total = records.len();
    let mut beyond = 0;
    for r in records {
        let Some(entry) = entry_of(r) else {
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
    Ok(Sidecar {
        index,
        stale,
        beyond,
    })
}

/// One sidecar record, if it is whole and its checksum and metadata are right.
fn entry_of(r: &[u8]) -> Option<IndexEntry> {
    if r.len() != RECORD_LEN {
        return None;
    }
    let crc = u32::from_le_bytes(r[RECORD_LEN - 4..].try_into().ok()?);
    if crc != crc32fast::hash(&r[..RECORD_LEN - 4]) {
        return None;
    }
    let meta = MemberMeta::from_bytes(&r[8..8 + MemberMeta::BYTES]).ok()?;
    let offset = u64::from_le_bytes(r[..8].try_into().ok()?);
    Some(IndexEntry { offset, meta })
}

/// Writes a whole sidecar atomically (temporary file, then rename).
pub fn write_sidecar(path: &Path, index: &HourIndex) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(MAGIC.len() + index.entries.len() * RECORD_LEN);
    bytes.extend_from_slice(MAGIC);
    for e in &index.entries {
        bytes.extend_from_slice(&record(e));
    }
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
        .append(true)
        .create(true)
        .open(path)?;
    let len = f.metadata()?.len();
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
        let chunk_end = meta.chunk_start.millis() + Millis::from(meta.width_secs) * 1000;
        if !whole && chunk_end > sealed {
            break;
        }
        if !index.push_checked(IndexEntry { offset, meta }) {
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
