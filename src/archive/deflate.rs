//! Deflate, both ways: Intel's ISA-L (igzip, hand-written AVX2/AVX-512 code) by default, zlib-rs where asked
//! for or where ISA-L cannot take an input. Both write standard deflate data; which one wrote a member is not
//! recorded, and every reader reads both.
//!
//! On the benchmark's events (`cargo bench --bench codec`) ISA-L at its level 1 compresses about 4x faster than
//! zlib-rs at level 3, to 96% of its ratio, and inflates about 2x faster.

use std::cell::RefCell;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::write::DeflateEncoder;
use isal::isal_sys::igzip_lib as sys;

/// Which deflate and at which level: how sealed members and answers compressed on the fly are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deflater {
    /// ISA-L's igzip at level 1..=3.
    Isal(u8),
    /// zlib-rs at level 1..=9.
    Zlib(u32),
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::Isal(1)
    }
}

impl std::str::FromStr for Deflater {
    type Err = String;

    /// `isal:1` to `isal:3`, `zlib:1` to `zlib:9`, or a plain level 1 to 9, which is zlib-rs's (as before
    /// ISA-L).
    fn from_str(s: &str) -> Result<Deflater, String> {
        let (name, level) = s.split_once(':').unwrap_or(("zlib", s));
        let level: u32 = level
            .parse()
            .map_err(|_| format!("{s:?}: expected isal:1-3, zlib:1-9 or a zlib level 1-9"))?;
        match (name, level) {
            ("isal", 1..=3) => Ok(Deflater::Isal(level as u8)),
            ("zlib", 1..=9) => Ok(Deflater::Zlib(level)),
            ("isal", _) => Err(format!("{s:?}: ISA-L's levels are 1 to 3")),
            ("zlib", _) => Err(format!("{s:?}: zlib's levels are 1 to 9")),
            _ => Err(format!("{s:?}: the compressors are isal and zlib")),
        }
    }
}

impl std::fmt::Display for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deflater::Isal(level) => write!(f, "isal:{level}"),
            Deflater::Zlib(level) => write!(f, "zlib:{level}"),
        }
    }
}

impl Deflater {
    /// `raw` as raw deflate data ending in a sync flush (an empty stored block), without a final block: a piece
    /// of a longer stream.
    pub fn flushed(self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() / 3 + 64);
        // ISA-L falls back to stored blocks where they are smaller (small or incompressible input), and then
        // writes no empty block after them; zlib-rs takes those.
        if let Deflater::Isal(level) = self
            && isal_flushed(raw, level, &mut out)
            && out.ends_with(&SYNC_FLUSH)
        {
            return out;
        }
        out.clear();
        let level = match self {
            Deflater::Isal(_) => 3,
            Deflater::Zlib(level) => level,
        };
        let mut enc = DeflateEncoder::new(out, Compression::new(level));
        // Writing into a Vec cannot fail; `flush` is a sync flush. Taking the Vec leaves the encoder nothing to
        // finish into.
        let _ = enc.write_all(raw);
        let _ = enc.flush();
        std::mem::take(enc.get_mut())
    }

    /// A plain gzip member of `bytes`, for answers compressed on the fly.
    pub fn gzip(self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() / 3 + 64);
        out.extend_from_slice(&GZIP_HEADER);
        out.extend_from_slice(&self.flushed(bytes));
        out.extend_from_slice(&super::member::FINAL_BLOCK);
        out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out
    }
}

/// A gzip header without options (RFC 1952: no name, no time, OS unknown).
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 255];

/// The empty stored block that a sync flush ends in.
const SYNC_FLUSH: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// ISA-L's working memory for its levels above 0 (hash tables, the block's tokens), one per thread.
    static LEVEL_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// ISA-L's one-shot deflate of `raw` into `out` (empty), ending in a full flush: its output ends as a sync
/// flush's does, in an empty stored block. False where ISA-L could not (an input of 4 GiB or more).
fn isal_flushed(raw: &[u8], level: u8, out: &mut Vec<u8>) -> bool {
    let Ok(avail_in) = u32::try_from(raw.len()) else {
        return false;
    };
    // At worst stored blocks: 5 bytes for each 64 KiB, and the flush's block.
    let bound = raw.len() + raw.len() / 4096 + 1024;
    let Ok(avail_out) = u32::try_from(bound) else {
        return false;
    };
    let level_buf_size = match level {
        1 => sys::ISAL_DEF_LVL1_EXTRA_LARGE,
        2 => sys::ISAL_DEF_LVL2_EXTRA_LARGE,
        _ => sys::ISAL_DEF_LVL3_EXTRA_LARGE,
    };
    out.clear();
    out.reserve_exact(bound);
    LEVEL_BUF.with_borrow_mut(|level_buf| {
        level_buf.resize(level_buf_size as usize, 0);
        // SAFETY: the stream starts zeroed (plain integers and pointers) and is initialised by ISA-L; its input
        // is `raw`, `avail_in` bytes; its output is `out`'s spare capacity, `avail_out` bytes, which
        // `reserve_exact` made room for; its level buffer is `level_buf`, `level_buf_size` bytes. None of them
        // is moved or freed before `isal_deflate_stateless` returns, and ISA-L keeps no pointer after it.
        // `set_len` takes only the `total_out` bytes it wrote.
        unsafe {
            let mut stream: sys::isal_zstream = std::mem::zeroed();
            sys::isal_deflate_stateless_init(&mut stream);
            stream.level = u32::from(level);
            stream.level_buf = level_buf.as_mut_ptr();
            stream.level_buf_size = level_buf_size;
            stream.flush = sys::FULL_FLUSH as u16;
            stream.end_of_stream = 0;
            stream.gzip_flag = sys::IGZIP_DEFLATE as u16;
            stream.next_in = raw.as_ptr().cast_mut();
            stream.avail_in = avail_in;
            stream.next_out = out.as_mut_ptr();
            stream.avail_out = avail_out;
            if sys::isal_deflate_stateless(&mut stream) != sys::COMP_OK as i32
                || stream.avail_in != 0
                || stream.total_out > avail_out
            {
                return false;
            }
            out.set_len(stream.total_out as usize);
        }
        true
    })
}

/// Inflates raw deflate data that holds `raw_len` bytes: `Err` unless it is a whole deflate stream of exactly
/// that many.
pub fn inflate(body: &[u8], raw_len: u64) -> Result<Vec<u8>, String> {
    let raw = inflate_at_most(body, raw_len)?;
    if raw.len() as u64 != raw_len {
        return Err(format!("inflates to {} bytes, not {raw_len}", raw.len()));
    }
    Ok(raw)
}

/// Data at most this long is inflated in one piece (ISA-L's one-shot inflate, the fastest); longer data as a
/// stream, so that checking a member never holds more than this.
const WHOLE: u64 = 8 << 20;

/// Inflates raw deflate data into `sink`, in one piece or as a stream of pieces; returns how many bytes it
/// inflated. Data that holds more than `limit` bytes fails in one piece, and as a stream stops one byte past it.
pub fn inflate_each(body: &[u8], limit: u64, mut sink: impl FnMut(&[u8])) -> Result<u64, String> {
    if limit <= WHOLE {
        let raw = inflate_at_most(body, limit)?;
        sink(&raw);
        return Ok(raw.len() as u64);
    }
    let mut inflater = flate2::bufread::DeflateDecoder::new(body).take(limit + 1);
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let n = inflater.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(len);
        }
        sink(&buf[..n]);
        len += n as u64;
    }
}

/// Inflates raw deflate data of at most `limit` bytes (one more fails).
fn inflate_at_most(body: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let len = usize::try_from(limit).map_err(|_| "member too long to inflate".to_string())?;
    let mut raw = vec![0u8; len + 1];
    let n =
        isal::decompress_into(body, &mut raw, isal::Codec::Deflate).map_err(|e| e.to_string())?;
    raw.truncate(n);
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> Vec<u8> {
        (0..20_000)
            .flat_map(|i| {
                format!("{{\"ts\":{i},\"msg\":\"line {} of {}\"}}\n", i * 7, i % 13).into_bytes()
            })
            .collect()
    }

    #[test]
    fn both_compressors_write_flushed_deflate_that_both_inflate() {
        let raw = text();
        for d in [
            Deflater::Isal(1),
            Deflater::Isal(2),
            Deflater::Isal(3),
            Deflater::Zlib(1),
            Deflater::Zlib(3),
            Deflater::Zlib(9),
        ] {
            let mut body = d.flushed(&raw);
            assert!(body.ends_with(&[0, 0, 0xff, 0xff]), "{d:?}");
            assert!(body.len() < raw.len() / 3, "{d:?}: {} bytes", body.len());
            body.extend_from_slice(&super::super::member::FINAL_BLOCK);
            assert_eq!(inflate(&body, raw.len() as u64).as_deref(), Ok(&raw[..]));
            let mut streamed = Vec::new();
            let n = inflate_each(&body, raw.len() as u64, |b| streamed.extend_from_slice(b));
            assert_eq!(n, Ok(raw.len() as u64));
            assert_eq!(streamed, raw);
            let mut zlib = Vec::new();
            flate2::read::DeflateDecoder::new(&body[..])
                .read_to_end(&mut zlib)
                .unwrap();
            assert_eq!(zlib, raw);
            let mut gz = Vec::new();
            flate2::read::GzDecoder::new(&d.gzip(&raw)[..])
                .read_to_end(&mut gz)
                .unwrap();
            assert_eq!(gz, raw);
        }
        // Empty and small input, and input that does not compress.
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for raw in [&[][..], b"{}\n", &noise[..]] {
            let mut body = Deflater::default().flushed(raw);
            assert!(body.ends_with(&SYNC_FLUSH));
            body.extend_from_slice(&super::super::member::FINAL_BLOCK);
            assert_eq!(inflate(&body, raw.len() as u64).as_deref(), Ok(raw));
        }
    }

    #[test]
    fn data_longer_than_one_piece_streams_with_the_same_answers() {
        let raw: Vec<u8> = text().repeat(12);
        assert!(raw.len() as u64 > WHOLE);
        let mut body = Deflater::default().flushed(&raw);
        body.extend_from_slice(&super::super::member::FINAL_BLOCK);
        let mut crc = crc32fast::Hasher::new();
        let n = inflate_each(&body, raw.len() as u64, |b| crc.update(b));
        assert_eq!(
            (n, crc.finalize()),
            (Ok(raw.len() as u64), crc32fast::hash(&raw))
        );
        assert!(inflate_each(&body[..body.len() / 2], raw.len() as u64, |_| ()).is_err());
        // More than promised: an error in one piece, one byte past the limit as a stream; never the whole.
        assert!(!matches!(inflate_each(&body, 10, |_| ()), Ok(n) if n <= 10));
        assert_eq!(
            inflate_each(&body, WHOLE + 1, |_| ()),
            Ok(WHOLE + 2),
            "a stream stops past its limit"
        );
    }

    #[test]
    fn inflating_refuses_damage_and_more_than_promised() {
        let raw = text();
        let mut body = Deflater::default().flushed(&raw);
        body.extend_from_slice(&super::super::member::FINAL_BLOCK);
        assert!(inflate(&body, raw.len() as u64 - 1).is_err());
        assert!(inflate(&body[..body.len() / 2], raw.len() as u64).is_err());
        assert!(inflate_each(&body[..body.len() / 2], raw.len() as u64, |_| ()).is_err());
        let mut flipped = body.clone();
        flipped[body.len() / 3] ^= 0x5a;
        assert_ne!(inflate(&flipped, raw.len() as u64).as_deref(), Ok(&raw[..]));
    }

    #[test]
    fn levels_are_read_and_checked_against_the_compressor() {
        for (text, d) in [
            ("isal:1", Deflater::Isal(1)),
            ("isal:3", Deflater::Isal(3)),
            ("zlib:9", Deflater::Zlib(9)),
            ("3", Deflater::Zlib(3)),
        ] {
            assert_eq!(text.parse(), Ok(d));
        }
        assert_eq!(Deflater::default().to_string(), "isal:1");
        for bad in ["isal:4", "zlib:0", "0", "10", "lz4:1", "isal:", "fast"] {
            assert!(bad.parse::<Deflater>().is_err(), "{bad}");
        }
    }
}
