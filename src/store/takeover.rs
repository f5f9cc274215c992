//! What a writer does when it opens a replicated log (`--log nats://`), which another writer may have held:
//! its data folder is a cache it rebuilds, never a source of truth. The series' sealed past comes from the
//! object store (which a replicated log needs) (their settings and hour summaries; archives are read from the store as for any
//! uploaded hour) and everything after `uploaded_through` from the log, sealed again byte for byte; before its
//! first batch it raises every closing boundary to its clock, logged, since the writer before may have swept
//! idle series that far without logging it. A local log left in the folder must hold nothing unsealed.
//!
//! Must not: take a local series folder for the truth (the writer before may have sealed and uploaded more),
//! or raise a boundary it has not logged.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::{Series, SeriesName, Settings, StoreError, series};
use crate::archive::{ArchiveError, Remote, hours};
use crate::ingest::log::Log;
use crate::ingest::wal::{self, Wal};
use crate::time::{Hour, Millis};

/// A local log left in `data/_wal` from serving without `--log` must hold nothing that is not sealed: its
/// batches are acknowledged, and only that log has them. One that holds nothing more is removed, as collection would.
pub(super) fn refuse_local_log(
    data: &Path,
    series: &BTreeMap<String, Series>,
) -> Result<(), StoreError> {
    let dir = data.join("_wal");
    let mut unsealed = 0usize;
    Wal::open(&dir, |e| {
        if let wal::Entry::Batch(r) = e {
            let sealed = series.get(&r.series).map_or(Millis::MIN, |s| s.sealed);
            unsealed += r.events.iter().filter(|e| e.ts >= sealed).count();
        }
    })?;
    if unsealed > 0 {
        return Err(StoreError::storage(
            format!(
                "the data folder's local log (_wal/) holds {unsealed} events not sealed yet: serve the folder \
                 once without --log until they are sealed (a lateness past their time), then start with --log"
            ),
            None,
        ));
    }
    fs::remove_dir_all(&dir)
        .and_then(|()| crate::durable::sync_dir(data))
        .map_err(|e| StoreError::storage(format!("_wal: {e}"), Some(e.kind())))
}

/// Makes the data folder's series again from the object store: every series folder goes, and each series
/// the store holds gets its settings (sealed through `uploaded_through`: what is after it comes from the log)
/// and the summaries of its uploaded hours.
pub(super) fn rebuild_from_store(data: &Path, remote: &Remote) -> Result<usize, StoreError> {
    for entry in fs::read_dir(data)
        .map_err(|e| folder_error(data, e))?
        .flatten()
    {
        let is_series = entry
            .file_name()
            .to_str()
            .is_some_and(|n| SeriesName::parse(n).is_ok());
        if is_series && entry.path().is_dir() {
            fs::remove_dir_all(entry.path()).map_err(|e| folder_error(&entry.path(), e))?;
        }
    }
    let mut made = 0;
    for name in remote.series().map_err(ArchiveError::from)? {
        let Ok(name) = SeriesName::parse(&name) else {
            continue;
        };
        let Some((bytes, _)) = remote
            .get(&remote.settings(name.as_str()))
            .map_err(ArchiveError::from)?
        else {
            // A series whose first upload is under way: the log has it.
            continue;
        };
        let mut settings: Settings = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::storage(format!("{name}/{}: {e}", series::SETTINGS_FILE), None)
        })?;
        settings.sealed = settings.uploaded_through;
        let dir = data.join(name.as_str());
        crate::durable::create_dir_all(&dir).map_err(|e| folder_error(&dir, e))?;
        if let Some((bytes, _)) = remote
            .get(&remote.hours(name.as_str()))
            .map_err(ArchiveError::from)?
        {
            // Only what the settings count: an hour summarised before its settings were written is sealed
            // again from the log.
            let uploaded = Hour::of(settings.uploaded_through);
            let mut summaries = hours::decode(&bytes);
            summaries.retain(|hour, _| *hour < uploaded);
            let path = dir.join(crate::archive::HOURS_FILE);
            hours::write(&path, &summaries).map_err(|e| folder_error(&path, e))?;
        }
        settings
            .store(&dir)
            .map_err(|e| StoreError::settings(name.as_str(), e))?;
        made += 1;
    }
    crate::durable::sync_dir(data).map_err(|e| folder_error(data, e))?;
    Ok(made)
}

fn folder_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::storage(format!("{}: {e}", path.display()), Some(e.kind()))
}

/// Raises every series' closing boundary to where the clock puts it, logged first.
pub(super) fn raise_to_clock(
    log: &mut dyn Log,
    series: &mut BTreeMap<String, Series>,
    lateness: Millis,
    now: Millis,
) -> Result<(), StoreError> {
    let mut records = Vec::new();
    let mut raised = Vec::new();
    for s in series.values() {
        let target = s.width.align_down(now - lateness);
        if target > s.closing {
            wal::encode_close(&s.name, target, now, &mut records);
            raised.push((s.name.clone(), target));
        }
    }
    if raised.is_empty() {
        return Ok(());
    }
    log.append(&records)?;
    for (name, target) in raised {
        log.note(&name, target);
        if let Some(s) = series.get_mut(&*name) {
            s.raise(target, now);
        }
    }
    Ok(())
}
