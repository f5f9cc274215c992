//! The write-ahead log behind an interface: what the store asks of wherever acknowledged batches are kept
//! until their chunks are sealed. `wal::Wal` (segments in the data folder's `_wal/`) and `nats::NatsLog` (a JetStream stream, with a
//! local spool to read lines back from) are its implementations. Records are
//! `wal::encode`d batches; a line is found again by the `LineRef` the log's `Position` gave it
//! (`wal::line_refs`), which only that log interprets.

use std::io;
use std::sync::Arc;

use super::wal::{LineRef, Position, WalError};
use crate::time::Millis;

/// Where acknowledged batches live until sealed. Held by one writer at a time (the commit thread appends,
/// the sealer collects); readers of lines go through `Lines`, without it.
pub trait Log: Send {
    /// Appends encoded records and makes them durable before it returns: where the first one begins. A
    /// refused append leaves nothing that a replay could bring back.
    fn append(&mut self, records: &[u8]) -> Result<Position, WalError>;
    /// What was just appended holds events of `series` up to `newest` (what `collect` goes by).
    fn note(&mut self, series: &Arc<str>, newest: Millis);
    /// After an append: begins a new stretch of the log once the current one is full.
    fn rotate_if_full(&mut self) -> Result<(), WalError>;
    /// Lets go of what holds only events that `sealed(series, newest)` says are sealed; how many pieces went.
    fn collect(&mut self, sealed: &dyn Fn(&str, Millis) -> bool) -> usize;
    /// A reader of this log's lines by reference.
    fn lines(&self) -> Box<dyn Lines>;
    /// Whether raises of closing boundaries must be logged (`wal::encode_close`) before they are made: for a
    /// log that another writer may take over, which must then seal exactly what this one would have.
    fn marks(&self) -> bool {
        false
    }
    /// What a replicated log still holds of this writer's (messages, bytes), as last read: `None` for the local log.
    fn pending(&self) -> Option<(u64, u64)> {
        None
    }
    /// Why the log takes no more appends, if it does not (a replicated log another writer took over).
    fn trouble(&self) -> Option<String> {
        None
    }
}

/// Reads lines back by reference. One per thread; `fresh` makes another.
pub trait Lines: Send + Sync {
    /// Another reader of the same log, with handles of its own.
    fn fresh(&self) -> Box<dyn Lines>;
    /// Appends the lines of `refs` to `out` in the order given, each followed by `\n`. A line no longer in
    /// the log (collected meanwhile) is `NotFound`.
    fn read_lines(&mut self, refs: &[LineRef], out: &mut Vec<u8>) -> io::Result<()>;
}
