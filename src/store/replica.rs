//! A read replica (`--replica`): no log, no data folder, nothing written. It knows the series the object store
//! holds by their settings objects, looked at every `--refresh-ms` with conditional GETs, and serves what is
//! uploaded. Its sealed watermark of a series is the writer's `uploaded_through`: below it every hour is on the
//! store whole, so the replica finds the same chunks, links and finality as the writer there, and a page final
//! here is final there, with the same ETag (series creation, revision and retention boundary come from the
//! same settings). What lies above it is not final here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, mpsc};

use super::{Inner, Series, Settings, Store, StoreError, StoreMetrics, lock, supervised};
use crate::archive::remote::Changed;
use crate::archive::{ArchiveError, DiskCache, IndexCache, Remote, SeriesArchive, hours};
use crate::store::SeriesName;
use crate::time::{Hour, Millis};

pub(super) fn open(cfg: super::StoreConfig) -> Result<Store, StoreError> {
    let remote = super::open_remote(&cfg)?
        .ok_or_else(|| StoreError::storage("a replica needs --archive", None))?;
    let indexes = IndexCache::new(cfg.index_cache_bytes);
    let disk = match &cfg.cache_dir {
        Some(dir) => Some(Arc::new(DiskCache::open(dir, cfg.cache_bytes).map_err(
            |e| {
                StoreError::storage(
                    format!("--cache-dir {}: {e}", dir.display()),
                    Some(e.kind()),
                )
            },
        )?)),
        None => None,
    };
    let source = Source { remote, disk };
    let inner = Arc::new(Inner::new(
        cfg,
        BTreeMap::new(),
        None,
        None,
        indexes,
        Some(source.remote.clone()),
        StoreMetrics::default(),
    ));
    // The first look before serving, so that a replica started beside a busy store answers at once; a store
    // that does not answer yet is looked at again by the thread.
    let mut known = HashMap::new();
    if let Err(e) = refresh(&inner, &source, &mut known) {
        tracing::error!(error = %e, "the object store does not answer yet; looking again");
    }
    let thread = supervised("refresh", &inner, move |inner| {
        refresh_loop(inner, &source, known)
    })?;
    // Nothing is ever committed here: batches find the commit thread gone (writes are answered in the API).
    let (jobs, _) = mpsc::sync_channel(1);
    Ok(Store {
        inner,
        jobs,
        threads: Arc::new(std::sync::Mutex::new(vec![thread])),
    })
}

/// Where a replica reads: the object store, and its disk cache if it has one.
struct Source {
    remote: Arc<Remote>,
    disk: Option<Arc<DiskCache>>,
}

/// The ETag of each series' settings object as last read.
type Known = HashMap<String, Option<String>>;

fn refresh_loop(inner: &Inner, source: &Source, mut known: Known) {
    let Some(period) = inner.cfg.replica else {
        return;
    };
    let mut last_error = String::new();
    loop {
        if !inner.pause(period) {
            break;
        }
        match refresh(inner, source, &mut known) {
            Ok(()) if !last_error.is_empty() => {
                tracing::info!("the object store answers again");
                last_error.clear();
            }
            Ok(()) => {}
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::error!(error = %text, "cannot look at the object store's series");
                    last_error = text;
                }
            }
        }
    }
}

/// One look at the store: series that came, changed or went.
fn refresh(inner: &Inner, source: &Source, known: &mut Known) -> Result<(), StoreError> {
    let remote = &source.remote;
    let listed = remote.series().map_err(ArchiveError::from)?;
    let mut seen = std::collections::HashSet::with_capacity(listed.len());
    for name in listed {
        if SeriesName::parse(&name).is_err() {
            continue;
        }
        seen.insert(name.clone());
        let etag = known.get(&name).cloned().flatten();
        let changed = remote
            .get_changed(&remote.settings(&name), etag.as_deref())
            .map_err(ArchiveError::from)?;
        let (bytes, etag) = match changed {
            Changed::Same => continue,
            // A folder without settings: a series whose first upload is under way, or left by hand.
            Changed::Gone => continue,
            Changed::Now(bytes, etag) => (bytes, etag),
        };
        let settings: Settings = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                // Said once per version of the object: it is looked at again when it changes.
                tracing::error!(series = %name, error = %e, "the series settings object is not settings: skipped");
                known.insert(name, etag);
                continue;
            }
        };
        take(inner, source, &name, &settings)?;
        known.insert(name, etag);
    }
    // Series whose objects are gone (deleted by hand): gone here too.
    let mut st = lock(&inner.state);
    st.series.retain(|name, _| seen.contains(name));
    known.retain(|name, _| seen.contains(name));
    Ok(())
}

/// Takes a series' settings as the store has them now, with its hours up to `uploaded_through`.
fn take(inner: &Inner, source: &Source, name: &str, settings: &Settings) -> Result<(), StoreError> {
    let remote = &source.remote;
    let width = settings
        .width()
        .map_err(|e| StoreError::storage(format!("{name}/series.json: {e}"), None))?;
    let (from, through) = (
        Hour::of(settings.retained_from),
        Hour::of(settings.uploaded_through),
    );
    // What `hours.idx` says of the hours before `uploaded_through`: it is written before the settings that
    // count an hour as uploaded, so it may say more (which waits for the next look), never less.
    let uploaded: BTreeMap<Hour, hours::HourSummary> = if settings.uploaded_through > 0 {
        match remote
            .get(&remote.hours(name))
            .map_err(ArchiveError::from)?
        {
            Some((bytes, _)) => hours::decode(&bytes)
                .into_iter()
                .filter(|(h, _)| (from..through).contains(h))
                .collect(),
            None => BTreeMap::new(),
        }
    } else {
        BTreeMap::new()
    };
    let watermark: Millis = settings.uploaded_through;
    let mut st = lock(&inner.state);
    let same = st
        .series
        .get(name)
        .is_some_and(|s| s.created == settings.created && s.revision == settings.revision);
    if same {
        if let Some(s) = st.series.get_mut(name) {
            s.archive.set_hours(uploaded);
            follow(s, settings, watermark);
        }
        return Ok(());
    }
    // New here, or made again, or rewritten by an import (a new revision): a new archive, whose indexes are
    // read again.
    let archive = SeriesArchive::on_store(
        name,
        &inner.indexes,
        remote.clone(),
        source.disk.clone(),
        uploaded,
    );
    let mut s = Series::new(
        name,
        archive.dir().to_owned(),
        width,
        settings.created,
        watermark,
        &inner.indexes,
        None,
    );
    s.archive = Arc::new(archive);
    s.persisted = true;
    s.revision = settings.revision;
    follow(&mut s, settings, watermark);
    st.series.insert(name.to_string(), s);
    Ok(())
}

/// Moves a series' boundaries forward to the store's.
fn follow(s: &mut Series, settings: &Settings, watermark: Millis) {
    s.sealed = s.sealed.max(watermark);
    s.swept = s.sealed;
    s.closing = s.sealed;
    s.uploaded_through = s.sealed;
    s.retained_from = s.retained_from.max(settings.retained_from);
    s.changed();
}
