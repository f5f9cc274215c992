//! Time and chunk arithmetic: the one place that knows how an instant maps to a chunk, an hour archive and
//! the strings users see. Everything is UTC Unix milliseconds (`Millis`); nothing here touches the disk.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike, Utc};

/// Unix milliseconds, UTC.
pub type Millis = i64;

pub const SECOND: Millis = 1_000;
pub const HOUR: Millis = 3_600 * SECOND;

/// The earliest event time we store: 1970-01-01T00:00:00Z. Earlier times have no sensible hour archive name.
pub const MIN_TIME: Millis = 0;
/// The latest: the last millisecond before the last hour of year 9999, so that every hour archive name has four
/// year digits and every chunk ends at a time a URL can name (`MAX_STAMP` at most), whatever the width.
pub const MAX_TIME: Millis = 253_402_297_199_999;

/// The latest time a page URL names: 9999-12-31T23:59:59Z. Links to anything later are never made.
pub const MAX_STAMP: Millis = 253_402_300_799_000;

/// How far this process' clock is moved from the system's; 0 but in tests (`--clock-offset-ms`).
static CLOCK_OFFSET: AtomicI64 = AtomicI64::new(0);

/// The current wall-clock time.
pub fn now() -> Millis {
    Utc::now().timestamp_millis() + CLOCK_OFFSET.load(Ordering::Relaxed)
}

/// Moves `now()` by `offset`, so a test can put an hour rollover a second away. Set once, at start.
pub fn set_clock_offset(offset: Millis) {
    CLOCK_OFFSET.store(offset, Ordering::Relaxed);
}

/// The width of a series' chunks: a divisor of 3600 seconds, so that no chunk straddles two hour archives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkWidth(u32);

impl ChunkWidth {
    pub const DEFAULT: ChunkWidth = ChunkWidth(10);

    pub fn from_secs(secs: u32) -> Result<ChunkWidth, String> {
        if (1..=3600).contains(&secs) && 3600 % secs == 0 {
            Ok(ChunkWidth(secs))
        } else {
            Err(format!(
                "chunk width {secs} s is not a divisor of 3600 between 1 and 3600"
            ))
        }
    }

    pub fn secs(self) -> u32 {
        self.0
    }

    pub fn millis(self) -> Millis {
        Millis::from(self.0) * SECOND
    }

    /// The chunk that holds instant `t`.
    pub fn chunk_of(self, t: Millis) -> ChunkStart {
        ChunkStart(self.align_down(t))
    }

    /// The largest chunk boundary at or below `t`.
    pub fn align_down(self, t: Millis) -> Millis {
        t.div_euclid(self.millis()) * self.millis()
    }

    pub fn is_aligned(self, t: Millis) -> bool {
        t.rem_euclid(self.millis()) == 0
    }
}

impl fmt::Display for ChunkWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} s", self.0)
    }
}

/// The start of a chunk: a time aligned to its series' width. Only `ChunkWidth::chunk_of` and the archive
/// (which reads starts it wrote itself) make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkStart(Millis);

impl ChunkStart {
    /// Trusts that `t` is aligned: for starts read back from our own archives and indexes.
    pub fn from_stored(t: Millis) -> ChunkStart {
        ChunkStart(t)
    }

    pub fn millis(self) -> Millis {
        self.0
    }

    pub fn hour(self) -> Hour {
        Hour::of(self.0)
    }
}

/// One UTC hour: the unit of an archive file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hour(i64);

impl Hour {
    /// The hour that begins at 1970-01-01T00:00:00Z, before which no event is stored.
    pub const EPOCH: Hour = Hour(0);

    pub fn of(t: Millis) -> Hour {
        Hour(t.div_euclid(HOUR))
    }

    pub fn start(self) -> Millis {
        self.0 * HOUR
    }

    /// `YYYYMMDDHH`, the archive's file stem.
    pub fn stem(self) -> String {
        let t = datetime(self.start());
        format!(
            "{:04}{:02}{:02}{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour()
        )
    }

    /// Parses a file stem written by `stem`; anything else is `None`.
    pub fn parse_stem(stem: &str) -> Option<Hour> {
        if stem.len() != 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let num = |r: std::ops::Range<usize>| stem[r].parse::<u32>().ok();
        let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(4..6)?, num(6..8)?)?;
        let hour = num(8..10)?;
        let t = date.and_hms_opt(hour, 0, 0)?.and_utc().timestamp_millis();
        Some(Hour::of(t))
    }
}

impl fmt::Display for Hour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stem())
    }
}

fn datetime(t: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

/// RFC 3339 with milliseconds and `Z`: the form the server writes (receive times, API answers).
pub fn format_rfc3339(t: Millis) -> String {
    datetime(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time (any offset, any fraction; sub-millisecond digits are dropped).
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A time as page URLs carry it: `YYYY_MM_DD_HH_MM_SS`, UTC.
pub fn format_stamp(t: Millis) -> String {
    datetime(t).format("%Y_%m_%d_%H_%M_%S").to_string()
}

/// Parses a URL time stamp written by `format_stamp`, of a year from 1970 to 9999 (the times events may have;
/// a page before 1970 would show a year no URL can name); sub-second precision cannot be expressed.
pub fn parse_stamp(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 10 | 13 | 16 => *c == b'_',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let t = date.and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    Some(t.and_utc().timestamp_millis()).filter(|t| (MIN_TIME..=MAX_STAMP).contains(t))
}

/// How many buckets of `step` cover `[from, to)`, the last one possibly short: `from < to`, `step > 0`. Never
/// overflows, whatever the step.
pub fn buckets(from: Millis, to: Millis, step: Millis) -> usize {
    let span = to.saturating_sub(from).max(1);
    usize::try_from((span - 1) / step.max(1) + 1).unwrap_or(usize::MAX)
}

/// Whether `t` is within the range of times we store.
pub fn in_range(t: Millis) -> bool {
    (MIN_TIME..=MAX_TIME).contains(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_divisors_of_an_hour() {
        for ok in [1, 2, 5, 10, 60, 600, 900, 3600] {
            assert!(ChunkWidth::from_secs(ok).is_ok(), "{ok}");
        }
        for bad in [0, 7, 11, 3601, 7200] {
            assert!(ChunkWidth::from_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunks_floor_including_before_the_epoch() {
        let w = ChunkWidth::from_secs(10).unwrap();
        assert_eq!(w.chunk_of(25_000).millis(), 20_000);
        assert_eq!(w.chunk_of(20_000).millis(), 20_000);
        assert_eq!(w.chunk_of(19_999).millis(), 10_000);
        assert_eq!(w.align_down(-1), -10_000);
        assert!(w.is_aligned(30_000) && !w.is_aligned(30_001));
    }

    #[test]
    fn hour_stems_round_trip() {
        let t = parse_rfc3339("2014-09-29T23:59:10Z").unwrap();
        let h = Hour::of(t);
        assert_eq!(h.stem(), "2014092923");
        assert_eq!(Hour::parse_stem("2014092923"), Some(h));
        assert_eq!(h.start(), parse_rfc3339("2014-09-29T23:00:00Z").unwrap());
        for bad in [
            "201409292",
            "2014092924",
            "20140230xx",
            "2014023012",
            "abcdefghij",
        ] {
            assert_eq!(Hour::parse_stem(bad), None, "{bad}");
        }
        assert_eq!(Hour::of(MAX_TIME).stem(), "9999123122");
    }

    #[test]
    fn url_stamps_round_trip_and_refuse_other_shapes() {
        let t = parse_rfc3339("2014-09-29T23:59:10Z").unwrap();
        assert_eq!(format_stamp(t), "2014_09_29_23_59_10");
        assert_eq!(parse_stamp("2014_09_29_23_59_10"), Some(t));
        for bad in [
            "2014_9_29_23_59_10",
            "2014-09-29T23:59:10",
            "2014_09_29_24_00_00",
            "2014_02_30_00_00_00",
            "2014_09_29_23_59_1a",
            "2014_09_29_23_59_100",
            "",
            "+014_09_29_23_59_10",
            "0000_01_01_00_00_00",
            "1969_12_31_23_59_50",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
        assert_eq!(parse_stamp("1970_01_01_00_00_00"), Some(0));
        assert_eq!(parse_stamp("9999_12_31_23_59_59"), Some(MAX_STAMP));
        assert_eq!(format_stamp(MAX_STAMP), "9999_12_31_23_59_59");
    }

    #[test]
    fn rfc3339_parses_offsets_and_formats_millis() {
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00.5+01:00"), Some(500));
        assert_eq!(format_rfc3339(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
