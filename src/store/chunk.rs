//! A chunk that is not sealed yet: its events in arrival order, as times and places in the log. Events are kept
//! in blocks of `BLOCK`; full blocks are immutable and shared, so a reader takes a snapshot of a chunk of
//! millions of events by cloning a few hundred `Arc`s and one partial block, under the state lock.

use std::sync::Arc;

use crate::ingest::wal::Logged;
use crate::time::Millis;

const BLOCK: usize = 4096;

#[derive(Default, Debug, Clone)]
pub(crate) struct OpenChunk {
    full: Vec<Arc<[Logged]>>,
    tail: Vec<Logged>,
    /// Bytes of the lines.
    bytes: u64,
    /// The earliest and latest event time, kept as events arrive so that series info is O(chunks).
    span: Option<(Millis, Millis)>,
}

impl OpenChunk {
    pub fn push(&mut self, e: Logged) {
        if self.tail.len() == BLOCK {
            let block: Arc<[Logged]> = std::mem::take(&mut self.tail).into();
            self.full.push(block);
            self.tail.reserve(BLOCK);
        }
        self.tail.push(e);
        self.bytes += u64::from(e.line.len);
        self.span = Some(
            self.span
                .map_or((e.ts, e.ts), |(lo, hi)| (lo.min(e.ts), hi.max(e.ts))),
        );
    }

    pub fn span(&self) -> Option<(Millis, Millis)> {
        self.span
    }

    pub fn len(&self) -> usize {
        self.full.len() * BLOCK + self.tail.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, i: usize) -> Logged {
        match self.full.get(i / BLOCK) {
            Some(block) => block[i % BLOCK],
            None => self.tail[i - self.full.len() * BLOCK],
        }
    }

    /// The events' positions in time order; events with the same time keep their arrival order.
    pub fn time_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        order.sort_by_key(|&i| self.get(i as usize).ts);
        order
    }

    /// How many pages of at most `max_entries` this chunk makes.
    pub fn parts(&self, max_entries: usize) -> u32 {
        self.len().div_ceil(max_entries.max(1)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::wal::LineRef;

    fn event(ts: i64) -> Logged {
        Logged {
            ts,
            line: LineRef {
                segment: 1,
                len: 3,
                offset: ts as u64,
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
}
