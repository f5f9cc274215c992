//! The read side: which chunk and part a page shows, how pages link, whether a page is final, and its lines.
//!
//! Locating a page touches memory only (the state and the archive indexes), so a final page can be answered
//! with `304` or from a cache without reaching the disk; reading its lines is a separate step.
//!
//! Pages are whole chunks, or parts of at most `max_member_entries` events for bigger chunks, in time order.
//! A sealed chunk's parts are its gzip members, fixed at sealing; an open chunk's parts are cut the same way
//! on every read. `before/{T}` without a part is a chunk's last (newest) part, so a reader walking back in time
//! lands on the newest events of each chunk first.

use std::io;
use std::sync::Arc;

use super::chunk::OpenChunk;
use super::{Generation, SeriesName, Store, StoreError, lock};
use crate::archive::{Cold, HourIndex, SeriesArchive, member};
use crate::ingest::log::Lines;
use crate::ingest::wal::LineRef;
use crate::time::{self, ChunkStart, ChunkWidth, Millis};

/// Which page a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageRef {
    /// The newest page of the series.
    Head,
    /// The chunk `[end - width, end)`; `part: None` is its last part.
    Before { end: Millis, part: Option<u32> },
    /// The first page at or after `start`, toward the head.
    After { start: Millis },
}

/// Where a page is, found from memory alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub page: PageRef,
    /// Part of every page identity of the series.
    pub generation: Generation,
    pub width: ChunkWidth,
    /// The start of the chunk shown, `None` for a head with no events.
    pub start: Option<Millis>,
    /// Which part, and of how many (0 when the page holds no events).
    pub part: u32,
    pub parts: u32,
    pub prev: Option<PageRef>,
    pub next: Option<PageRef>,
    /// The retention boundary, on the oldest page retention left (whose `prev` it removed).
    pub retention_edge: Option<Millis>,
    /// Its content and links can never change again.
    pub is_final: bool,
    /// When its chunk was sealed; only for final pages with events.
    pub sealed_at: Option<Millis>,
}

impl Located {
    /// The same page named the one way links name it: a last part as `part: None`.
    pub fn canonical(&self) -> PageRef {
        match self.page {
            PageRef::Before { end, part } => PageRef::Before {
                end,
                part: part.filter(|&p| p + 1 < self.parts),
            },
            other => other,
        }
    }
}

/// A page's events.
#[derive(Debug, Default)]
pub struct PageLines {
    /// NDJSON: each line ends in `\n`.
    pub lines: Vec<u8>,
    pub count: usize,
    /// The stored gzip member holding exactly these lines, when the page is a sealed part.
    pub member: Option<Vec<u8>>,
}

/// Why one look could not locate a page.
enum Miss {
    /// An hour index memory does not hold.
    Cold(Cold),
    Store(StoreError),
}

impl From<Cold> for Miss {
    fn from(c: Cold) -> Miss {
        Miss::Cold(c)
    }
}

impl From<StoreError> for Miss {
    fn from(e: StoreError) -> Miss {
        Miss::Store(e)
    }
}

/// A non-empty chunk as pages see it.
#[derive(Clone, Copy, Debug)]
struct ChunkView {
    start: Millis,
    parts: u32,
    sealed_at: Option<Millis>,
}

impl Store {
    /// Finds a page: its chunk, part, links and finality. Blocking: an hour index memory does not hold is read
    /// (with no lock held), then the page is looked up again.
    pub fn locate(&self, name: &SeriesName, page: PageRef) -> Result<Located, StoreError> {
        // Each round reads one more index and keeps it for the next, whatever the cache keeps: a page needs at
        // most three (its own hour's, and its neighbours').
        let mut held = Vec::new();
        loop {
            match self.try_locate(name, page, &held) {
                Err(Miss::Cold(Cold(hour))) => {
                    let archive = self
                        .archive(name)
                        .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
                    held.push(archive.warm(hour)?);
                }
                Err(Miss::Store(e)) => return Err(e),
                Ok(at) => return Ok(at),
            }
        }
    }

    /// `locate` from memory alone: `None` when an hour index must be read first (then `locate` does it).
    pub fn locate_cached(
        &self,
        name: &SeriesName,
        page: PageRef,
    ) -> Result<Option<Located>, StoreError> {
        match self.try_locate(name, page, &[]) {
            Ok(at) => Ok(Some(at)),
            Err(Miss::Cold(_)) => Ok(None),
            Err(Miss::Store(e)) => Err(e),
        }
    }

    /// One look, from memory: the state and the index cache.
    fn try_locate(
        &self,
        name: &SeriesName,
        page: PageRef,
        held: &[Arc<HourIndex>],
    ) -> Result<Located, Miss> {
        let max = self.inner.cfg.max_member_entries;
        let st = lock(&self.inner.state);
        let s = st
            .series
            .get(name.as_str())
            .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
        let archive = &s.archive;
        let w = s.width.millis();
        // Pages never overlap: a URL's time is a chunk boundary of this series.
        if let PageRef::Before { end: t, .. } | PageRef::After { start: t } = page
            && !s.width.is_aligned(t)
        {
            return Err(StoreError::Misaligned { t, width: s.width }.into());
        }
        // What retention removed is gone, never another page at the same URL.
        let gone = match page {
            PageRef::Before { end, .. } => end <= s.retained_from,
            PageRef::After { start } => start < s.retained_from,
            PageRef::Head => false,
        };
        if gone && s.retained_from > 0 {
            return Err(StoreError::Gone(s.retained_from).into());
        }
        let in_memory = |start: &ChunkStart, c: &OpenChunk| ChunkView {
            start: start.millis(),
            parts: c.parts(max),
            sealed_at: None,
        };
        let from_archive = |c: crate::archive::ChunkSummary| ChunkView {
            start: c.start.millis(),
            parts: c.parts,
            sealed_at: Some(c.sealed_at),
        };
        // A chunk being sealed can be in memory and in the archive at once; the archive wins.
        let at = |start: Millis| -> Result<Option<ChunkView>, Cold> {
            let key = ChunkStart::from_stored(start);
            Ok(archive
                .summary_of(key, held)?
                .map(from_archive)
                .or_else(|| {
                    s.sealing
                        .get(&key)
                        .map(|c| in_memory(&key, c))
                        .or_else(|| s.open.get(&key).map(|c| in_memory(&key, c)))
                }))
        };
        let newest_before = |t: Millis| {
            let key = ChunkStart::from_stored(t);
            let memory = [
                s.sealing
                    .range(..key)
                    .next_back()
                    .map(|(k, c)| in_memory(k, c)),
                s.open
                    .range(..key)
                    .next_back()
                    .map(|(k, c)| in_memory(k, c)),
            ];
            let stored = archive.chunk_before(t, held)?.map(from_archive);
            Ok::<_, Cold>(pick(stored, memory, |a, b| a.start > b.start))
        };
        let oldest_from = |t: Millis| {
            let key = ChunkStart::from_stored(t);
            let memory = [
                s.sealing.range(key..).next().map(|(k, c)| in_memory(k, c)),
                s.open.range(key..).next().map(|(k, c)| in_memory(k, c)),
            ];
            let stored = archive.chunk_from(t, held)?.map(from_archive);
            Ok::<_, Cold>(pick(stored, memory, |a, b| a.start < b.start))
        };

        let (chunk, part) = match page {
            PageRef::Head => match newest_before(Millis::MAX)? {
                Some(c) => (Some(c), c.parts - 1),
                None => (None, 0),
            },
            PageRef::Before { end, part } => match at(end - w)? {
                Some(c) => {
                    let p = part.unwrap_or(c.parts - 1);
                    if p >= c.parts {
                        return Err(Miss::Store(StoreError::NoSuchPart {
                            part: p,
                            parts: c.parts,
                        }));
                    }
                    (Some(c), p)
                }
                None if part.is_some_and(|p| p > 0) => {
                    return Err(Miss::Store(StoreError::NoSuchPart {
                        part: part.unwrap_or(0),
                        parts: 0,
                    }));
                }
                None => (None, 0),
            },
            PageRef::After { start } => (oldest_from(start)?, 0),
        };
        let start = match (chunk, page) {
            (Some(c), _) => Some(c.start),
            (None, PageRef::Before { end, .. }) => Some(end - w),
            (None, PageRef::After { start }) => Some(start),
            (None, PageRef::Head) => None,
        };
        let parts = chunk.map_or(0, |c| c.parts);
        let part_ref = |end: Millis, k: u32, parts: u32| PageRef::Before {
            end,
            part: (k + 1 < parts).then_some(k),
        };

        let prev = match start {
            Some(_) if part > 0 => start.map(|st| part_ref(st + w, part - 1, parts)),
            Some(st) => newest_before(st)?.map(|c| part_ref(c.start + w, c.parts - 1, c.parts)),
            None => None,
        };
        let next = match (page, start) {
            (PageRef::Head, _) | (_, None) => None,
            (_, Some(st)) if part + 1 < parts => Some(part_ref(st + w, part + 1, parts)),
            (_, Some(st)) => match oldest_from(st + w)? {
                Some(c) if c.start + w <= s.sealed => Some(part_ref(c.start + w, 0, c.parts)),
                // An `after` page with nothing in it is the end of the road.
                None if chunk.is_none() && matches!(page, PageRef::After { .. }) => None,
                _ => Some(PageRef::After { start: st + w }),
            },
        };
        // Past the last time a URL can name there is nothing to link to (no event is that late).
        let nameable = |p: &PageRef| match *p {
            PageRef::Before { end: t, .. } | PageRef::After { start: t } => t <= time::MAX_STAMP,
            PageRef::Head => true,
        };
        let (prev, next) = (prev.filter(nameable), next.filter(nameable));
        // The oldest page left by retention lost its `prev`: that shows in its identity.
        let retention_edge = (prev.is_none() && s.retained_from > 0).then_some(s.retained_from);
        let is_final = matches!(page, PageRef::Before { .. })
            && start.is_some_and(|st| st + w <= s.sealed)
            && matches!(next, Some(PageRef::Before { .. }));
        Ok(Located {
            page,
            generation: s.generation(),
            width: s.width,
            start,
            part,
            parts,
            prev,
            next,
            retention_edge,
            is_final,
            sealed_at: chunk.and_then(|c| c.sealed_at).filter(|_| is_final),
        })
    }

    /// Reads a located page's lines: from its gzip member when the chunk is sealed, otherwise from the log.
    pub fn read_page(&self, name: &SeriesName, at: &Located) -> Result<PageLines, StoreError> {
        let Some(start) = at.start.filter(|_| at.parts > 0) else {
            return Ok(PageLines::default());
        };
        let key = ChunkStart::from_stored(start);
        let archive = self
            .archive(name)
            .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
        // A chunk can move from memory to its archive while we read; then its log segment may be gone too, and
        // the next round finds it in the archive.
        for _ in 0..3 {
            if archive.contains(key)? {
                return read_sealed(&archive, key, at.part);
            }
            let snapshot = {
                let st = lock(&self.inner.state);
                st.series.get(name.as_str()).and_then(|s| {
                    s.sealing
                        .get(&key)
                        .map(|c| (**c).clone())
                        .or_else(|| s.open.get(&key).cloned())
                })
            };
            let Some(chunk) = snapshot else {
                continue;
            };
            match read_open(
                &chunk,
                at.part,
                self.inner.cfg.max_member_entries,
                self.inner.lines.as_deref(),
            ) {
                Ok(lines) => return Ok(lines),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::Storage(
                        format!("reading the log: {e}"),
                        Some(e.kind()),
                    ));
                }
            }
        }
        Err(StoreError::Storage(
            format!("chunk {start} of {name} moved while being read"),
            None,
        ))
    }
}

/// A page read for a filter: its lines, or nothing because its summary says the filter cannot match it.
#[derive(Debug)]
pub enum Read {
    Lines(PageLines),
    /// A sealed member left unread: the bytes of events it holds (what reading it would have cost).
    Skipped {
        bytes: u64,
    },
}

impl Read {
    /// The bytes of events it stands for, read or not.
    pub fn bytes(&self) -> u64 {
        match self {
            Read::Lines(l) => l.lines.len() as u64,
            Read::Skipped { bytes } => *bytes,
        }
    }
}

impl Store {
    /// `read_page` for a filter that needs every token of `tokens` (`Filter::tokens`): a sealed part whose
    /// summary says it lacks one is not read. Blocking.
    pub fn read_for(
        &self,
        name: &SeriesName,
        at: &Located,
        tokens: &[u64],
    ) -> Result<Read, StoreError> {
        match self.skips(name, at, tokens)? {
            Some(bytes) => Ok(Read::Skipped { bytes }),
            None => self.read_page(name, at).map(Read::Lines),
        }
    }

    /// Whether `read_for` would skip the page: the bytes of events it holds when its summary rules the filter
    /// out, `None` when it must be read (counted as read, when sealed). Blocking: summaries may be read.
    pub fn skips(
        &self,
        name: &SeriesName,
        at: &Located,
        tokens: &[u64],
    ) -> Result<Option<u64>, StoreError> {
        let (false, Some(start), Some(archive)) = (
            tokens.is_empty(),
            at.start.filter(|_| at.parts > 0),
            self.archive(name),
        ) else {
            return Ok(None);
        };
        let key = ChunkStart::from_stored(start);
        if !archive.contains(key)? {
            return Ok(None);
        }
        let metrics = &self.inner.metrics;
        if let Some(entry) = archive.chunk(key)?.get(at.part as usize)
            && !archive.may_hold(entry, tokens)
        {
            crate::metrics::add(&metrics.members_skipped, 1);
            return Ok(Some(entry.meta.raw_len));
        }
        crate::metrics::add(&metrics.members_scanned, 1);
        Ok(None)
    }
}

impl Store {
    /// A located page's stored gzip member, checked whole (see `SeriesArchive::read_verified`), when its chunk
    /// is sealed: for exports that send it as it is.
    pub fn read_stored(
        &self,
        name: &SeriesName,
        at: &Located,
    ) -> Result<Option<(member::MemberMeta, Vec<u8>)>, StoreError> {
        let (Some(start), Some(archive)) = (at.start, self.archive(name)) else {
            return Ok(None);
        };
        let key = ChunkStart::from_stored(start);
        if at.parts == 0 || !archive.contains(key)? {
            return Ok(None);
        }
        let Some(entry) = archive.chunk(key)?.get(at.part as usize).copied() else {
            return Ok(None);
        };
        Ok(Some((entry.meta, archive.read_verified(&entry)?)))
    }

    /// The series' persisted sealed watermark, how far the sealer has sealed in memory, and the series'
    /// generation: what decides whether a range is final, and its identity. Nothing is final for a series whose
    /// folder is not made yet.
    pub fn watermark(&self, name: &SeriesName) -> Option<(Millis, Millis, Generation)> {
        let st = lock(&self.inner.state);
        st.series.get(name.as_str()).map(|s| {
            let (sealed, swept) = if s.persisted {
                (s.sealed, s.swept)
            } else {
                (Millis::MIN, Millis::MIN)
            };
            (sealed, swept, s.generation())
        })
    }

    /// The persisted sealed watermark, raised first to what the sealer has sealed in memory when that covers
    /// `to` and the persisted one does not: an answer about `[.., to)` is final only once the watermark past it
    /// is durable, or a restart could let events in below it. Blocking (a settings file may be written).
    pub fn final_watermark(
        &self,
        name: &SeriesName,
        to: Millis,
    ) -> Result<(Millis, Generation), StoreError> {
        let (sealed, swept, generation) = self
            .watermark(name)
            .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
        if to <= sealed || to > swept {
            return Ok((sealed, generation));
        }
        let settings = self
            .inner
            .persist_settings(name.as_str(), |st| st.sealed = st.sealed.max(swept))?
            .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
        Ok((settings.sealed, settings.generation()))
    }

    /// Event counts in `[from, to)` per bucket of `step`, from the hour summaries, indexes and open chunks
    /// alone (no line is read). `from` and `step` must be multiples of the series' width, so chunks never
    /// straddle buckets. Blocking: an hour that a bucket does not hold whole has its index read.
    /// The hours of `[from, to)` that hold events, each cut to the range, with their events (sealed or not) and,
    /// for a whole hour below `sealed`, the bytes of its archive (what a gzip export of it is): an export
    /// manifest's entries. Blocking (hour indexes may be read).
    pub fn hours_of(
        &self,
        name: &SeriesName,
        from: Millis,
        to: Millis,
        sealed: Millis,
    ) -> Result<Vec<HourPiece>, StoreError> {
        let aligned = time::Hour::of(from).start();
        let end = time::Hour::of(to - 1).start() + time::HOUR;
        let counts = self.histogram(name, aligned, end, time::HOUR)?;
        let archive = {
            let st = lock(&self.inner.state);
            let s = st
                .series
                .get(name.as_str())
                .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
            s.archive.clone()
        };
        let mut pieces = Vec::new();
        for (i, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let start = aligned + i as Millis * time::HOUR;
            let (lo, hi) = (start.max(from), (start + time::HOUR).min(to));
            let whole = lo == start && hi == start + time::HOUR;
            let events = if whole {
                n
            } else {
                self.histogram(name, lo, hi, hi - lo)?
                    .first()
                    .copied()
                    .unwrap_or(0)
            };
            if events == 0 {
                continue;
            }
            let archive_bytes = (whole && hi <= sealed)
                .then(|| archive.hour_summary(time::Hour::of(start)))
                .flatten()
                .filter(|h| h.events == events)
                .map(|h| h.bytes);
            pieces.push(HourPiece {
                from: lo,
                to: hi,
                events,
                archive_bytes,
            });
        }
        Ok(pieces)
    }

    pub fn histogram(
        &self,
        name: &SeriesName,
        from: Millis,
        to: Millis,
        step: Millis,
    ) -> Result<Vec<u64>, StoreError> {
        let buckets = time::buckets(from, to, step);
        let mut counts = vec![0u64; buckets];
        let bucket = |start: Millis| ((start - from) / step) as usize;
        let (archive, memory) = {
            let st = lock(&self.inner.state);
            let s = st
                .series
                .get(name.as_str())
                .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
            let range = ChunkStart::from_stored(from)..ChunkStart::from_stored(to);
            let memory: Vec<(ChunkStart, u64)> = s
                .sealing
                .range(range.clone())
                .map(|(k, c)| (*k, c.len() as u64))
                .chain(s.open.range(range).map(|(k, c)| (*k, c.len() as u64)))
                .collect();
            (s.archive.clone(), memory)
        };
        // An hour inside one bucket, with nothing of it in memory, is counted from its summary alone.
        let in_memory: std::collections::HashSet<time::Hour> =
            memory.iter().map(|(start, _)| start.hour()).collect();
        let whole = |hour: time::Hour| {
            !in_memory.contains(&hour)
                && bucket(hour.start()) == bucket(hour.start() + time::HOUR - 1)
        };
        let mut archived = std::collections::HashSet::new();
        archive.chunk_counts(from, to, whole, |start, n| {
            archived.insert(start);
            counts[bucket(start.millis())] += n;
        })?;
        // A chunk being sealed may be counted by both: the archive's count wins.
        for (start, n) in memory.into_iter().filter(|(s, _)| !archived.contains(s)) {
            counts[bucket(start.millis())] += n;
        }
        Ok(counts)
    }
}

/// The better of an archive candidate and in-memory candidates by `better`; on a tie the archive's.
fn pick(
    stored: Option<ChunkView>,
    memory: [Option<ChunkView>; 2],
    better: impl Fn(&ChunkView, &ChunkView) -> bool,
) -> Option<ChunkView> {
    memory
        .into_iter()
        .flatten()
        .fold(stored, |best, c| match best {
            Some(b) if !better(&c, &b) => Some(b),
            _ => Some(c),
        })
}

fn read_sealed(
    archive: &SeriesArchive,
    start: ChunkStart,
    part: u32,
) -> Result<PageLines, StoreError> {
    let entries = archive.chunk(start)?;
    let entry = entries.get(part as usize).ok_or(StoreError::NoSuchPart {
        part,
        parts: entries.len() as u32,
    })?;
    let (lines, bytes) = archive.read_part(entry)?;
    Ok(PageLines {
        lines,
        count: entry.meta.entries as usize,
        member: Some(bytes),
    })
}

fn read_open(
    chunk: &OpenChunk,
    part: u32,
    max: usize,
    lines: Option<&dyn Lines>,
) -> io::Result<PageLines> {
    let order = chunk.time_order();
    let Some(slice) = order.chunks(max.max(1)).nth(part as usize) else {
        return Ok(PageLines::default());
    };
    let refs: Vec<LineRef> = slice.iter().map(|&i| chunk.get(i as usize).line).collect();
    let Some(log) = lines else {
        return Err(io::ErrorKind::NotFound.into());
    };
    let mut lines = Vec::new();
    log.fresh().read_lines(&refs, &mut lines)?;
    Ok(PageLines {
        lines,
        count: refs.len(),
        member: None,
    })
}

/// One part of a chunk as a walk over a range visits it: located, with its chunk's bounds.
pub struct PartAt {
    pub at: Located,
    /// The chunk `[start, end)`.
    pub start: Millis,
    pub end: Millis,
    /// The chunk's last part.
    pub last: bool,
}

/// The parts of the non-empty chunks that start in a range, in time order (`Store::parts`). Memory alone
/// but for hour indexes `locate` reads; stops at the first error.
pub struct Parts<'a> {
    store: &'a Store,
    name: &'a SeriesName,
    width: Millis,
    /// Where the next chunk is looked for, and the range's end.
    cursor: Millis,
    to: Millis,
    /// The chunk being walked: its start, its next part and how many it has.
    chunk: Option<(Millis, u32, u32)>,
    done: bool,
}

impl Iterator for Parts<'_> {
    type Item = Result<PartAt, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let step = match self.chunk {
                Some((start, k, n)) if k < n => {
                    self.chunk = Some((start, k + 1, n));
                    let end = start + self.width;
                    let page = PageRef::Before { end, part: Some(k) };
                    self.store.locate(self.name, page).map(|at| {
                        Some(PartAt {
                            at,
                            start,
                            end,
                            last: k + 1 == n,
                        })
                    })
                }
                Some((start, ..)) => {
                    self.cursor = start + self.width;
                    self.chunk = None;
                    Ok(None)
                }
                None if self.cursor >= self.to => {
                    self.done = true;
                    Ok(None)
                }
                None => self
                    .store
                    .locate(self.name, PageRef::After { start: self.cursor })
                    .map(|at| {
                        match at.start.filter(|&s| at.parts > 0 && s < self.to) {
                            Some(start) => self.chunk = Some((start, 0, at.parts)),
                            None => self.done = true,
                        }
                        None
                    }),
            };
            match step {
                Ok(Some(part)) => return Some(Ok(part)),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Store {
    /// The parts of the non-empty chunks that start in `[from, to)` (`from` taken down to a chunk boundary),
    /// in time order: what exports, histograms that read events and filtered `after` pages walk.
    pub fn parts<'a>(
        &'a self,
        name: &'a SeriesName,
        from: Millis,
        to: Millis,
    ) -> Result<Parts<'a>, StoreError> {
        let width = self
            .width_of(name)
            .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
        Ok(Parts {
            store: self,
            name,
            width: width.millis(),
            cursor: width.align_down(from),
            to,
            chunk: None,
            done: false,
        })
    }
}

/// One hour of an export manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HourPiece {
    pub from: Millis,
    pub to: Millis,
    pub events: u64,
    pub archive_bytes: Option<u64>,
}
