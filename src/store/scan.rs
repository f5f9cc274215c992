//! Filtered pages: a walk over a series' pages that keeps the lines a filter matches, until it has enough of
//! them or has read as much as it may.
//!
//! A filtered page is a range of whole parts, not one part: walking back with a sparse filter must not cost a
//! run of empty pages. `scan_back` starts at a part (the newest one for the head) and goes back part by part
//! along the pages' own `prev` links; `scan_forward` starts at a chunk boundary and goes forward a chunk at a
//! time. Either stops after the part (chunk) that brought the matches to `limit`, or that brought what it read
//! to `budget` bytes; the page's far link starts where it stopped, so walking `prev` from the filtered head
//! visits every matching event exactly once.
//!
//! A sealed part whose summary rules the filter out is not read (`Store::read_for`), but counts against the
//! budget as if it had been: where a walk stops never depends on which members have summaries.
//!
//! What a walk reads depends only on the stored parts, never on caches or timing: a `before` page whose end is
//! at or below the persisted watermark reads the same parts, and so holds the same lines and links, for as long
//! as the series' generation and its retention boundary stay the same. Those two are part of its identity.

use super::{Generation, PageRef, Read, SeriesName, Store, StoreError, lock};
use crate::filter::Filter;
use crate::time::Millis;

/// How much one filtered page may hold and read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScanLimits {
    /// Matching events to collect, at most (a page may hold more: its last part is kept whole).
    pub limit: usize,
    /// Bytes of events to read (inflated), at most, past the first part.
    pub budget: u64,
}

/// A filtered page: its matching lines in time order and where the walk went.
#[derive(Debug)]
pub struct Filtered {
    /// NDJSON: each line ends in `\n`.
    pub lines: Vec<u8>,
    pub count: usize,
    /// The range the walk read, `[from, to)`; `None` when it found no events at all.
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    /// Where the walk goes on, back (`prev`) and forward (`next`).
    pub prev: Option<PageRef>,
    pub next: Option<PageRef>,
    /// Bytes of events read.
    pub scanned: u64,
    /// The series' generation and retention boundary when it was read: with the page and the filter, what a
    /// final filtered page's identity is made of.
    pub generation: Generation,
    pub retained_from: Millis,
    /// Its content and links can never change again (for this generation and retention boundary).
    pub is_final: bool,
}

impl Filtered {
    fn empty(generation: Generation, retained_from: Millis) -> Filtered {
        Filtered {
            lines: Vec::new(),
            count: 0,
            from: None,
            to: None,
            prev: None,
            next: None,
            scanned: 0,
            generation,
            retained_from,
            is_final: false,
        }
    }
}

impl Store {
    /// The filtered page that ends with `page` (the head, or a `before` part) and goes back from it.
    /// Blocking: parts are read.
    pub fn scan_back(
        &self,
        name: &SeriesName,
        page: PageRef,
        filter: &Filter,
        limits: ScanLimits,
    ) -> Result<Filtered, StoreError> {
        let (sealed, generation, retained_from) = self.scan_basis(name)?;
        let tokens = filter.tokens();
        let mut at = self.locate(name, page)?;
        let width = at.width.millis();
        let mut out = Filtered {
            to: match page {
                PageRef::Before { end, .. } => Some(end),
                _ => at.start.map(|s| s + width),
            },
            next: match page {
                PageRef::Before { end, .. } => Some(PageRef::After { start: end }),
                _ => None,
            },
            ..Filtered::empty(generation, retained_from)
        };
        // Newest first; put in time order at the end.
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        loop {
            out.from = at.start.or(out.from);
            out.prev = at.prev;
            if at.parts > 0 {
                let read = self.read_for(name, &at, &tokens)?;
                out.scanned += read.bytes();
                if let Read::Lines(lines) = read {
                    let mut kept = Vec::new();
                    out.count += keep(filter, &lines.lines, &mut kept);
                    pieces.push(kept);
                }
            }
            if out.count >= limits.limit || out.scanned >= limits.budget {
                break;
            }
            match at.prev {
                Some(p) => at = self.locate(name, p)?,
                None => break,
            }
        }
        for piece in pieces.iter().rev() {
            out.lines.extend_from_slice(piece);
        }
        out.is_final = matches!(page, PageRef::Before { end, .. } if end <= sealed)
            && self.scan_basis(name)? == (sealed, generation, retained_from);
        Ok(out)
    }

    /// The filtered page that begins at the chunk boundary `start` and goes forward, whole chunks at a time.
    /// Never final: like every `after` page, it may be asked for before what follows it exists.
    /// Blocking: parts are read.
    pub fn scan_forward(
        &self,
        name: &SeriesName,
        start: Millis,
        filter: &Filter,
        limits: ScanLimits,
    ) -> Result<Filtered, StoreError> {
        let (_, generation, retained_from) = self.scan_basis(name)?;
        let tokens = filter.tokens();
        let first = self.locate(name, PageRef::After { start })?;
        let mut out = Filtered {
            from: Some(start),
            to: Some(start),
            prev: first.prev,
            ..Filtered::empty(generation, retained_from)
        };
        let mut cursor = start;
        let mut ended = true;
        for part in self.parts(name, start, Millis::MAX)? {
            let part = part?;
            let read = self.read_for(name, &part.at, &tokens)?;
            out.scanned += read.bytes();
            if let Read::Lines(lines) = read {
                out.count += keep(filter, &lines.lines, &mut out.lines);
            }
            if part.last {
                cursor = part.end;
                out.to = Some(part.end);
                if out.count >= limits.limit || out.scanned >= limits.budget {
                    ended = false;
                    break;
                }
            }
        }
        // An `after` page with nothing in it is the end of the road, as unfiltered.
        out.next = (!ended || out.count > 0).then_some(PageRef::After { start: cursor });
        Ok(out)
    }

    /// The persisted sealed watermark, generation and retention boundary of a series: whether a filtered
    /// `before` page is final (its end at or below the watermark), and what its identity holds besides itself.
    pub fn scan_basis(
        &self,
        name: &SeriesName,
    ) -> Result<(Millis, Generation, Millis), StoreError> {
        let (sealed, _, generation) = self
            .watermark(name)
            .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
        let st = lock(&self.inner.state);
        let retained_from = st.series.get(name.as_str()).map_or(0, |s| s.retained_from);
        Ok((sealed, generation, retained_from))
    }
}

/// Appends the lines of `lines` that `filter` matches to `out`; returns how many.
fn keep(filter: &Filter, lines: &[u8], out: &mut Vec<u8>) -> usize {
    let mut n = 0;
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if filter.matches(line) {
            out.extend_from_slice(line);
            out.push(b'\n');
            n += 1;
        }
    }
    n
}
