//! Member summaries: a Bloom filter of the tokens of each sealed member's lines, kept in its hour's
//! `{YYYYMMDDHH}.sum` sidecar, so that a filter needing a token a member lacks skips the member without
//! inflating it.
//!
//! A token is a maximal run of ASCII letters, digits and `_`, or of bytes of UTF-8 sequences, in a line as it is
//! stored, that is not all digits (numbers are many and seldom searched for as text: a filter that needs only
//! numbers reads every member); a line with a `\` escape adds the tokens of its keys and strings unescaped, so
//! that a value is found however it was escaped. The filter has one bit per `BYTES_PER_BIT` bytes of the text
//! it summarises, rounded up to a power of two of 64-bit words (1.6-3.1% of the text, within
//! `MIN_BITS..=MAX_BITS`), and puts a token's `HASHES` bits in one word (a blocked Bloom filter: one memory
//! access per token); its false positives on the benchmark text are measured in BENCHMARKS.md. A false positive costs an inflate, never an event: a summary only ever says
//! "cannot match".
//!
//! The sidecar is a list of records, one per member, appended when the member is sealed:
//! `len u32, crc32 u32, payload` with payload `version u8, chunk_start i64, part u32, sealed_at i64,
//! member_len u64, words u32, words × u64` (little-endian; `words` a power of two, a token's `HASHES` bits all
//! in one word). A record names its member by chunk, part, seal time and length, and
//! applies only to a member that matches all four: a sidecar left from a rewritten hour, or a torn or damaged
//! record, can make a member be read, never skipped wrongly. Members without a record are read.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use super::member::{Member, MemberMeta};
use crate::time::Millis;

/// Bytes of text summarised per bit of filter.
const BYTES_PER_BIT: u64 = 8;
/// The fewest bits a filter has.
const MIN_BITS: u64 = 512;
/// The most bits a filter has (16 KiB).
const MAX_BITS: u64 = 1 << 17;
const HASHES: u32 = 4;

/// An encoded member with its summary (none when summaries are off), as sealing and imports make them.
pub type Summarized = (Member, Option<Bloom>);

/// Members apart from their summaries: what `append_chunk` writes and what `add_summaries` records.
pub fn split(members: Vec<Summarized>) -> (Vec<Member>, Vec<(MemberMeta, Bloom)>) {
    let mut summaries = Vec::new();
    let members = members
        .into_iter()
        .map(|(member, bloom)| {
            if let Some(bloom) = bloom {
                summaries.push((member.0, bloom));
            }
            member
        })
        .collect();
    (members, summaries)
}

/// A Bloom filter of a member's tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bloom {
    words: Vec<u64>,
}

impl Bloom {
    /// The filter of NDJSON `lines`, sized by their length.
    pub fn of_lines(lines: &[u8]) -> Bloom {
        let bits = (lines.len() as u64 / BYTES_PER_BIT).clamp(MIN_BITS, MAX_BITS);
        let mut bloom = Bloom {
            words: vec![0; bits.div_ceil(64).next_power_of_two() as usize],
        };
        // A newline separates tokens too: the whole text in one pass, then the lines with escapes again.
        tokens(lines, |_, t| bloom.insert(hash(t)));
        if memchr::memchr(b'\\', lines).is_some() {
            for line in lines.split(|&b| b == b'\n') {
                if memchr::memchr(b'\\', line).is_some()
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(line)
                {
                    unescaped_tokens(&v, &mut |t| bloom.insert(hash(t)));
                }
            }
        }
        bloom
    }

    /// Where a hash's bits are: one word (a power-of-two count of them, so a mask picks it) and `HASHES`
    /// bits in it, from the hash's upper half. One memory access per token, to set or to test.
    fn slot(&self, h: u64) -> (usize, u64) {
        let word = (h as usize) & (self.words.len() - 1);
        let bits = (0..HASHES).fold(0u64, |m, i| m | 1 << ((h >> (32 + 6 * i)) & 63));
        (word, bits)
    }

    fn insert(&mut self, h: u64) {
        let (word, bits) = self.slot(h);
        self.words[word] |= bits;
    }

    /// Whether the member may hold every token of `hashes` (`token_hashes` makes them).
    pub fn may_contain_all(&self, hashes: &[u64]) -> bool {
        hashes.iter().all(|&h| {
            let (word, bits) = self.slot(h);
            self.words[word] & bits == bits
        })
    }

    /// The filter's size in bytes.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// Calls `f` with the offset and bytes of every token of `bytes`.
pub fn tokens(bytes: &[u8], mut f: impl FnMut(usize, &[u8])) {
    let n = bytes.len();
    let mut i = 0;
    loop {
        // Past the separators, then to the token's end, noting whether it has a byte that is not a digit.
        while i < n && CLASS[bytes[i] as usize] == SEPARATOR {
            i += 1;
        }
        if i == n {
            return;
        }
        let start = i;
        let mut seen = 0;
        while i < n {
            let class = CLASS[bytes[i] as usize];
            if class == SEPARATOR {
                break;
            }
            seen |= class;
            i += 1;
        }
        if seen & WORD != 0 {
            f(start, &bytes[start..i]);
        }
    }
}

const SEPARATOR: u8 = 0;
const DIGIT: u8 = 1;
const WORD: u8 = 2;

/// What each byte is to a token: ASCII letters, `_` and bytes of UTF-8 sequences are words, digits are digits,
/// everything else separates.
static CLASS: [u8; 256] = {
    let mut class = [SEPARATOR; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        class[b] = if c.is_ascii_digit() {
            DIGIT
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            WORD
        } else {
            SEPARATOR
        };
        b += 1;
    }
    class
};

/// The tokens of `text` that any text containing it contains whole: all of them when `text` is bounded
/// (a JSON string's content, a key), only those not touching its ends when it is a substring (`q=`).
pub fn token_hashes(text: &[u8], bounded: bool) -> Vec<u64> {
    let mut out = Vec::new();
    tokens(text, |at, t| {
        if bounded || (at > 0 && at + t.len() < text.len()) {
            out.push(hash(t));
        }
    });
    out
}

fn unescaped_tokens(v: &serde_json::Value, f: &mut impl FnMut(&[u8])) {
    match v {
        serde_json::Value::String(s) => tokens(s.as_bytes(), |_, t| f(t)),
        serde_json::Value::Array(items) => items.iter().for_each(|i| unescaped_tokens(i, f)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                tokens(k.as_bytes(), |_, t| f(t));
                unescaped_tokens(v, f);
            }
        }
        _ => {}
    }
}

/// A token's hash, eight bytes at a time, then a 64-bit finaliser: our own, stable across builds and platforms,
/// as what is stored must be.
fn hash(token: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = token.len() as u64 ^ 0x243f_6a88_85a3_08d3;
    let mut words = token.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(last))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What names a member in a record: chunk, part, seal time and length.
type MemberKey = (Millis, u32);

/// The summaries of one hour's members, as read from its sidecar.
#[derive(Debug, Default)]
pub struct HourSummaries {
    members: HashMap<MemberKey, (Millis, u64, Bloom)>,
    bytes: usize,
}

impl HourSummaries {
    /// The summary of a member, when the sidecar has one for exactly that member.
    pub fn of(&self, meta: &MemberMeta) -> Option<&Bloom> {
        self.members
            .get(&(meta.chunk_start.millis(), meta.part))
            .filter(|(sealed_at, len, _)| *sealed_at == meta.sealed_at && *len == meta.member_len)
            .map(|(_, _, bloom)| bloom)
    }

    /// What memory it takes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Reads a sidecar: every whole, intact record up to the first that is not; none when there is no file.
    pub fn read(path: &Path) -> io::Result<HourSummaries> {
        match std::fs::read(path) {
            Ok(data) => Ok(HourSummaries::parse(&data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HourSummaries::default()),
            Err(e) => Err(e),
        }
    }

    /// A sidecar's records (its file, or its object on the store), up to the first that is not whole and intact.
    pub fn parse(data: &[u8]) -> HourSummaries {
        let mut out = HourSummaries::default();
        let mut rest = data;
        while rest.len() >= 8 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            let Some(payload) = rest.get(8..8 + len) else {
                break;
            };
            if crc32fast::hash(payload) != crc {
                break;
            }
            let Some((key, sealed_at, member_len, bloom)) = decode(payload) else {
                break;
            };
            out.bytes += bloom.bytes() + 48;
            out.members.insert(key, (sealed_at, member_len, bloom));
            rest = &rest[8 + len..];
        }
        out
    }
}

/// The layout of a record's filter: blocked (a token's bits in one word), this hash. A record of another version
/// is not believed: its member is read.
const VERSION: u8 = 1;
const FIXED: usize = 1 + 8 + 4 + 8 + 8 + 4;

fn decode(p: &[u8]) -> Option<(MemberKey, Millis, u64, Bloom)> {
    if p.first() != Some(&VERSION) {
        return None;
    }
    let i64_at = |i: usize| Some(i64::from_le_bytes(p.get(1 + i..9 + i)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_le_bytes(p.get(1 + i..5 + i)?.try_into().ok()?));
    let (start, part, sealed_at) = (i64_at(0)?, u32_at(8)?, i64_at(12)?);
    let member_len = i64_at(20)? as u64;
    let words = u32_at(28)? as usize;
    let body = p.get(FIXED..)?;
    if !words.is_power_of_two() || body.len() != words * 8 {
        return None;
    }
    let words = body
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
        .collect();
    Some(((start, part), sealed_at, member_len, Bloom { words }))
}

fn encode(meta: &MemberMeta, bloom: &Bloom, out: &mut Vec<u8>) {
    let mut p = Vec::with_capacity(FIXED + bloom.bytes());
    p.push(VERSION);
    p.extend_from_slice(&meta.chunk_start.millis().to_le_bytes());
    p.extend_from_slice(&meta.part.to_le_bytes());
    p.extend_from_slice(&meta.sealed_at.to_le_bytes());
    p.extend_from_slice(&meta.member_len.to_le_bytes());
    p.extend_from_slice(&(bloom.words.len() as u32).to_le_bytes());
    for w in &bloom.words {
        p.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    out.extend_from_slice(&p);
}

/// Appends members' summaries to an hour's sidecar, with one write and one fsync. A sidecar that ends in a torn
/// record is cut back to its last whole one first, so that what follows can be read.
pub fn append(path: &Path, members: &[(MemberMeta, Bloom)]) -> io::Result<()> {
    let mut out = Vec::new();
    for (meta, bloom) in members {
        encode(meta, bloom, &mut out);
    }
    let existing = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    if existing > 0 {
        let whole = whole_len(path)?;
        if whole < existing {
            file.set_len(whole)?;
        }
    }
    file.write_all(&out)?;
    file.sync_data()
}

/// The length of a sidecar's whole, intact records.
fn whole_len(path: &Path) -> io::Result<u64> {
    let data = std::fs::read(path)?;
    let mut at = 0usize;
    while let Some(head) = data.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        match data.get(at + 8..at + 8 + len) {
            Some(p) if crc32fast::hash(p) == crc => at += 8 + len,
            _ => break,
        }
    }
    Ok(at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ChunkStart;

    fn lines(items: &[&str]) -> Vec<u8> {
        items
            .iter()
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_summary_never_says_a_present_token_is_absent() {
        let raw = lines(&[
            r#"{"ts":"2024-01-01T00:00:00Z","level":"error","msg":"connection refused by upstream"}"#,
            r#"{"ts":"2024-01-01T00:00:01Z","level":"\u0069nfo","k\u0065y":"v"}"#,
            r#"{"ts":"2024-01-01T00:00:02Z","city":"Zürich"}"#,
        ]);
        let bloom = Bloom::of_lines(&raw);
        for present in [
            "error", "level", "upstream", "info", "key", "Zürich", "01T00",
        ] {
            assert!(
                bloom.may_contain_all(&token_hashes(present.as_bytes(), true)),
                "{present}"
            );
        }
        // A substring's edges may be parts of longer tokens: only its inner tokens must be there.
        assert!(bloom.may_contain_all(&token_hashes(b"nection refused by ups", false)));
        assert_eq!(token_hashes(b"nection", false), Vec::<u64>::new());
        assert_eq!(token_hashes(b" refused ", false).len(), 1);
        // What is not there is (almost always) said to be absent.
        let absent = ["warning", "web7", "E42", "nothing"]
            .iter()
            .filter(|t| bloom.may_contain_all(&token_hashes(t.as_bytes(), true)))
            .count();
        assert!(absent <= 1, "{absent} false positives of 4");
    }

    #[test]
    fn records_apply_to_their_member_only_and_a_torn_tail_is_cut() {
        let dir = std::env::temp_dir().join(format!("hg-sum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("2024010100.sum");
        let _ = std::fs::remove_file(&path);
        let meta = |part: u32, len: u64| MemberMeta {
            chunk_start: ChunkStart::from_stored(1_704_067_200_000),
            width_secs: 10,
            part,
            last_part: true,
            entries: 1,
            sealed_at: 1_704_067_300_000,
            first_ts: 1_704_067_200_000,
            last_ts: 1_704_067_200_000,
            raw_len: 10,
            member_len: len,
        };
        let bloom = Bloom::of_lines(b"{\"a\":\"x\"}\n");
        append(&path, &[(meta(0, 100), bloom.clone())]).unwrap();
        // A torn record after it.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        append(&path, &[(meta(1, 200), bloom.clone())]).unwrap();
        let read = HourSummaries::read(&path).unwrap();
        assert_eq!(read.of(&meta(0, 100)), Some(&bloom));
        assert_eq!(read.of(&meta(1, 200)), Some(&bloom));
        // Another member at the same place (a rewritten hour): no summary.
        assert_eq!(read.of(&meta(0, 101)), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
