//! One gzip member of an hour archive: a chunk, or one part of a chunk too big for one page, with everything
//! needed to rebuild the index kept in a private FEXTRA subfield (RFC 1952 §2.3.1.1), in the manner of BGZF.
//!
//! Layout of a member we write (all integers little-endian):
//!
//! ```text
//! 1f 8b 08 FLG=FEXTRA  MTIME(seal time, s)  XFL  OS=255  XLEN=68
//!   'H' 'g' LEN=64  version(u8) flags(u8) width_s(u32) part(u32) entries(u32)
//!                   chunk_start(i64) sealed_at(i64) first_ts(i64) last_ts(i64) raw_len(u64) member_len(u64)
//!                   check(u16): the low 16 bits of the CRC-32 of the 78 header bytes before it
//! raw deflate data
//! CRC32  ISIZE
//! ```
//!
//! The header is 80 bytes. The check guards the metadata: a flipped bit in a length is caught before it is
//! believed. It sits inside the subfield rather than in the FHCRC field, which some readers refuse (DuckDB's
//! `read_json`); members written before (FLG=FEXTRA|FHCRC, XLEN=66, LEN=62, the same check as the FHCRC field,
//! at the same place) are read as well. Standard tools (`zcat`, `gzip -t`, Python's `gzip`, DuckDB) skip the
//! subfield and read the lines.

use std::ops::Range;

use super::deflate::{self, Deflater};
use crate::time::{ChunkStart, Millis};

pub const HEADER_LEN: usize = 80;
const SUBFIELD_ID: [u8; 2] = *b"Hg";
const PAYLOAD_LEN: usize = 62;
/// The subfield: the payload and the check.
const SUBFIELD_LEN: usize = PAYLOAD_LEN + 2;
const XLEN: usize = 4 + SUBFIELD_LEN;
const FEXTRA: u8 = 0x04;
/// Members written before the check moved into the subfield.
const FHCRC: u8 = 0x02;
pub const FORMAT_VERSION: u8 = 1;
const FLAG_LAST_PART: u8 = 1;
const TRAILER_LEN: usize = 8;

/// An encoded member and what it says about itself.
pub type Member = (MemberMeta, Vec<u8>);

/// What a joined gzip stream takes from one of our members: where its deflate data is, without the final
/// block, and the CRC-32 of its lines. `None` for a member that does not end in a sync flush.
pub fn joinable(member: &[u8], raw_len: u64) -> Option<(Range<usize>, u32)> {
    let end = member.len().checked_sub(TRAILER_LEN)?;
    if !member.get(HEADER_LEN..end)?.ends_with(&JOINABLE_END) {
        return None;
    }
    let crc = u32::from_le_bytes(member[end..end + 4].try_into().ok()?);
    let isize = u32::from_le_bytes(member[end + 4..].try_into().ok()?);
    (u64::from(isize) == raw_len & 0xffff_ffff)
        .then_some((HEADER_LEN..end - FINAL_BLOCK.len(), crc))
}

/// What a member says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberMeta {
    pub chunk_start: ChunkStart,
    pub width_secs: u32,
    /// 0-based position of this member within its chunk.
    pub part: u32,
    /// Whether this is the chunk's last member; a chunk without its last member is torn.
    pub last_part: bool,
    pub entries: u32,
    /// When the chunk was sealed: pages use it as `Last-Modified`.
    pub sealed_at: Millis,
    pub first_ts: Millis,
    pub last_ts: Millis,
    /// Uncompressed bytes: the NDJSON lines, each ending in `\n`.
    pub raw_len: u64,
    /// The whole member, header and trailer included: where the next member starts.
    pub member_len: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemberError {
    #[error("truncated gzip member")]
    Truncated,
    #[error("not a gzip member written by hourglass: {0}")]
    Foreign(&'static str),
    #[error("gzip header checksum mismatch")]
    HeaderChecksum,
    #[error("member data is corrupt: {0}")]
    Corrupt(String),
}

impl MemberMeta {
    fn payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        p[0] = FORMAT_VERSION;
        p[1] = if self.last_part { FLAG_LAST_PART } else { 0 };
        p[2..6].copy_from_slice(&self.width_secs.to_le_bytes());
        p[6..10].copy_from_slice(&self.part.to_le_bytes());
        p[10..14].copy_from_slice(&self.entries.to_le_bytes());
        p[14..22].copy_from_slice(&self.chunk_start.millis().to_le_bytes());
        p[22..30].copy_from_slice(&self.sealed_at.to_le_bytes());
        p[30..38].copy_from_slice(&self.first_ts.to_le_bytes());
        p[38..46].copy_from_slice(&self.last_ts.to_le_bytes());
        p[46..54].copy_from_slice(&self.raw_len.to_le_bytes());
        p[54..62].copy_from_slice(&self.member_len.to_le_bytes());
        p
    }

    fn from_payload(p: &[u8]) -> Result<MemberMeta, MemberError> {
        if p.len() != PAYLOAD_LEN {
            return Err(MemberError::Foreign("subfield length"));
        }
        if p[0] != FORMAT_VERSION {
            return Err(MemberError::Foreign("unknown format version"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().unwrap_or_default());
        Ok(MemberMeta {
            last_part: p[1] & FLAG_LAST_PART != 0,
            width_secs: u32_at(2),
            part: u32_at(6),
            entries: u32_at(10),
            chunk_start: ChunkStart::from_stored(u64_at(14) as i64),
            sealed_at: u64_at(22) as i64,
            first_ts: u64_at(30) as i64,
            last_ts: u64_at(38) as i64,
            raw_len: u64_at(46),
            member_len: u64_at(54),
        })
    }

    /// The subfield payload as stored in an index sidecar.
    pub fn to_bytes(&self) -> [u8; PAYLOAD_LEN] {
        self.payload()
    }

    pub fn from_bytes(p: &[u8]) -> Result<MemberMeta, MemberError> {
        Self::from_payload(p)
    }

    pub const BYTES: usize = PAYLOAD_LEN;
}

/// How the deflate data of a member we write ends: a sync flush (an empty stored block, `00 00 ff ff`), then an
/// empty final block (`03 00`). Without its last two bytes the data is a deflate stream that another can
/// continue, so members join into one gzip member without being inflated (as pigz joins its blocks).
const JOINABLE_END: [u8; 6] = [0x00, 0x00, 0xff, 0xff, 0x03, 0x00];

/// The empty final deflate block that ends a joined stream.
pub const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// Compresses `raw` (NDJSON lines, each ending in `\n`) into one member. `meta.raw_len` and `meta.member_len`
/// are filled in here; the metadata is returned with the bytes.
pub fn encode(mut meta: MemberMeta, raw: &[u8], deflater: Deflater) -> Member {
    meta.raw_len = raw.len() as u64;
    let mut out = Vec::with_capacity(HEADER_LEN + raw.len() / 3 + 64);
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&deflater.flushed(raw));
    out.extend_from_slice(&FINAL_BLOCK);
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    meta.member_len = out.len() as u64;
    write_header(&mut out[..HEADER_LEN], &meta);
    (meta, out)
}

fn write_header(h: &mut [u8], meta: &MemberMeta) {
    h[0..4].copy_from_slice(&[0x1f, 0x8b, 0x08, FEXTRA]);
    let mtime = u32::try_from(meta.sealed_at.div_euclid(1000)).unwrap_or(0);
    h[4..8].copy_from_slice(&mtime.to_le_bytes());
    h[8] = 0; // XFL
    h[9] = 255; // OS: unknown
    h[10..12].copy_from_slice(&(XLEN as u16).to_le_bytes());
    h[12..14].copy_from_slice(&SUBFIELD_ID);
    h[14..16].copy_from_slice(&(SUBFIELD_LEN as u16).to_le_bytes());
    h[16..16 + PAYLOAD_LEN].copy_from_slice(&meta.payload());
    let crc16 = crc32fast::hash(&h[..HEADER_LEN - 2]) as u16;
    h[HEADER_LEN - 2..].copy_from_slice(&crc16.to_le_bytes());
}

/// Reads the metadata from the first `HEADER_LEN` bytes of a member.
pub fn parse_header(h: &[u8]) -> Result<MemberMeta, MemberError> {
    if h.len() < HEADER_LEN {
        return Err(MemberError::Truncated);
    }
    if h[0..3] != [0x1f, 0x8b, 0x08] {
        return Err(MemberError::Foreign("bad magic"));
    }
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([h[i], h[i + 1]]));
    // This layout, or the one before it (the check in the FHCRC field, two bytes fewer of subfield).
    let subfield = match (h[3], u16_at(10)) {
        (FEXTRA, XLEN) => SUBFIELD_LEN,
        (f, x) if f == FEXTRA | FHCRC && x == XLEN - 2 => PAYLOAD_LEN,
        _ => return Err(MemberError::Foreign("unexpected header fields")),
    };
    if h[12..14] != SUBFIELD_ID || u16_at(14) != subfield {
        return Err(MemberError::Foreign("no hourglass subfield"));
    }
    let crc16 = crc32fast::hash(&h[..HEADER_LEN - 2]) as u16;
    if h[HEADER_LEN - 2..HEADER_LEN] != crc16.to_le_bytes() {
        return Err(MemberError::HeaderChecksum);
    }
    let meta = MemberMeta::from_payload(&h[16..16 + PAYLOAD_LEN])?;
    if meta.member_len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(MemberError::Corrupt("member length too small".into()));
    }
    Ok(meta)
}

/// Inflates a whole member (as written by `encode`), checking its CRC32 and length.
pub fn decode(member: &[u8]) -> Result<(MemberMeta, Vec<u8>), MemberError> {
    let meta = parse_header(member)?;
    let (body, trailer) = split(member, &meta)?;
    let raw = deflate::inflate(body, meta.raw_len).map_err(MemberError::Corrupt)?;
    check_trailer(trailer, &meta, raw.len() as u64, crc32fast::hash(&raw))?;
    Ok((meta, raw))
}

/// Checks that `member` is whole and is the member `meta` (from an index) describes: its header says exactly
/// that, and its data inflates to `raw_len` bytes with the CRC-32 of its trailer. For members sent as they are
/// (their deflate data joined into an export): the lines are inflated into a small buffer and dropped.
pub fn verify(member: &[u8], meta: &MemberMeta) -> Result<(), MemberError> {
    let header = parse_header(member)?;
    if header != *meta {
        return Err(MemberError::Corrupt(
            "header does not match the index".into(),
        ));
    }
    let (body, trailer) = split(member, meta)?;
    let mut crc = crc32fast::Hasher::new();
    let len = deflate::inflate_each(body, meta.raw_len, |b| crc.update(b))
        .map_err(MemberError::Corrupt)?;
    check_trailer(trailer, meta, len, crc.finalize())
}

/// Checks that `member` is the member `meta` describes, with the bytes it had when they were known good:
/// its header says exactly what the index does, and its bytes after the header have the CRC-32 `data_crc`
/// recorded then. A CRC over the compressed bytes: no inflating.
pub fn verify_stored(member: &[u8], meta: &MemberMeta, data_crc: u32) -> Result<(), MemberError> {
    if parse_header(member)? != *meta {
        return Err(MemberError::Corrupt(
            "header does not match the index".into(),
        ));
    }
    let end = usize::try_from(meta.member_len).map_err(|_| MemberError::Truncated)?;
    let data = member.get(HEADER_LEN..end).ok_or(MemberError::Truncated)?;
    if crc32fast::hash(data) != data_crc {
        return Err(MemberError::Corrupt(
            "CRC32 of the stored bytes mismatch".into(),
        ));
    }
    Ok(())
}

/// A member's deflate data and its trailer, as its header's length places them.
fn split<'a>(member: &'a [u8], meta: &MemberMeta) -> Result<(&'a [u8], &'a [u8]), MemberError> {
    let end = usize::try_from(meta.member_len).map_err(|_| MemberError::Truncated)?;
    let member = member.get(..end).ok_or(MemberError::Truncated)?;
    Ok(member[HEADER_LEN..].split_at(end - HEADER_LEN - TRAILER_LEN))
}

/// Whether inflated data of `len` bytes with checksum `crc` is what the trailer and the header promise.
fn check_trailer(trailer: &[u8], meta: &MemberMeta, len: u64, crc: u32) -> Result<(), MemberError> {
    let stored_crc = u32::from_le_bytes(trailer[0..4].try_into().unwrap_or_default());
    let isize = u32::from_le_bytes(trailer[4..8].try_into().unwrap_or_default());
    if len != meta.raw_len || u64::from(isize) != len & 0xffff_ffff {
        return Err(MemberError::Corrupt("length mismatch".into()));
    }
    if crc != stored_crc {
        return Err(MemberError::Corrupt("CRC32 mismatch".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn meta() -> MemberMeta {
        MemberMeta {
            chunk_start: ChunkStart::from_stored(1_411_952_340_000),
            width_secs: 10,
            part: 0,
            last_part: true,
            entries: 2,
            sealed_at: 1_411_952_400_123,
            first_ts: 1_411_952_340_001,
            last_ts: 1_411_952_349_999,
            raw_len: 0,
            member_len: 0,
        }
    }

    #[test]
    fn members_written_with_the_check_in_fhcrc_are_read_as_before() {
        let raw = b"{\"ts\":1,\"a\":1}\n";
        let (_, new) = encode(meta(), raw, Deflater::Zlib(6));
        assert_eq!(new[3], FEXTRA, "no FHCRC in what is written now");
        // The layout written before: FHCRC set, the subfield two bytes shorter, the check in the FHCRC field
        // (the same bytes at the same place).
        let mut old = new.clone();
        old[3] = FEXTRA | FHCRC;
        old[10..12].copy_from_slice(&((XLEN - 2) as u16).to_le_bytes());
        old[14..16].copy_from_slice(&(PAYLOAD_LEN as u16).to_le_bytes());
        let check = crc32fast::hash(&old[..HEADER_LEN - 2]) as u16;
        old[HEADER_LEN - 2..HEADER_LEN].copy_from_slice(&check.to_le_bytes());
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(&old[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(
            text, raw,
            "the old layout is valid gzip (its FHCRC checks out)"
        );
        let (m_old, lines) = decode(&old).unwrap();
        assert_eq!(lines, raw);
        assert_eq!(m_old, decode(&new).unwrap().0);
        // Either way a flipped bit of the metadata is caught.
        for bytes in [&old, &new] {
            let mut bad = bytes.clone();
            bad[40] ^= 1;
            assert!(parse_header(&bad).is_err());
        }
    }

    #[test]
    fn round_trips_and_reads_as_plain_gzip() {
        let raw = b"{\"ts\":1,\"a\":1}\n{\"ts\":2,\"a\":2}\n";
        let (_, bytes) = encode(meta(), raw, Deflater::Zlib(6));
        let (m, back) = decode(&bytes).unwrap();
        assert_eq!(back, raw);
        assert_eq!(m.member_len, bytes.len() as u64);
        assert_eq!(m.raw_len, raw.len() as u64);
        assert_eq!(m.chunk_start, meta().chunk_start);

        // Any gzip reader sees the lines: two members back to back are one valid file.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(&two[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, [&raw[..], &raw[..]].concat());
    }

    #[test]
    fn header_corruption_is_caught() {
        let (_, bytes) = encode(meta(), b"{}\n", Deflater::Isal(1));
        for i in 0..HEADER_LEN {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                parse_header(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn body_corruption_and_truncation_are_caught() {
        let raw: Vec<u8> = (0..500)
            .flat_map(|i| format!("{{\"ts\":{i}}}\n").into_bytes())
            .collect();
        let (_, bytes) = encode(meta(), &raw, Deflater::Zlib(6));
        for cut in [HEADER_LEN - 1, HEADER_LEN + 3, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err());
        }
        let mut bad = bytes.clone();
        let mid = HEADER_LEN + (bytes.len() - HEADER_LEN) / 2;
        bad[mid] ^= 0xff;
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn verify_catches_every_flipped_bit_that_decode_catches() {
        let raw: Vec<u8> = (0..300)
            .flat_map(|i| format!("{{\"ts\":{i},\"v\":\"{}\"}}\n", i * 7).into_bytes())
            .collect();
        let (meta, bytes) = encode(meta(), &raw, Deflater::default());
        assert_eq!(verify(&bytes, &meta), Ok(()));
        let mut caught = 0;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x08;
            // A flip that still inflates is caught by the CRC, one in the header by its own checksum; only
            // padding bits can flip unseen (before the sync flush's stored block, after the final block's
            // end), and they change no line.
            match verify(&bad, &meta) {
                Err(_) => caught += 1,
                Ok(()) => assert_eq!(decode(&bad).map(|(_, r)| r), Ok(raw.clone()), "byte {i}"),
            }
            assert_eq!(
                decode(&bad).is_err(),
                verify(&bad, &meta).is_err(),
                "byte {i}"
            );
        }
        assert!(caught >= bytes.len() - 2, "{caught} of {}", bytes.len());
        // The stored bytes' CRC catches the same flips, without inflating.
        let data_crc = crc32fast::hash(&bytes[HEADER_LEN..]);
        assert_eq!(verify_stored(&bytes, &meta, data_crc), Ok(()));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x08;
            assert!(
                verify_stored(&bad, &meta, data_crc).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        // A whole, valid member that is not the one the index names.
        let (other_meta, other) = encode(MemberMeta { part: 1, ..meta }, &raw, Deflater::Zlib(3));
        assert!(verify(&other, &meta).is_err());
        assert_eq!(verify(&other, &other_meta), Ok(()));
        assert!(verify(&bytes[..bytes.len() - 1], &meta).is_err());
    }

    #[test]
    fn members_join_into_one_gzip_member_without_inflating() {
        let raws: [&[u8]; 3] = [
            b"{\"ts\":1}\n",
            b"",
            b"{\"ts\":2,\"a\":\"xyz\"}\n{\"ts\":3}\n",
        ];
        let mut joined = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 255];
        let mut crc = crc32fast::Hasher::new();
        // Members of either compressor join: archives written before ISA-L with those written after.
        for (raw, deflater) in
            raws.into_iter()
                .zip([Deflater::default(), Deflater::Zlib(6), Deflater::Isal(3)])
        {
            let (meta, bytes) = encode(meta(), raw, deflater);
            let (data, member_crc) = joinable(&bytes, meta.raw_len).unwrap();
            joined.extend_from_slice(&bytes[data]);
            crc.combine(&crc32fast::Hasher::new_with_initial_len(
                member_crc,
                raw.len() as u64,
            ));
        }
        joined.extend_from_slice(&FINAL_BLOCK);
        joined.extend_from_slice(&crc.finalize().to_le_bytes());
        joined.extend_from_slice(&(raws.concat().len() as u32).to_le_bytes());
        // A single-member decoder reads it all: it is one member.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&joined[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, raws.concat());
        // A member from elsewhere is not joinable.
        let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        plain.write_all(b"x\n").unwrap();
        assert_eq!(joinable(&plain.finish().unwrap(), 2), None);
    }
}
