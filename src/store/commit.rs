//! The commit thread: group commit. It takes every batch waiting, checks each against its series' closing
//! boundary (the one exact check: `Store::ingest` only fails fast), appends the accepted ones to the log with one
//! fsync, puts their events into open chunks, and only then answers.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use std::sync::{Arc, Mutex};

use super::{Ack, Inner, Job, Msg, StoreError, lock};
use crate::ingest::log::Log;
use crate::ingest::wal::{self, Logged};
use crate::{metrics, time};

/// The commit thread: takes every waiting batch, checks them, makes them durable with one fsync, applies them,
/// answers. Runs until `Msg::Stop` or until every sender is gone.
pub(super) fn commit_loop(inner: &Inner, rx: Receiver<Msg>) {
    const GROUP_BYTES: u64 = 64 << 20;
    let Some(log) = &inner.log else {
        return;
    };
    let mut records = Vec::new();
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else {
            break;
        };
        let mut group = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(job) => {
                    bytes += job.bytes;
                    group.push(job);
                }
                Msg::Stop => stop = true,
            }
            if !stop && bytes < GROUP_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            if inner.cfg.panic_in.as_deref() == Some("commit") {
                panic!("told to (--panic-in commit)");
            }
            commit_group(inner, log, group, &mut records);
        }
    }
}

fn commit_group(inner: &Inner, log: &Mutex<Box<dyn Log>>, group: Vec<Job>, records: &mut Vec<u8>) {
    let now = time::now();
    // `twins`: batches whose key an earlier batch of this group carries; they are answered as its retries.
    // `made`: series this group's first batches create, in memory only until the append is durable.
    let (accepted, twins, made, seq) = {
        let mut st = lock(&inner.state);
        let mut accepted: Vec<Job> = Vec::with_capacity(group.len());
        let mut twins = Vec::new();
        let mut made: Vec<Arc<str>> = Vec::new();
        for job in group {
            // Same series and key, whatever the body: a twin with another body is refused like any reuse.
            let same_key = |a: &Job| match (&a.key, &job.key) {
                (Some(a_key), Some(key)) => a.series == job.series && a_key.key == key.key,
                _ => false,
            };
            if accepted.iter().any(same_key) {
                twins.push(job);
                continue;
            }
            let fresh = !st.series.contains_key(&*job.series);
            if fresh {
                let s = inner.new_series(&job.series, inner.cfg.default_width, now);
                st.series.insert(job.series.to_string(), s);
            }
            let verdict = st.series.get(&*job.series).and_then(|s| {
                job.key
                    .as_ref()
                    .and_then(|k| s.answer_again(k))
                    .or_else(|| s.late(&job.parsed, now).map(Err))
            });
            match verdict {
                Some(answer) => {
                    if fresh {
                        st.series.remove(&*job.series);
                    }
                    st.backlog -= job.bytes;
                    st.inflight -= job.bytes;
                    let _ = job.reply.send(answer);
                }
                None => {
                    if fresh {
                        made.push(job.series.clone());
                    }
                    accepted.push(job);
                }
            }
        }
        for twin in &twins {
            st.backlog -= twin.bytes;
            st.inflight -= twin.bytes;
        }
        st.checked += 1;
        (accepted, twins, made, st.checked)
    };

    records.clear();
    let mut starts = Vec::with_capacity(accepted.len());
    for job in &accepted {
        starts.push(records.len() as u64);
        wal::encode(&job.series, job.key.as_ref(), &job.parsed.batch, records);
    }
    // Where and when the series this group makes were made, after its batches (their offsets stand).
    if !made.is_empty() {
        let st = lock(&inner.state);
        for name in &made {
            if let Some(s) = st.series.get(&**name) {
                wal::encode_made(name, s.width.secs(), s.created, records);
            }
        }
    }
    let written = if accepted.is_empty() {
        Ok(wal::Position {
            segment: 0,
            offset: 0,
        })
    } else {
        let mut log = lock(log);
        let began = Instant::now();
        let result = log.append(records);
        let m = &inner.metrics;
        metrics::add(&m.fsyncs, 1);
        m.fsync_seconds.observe(began.elapsed());
        if result.is_ok() {
            metrics::add(&m.batches_accepted, accepted.len() as u64);
            let events = accepted.iter().map(|j| j.parsed.batch.len() as u64).sum();
            metrics::add(&m.events_accepted, events);
            for job in &accepted {
                if let Some(&newest) = job.parsed.batch.ts().iter().max() {
                    log.note(&job.series, newest);
                }
            }
            if let Err(e) = log.rotate_if_full() {
                tracing::error!(error = %e, "write-ahead log rotation failed; appending to the full segment");
            }
        } else {
            *lock(&inner.log_trouble) = log.trouble();
        }
        result
    };

    // Where each accepted batch's lines are in the log, worked out before taking the lock.
    let logged: Vec<Vec<Logged>> = match &written {
        Ok(at) => accepted
            .iter()
            .zip(&starts)
            .map(|(job, start)| {
                let record_at = wal::Position {
                    segment: at.segment,
                    offset: at.offset + start,
                };
                wal::line_refs(record_at, &job.series, job.key.as_ref(), &job.parsed.batch)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    {
        // Series made for a group that was not stored go again, unless something persisted them meanwhile (a
        // PUT): the settings-file lock first, so that no persist is half-way.
        let _files = written.is_err().then(|| lock(&inner.settings_files));
        let mut st = lock(&inner.state);
        if written.is_err() {
            // Nothing of this group is applied, and no other group is in flight: only a persist could have
            // happened to them meanwhile.
            for name in &made {
                if st.series.get(&**name).is_some_and(|s| !s.persisted) {
                    st.series.remove(&**name);
                }
            }
        }
        for (i, job) in accepted.iter().enumerate() {
            st.inflight -= job.bytes;
            match (logged.get(i), st.series.get_mut(&*job.series)) {
                (Some(events), Some(s)) => {
                    s.insert(events);
                    if let Some(key) = &job.key {
                        s.remember(key, events);
                    }
                    s.changed();
                }
                _ => st.backlog -= job.bytes,
            }
        }
        for twin in twins {
            let answer = match (&written, st.series.get(&*twin.series), &twin.key) {
                (Ok(_), Some(s), Some(key)) => s.answer_again(key),
                _ => None,
            };
            let _ = twin.reply.send(answer.unwrap_or(Err(StoreError::Busy(
                "the first batch with this key was not stored",
            ))));
        }
        st.settled = seq;
    }
    inner.settled.notify_all();

    match &written {
        Err(e) if !inner.log_failing.swap(true, Ordering::Relaxed) => {
            tracing::error!(error = %e, "write-ahead log append failed; batches refused until it works");
        }
        Ok(_) if !accepted.is_empty() && inner.log_failing.swap(false, Ordering::Relaxed) => {
            tracing::info!("write-ahead log appends work again");
        }
        _ => {}
    }
    for job in accepted {
        let answer = match &written {
            Ok(_) => Ok(Ack {
                accepted: job.parsed.batch.len(),
                replayed: false,
            }),
            // A replicated log that cannot be reached, or will not take more: try again later (503).
            Err(e) if e.source.kind() == std::io::ErrorKind::NotConnected => {
                Err(StoreError::LogUnavailable(e.to_string()))
            }
            Err(e) => Err(StoreError::Storage(e.to_string(), Some(e.source.kind()))),
        };
        let _ = job.reply.send(answer);
    }
}
