//! A chunk that is not sealed yet: its events in arrival order, as times and places in the log, in 6 bytes an
//! event. Events that follow each other in one batch's record (most of them) form a run: the run knows where
//! in the log it starts, each event only its time (from the chunk's first event's) and where its line starts
//! in the run; its line ends where the next event's header begins. Events and runs are kept in blocks of
//! `BLOCK`; full blocks are immutable and shared, so a reader takes a snapshot of a chunk of millions of
//! events by cloning a few thousand `Arc`s and two partial blocks, under the state lock.

use std::sync::Arc;

use crate::ingest::wal::{EVENT_HEADER, LineRef, Logged};
use crate::time::Millis;

const BLOCK: usize = 4096;

#[derive(Default, Debug, Clone)]
pub(crate) struct OpenChunk {
    slots: Blocks<Slot>,
    /// Every run but the last, which grows.
    runs: Blocks<Run>,
    last: Option<Run>,
    /// The first event's time: the others' are kept from it. A chunk spans at most an hour, so they fit.
    base: Millis,
    /// Bytes of the lines.
    bytes: u64,
    /// The earliest and latest event time, kept as events arrive so that series info is O(chunks).
    span: Option<(Millis, Millis)>,
}

/// One event in 6 bytes: its time from the chunk's base (23 bits, signed: the events of a chunk lie within an
/// hour of each other, 3,600,000 ms, and 2^22 ms is 70 minutes), and where its line starts from its run's start
/// (25 bits: a run that would reach past 32 MiB ends there).
#[derive(Clone, Copy, Debug, Default)]
struct Slot([u16; 3]);

const TS_BIAS: i64 = 1 << 22;
const REL_BITS: u32 = 25;
const REL_LIMIT: u64 = 1 << REL_BITS;

impl Slot {
    fn new(ts: i64, rel: u32) -> Slot {
        let ts = (ts + TS_BIAS).clamp(0, 2 * TS_BIAS - 1) as u64;
        let v = ts << REL_BITS | u64::from(rel);
        Slot([v as u16, (v >> 16) as u16, (v >> 32) as u16])
    }

    fn bits(self) -> u64 {
        u64::from(self.0[0]) | u64::from(self.0[1]) << 16 | u64::from(self.0[2]) << 32
    }

    /// The time from the chunk's base.
    fn ts(self) -> i64 {
        (self.bits() >> REL_BITS) as i64 - TS_BIAS
    }

    fn rel(self) -> u32 {
        (self.bits() & (REL_LIMIT - 1)) as u32
    }
}

/// Events that lie one after another in one log segment, lines `EVENT_HEADER` bytes apart.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// The index of its first event.
    first: u32,
    segment: u32,
    /// Where its first line starts in the segment.
    offset: u64,
    /// Where its last line ends, from `offset`.
    end: u32,
}

impl OpenChunk {
    pub fn push(&mut self, e: Logged) {
        let index = self.slots.len() as u32;
        if self.span.is_none() {
            self.base = e.ts;
        }
        let line = e.line;
        // The next line of the last run's batch continues it, unless the run would reach past what a slot
        // can say.
        let next = self.last.as_ref().and_then(|r| {
            let rel = u64::from(r.end) + EVENT_HEADER;
            let continues =
                r.segment == line.segment && r.offset + rel == line.offset && rel < REL_LIMIT;
            let end = u32::try_from(rel + u64::from(line.len)).ok()?;
            continues.then_some((rel as u32, end))
        });
        let rel = match (next, self.last.as_mut()) {
            (Some((rel, end)), Some(run)) => {
                run.end = end;
                rel
            }
            _ => {
                let run = Run {
                    first: index,
                    segment: line.segment,
                    offset: line.offset,
                    end: line.len,
                };
                if let Some(done) = self.last.replace(run) {
                    self.runs.push(done);
                }
                0
            }
        };
        self.slots.push(Slot::new(e.ts - self.base, rel));
        self.bytes += u64::from(line.len);
        self.span = Some(
            self.span
                .map_or((e.ts, e.ts), |(lo, hi)| (lo.min(e.ts), hi.max(e.ts))),
        );
    }

    pub fn span(&self) -> Option<(Millis, Millis)> {
        self.span
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The time of event `i`.
    pub fn ts(&self, i: usize) -> Millis {
        self.base + self.slots.get(i).ts()
    }

    pub fn get(&self, i: usize) -> Logged {
        let slot = self.slots.get(i);
        let (run, next_first) = self.run_of(i as u32);
        // A line ends where the next event's header begins, the run's last line where the run ends.
        let end = if (i as u32) + 1 < next_first {
            self.slots.get(i + 1).rel() - EVENT_HEADER as u32
        } else {
            run.end
        };
        Logged {
            ts: self.base + slot.ts(),
            line: LineRef {
                segment: run.segment,
                len: end - slot.rel(),
                offset: run.offset + u64::from(slot.rel()),
            },
        }
    }

    /// The run holding event `i`, and the index where the run after it begins (the chunk's length for the last).
    fn run_of(&self, i: u32) -> (Run, u32) {
        let len = self.slots.len() as u32;
        let last = self.last.unwrap_or_default();
        if i >= last.first {
            return (last, len);
        }
        // The first run that begins after `i`; the one before it holds `i`.
        let (mut lo, mut hi) = (0, self.runs.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.runs.get(mid).first <= i {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let next_first = if lo < self.runs.len() {
            self.runs.get(lo).first
        } else {
            last.first
        };
        (self.runs.get(lo.saturating_sub(1)), next_first)
    }

    /// The events' positions in time order; events with the same time keep their arrival order.
    pub fn time_order(&self) -> Vec<u32> {
        let n = self.len();
        let Some((lo, hi)) = self.span else {
            return Vec::new();
        };
        let range = (hi - lo + 1) as usize;
        if range > 4 * n {
            // A few events far apart: comparisons, ties broken by arrival.
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_unstable_by_key(|&i| (self.slots.get(i as usize).ts(), i));
            return order;
        }
        // A counting sort by the millisecond: two passes, stable, and no comparisons for the millions of events
        // of a busy chunk.
        let from = lo - self.base;
        let at = |slot: Slot| (slot.ts() - from) as usize;
        let mut starts = vec![0u32; range + 1];
        for i in 0..n {
            starts[at(self.slots.get(i)) + 1] += 1;
        }
        for k in 1..=range {
            starts[k] += starts[k - 1];
        }
        let mut order = vec![0u32; n];
        for i in 0..n {
            let slot = &mut starts[at(self.slots.get(i))];
            order[*slot as usize] = i as u32;
            *slot += 1;
        }
        order
    }

    /// How many pages of at most `max_entries` this chunk makes.
    pub fn parts(&self, max_entries: usize) -> u32 {
        self.len().div_ceil(max_entries.max(1)) as u32
    }
}

/// Values in blocks of `BLOCK`: full blocks shared, the last one growing.
#[derive(Debug, Clone)]
struct Blocks<T> {
    full: Vec<Arc<[T]>>,
    tail: Vec<T>,
}

impl<T> Default for Blocks<T> {
    fn default() -> Self {
        Blocks {
            full: Vec::new(),
            tail: Vec::new(),
        }
    }
}

impl<T: Copy> Blocks<T> {
    fn push(&mut self, v: T) {
        if self.tail.len() == BLOCK {
            let block: Arc<[T]> = std::mem::take(&mut self.tail).into();
            self.full.push(block);
            self.tail.reserve(BLOCK);
        }
        self.tail.push(v);
    }

    fn len(&self) -> usize {
        self.full.len() * BLOCK + self.tail.len()
    }

    fn get(&self, i: usize) -> T {
        match self.full.get(i / BLOCK) {
            Some(block) => block[i % BLOCK],
            None => self.tail[i - self.full.len() * BLOCK],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts: i64) -> Logged {
        Logged {
            ts,
            line: LineRef {
                segment: 1,
                len: 3,
                offset: ts as u64 * 100,
            },
        }
    }

    #[test]
    fn blocks_hold_events_in_order_and_sort_stably() {
        let mut c = OpenChunk::default();
        let n = 2 * BLOCK + 5;
        for i in 0..n {
            c.push(event((n - i) as i64 / 2));
        }
        assert_eq!(c.len(), n);
        assert_eq!(c.bytes(), 3 * n as u64);
        assert_eq!(c.get(BLOCK + 1), event((n - BLOCK - 1) as i64 / 2));
        let order = c.time_order();
        let times: Vec<i64> = order.iter().map(|&i| c.get(i as usize).ts).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        // Ties keep their arrival order.
        assert!(
            order
                .windows(2)
                .all(|w| c.get(w[0] as usize).ts < c.get(w[1] as usize).ts || w[0] < w[1])
        );
        assert_eq!(c.parts(BLOCK), 3);
        assert_eq!(c.span(), Some((0, n as i64 / 2)));
        assert_eq!(OpenChunk::default().parts(10), 0);
    }

    #[test]
    fn events_give_back_what_was_pushed_whether_runs_continue_or_break() {
        // Batches whose lines lie one after another, interleaved with other batches' and other segments',
        // across several blocks of events and of runs; some lines empty.
        let mut pushed = Vec::new();
        let mut rng = 0x9e37_79b9_u64;
        let mut next = |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        let mut cursors = [(1u32, 64u64), (1, 1 << 30), (2, 16), (3, 4_000_000_000)];
        let t0 = 1_795_334_360_000;
        for _ in 0..3 * BLOCK {
            let k = next(4) as usize;
            for _ in 0..1 + next(40) {
                let (segment, offset) = cursors[k];
                let len = next(300) as u32;
                pushed.push(Logged {
                    ts: t0 + next(3_600_000) as i64,
                    line: LineRef {
                        segment,
                        len,
                        offset: offset + EVENT_HEADER,
                    },
                });
                cursors[k].1 = offset + EVENT_HEADER + u64::from(len);
            }
            // Now and then a gap: the next line of that batch went to another chunk.
            if next(5) == 0 {
                cursors[k].1 += 1000;
            }
        }
        let mut c = OpenChunk::default();
        for e in &pushed {
            c.push(*e);
        }
        assert_eq!(c.len(), pushed.len());
        assert!(c.runs.len() > BLOCK, "{} runs", c.runs.len());
        for (i, e) in pushed.iter().enumerate() {
            assert_eq!(c.get(i), *e, "event {i}");
            assert_eq!(c.ts(i), e.ts);
        }
        let snapshot = c.clone();
        c.push(pushed[0]);
        assert_eq!(snapshot.len(), pushed.len());
        assert_eq!(snapshot.get(pushed.len() - 1), pushed[pushed.len() - 1]);
        assert_eq!(c.get(pushed.len()), pushed[0]);
    }

    #[test]
    fn a_run_past_what_a_slot_can_say_goes_on_in_a_new_one_and_times_span_an_hour_both_ways() {
        // Forty lines of 1 MiB one after another: a run ends before its lines start 32 MiB in.
        let t0 = 1_795_334_360_000;
        let mut c = OpenChunk::default();
        let mut pushed = Vec::new();
        let mut offset = 100;
        for i in 0..40i64 {
            let ts = match i {
                0 => t0,
                1 => t0 - 3_599_999,
                _ => t0 + 3_599_999 - i,
            };
            let len = 1 << 20;
            let e = Logged {
                ts,
                line: LineRef {
                    segment: 7,
                    len,
                    offset,
                },
            };
            offset += u64::from(len) + EVENT_HEADER;
            c.push(e);
            pushed.push(e);
        }
        assert_eq!(c.runs.len() + 1, 2, "one full run and the last");
        for (i, e) in pushed.iter().enumerate() {
            assert_eq!(c.get(i), *e, "event {i}");
        }
        assert_eq!(c.span(), Some((t0 - 3_599_999, t0 + 3_599_997)));
    }

    #[test]
    fn time_order_is_a_stable_sort_by_time_for_dense_and_sparse_chunks() {
        for (n, spread) in [
            (10_000i64, 2_000i64),
            (50, 3_600_000),
            (1, 1),
            (3_000, 10_000),
        ] {
            let mut c = OpenChunk::default();
            let mut times = Vec::new();
            let mut x = 12_345u64;
            for i in 0..n {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let ts = 1_795_334_360_000 + ((x >> 33) as i64 % spread);
                c.push(Logged {
                    ts,
                    line: LineRef {
                        segment: 1,
                        len: 1,
                        offset: i as u64 * 20,
                    },
                });
                times.push(ts);
            }
            let mut expected: Vec<u32> = (0..n as u32).collect();
            expected.sort_by_key(|&i| times[i as usize]);
            assert_eq!(c.time_order(), expected, "{n} events over {spread} ms");
        }
        assert!(OpenChunk::default().time_order().is_empty());
    }
}
