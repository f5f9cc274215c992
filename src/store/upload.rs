//! The uploader: with `--archive`, every complete hour (the persisted watermark past its end) goes to the object
//! store, in hour order: its archive (create-only), its index, the store's copy of the hour summaries, then the
//! series settings object with `uploaded_through` past the hour (a conditional write over the version last
//! seen: the commit point readers go by), then the local settings. Only then may the local copy go; the newest
//! `--local-hours` stay. With the store down or slow nothing is lost and ingest goes on: hours wait in the
//! folder and are tried again, after a pause that doubles up to a minute.
//!
//! The settings object is written here and by retention (`publish`), one at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;

use super::{Inner, Settings, StoreError, lock};
use crate::archive::{ArchiveError, SeriesArchive};
use crate::archive::{Remote, RemoteErrorKind, remote::Version};
use crate::metrics;
use crate::time::{HOUR, Hour, Millis};

const TICK: Duration = Duration::from_secs(1);
/// Hours of a series uploaded side by side (each an archive read whole below `remote::WHOLE_PUT_BYTES`, or in
/// parts above), when several wait: a backlog drains several times faster than one by one.
const AT_ONCE: usize = 4;
const MOST_PAUSE: Duration = Duration::from_secs(60);

pub(super) fn upload_loop(inner: &Inner, remote: &Remote) {
    // How far this process has deleted each series' objects for retention: nothing yet, so the first pass
    // after a start also deletes what a crash between the boundary and the deletes left behind.
    let mut deleted = HashMap::new();
    let mut pause = TICK;
    let mut last_error = String::new();
    // The first pass at once: hours that waited for a restart go up without a pause.
    loop {
        match remove_expired(inner, remote, &mut deleted).and_then(|()| upload_due(inner, remote)) {
            Ok(()) => {
                pause = TICK;
                if !last_error.is_empty() {
                    tracing::info!("uploads to the object store work again");
                    last_error.clear();
                }
            }
            Err(e) => {
                metrics::add(&inner.metrics.upload_failures, 1);
                pause = (pause * 2).min(MOST_PAUSE);
                let text = e.to_string();
                if text != last_error {
                    tracing::error!(error = %text, retry_in_s = pause.as_secs(), "upload to the object store failed; the hours wait in the data folder");
                    last_error = text;
                }
            }
        }
        if !inner.pause(pause) {
            break;
        }
    }
}

/// Retention with an object store: the new boundary is published (the settings object, then the local file),
/// so readers answer 410 below it; then the hours go, local copies and objects, and the store's copy of the
/// summaries is written again without them.
fn remove_expired(
    inner: &Inner,
    remote: &Remote,
    deleted: &mut HashMap<Arc<str>, Millis>,
) -> Result<(), StoreError> {
    for (name, from, _) in super::seal::expired(inner, crate::time::now()) {
        publish(inner, remote, &name, |st| {
            st.retained_from = st.retained_from.max(from)
        })?;
    }
    let due: Vec<_> = {
        let st = lock(&inner.state);
        st.series
            .values()
            .filter(|s| s.persisted && s.retained_from > deleted.get(&s.name).copied().unwrap_or(0))
            .map(|s| {
                (
                    s.name.clone(),
                    s.retained_from,
                    s.uploaded_through,
                    s.archive.clone(),
                )
            })
            .collect()
    };
    for (name, from, uploaded, archive) in due {
        let removed = archive.remove_before(Hour::of(from))?;
        let objects = remote
            .delete_hours_before(&name, Hour::of(from))
            .map_err(ArchiveError::from)?;
        let summaries = Bytes::from(archive.summaries_before(Hour::of(uploaded)));
        remote
            .put(&remote.hours(&name), summaries)
            .map_err(ArchiveError::from)?;
        deleted.insert(name.clone(), from);
        tracing::info!(series = %name, before = %crate::time::format_rfc3339(from), removed, objects, "retention removed hours");
    }
    Ok(())
}

/// Uploads, for every series, the complete hours not uploaded yet, then lets go of local copies past the bound.
fn upload_due(inner: &Inner, remote: &Remote) -> Result<(), StoreError> {
    let series: Vec<_> = {
        let st = lock(&inner.state);
        st.series
            .values()
            .filter(|s| s.persisted)
            .map(|s| {
                let from = s.uploaded_through.max(s.retained_from);
                (s.name.clone(), s.archive.clone(), from, s.sealed, s.swept)
            })
            .collect()
    };
    let mut backlog = 0;
    let mut result = Ok(());
    for (name, archive, from, sealed, swept) in series {
        let uploaded = upload_series(
            inner,
            remote,
            &name,
            &archive,
            from,
            (sealed, swept),
            &mut backlog,
        );
        if let Err(e) = uploaded
            && result.is_ok()
        {
            result = Err(e);
        }
    }
    inner
        .metrics
        .upload_backlog_hours
        .store(backlog, std::sync::atomic::Ordering::Relaxed);
    result
}

/// Uploads one series' complete hours from `from` on, in order; counts those that wait in `backlog`.
fn upload_series(
    inner: &Inner,
    remote: &Remote,
    name: &str,
    archive: &SeriesArchive,
    from: Millis,
    (sealed, swept): (Millis, Millis),
    backlog: &mut u64,
) -> Result<(), StoreError> {
    // Hours that end at or below the persisted watermark are complete: nothing more is appended to them. An
    // idle series persists its watermark lazily; the hour of its last events completes once it is persisted.
    let mut complete = Hour::of(sealed);
    if !archive.hours_in(complete, Hour::of(swept)).is_empty()
        && let Some(st) = inner.persist_settings(name, |st| st.sealed = st.sealed.max(swept))?
    {
        complete = Hour::of(st.sealed);
    }
    let due = archive.hours_in(Hour::of(from), complete);
    *backlog += due.len() as u64;
    for hours in due.chunks(AT_ONCE) {
        upload_hours(inner, remote, name, archive, hours)?;
        *backlog -= hours.len() as u64;
        metrics::add(&inner.metrics.hours_uploaded, hours.len() as u64);
    }
    if from < complete.start() {
        // Empty hours up to the watermark count as uploaded too: readers elsewhere may take them as final.
        publish(inner, remote, name, |s| {
            s.uploaded_through = s.uploaded_through.max(complete.start())
        })?;
    }
    evict(inner, name, archive)
}

/// Uploads consecutive complete hours: their archives and indexes side by side, then, once all are there, the
/// summaries and the settings that count them as uploaded.
fn upload_hours(
    inner: &Inner,
    remote: &Remote,
    name: &str,
    archive: &SeriesArchive,
    hours: &[Hour],
) -> Result<(), StoreError> {
    let Some(last) = hours.last() else {
        return Ok(());
    };
    std::thread::scope(|scope| {
        let uploads: Vec<_> = hours
            .iter()
            .map(|&hour| scope.spawn(move || archive.upload(hour)))
            .collect();
        uploads
            .into_iter()
            .map(|u| {
                u.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<()>, ArchiveError>>()
    })?;
    let next = Hour::of(last.start() + HOUR);
    remote
        .put(
            &remote.hours(name),
            Bytes::from(archive.summaries_before(next)),
        )
        .map_err(ArchiveError::from)?;
    publish(inner, remote, name, |s| {
        s.uploaded_through = s.uploaded_through.max(next.start())
    })
}

/// Keeps the newest `--local-hours` uploaded hours of a series in the folder, and lets the older ones go.
fn evict(inner: &Inner, name: &str, archive: &SeriesArchive) -> Result<(), StoreError> {
    let uploaded = {
        let st = lock(&inner.state);
        st.series.get(name).map_or(0, |s| s.uploaded_through)
    };
    let local: Vec<Hour> = archive
        .hours_in(Hour::EPOCH, Hour::of(uploaded))
        .into_iter()
        .filter(|h| archive.is_local(*h))
        .collect();
    let keep = inner.cfg.local_hours;
    for hour in local.iter().take(local.len().saturating_sub(keep)) {
        archive.evict(*hour)?;
    }
    Ok(())
}

/// Writes a series' settings with `change` to the object store (over the version last seen there), then to the
/// local folder. The object store's copy first: it is what readers elsewhere go by.
pub(super) fn publish(
    inner: &Inner,
    remote: &Remote,
    name: &str,
    change: impl Fn(&mut Settings),
) -> Result<(), StoreError> {
    let mut versions = lock(&inner.remote_versions);
    let current = {
        let st = lock(&inner.state);
        let Some(s) = st.series.get(name) else {
            return Ok(());
        };
        s.settings()
    };
    let mut wanted = current;
    change(&mut wanted);
    let object = remote.settings(name);
    let bytes = Bytes::from(serde_json::to_vec(&wanted).map_err(|e| StoreError::storage(e, None))?);
    let known = versions.get(name).cloned();
    let written = match remote.put_versioned(&object, bytes.clone(), known.clone()) {
        Ok(v) => v,
        Err(e) if e.kind == RemoteErrorKind::Conflict => {
            // Not the version we last wrote (a restart, or none seen yet): take what is there if it is this
            // series' (same creation), and write over it.
            let there = remote.get(&object).map_err(ArchiveError::from)?;
            let version = match there {
                Some((b, v)) => {
                    let theirs: Settings = serde_json::from_slice(&b).map_err(|e| {
                        StoreError::storage(format!("{object}: not series settings: {e}"), None)
                    })?;
                    if theirs.created != wanted.created {
                        return Err(StoreError::storage(
                            format!(
                                "{object} belongs to another series of that name (created {}): \
                                 this one was created {}; nothing is written over it",
                                theirs.created, wanted.created
                            ),
                            None,
                        ));
                    }
                    Some(v)
                }
                None => None,
            };
            remote
                .put_versioned(&object, bytes, version)
                .map_err(ArchiveError::from)?
        }
        Err(e) => return Err(ArchiveError::from(e).into()),
    };
    versions.insert(name.to_string(), written);
    drop(versions);
    inner.persist_settings(name, change)?;
    Ok(())
}

/// The versions of the settings objects this process wrote last, by series.
pub(super) type Versions = HashMap<String, Version>;
