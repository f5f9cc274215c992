//! The sealer: moves chunks whose end is `lateness` behind the clock from memory into their hour archives, then
//! advances and persists the sealed watermark. It is the only writer of archives and of the watermark.
//!
//! Order of a seal, each step durable before the next points at it: raise the closing boundary (ingest now
//! refuses events below it); wait for every batch checked before that to settle; compress each chunk, append and
//! fsync its members (the archive layer); persist the watermark; let the log collect segments below it.
//! A failure (a full disk, say) leaves the chunk in `sealing` and the watermark where it was: the next tick
//! tries again, and a restart replays the log, skipping chunks that are already whole in their archive.
//! A series with nothing to seal costs no I/O: the watermark is persisted only when chunks were sealed (or an
//! answer needs it), so an idle series is not rewritten every chunk width.
//!
//! With `--retention`, the sealer also removes sealed hours that are too old: it persists the new retention
//! boundary, lets readers see it (they answer 410 Gone below it), and only then deletes the hour archives.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Inner, OpenChunk, StoreError, lock};
use crate::archive::SeriesArchive;
use crate::archive::deflate::Deflater;
use crate::archive::member::{self, MemberMeta};
use crate::archive::summary::{Bloom, Summarized};
use crate::ingest::log::Lines;
use crate::ingest::wal::{self, LineRef};
use crate::time::{self, ChunkStart, ChunkWidth, Hour, Millis};

const TICK: Duration = Duration::from_millis(100);

pub(super) fn seal_loop(inner: &Inner) {
    let mut last_error = String::new();
    loop {
        if !inner.pause(TICK) {
            break;
        }
        let now = time::now();
        let result = seal_due(inner, now).and_then(|()| remove_expired(inner, now));
        inner
            .passes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        match result {
            Ok(()) if !last_error.is_empty() => {
                tracing::info!("sealing works again");
                last_error.clear();
            }
            Ok(()) => {}
            Err(e) => {
                crate::metrics::add(&inner.metrics.seal_failures, 1);
                // Said once per distinct failure, not every tick.
                let text = e.to_string();
                if text != last_error {
                    tracing::error!(error = %text, "sealing (or retention's removal) failed; retrying");
                    last_error = text;
                }
            }
        }
    }
}

/// Removes, for every series, the sealed hours that retention no longer keeps at `now`. With an object store
/// the uploader does it instead (the objects go too), so that the sealer never waits on the network.
fn remove_expired(inner: &Inner, now: Millis) -> Result<(), StoreError> {
    if inner.remote.is_some() {
        return Ok(());
    }
    for (name, from, archive) in expired(inner, now) {
        // The boundary is persisted, then readers see it (410 below it), then the files go.
        inner.persist_settings(&name, |st| st.retained_from = st.retained_from.max(from))?;
        let removed = archive.remove_before(Hour::of(from))?;
        tracing::info!(series = %name, before = %time::format_rfc3339(from), removed, "retention removed hour archives");
    }
    Ok(())
}

/// The series with sealed hours that retention no longer keeps at `now`: each with its new boundary.
pub(super) fn expired(inner: &Inner, now: Millis) -> Vec<(Arc<str>, Millis, Arc<SeriesArchive>)> {
    let Some(keep) = inner.cfg.retention else {
        return Vec::new();
    };
    let st = lock(&inner.state);
    st.series
        .values()
        .filter_map(|s| {
            // Whole hours, and sealed ones only.
            let from = Hour::of(now - keep).start().min(Hour::of(s.sealed).start());
            (from > s.retained_from).then(|| (s.name.clone(), from, s.archive.clone()))
        })
        .collect()
}

/// Seals, for every series, the chunks that are due at `now`.
pub(super) fn seal_due(inner: &Inner, now: Millis) -> Result<(), StoreError> {
    let raises: Vec<(Arc<str>, Millis, bool)> = {
        let st = lock(&inner.state);
        st.series
            .values()
            .filter_map(|s| {
                let target = s.width.align_down(now - inner.cfg.lateness);
                let holds = !s.open.is_empty() || !s.sealing.is_empty();
                (target > s.closing).then(|| (s.name.clone(), target, holds))
            })
            .collect()
    };
    let marks = log_raises(inner, &raises, now)?;
    let (checked, due) = {
        let mut st = lock(&inner.state);
        let mut due = Vec::new();
        for (name, target, logged) in &raises {
            if let Some(s) = st.series.get_mut(&**name) {
                // Events came meanwhile to a series whose raise was not logged: raised at the next pass,
                // logged then.
                let holds = !s.open.is_empty() || !s.sealing.is_empty();
                if marks && holds && !logged {
                    continue;
                }
                s.raise(*target, now);
            }
        }
        for s in st.series.values() {
            if s.closing > s.swept || !s.persisted {
                due.push(s.name.clone());
            }
        }
        (st.checked, due)
    };
    if due.is_empty() {
        return Ok(());
    }
    {
        let mut st = lock(&inner.state);
        while st.settled < checked {
            st = inner.settled.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
    let mut result = Ok(());
    for name in due {
        if let Err(e) = seal_series(inner, &name)
            && result.is_ok()
        {
            result = Err(e);
        }
    }
    collect_log(inner);
    result
}

/// Makes the raises of closing boundaries of series that hold events not sealed yet durable in the log before
/// they are made, where the log wants them (`Log::marks`): a writer that takes the log over then refuses what
/// this one refused, and seals each of those chunks with the seal time this one gave it. A raise that could not
/// be logged is not made, so nothing is sealed past it. Raises of series with nothing to seal are not logged (a
/// writer taking over raises those by its own clock), so idle series cost the log nothing. Whether the log
/// wants raises.
fn log_raises(
    inner: &Inner,
    raises: &[(Arc<str>, Millis, bool)],
    now: Millis,
) -> Result<bool, StoreError> {
    let Some(log) = &inner.log else {
        return Ok(false);
    };
    let mut log = lock(log);
    if !log.marks() {
        return Ok(false);
    }
    let holding: Vec<_> = raises.iter().filter(|(_, _, holds)| *holds).collect();
    if holding.is_empty() {
        return Ok(true);
    }
    let mut records = Vec::new();
    for (name, target, _) in &holding {
        wal::encode_close(name, *target, now, &mut records);
    }
    log.append(&records)?;
    // Kept like an event at the boundary: until the series is sealed past it.
    for (name, target, _) in &holding {
        log.note(name, *target);
    }
    Ok(true)
}

/// Seals one series' chunks below its closing boundary. The watermark is persisted when there were chunks to
/// seal; with none (an idle series) only the sealer's memory moves on (`swept`), which costs no fsync: the
/// watermark follows when an answer needs it (`Store::final_watermark`) or the next chunk is sealed.
fn seal_series(inner: &Inner, name: &str) -> Result<(), StoreError> {
    // A series made by its first batch gets its folder here, off the ingest path, once it holds events: every
    // batch checked before this pass has settled, so these are stored (a series without events may still
    // have its first batch on the way to the log, and go again if that is refused).
    let unpersisted = {
        let st = lock(&inner.state);
        st.series
            .get(name)
            .is_some_and(|s| !s.persisted && (!s.open.is_empty() || !s.sealing.is_empty()))
    };
    if unpersisted {
        inner.persist_settings(name, |_| {})?;
        tracing::info!(series = name, "series created");
    }
    let now = time::now();
    let (archive, width, closing, chunks, summarise) = {
        let mut st = lock(&inner.state);
        let summarise = inner.cfg.member_summaries;
        let Some(s) = st.series.get_mut(name) else {
            return Ok(());
        };
        let keep = s.open.split_off(&s.width.chunk_of(s.closing));
        for (start, chunk) in std::mem::replace(&mut s.open, keep) {
            s.sealing.insert(start, Arc::new(chunk));
        }
        let chunks: Vec<_> = s
            .sealing
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    v.clone(),
                    s.sealed_at(k.millis() + s.width.millis(), now),
                )
            })
            .collect();
        if chunks.is_empty() {
            s.swept = s.swept.max(s.closing);
            s.raises.clear();
            return Ok(());
        }
        if !s.persisted {
            // Its first events arrived since the look above: its folder comes first, at the next pass.
            return Ok(());
        }
        (s.archive.clone(), s.width, s.closing, chunks, summarise)
    };
    if inner.cfg.panic_in.as_deref() == Some("seal") {
        panic!("told to (--panic-in seal)");
    }
    let cfg = &inner.cfg;
    let Some(lines) = &inner.lines else {
        return Ok(());
    };
    for (start, chunk, sealed_at) in chunks {
        if archive.contains(start)? {
            tracing::debug!(
                series = name,
                chunk = start.millis(),
                "already sealed; skipped"
            );
        } else {
            // Summaries are worth their time only while the sealer has time to spare: they cost about as much
            // as ISA-L's compression. A chunk goes without (its members are read by filters) when the chunk
            // before took more than a quarter of its width (and more than a second) to seal, so that summaries
            // never cost ingest its capacity nor sealing its floor.
            let busy = inner.seal_share.load(Ordering::Relaxed) > SUMMARY_SHARE;
            let summarise = summarise && !busy;
            let began = std::time::Instant::now();
            let mut summaries = Vec::new();
            archive.append_members(
                start,
                |write: &mut dyn FnMut(&member::Member) -> Result<(), StoreError>| {
                    encode_chunk(
                        Encoding {
                            start,
                            width,
                            max_entries: cfg.max_member_entries,
                            deflater: cfg.deflater,
                            sealed_at,
                            summarise,
                        },
                        &chunk,
                        &**lines,
                        |(member, bloom)| {
                            write(&member)?;
                            summaries.extend(bloom.map(|b| (member.0, b)));
                            Ok(())
                        },
                    )
                },
            )?;
            archive.add_summaries(&summaries);
            let took = began.elapsed().as_millis() as u64;
            tracing::debug!(
                series = name,
                chunk = start.millis(),
                ms = took,
                summarise,
                "sealed"
            );
            // A seal of less than a second leaves time to spare whatever the width (a second's chunks, fsyncs).
            let share = if took < 1000 {
                0
            } else {
                took * 1000 / width.millis().max(1) as u64
            };
            inner.seal_share.store(share, Ordering::Relaxed);
            crate::metrics::add(&inner.metrics.chunks_sealed, 1);
        }
        let mut st = lock(&inner.state);
        st.backlog -= chunk.bytes();
        if let Some(s) = st.series.get_mut(name) {
            s.sealing.remove(&start);
        }
    }
    inner.persist_settings(name, |st| st.sealed = st.sealed.max(closing))?;
    forget_raises(inner, name);
    Ok(())
}

/// Raises at or below what is sealed are not needed for a seal time any more.
fn forget_raises(inner: &Inner, name: &str) {
    let mut st = lock(&inner.state);
    if let Some(s) = st.series.get_mut(name) {
        let swept = s.swept.max(s.sealed);
        s.raises.retain(|&(boundary, _)| boundary > swept);
    }
}

/// Lets the log go of what is durable in the archive: sealed, or, for a replicated log (which a writer on
/// another folder may take over), uploaded.
fn collect_log(inner: &Inner) {
    let uploaded = inner.cfg.log.is_some();
    let sealed: HashMap<String, Millis> = lock(&inner.state)
        .series
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                if uploaded {
                    s.uploaded_through
                } else {
                    s.sealed
                },
            )
        })
        .collect();
    let Some(log) = &inner.log else {
        return;
    };
    let mut log = lock(log);
    let removed = log.collect(&|series, newest| sealed.get(series).is_some_and(|&s| newest < s));
    if let Some((messages, bytes)) = log.pending() {
        inner
            .metrics
            .log_pending_messages
            .store(messages, Ordering::Relaxed);
        inner
            .metrics
            .log_pending_bytes
            .store(bytes, Ordering::Relaxed);
    }
    drop(log);
    if removed > 0 {
        tracing::debug!(segments = removed, "write-ahead log segments removed");
    }
}

/// What a chunk's members are made with.
struct Encoding {
    start: ChunkStart,
    width: ChunkWidth,
    max_entries: usize,
    deflater: Deflater,
    sealed_at: Millis,
    summarise: bool,
}

/// The most a chunk's sealing may take of its width, in thousandths, for the next chunk to be summarised.
const SUMMARY_SHARE: u64 = 250;

/// Parts being compressed at once, for each thread: the most members in memory before they are written.
const PARTS_PER_THREAD: usize = 2;

/// Compresses one chunk into its members, each with its summary, and hands them to `put` in part order: events in
/// time order (ties in arrival order), at most `max_entries` per member, lines read back from the log. Parts are
/// compressed on every core at once, each thread reading its own parts' lines, so a big chunk seals in a fraction
/// of its width; at most `PARTS_PER_THREAD` parts a thread are in hand at a time, whatever the chunk's size.
fn encode_chunk(
    how: Encoding,
    chunk: &OpenChunk,
    lines: &dyn Lines,
    mut put: impl FnMut(Summarized) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    // An index, not a copy of the events: a chunk can hold millions.
    let order = chunk.time_order();
    let parts: Vec<&[u32]> = order.chunks(how.max_entries.max(1)).collect();
    let encode_part = |p: usize, lines: &mut dyn Lines, raw: &mut Vec<u8>| {
        let part = parts[p];
        raw.clear();
        let refs: Vec<LineRef> = part.iter().map(|&i| chunk.get(i as usize).line).collect();
        lines
            .read_lines(&refs, raw)
            .map_err(|e| StoreError::Storage(format!("reading the log: {e}"), Some(e.kind())))?;
        let meta = MemberMeta {
            chunk_start: how.start,
            width_secs: how.width.secs(),
            part: p as u32,
            last_part: p + 1 == parts.len(),
            entries: part.len() as u32,
            sealed_at: how.sealed_at,
            first_ts: chunk.ts(part[0] as usize),
            last_ts: chunk.ts(part[part.len() - 1] as usize),
            raw_len: 0,
            member_len: 0,
        };
        let summary = how.summarise.then(|| Bloom::of_lines(raw));
        Ok((member::encode(meta, raw, how.deflater), summary))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(parts.len());
    if threads <= 1 {
        let (mut lines, mut raw) = (lines.fresh(), Vec::new());
        return (0..parts.len()).try_for_each(|p| put(encode_part(p, &mut *lines, &mut raw)?));
    }
    // Threads take the next part as they finish one; this one writes the members in part order. A job is
    // handed out only while fewer than `window` are out, so members wait in memory for at most that many.
    let window = threads * PARTS_PER_THREAD;
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<usize>(window);
    let job_rx = std::sync::Mutex::new(job_rx);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(window);
    std::thread::scope(|scope| {
        // Owned here, so that leaving early (a failure) ends the threads: they find no more jobs.
        let (job_tx, done_rx) = (job_tx, done_rx);
        for _ in 0..threads {
            let (job_rx, done_tx, encode_part) = (&job_rx, done_tx.clone(), &encode_part);
            let mut lines = lines.fresh();
            scope.spawn(move || {
                let mut raw = Vec::new();
                while let Ok(p) = lock(job_rx).recv() {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        encode_part(p, &mut *lines, &mut raw)
                    }))
                    .unwrap_or_else(|_| {
                        Err(StoreError::Storage(
                            "a compression thread panicked".into(),
                            None,
                        ))
                    });
                    if done_tx.send((p, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut pending = std::collections::BTreeMap::new();
        let (mut next_job, mut written) = (0, 0);
        while written < parts.len() {
            while next_job < parts.len() && next_job < written + window {
                job_tx.send(next_job).map_err(|_| {
                    StoreError::Storage("the compression threads stopped".into(), None)
                })?;
                next_job += 1;
            }
            let (p, result) = done_rx
                .recv()
                .map_err(|_| StoreError::Storage("the compression threads stopped".into(), None))?;
            pending.insert(p, result);
            while let Some(result) = pending.remove(&written) {
                put(result?)?;
                written += 1;
            }
        }
        Ok(())
    })
}
