//! Sealed chunks made elsewhere (by `hourglass import`) put into a series' past.
//!
//! Only below the sealed watermark: above it, the log may hold events of the same chunks. A chunk that already
//! holds events is left alone: when its lines are the ones offered it counts as imported already (so an
//! interrupted import can simply be run again), otherwise it is refused. An import that writes anything gives the
//! series a new revision first, so no answer keeps an ETag whose content changed. With an object store, hours
//! already uploaded are never written (their objects are written once), and the revision goes to the store's
//! settings object first.

use std::thread;

use super::{Store, StoreError, lock};
use crate::archive::deflate::Deflater;
use crate::archive::member::{self, MemberMeta};
use crate::archive::summary::{self, Bloom, Summarized};
use crate::store::SeriesName;
use crate::time::{self, ChunkStart, Millis};

/// One chunk's events, in time order.
#[derive(Debug)]
pub struct ImportChunk {
    pub start: ChunkStart,
    /// Each event's time.
    pub ts: Vec<Millis>,
    /// Each event's line, ending in `\n`, in the order of `ts`.
    pub lines: Vec<u8>,
}

/// What became of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    Written,
    /// The archive holds exactly these lines already.
    AlreadyThere,
    Refused(String),
}

impl Store {
    /// Puts chunks of one hour into the series' archive (see the module's rules); one answer per chunk.
    pub fn import_chunks(
        &self,
        name: &SeriesName,
        chunks: Vec<ImportChunk>,
    ) -> Result<Vec<Imported>, StoreError> {
        // An idle series' watermark may lag what the sealer has sealed: persisted first, as far as these reach.
        let newest = chunks.iter().map(|c| c.start.millis()).max().unwrap_or(0);
        let (archive, width, retained_from, uploaded) = {
            let st = lock(&self.inner.state);
            let s = st
                .series
                .get(name.as_str())
                .ok_or_else(|| StoreError::UnknownSeries(name.to_string()))?;
            (
                s.archive.clone(),
                s.width,
                s.retained_from,
                s.uploaded_through,
            )
        };
        let (sealed, _) = self.final_watermark(name, newest + width.millis())?;
        let mut answers = Vec::with_capacity(chunks.len());
        let mut fresh = Vec::new();
        for chunk in chunks {
            let answer = if chunk.start.millis() + width.millis() > sealed {
                Imported::Refused(format!(
                    "newer than the sealed watermark {}: send these events with POST",
                    time::format_rfc3339(sealed)
                ))
            } else if chunk.start.millis() < retained_from {
                Imported::Refused(format!(
                    "older than the retention boundary {}",
                    time::format_rfc3339(retained_from)
                ))
            } else {
                match archive.read_chunk(chunk.start)? {
                    Some(lines) if lines == chunk.lines => Imported::AlreadyThere,
                    Some(lines) => Imported::Refused(format!(
                        "the chunk holds {} events already",
                        lines.iter().filter(|&&b| b == b'\n').count()
                    )),
                    // An object is written once: replicas and caches hold what it says.
                    None if chunk.start.millis() < uploaded => Imported::Refused(format!(
                        "its hour is on the object store (every hour before {} is): an uploaded hour never \
                         changes; import into another series",
                        time::format_rfc3339(uploaded)
                    )),
                    None => {
                        fresh.push(chunk);
                        Imported::Written
                    }
                }
            };
            answers.push(answer);
        }
        if fresh.is_empty() {
            return Ok(answers);
        }
        // Whatever it writes, an import changes answers already given as final (an export or a histogram of an
        // empty sealed range, the links of pages next to it): every ETag of the series must change.
        self.new_revision(name)?;
        let cfg = &self.inner.cfg;
        let encoded = encode_all(
            &fresh,
            width.secs(),
            (cfg.max_member_entries, cfg.deflater),
            cfg.member_summaries,
        )?;
        let (chunks, summaries): (Vec<_>, Vec<_>) = encoded.into_iter().map(summary::split).unzip();
        archive.insert_chunks(&chunks)?;
        archive.add_summaries(&summaries.concat());
        Ok(answers)
    }

    /// Gives the series a new revision, once per process: every page identity changes.
    fn new_revision(&self, name: &SeriesName) -> Result<(), StoreError> {
        let revised = {
            let st = lock(&self.inner.state);
            st.series.get(name.as_str()).is_none_or(|s| s.revised)
        };
        if revised {
            return Ok(());
        }
        // With an object store, its settings object first: replicas name their ETags by it.
        match &self.inner.remote {
            Some(remote) => {
                super::upload::publish(&self.inner, remote, name.as_str(), |st| st.revision += 1)?
            }
            None => {
                self.inner
                    .persist_settings(name.as_str(), |st| st.revision += 1)?;
            }
        }
        if let Some(s) = lock(&self.inner.state).series.get_mut(name.as_str()) {
            s.revised = true;
        }
        Ok(())
    }
}

/// Every chunk's members with their summaries, compressed on every core.
fn encode_all(
    chunks: &[ImportChunk],
    width_secs: u32,
    (max_entries, deflater): (usize, Deflater),
    summarise: bool,
) -> Result<Vec<Vec<Summarized>>, StoreError> {
    let threads = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(chunks.len())
        .max(1);
    let per = chunks.len().div_ceil(threads);
    let sealed_at = time::now();
    thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .chunks(per)
            .map(|group| {
                scope.spawn(move || {
                    group
                        .iter()
                        .map(|c| {
                            encode(c, width_secs, (max_entries, deflater), sealed_at, summarise)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(chunks.len());
        for h in handles {
            let group = h
                .join()
                .map_err(|_| StoreError::storage("a compression thread panicked", None))?;
            all.extend(group);
        }
        Ok(all)
    })
}

fn encode(
    chunk: &ImportChunk,
    width_secs: u32,
    (max_entries, deflater): (usize, Deflater),
    sealed_at: Millis,
    summarise: bool,
) -> Vec<Summarized> {
    // Where each line starts, and one past the last.
    let mut starts = vec![0];
    starts.extend(
        chunk
            .lines
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1),
    );
    let n = chunk.ts.len();
    let per = max_entries.max(1);
    let parts = n.div_ceil(per);
    (0..parts)
        .map(|p| {
            let (lo, hi) = (p * per, ((p + 1) * per).min(n));
            let meta = MemberMeta {
                chunk_start: chunk.start,
                width_secs,
                part: p as u32,
                last_part: p + 1 == parts,
                entries: (hi - lo) as u32,
                sealed_at,
                first_ts: chunk.ts[lo],
                last_ts: chunk.ts[hi - 1],
                raw_len: 0,
                member_len: 0,
            };
            let raw = &chunk.lines[starts[lo]..starts[hi]];
            let summary = summarise.then(|| Bloom::of_lines(raw));
            (member::encode(meta, raw, deflater), summary)
        })
        .collect()
}
