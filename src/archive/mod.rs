//! The sealed past of one series: its hour archives `{YYYYMMDDHH}.json.gz`, one gzip member per chunk (or per
//! part of a big chunk), and their indexes. This layer owns the files of a series folder other than the series
//! settings; it knows nothing of HTTP, the write-ahead log or the clock.
//!
//! Invariants kept here:
//! - an archive is always valid gzip: members are appended whole and fsync'd before anything points at them,
//!   and a torn tail left by a crash is cut off (and kept aside) when the series is opened;
//! - members are in time order, and a chunk's parts are contiguous and end with a member marked last;
//! - the index is a cache of the archive: it is checked against the archive and rebuilt from it when wrong.
//!
//! The interface is deliberately small (`open`, `append_chunk`, `chunk`, `read_member`, `summary`, and
//! `insert_chunks` for imports) so that another backend (object storage) can stand behind the same calls.

pub mod deflate;
mod disk_cache;
pub mod hours;
pub mod index;
pub mod member;
pub mod remote;
pub mod summary;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use disk_cache::DiskCache;
pub use hours::HourSummary;
pub use index::{HourIndex, IndexEntry};
pub use member::MemberMeta;
pub use remote::{Remote, RemoteError, RemoteErrorKind};

use crate::durable::{self, sync_dir};
use crate::time::{ChunkStart, Hour, Millis};
use summary::{Bloom, HourSummaries};

const ARCHIVE_SUFFIX: &str = ".json.gz";
const SIDECAR_SUFFIX: &str = ".idx";
const SUMMARIES_SUFFIX: &str = ".sum";
/// The summaries of a series' complete hours (see `hours`).
pub const HOURS_FILE: &str = "hours.idx";
/// An hour archive being rewritten by an import; renamed over the archive when whole.
const REWRITE_SUFFIX: &str = ".json.gz.rewrite";

/// What went wrong with a series' files. Files are named as `{series}/{file}`, relative to the data folder:
/// these messages may reach clients, which have no business knowing the machine's paths.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}: chunk {chunk} would follow chunk {last}, out of time order")]
    OutOfOrder {
        file: String,
        chunk: Millis,
        last: Millis,
    },
    #[error("{file} is damaged at offset {offset}: {reason}")]
    Damaged {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl ArchiveError {
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ArchiveError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// A copy, for an error that several waiting readers share.
    fn duplicate(&self) -> ArchiveError {
        match self {
            ArchiveError::Io { file, source } => ArchiveError::Io {
                file: file.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            ArchiveError::OutOfOrder { file, chunk, last } => ArchiveError::OutOfOrder {
                file: file.clone(),
                chunk: *chunk,
                last: *last,
            },
            ArchiveError::Damaged {
                file,
                offset,
                reason,
            } => ArchiveError::Damaged {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            ArchiveError::Remote(e) => ArchiveError::Remote(RemoteError {
                op: e.op,
                object: e.object.clone(),
                reason: e.reason.clone(),
                kind: e.kind,
            }),
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        file: shown(path),
        source,
    }
}

/// A file of a series folder as messages name it: `{series}/{file}` (or the series alone, for the folder).
fn shown(path: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match (path.parent().and_then(name), name(path)) {
        (Some(series), Some(file)) => format!("{series}/{file}"),
        (_, file) => file.unwrap_or_default(),
    }
}

/// What the series settings promise the archive when it is opened.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// The persisted sealed watermark: every member of a chunk that ends at or below it was durable whole
    /// before it was persisted, so a bad one there is damage (kept, and refused to readers), never a torn tail.
    pub sealed: Millis,
    /// Retention removed every hour before this one: files there are leftovers of a removal cut short.
    pub kept_from: Hour,
    /// With an object store: every hour before this one is on it, and may be gone from the folder.
    pub uploaded_through: Hour,
}

impl Expect {
    /// For tools that read a folder alone: every chunk there is taken as sealed, nothing as removed.
    pub const ALL_SEALED: Expect = Expect {
        sealed: Millis::MAX,
        kept_from: Hour::EPOCH,
        uploaded_through: Hour::EPOCH,
    };
}

/// Something `open` found and mended, or found and could not mend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// Data that was durable is damaged or gone (an error), rather than a crash's leftovers (a warning).
    pub damage: bool,
    pub text: String,
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Repair {
    fn note(text: String) -> Repair {
        Repair {
            damage: false,
            text,
        }
    }

    fn damage(text: String) -> Repair {
        Repair { damage: true, text }
    }
}

/// A chunk whole in the archive, as its index tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSummary {
    pub start: ChunkStart,
    pub parts: u32,
    pub sealed_at: Millis,
}

/// Totals over every sealed chunk of a series, from the hour summaries alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub first_ts: Option<Millis>,
    pub last_ts: Option<Millis>,
}

impl Summary {
    fn of(hours: &BTreeMap<Hour, HourSummary>) -> Summary {
        let mut totals = Summary::default();
        for h in hours.values() {
            totals.events += h.events;
            totals.chunks += u64::from(h.chunks);
            totals.bytes += h.bytes;
        }
        totals.first_ts = hours.values().next().map(|h| h.first_ts);
        totals.last_ts = hours.values().next_back().map(|h| h.last_ts);
        totals
    }
}

/// The indexes of every series' hours, read on demand and kept within a byte budget (`--index-cache-bytes`):
/// what memory holds of the past does not grow with its length. Keyed by the archive's identity and the hour.
///
/// The hours' member summaries (`summary`), read when a filter first asks, are kept beside them within a budget
/// of the same size.
#[derive(Clone)]
pub struct IndexCache {
    indexes: moka::sync::Cache<(u64, Hour), Arc<HourIndex>>,
    summaries: moka::sync::Cache<(u64, Hour), Arc<HourSummaries>>,
}

impl IndexCache {
    pub fn new(max_bytes: u64) -> IndexCache {
        IndexCache {
            indexes: moka::sync::Cache::builder()
                .weigher(|_, index: &Arc<HourIndex>| {
                    let bytes = 128 + index.entries.capacity() * std::mem::size_of::<IndexEntry>();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .max_capacity(max_bytes)
                .build(),
            summaries: moka::sync::Cache::builder()
                .weigher(|_, s: &Arc<HourSummaries>| {
                    u32::try_from(128 + s.bytes()).unwrap_or(u32::MAX)
                })
                .max_capacity(max_bytes)
                .build(),
        }
    }
}

/// Which hour index a lookup found missing from memory: the caller reads it (`SeriesArchive::warm`), with no
/// lock held, and looks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cold(pub Hour);

/// The hour archives of one series folder.
pub struct SeriesArchive {
    dir: PathBuf,
    /// This archive's key in the index cache.
    id: u64,
    /// Every hour that holds events, summarised. A std lock: no `.await` while held, no I/O.
    hours: RwLock<BTreeMap<Hour, HourSummary>>,
    /// Totals over `hours`, kept as they change so that series info does not walk the history.
    totals: RwLock<Summary>,
    cache: IndexCache,
    /// What the settings promised at open: how a lazily read index is checked.
    expect: Expect,
    /// Held by whoever writes archive files: the sealer appending, an import merging.
    writing: Mutex<()>,
    /// Members found damaged (hour, offset): each is logged once, however often it is asked for.
    damaged: Mutex<BTreeSet<(Hour, u64)>>,
    /// The object store complete hours go to, and this series' name there.
    remote: Option<(Arc<Remote>, String)>,
    /// Whether the series has a folder. A replica's archives have none: they read the object store alone.
    folder: bool,
    /// A replica's disk cache of what it read from the store.
    disk: Option<Arc<DiskCache>>,
}

impl SeriesArchive {
    /// Opens a series folder: finishes a retention removal cut short, reads the hour summaries (`hours.idx`),
    /// and of the indexes only the newest hour's, the one a crash can have left mid-append: it is checked, a
    /// torn tail cut off, damaged members of sealed chunks kept indexed so that readers are refused them
    /// rather than shown something else. Every other hour's index is read when first needed. Returns what was
    /// repaired or found damaged, one line each.
    pub fn open(
        dir: &Path,
        expect: Expect,
        cache: &IndexCache,
        remote: Option<Arc<Remote>>,
    ) -> Result<(SeriesArchive, Vec<Repair>), ArchiveError> {
        remove_files_before(dir, expect.kept_from)?;
        let mut found = Vec::new();
        let mut sidecars = BTreeSet::new();
        let mut repairs = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_at(dir))? {
            let entry = entry.map_err(io_at(dir))?;
            let name = entry.file_name();
            let name = name.to_str().unwrap_or("");
            if let Some(hour) = name.strip_suffix(ARCHIVE_SUFFIX).and_then(Hour::parse_stem) {
                // Its length, to hold against the summary: an archive cut short shows without reading it.
                let len = entry.metadata().map_err(io_at(&entry.path()))?.len();
                found.push((hour, len));
            } else if let Some(hour) = name.strip_suffix(SIDECAR_SUFFIX).and_then(Hour::parse_stem)
            {
                sidecars.insert(hour);
            } else if name.ends_with(REWRITE_SUFFIX) {
                // An import stopped before its rename: the archive it was replacing is still whole.
                fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
                repairs.push(Repair::note(format!(
                    "{}: unfinished rewrite removed",
                    shown(&entry.path())
                )));
            }
        }
        found.sort_unstable();
        let lengths: BTreeMap<Hour, u64> = found.iter().copied().collect();
        let found: Vec<Hour> = found.into_iter().map(|(h, _)| h).collect();
        for hour in sidecars.iter().filter(|h| found.binary_search(h).is_err()) {
            // An index without its archive: the archive was deleted. Its index goes aside, so that no archive
            // written for this hour later is read through it.
            let named = named_by_sidecar(dir, *hour);
            let sidecar = sidecar_path(dir, *hour);
            let aside = sidecar.with_extension("idx.without-archive");
            fs::rename(&sidecar, &aside).map_err(io_at(&sidecar))?;
            repairs.push(Repair::damage(format!(
                "{}: the hour archive is missing; its index named {named} (moved aside to {})",
                shown(&archive_path(dir, *hour)),
                shown(&aside)
            )));
        }
        let manifest = dir.join(HOURS_FILE);
        let listed = hours::read(&manifest).map_err(io_at(&manifest))?;
        let mut summaries = BTreeMap::new();
        let mut rewrite = false;
        let mut damaged = BTreeSet::new();
        let newest = found.last().copied();
        let archive = SeriesArchive {
            dir: dir.to_owned(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            hours: RwLock::new(BTreeMap::new()),
            totals: RwLock::new(Summary::default()),
            cache: cache.clone(),
            expect,
            writing: Mutex::new(()),
            damaged: Mutex::new(BTreeSet::new()),
            remote: remote.map(|r| (r, series_of(dir))),
            folder: true,
            disk: None,
        };
        for hour in found {
            let summary = match listed.get(&hour) {
                // Complete hours are as the summaries say, if their length agrees; their indexes are read when
                // needed.
                Some(s) if Some(hour) != newest && lengths.get(&hour) == Some(&s.bytes) => Some(*s),
                _ => {
                    // The newest hour, or one the summaries lack (a crash before its record was written, or an
                    // older layout): its index now, checked as the open rules say.
                    let place = Place {
                        dir,
                        hour,
                        newest: Some(hour) == newest,
                    };
                    let mut index = load_hour(&place, expect.sealed, &mut repairs, &mut damaged)?;
                    index.entries.shrink_to_fit();
                    rewrite |= Some(hour) != newest;
                    let summary = HourSummary::of(&index);
                    if summary.is_some() {
                        archive
                            .cache
                            .indexes
                            .insert((archive.id, hour), Arc::new(index));
                    }
                    summary
                }
            };
            match summary {
                Some(s) => {
                    summaries.insert(hour, s);
                }
                None => {
                    // Nothing survived (a crash while the hour's first chunk was written): the file goes.
                    let path = archive_path(dir, hour);
                    fs::remove_file(&path).map_err(io_at(&path))?;
                    let _ = fs::remove_file(sidecar_path(dir, hour));
                    rewrite = true;
                }
            }
        }
        let gone: Vec<(Hour, HourSummary)> = listed
            .iter()
            .filter(|(h, _)| !summaries.contains_key(h))
            .map(|(h, s)| (*h, *s))
            .collect();
        for (hour, summary) in &gone {
            if archive.remote.is_some() && *hour < expect.uploaded_through {
                // On the object store: the local copy went once it was uploaded.
                summaries.insert(*hour, *summary);
                continue;
            }
            // Summarised once, gone now: deleted (its orphan index, if any, was set aside above).
            if !sidecars.contains(hour) {
                repairs.push(Repair::damage(format!(
                    "{}: the hour archive is missing (the hour summaries named it)",
                    shown(&archive_path(dir, *hour))
                )));
            }
            rewrite = true;
        }
        let complete: BTreeMap<Hour, HourSummary> = summaries
            .iter()
            .filter(|(h, _)| Some(**h) != newest)
            .map(|(h, s)| (*h, *s))
            .collect();
        if rewrite || complete.len() != listed.len() {
            hours::write(&manifest, &complete).map_err(io_at(&manifest))?;
        }
        *lock_write(&archive.totals) = Summary::of(&summaries);
        *lock_write(&archive.hours) = summaries;
        *lock(&archive.damaged) = damaged;
        Ok((archive, repairs))
    }

    /// `open` for tools that read a folder alone: every chunk taken as sealed, nothing as removed, indexes
    /// cached within 64 MiB.
    pub fn open_alone(dir: &Path) -> Result<(SeriesArchive, Vec<Repair>), ArchiveError> {
        SeriesArchive::open(dir, Expect::ALL_SEALED, &IndexCache::new(64 << 20), None)
    }

    /// The archive of a series whose folder is not made yet: nothing sealed.
    pub fn empty(dir: &Path, cache: &IndexCache, remote: Option<Arc<Remote>>) -> SeriesArchive {
        SeriesArchive {
            remote: remote.map(|r| (r, series_of(dir))),
            dir: dir.to_owned(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            hours: RwLock::new(BTreeMap::new()),
            totals: RwLock::new(Summary::default()),
            cache: cache.clone(),
            expect: Expect::ALL_SEALED,
            writing: Mutex::new(()),
            damaged: Mutex::new(BTreeSet::new()),
            folder: true,
            disk: None,
        }
    }

    /// A replica's view of a series on the object store: `hours` are what the store's `hours.idx` says of the
    /// uploaded hours. No folder: indexes and members are read from the store, and nothing is written.
    pub fn on_store(
        series: &str,
        cache: &IndexCache,
        remote: Arc<Remote>,
        disk: Option<Arc<DiskCache>>,
        hours: BTreeMap<Hour, HourSummary>,
    ) -> SeriesArchive {
        let mut archive = SeriesArchive::empty(Path::new(series), cache, Some(remote));
        archive.folder = false;
        archive.disk = disk;
        *lock_write(&archive.totals) = Summary::of(&hours);
        *lock_write(&archive.hours) = hours;
        archive
    }

    /// A replica's archive takes the hours the store has now (more of them uploaded, fewer after retention).
    /// Hours it knew keep their indexes: an uploaded hour never changes under one revision.
    pub fn set_hours(&self, hours: BTreeMap<Hour, HourSummary>) {
        let mut held = lock_write(&self.hours);
        *lock_write(&self.totals) = Summary::of(&hours);
        *held = hours;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn archive_path(&self, hour: Hour) -> PathBuf {
        archive_path(&self.dir, hour)
    }

    /// An hour's index if memory holds it (the cache, or `held`: indexes the caller read itself): `Ok(None)`
    /// when the hour holds no events, `Cold` when its index must be read first.
    fn cached(&self, hour: Hour, held: &[Arc<HourIndex>]) -> Result<Option<Arc<HourIndex>>, Cold> {
        if !lock_read(&self.hours).contains_key(&hour) {
            return Ok(None);
        }
        if let Some(index) = held.iter().find(|h| h.hour == hour) {
            return Ok(Some(index.clone()));
        }
        self.cache
            .indexes
            .get(&(self.id, hour))
            .map(Some)
            .ok_or(Cold(hour))
    }

    /// An hour's index, read from its sidecar (or rebuilt from the archive) if memory does not hold it.
    /// Blocking.
    pub fn index(&self, hour: Hour) -> Result<Option<Arc<HourIndex>>, ArchiveError> {
        match self.cached(hour, &[]) {
            Ok(found) => Ok(found),
            Err(Cold(hour)) => self.warm(hour).map(Some),
        }
    }

    /// Reads an hour's index into memory. Blocking; concurrent reads of one hour read it once.
    pub fn warm(&self, hour: Hour) -> Result<Arc<HourIndex>, ArchiveError> {
        self.cache
            .indexes
            .try_get_with(
                (self.id, hour),
                || -> Result<Arc<HourIndex>, ArchiveError> {
                    let mut index = match (&self.remote, self.is_local(hour)) {
                        (Some((remote, series)), false) => {
                            self.remote_index(remote, series, hour)?
                        }
                        _ => self.local_index(hour)?,
                    };
                    index.entries.shrink_to_fit();
                    Ok(Arc::new(index))
                },
            )
            .map_err(|e: Arc<ArchiveError>| match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) => shared.duplicate(),
            })
    }

    /// An hour's index from the local folder, checked as a start checks an older hour.
    fn local_index(&self, hour: Hour) -> Result<HourIndex, ArchiveError> {
        let place = Place {
            dir: &self.dir,
            hour,
            newest: false,
        };
        let mut repairs = Vec::new();
        let mut damaged = BTreeSet::new();
        let index = load_hour(&place, self.expect.sealed, &mut repairs, &mut damaged);
        for r in repairs {
            if r.damage {
                tracing::error!("{r}");
            } else {
                tracing::warn!("{r}");
            }
        }
        lock(&self.damaged).extend(damaged);
        index
    }

    /// The index of an hour that is on the object store only: its index object, believed only if it describes
    /// exactly the hour its summary does; otherwise the archive itself comes back into the folder (until the
    /// uploader lets it go again) and is indexed from there. Nothing else of it is kept on disk.
    fn remote_index(
        &self,
        remote: &Remote,
        series: &str,
        hour: Hour,
    ) -> Result<HourIndex, ArchiveError> {
        let summary = lock_read(&self.hours).get(&hour).copied();
        let Some(summary) = summary else {
            return Ok(HourIndex::new(hour));
        };
        let object = remote.index(series, hour);
        let found = match &self.disk {
            // A replica: the object must be there. When it is not (yet, or any more: retention), its next look
            // at the settings tells.
            Some(disk) => Some(disk.get_or(
                (self.id, hour, None),
                || match remote.get(&object)? {
                    Some((bytes, _)) => Ok(bytes.to_vec()),
                    None => Err(RemoteError::not_found("GET", &object)),
                },
            )?),
            None => remote.get(&object)?.map(|(bytes, _)| bytes.to_vec()),
        };
        match found {
            Some(bytes) => {
                let read = index::decode(&bytes, hour, summary.bytes);
                if !read.stale && HourSummary::of(&read.index) == Some(summary) {
                    return Ok(read.index);
                }
            }
            None if !self.folder => return Err(RemoteError::not_found("GET", &object).into()),
            None => {}
        }
        let path = self.archive_path(hour);
        if !self.folder {
            return Err(ArchiveError::Damaged {
                file: shown(&path),
                offset: 0,
                reason: "its index object does not describe the hour".into(),
            });
        }
        tracing::warn!(file = %shown(&path), "the index object is missing or does not describe its hour: reading the archive object");
        let object = remote.archive(series, hour);
        let Some((bytes, _)) = remote.get(&object)? else {
            return Err(ArchiveError::Damaged {
                file: shown(&path),
                offset: 0,
                reason: format!("the object store has no {object}"),
            });
        };
        // Through the name of a rewrite: a start removes what a crash left of it half written.
        let tmp = self.dir.join(format!("{}{REWRITE_SUFFIX}", hour.stem()));
        durable::write_aside(&tmp, &bytes)
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| sync_dir(&self.dir))
            .map_err(io_at(&path))?;
        self.local_index(hour)
    }

    /// Whether the chunk is sealed here whole (all its parts). Blocking.
    pub fn contains(&self, start: ChunkStart) -> Result<bool, ArchiveError> {
        Ok(self
            .index(start.hour())?
            .is_some_and(|h| h.chunk(start).last().is_some_and(|e| e.meta.last_part)))
    }

    /// The start of the newest sealed chunk.
    pub fn last_chunk(&self) -> Option<ChunkStart> {
        lock_read(&self.hours)
            .values()
            .next_back()
            .map(|h| h.last.start)
    }

    /// The chunk that starts at `start`, if it is here. `held`: hour indexes the caller read already.
    pub fn summary_of(
        &self,
        start: ChunkStart,
        held: &[Arc<HourIndex>],
    ) -> Result<Option<ChunkSummary>, Cold> {
        let Some(index) = self.cached(start.hour(), held)? else {
            return Ok(None);
        };
        Ok(index.chunk(start).last().map(summarize))
    }

    /// The newest chunk that starts before `t`. Empty stretches cost nothing: one step in the map of hours, one
    /// binary search in `t`'s own hour's index; any older hour answers from its summary.
    pub fn chunk_before(
        &self,
        t: Millis,
        held: &[Arc<HourIndex>],
    ) -> Result<Option<ChunkSummary>, Cold> {
        let older = {
            let hours = lock_read(&self.hours);
            let mut before = hours.range(..=Hour::of(t)).rev();
            match before.next() {
                Some((h, _)) if *h == Hour::of(t) => before.next().map(|(_, s)| s.last),
                Some((_, s)) => return Ok(Some(s.last)),
                None => return Ok(None),
            }
        };
        let found = self.cached(Hour::of(t), held)?.and_then(|h| {
            let i = h
                .entries
                .partition_point(|e| e.meta.chunk_start.millis() < t);
            // The last member before `t` is the last part of its chunk: parts share their chunk's start.
            i.checked_sub(1).map(|i| summarize(&h.entries[i]))
        });
        Ok(found.or(older))
    }

    /// The oldest chunk that starts at or after `t`: one binary search in `t`'s own hour's index, or the
    /// summary of the next hour that holds events.
    pub fn chunk_from(
        &self,
        t: Millis,
        held: &[Arc<HourIndex>],
    ) -> Result<Option<ChunkSummary>, Cold> {
        let newer = {
            let hours = lock_read(&self.hours);
            let mut after = hours.range(Hour::of(t)..);
            match after.next() {
                Some((h, _)) if *h == Hour::of(t) => after.next().map(|(_, s)| s.first),
                Some((_, s)) => return Ok(Some(s.first)),
                None => return Ok(None),
            }
        };
        let found = self.cached(Hour::of(t), held)?.and_then(|h| {
            let i = h
                .entries
                .partition_point(|e| e.meta.chunk_start.millis() < t);
            let first = h.entries.get(i)?;
            h.chunk(first.meta.chunk_start).last().map(summarize)
        });
        Ok(found.or(newer))
    }

    /// Calls `each(chunk start, events)` for every chunk whole here that starts in `[from, to)`, in time
    /// order, from the indexes alone; an hour that `whole(hour)` says falls into one count entire is counted from
    /// its summary, as one call at its start, without reading its index. Blocking.
    pub fn chunk_counts(
        &self,
        from: Millis,
        to: Millis,
        whole: impl Fn(Hour) -> bool,
        mut each: impl FnMut(ChunkStart, u64),
    ) -> Result<(), ArchiveError> {
        let hours: Vec<(Hour, HourSummary)> = lock_read(&self.hours)
            .range(Hour::of(from)..=Hour::of(to - 1))
            .map(|(h, s)| (*h, *s))
            .collect();
        for (hour, summary) in hours {
            let inside = hour.start() >= from && hour.start() + crate::time::HOUR <= to;
            if inside && whole(hour) {
                each(summary.first.start, summary.events);
                continue;
            }
            let Some(h) = self.index(hour)? else {
                continue;
            };
            let lo = h
                .entries
                .partition_point(|e| e.meta.chunk_start.millis() < from);
            let hi = h
                .entries
                .partition_point(|e| e.meta.chunk_start.millis() < to);
            let mut current: Option<(ChunkStart, u64)> = None;
            for e in &h.entries[lo..hi] {
                match &mut current {
                    Some((start, n)) if *start == e.meta.chunk_start => {
                        *n += u64::from(e.meta.entries)
                    }
                    _ => {
                        if let Some((start, n)) = current.take() {
                            each(start, n);
                        }
                        current = Some((e.meta.chunk_start, u64::from(e.meta.entries)));
                    }
                }
            }
            if let Some((start, n)) = current {
                each(start, n);
            }
        }
        Ok(())
    }

    /// The index entries of one sealed chunk, in part order; empty when the chunk holds no events. Blocking.
    pub fn chunk(&self, start: ChunkStart) -> Result<Vec<IndexEntry>, ArchiveError> {
        Ok(self
            .index(start.hour())?
            .map(|h| h.chunk(start).to_vec())
            .unwrap_or_default())
    }

    /// Appends whole chunks' members (already encoded, in time and part order, all of one hour) to their hour
    /// archive with one fsync, and makes them durable before indexing them. On failure the archive is cut back
    /// to where it was.
    pub fn append_chunk(&self, members: &[member::Member]) -> Result<(), ArchiveError> {
        let Some((first, _)) = members.first() else {
            return Ok(());
        };
        self.append_members(first.chunk_start, |write| {
            members.iter().try_for_each(write)
        })
    }

    /// Appends the members `produce` hands to its writer, in time and part order, all of the hour of `first`
    /// (the first one's chunk) and after what the hour holds: each is written as it comes, so a chunk of
    /// millions of events never sits in memory compressed. They are made durable (one fsync) before they are
    /// indexed; on any failure, the producer's or the archive's, the archive is cut back to where it was and
    /// nothing is indexed.
    pub fn append_members<E: From<ArchiveError>>(
        &self,
        first: ChunkStart,
        produce: impl FnOnce(&mut dyn FnMut(&member::Member) -> Result<(), E>) -> Result<(), E>,
    ) -> Result<(), E> {
        let _writing = lock(&self.writing);
        let hour = first.hour();
        let path = self.archive_path(hour);
        let old = self.index(hour)?;
        if let Some(last) = old.as_ref().and_then(|h| h.entries.last())
            && last.meta.chunk_start >= first
        {
            return Err(ArchiveError::OutOfOrder {
                file: shown(&path),
                chunk: first.millis(),
                last: last.meta.chunk_start.millis(),
            }
            .into());
        }
        let start = old.as_ref().map_or(0, |h| h.end());
        let is_new = start == 0;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_at(&path))?;
        let mut entries = Vec::new();
        let mut offset = start;
        // Anything past the indexed end is the remains of a failed append: overwritten.
        let produced = file
            .set_len(start)
            .map_err(io_at(&path))
            .map_err(E::from)
            .and_then(|()| {
                produce(&mut |(meta, bytes): &member::Member| {
                    if meta.chunk_start.hour() != hour || meta.chunk_start < first {
                        return Err(ArchiveError::OutOfOrder {
                            file: shown(&path),
                            chunk: meta.chunk_start.millis(),
                            last: first.millis(),
                        }
                        .into());
                    }
                    file.write_all_at(bytes, offset).map_err(io_at(&path))?;
                    entries.push(IndexEntry::of(offset, *meta, bytes));
                    offset += bytes.len() as u64;
                    Ok(())
                })
            });
        let durable = produced.and_then(|()| {
            file.sync_data()
                .and_then(|()| if is_new { sync_dir(&self.dir) } else { Ok(()) })
                .map_err(io_at(&path))
                .map_err(E::from)
        });
        if let Err(e) = durable {
            // Leave the archive as valid gzip: drop whatever part of the members reached the file, and an
            // archive this append created (an empty file is not gzip).
            let _ = file.set_len(start).and_then(|()| file.sync_data());
            if is_new {
                let _ = fs::remove_file(&path);
            }
            return Err(e);
        }
        if entries.is_empty() {
            if is_new {
                let _ = fs::remove_file(&path);
            }
            return Ok(());
        }
        let sidecar = sidecar_path(&self.dir, hour);
        if let Err(e) = index::append_sidecar(&sidecar, &entries) {
            // The archive is durable and right; the sidecar is rebuilt from it at the next open.
            tracing::warn!(file = %shown(&sidecar), error = %e, "index sidecar not updated");
        }
        let mut index = old.map_or_else(|| HourIndex::new(hour), |h| (*h).clone());
        index.entries.extend(entries);
        self.put_hour(index, is_new);
        Ok(())
    }

    /// Appends the summaries of members just appended (`append_chunk`) to their hours' sidecars. A failure is
    /// logged, not returned: members without a summary are read, which costs time, not events.
    pub fn add_summaries(&self, members: &[(MemberMeta, Bloom)]) {
        let mut by_hour: BTreeMap<Hour, Vec<(MemberMeta, Bloom)>> = BTreeMap::new();
        for (meta, bloom) in members {
            by_hour
                .entry(meta.chunk_start.hour())
                .or_default()
                .push((*meta, bloom.clone()));
        }
        for (hour, members) in by_hour {
            let path = summaries_path(&self.dir, hour);
            if let Err(e) = summary::append(&path, &members) {
                tracing::warn!(file = %shown(&path), error = %e, "member summaries not written");
            }
            self.cache.summaries.invalidate(&(self.id, hour));
        }
    }

    /// Whether a sealed member may hold every token of `tokens` (`summary::token_hashes`): false only when its
    /// summary says it cannot. Members without one (written before summaries or with them off) may, and so do
    /// all of an hour whose summaries cannot be read now (they are asked for again next time). Blocking: an
    /// hour's summaries are read when first asked for, from the folder or, for an hour it no longer holds (and on
    /// a replica), from the object store.
    pub fn may_hold(&self, entry: &IndexEntry, tokens: &[u64]) -> bool {
        if tokens.is_empty() {
            return true;
        }
        let hour = entry.meta.chunk_start.hour();
        let summaries = self.cache.summaries.try_get_with((self.id, hour), || {
            self.read_summaries(hour).map(Arc::new).inspect_err(|e| {
                tracing::warn!(series = %series_of(&self.dir), hour = %hour.stem(), error = %e, "member summaries not read");
            })
        });
        match summaries {
            Ok(s) => s
                .of(&entry.meta)
                .is_none_or(|bloom| bloom.may_contain_all(tokens)),
            Err(_) => true,
        }
    }

    /// An hour's member summaries: the folder's sidecar when the folder holds the hour, else the store's object
    /// (none when neither has any).
    fn read_summaries(&self, hour: Hour) -> Result<HourSummaries, ArchiveError> {
        if self.is_local(hour) || self.remote.is_none() {
            let path = summaries_path(&self.dir, hour);
            return HourSummaries::read(&path).map_err(io_at(&path));
        }
        let Some((remote, series)) = &self.remote else {
            return Ok(HourSummaries::default());
        };
        Ok(remote
            .get(&remote.summaries(series, hour))?
            .map_or_else(HourSummaries::default, |(bytes, _)| {
                HourSummaries::parse(&bytes)
            }))
    }

    /// Takes an hour's new index into memory: the cache, its summary, the totals. When it is a new hour, the
    /// hour that was the newest is complete: its summary goes to `hours.idx`.
    fn put_hour(&self, mut index: HourIndex, is_new: bool) {
        index.entries.shrink_to_fit();
        let hour = index.hour;
        let Some(summary) = HourSummary::of(&index) else {
            return;
        };
        self.cache.indexes.insert((self.id, hour), Arc::new(index));
        let completed = {
            let mut hours = lock_write(&self.hours);
            let completed = if is_new {
                hours
                    .range(..hour)
                    .next_back()
                    .map(|(h, s)| (*h, *s))
                    .filter(|_| hours.range(hour..).next().is_none())
            } else {
                None
            };
            hours.insert(hour, summary);
            *lock_write(&self.totals) = Summary::of(&hours);
            completed
        };
        if let Some((done, s)) = completed {
            let manifest = self.dir.join(HOURS_FILE);
            if let Err(e) = hours::append(&manifest, done, &s) {
                // A cache: at the next start the hour is summarised from its own index.
                tracing::warn!(file = %shown(&manifest), error = %e, "hour summary not written");
            }
        }
    }

    /// Removes every hour archive before `keep_from` (retention), and its sidecar: first from memory, so no
    /// reader finds them, then from the disk. Returns how many archives were removed.
    pub fn remove_before(&self, keep_from: Hour) -> Result<usize, ArchiveError> {
        let _writing = lock(&self.writing);
        let complete = {
            let mut hours = lock_write(&self.hours);
            let kept = hours.split_off(&keep_from);
            for hour in hours.keys() {
                self.cache.indexes.invalidate(&(self.id, *hour));
                self.cache.summaries.invalidate(&(self.id, *hour));
            }
            *hours = kept;
            *lock_write(&self.totals) = Summary::of(&hours);
            complete_hours(&hours)
        };
        self.write_summaries(&complete)?;
        remove_files_before(&self.dir, keep_from)
    }

    /// Writes `hours.idx` again, whole.
    fn write_summaries(&self, complete: &BTreeMap<Hour, HourSummary>) -> Result<(), ArchiveError> {
        let manifest = self.dir.join(HOURS_FILE);
        hours::write(&manifest, complete).map_err(io_at(&manifest))
    }

    /// Puts whole chunks (each its members in part order) into one hour archive where they belong in time
    /// order, none of them there yet. Chunks after the hour's last one are appended; otherwise the hour is
    /// written again, old members copied as they are, into a new file that replaces the old one by a rename.
    ///
    /// For imports, which hold the data folder alone: a reader that copied an index entry before the rename
    /// would read the new file at an old offset.
    pub fn insert_chunks(&self, chunks: &[Vec<member::Member>]) -> Result<(), ArchiveError> {
        let mut chunks: Vec<&Vec<member::Member>> =
            chunks.iter().filter(|c| !c.is_empty()).collect();
        chunks.sort_by_key(|c| c[0].0.chunk_start);
        let Some(first) = chunks.first().map(|c| c[0].0.chunk_start) else {
            return Ok(());
        };
        let hour = first.hour();
        // Held from the look at the hour to the swap of its index: an append in between would be lost.
        let writing = lock(&self.writing);
        let old = self.index(hour)?;
        let Some(old) = old.filter(|h| {
            h.entries
                .last()
                .is_some_and(|e| e.meta.chunk_start >= first)
        }) else {
            // All after the hour's last chunk: one append, checking the order again under the lock.
            drop(writing);
            let members: Vec<member::Member> =
                chunks.iter().flat_map(|c| c.iter().cloned()).collect();
            return self.append_chunk(&members);
        };
        let path = self.archive_path(hour);
        let tmp = self.dir.join(format!("{}{REWRITE_SUFFIX}", hour.stem()));
        let merged = merge_hour(&path, &tmp, &old, &chunks)
            .inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
            .map_err(io_at(&path))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        sync_dir(&self.dir).map_err(io_at(&self.dir))?;
        let sidecar = sidecar_path(&self.dir, hour);
        if let Err(e) = index::write_sidecar(&sidecar, &merged) {
            // The old sidecar describes the old file: without one, the next open indexes the archive itself.
            let _ = fs::remove_file(&sidecar);
            tracing::warn!(file = %shown(&sidecar), error = %e, "index sidecar not updated");
        }
        self.put_hour(merged, false);
        // The hour's summary changed: the file of summaries follows, whole.
        let complete = complete_hours(&lock_read(&self.hours));
        self.write_summaries(&complete)?;
        drop(writing);
        Ok(())
    }

    /// The stored bytes of one member, as they are in the archive, unchecked.
    pub fn read_member(&self, entry: &IndexEntry) -> Result<Vec<u8>, ArchiveError> {
        let hour = entry.meta.chunk_start.hour();
        let path = self.archive_path(hour);
        let opened = if self.folder {
            File::open(&path)
        } else {
            Err(io::ErrorKind::NotFound.into())
        };
        let file = match (opened, &self.remote) {
            (Ok(file), _) => file,
            // Uploaded, and gone from the folder: one ranged read of the object.
            (Err(e), Some((remote, series))) if e.kind() == io::ErrorKind::NotFound => {
                let range = entry.offset..entry.end();
                let object = remote.archive(series, hour);
                let fetch = || remote.get_range(&object, range.clone()).map(|b| b.to_vec());
                let bytes = match &self.disk {
                    Some(disk) => {
                        disk.get_or((self.id, hour, Some((range.start, range.end))), fetch)?
                    }
                    None => fetch()?,
                };
                return Ok(bytes);
            }
            (Err(e), _) => return Err(io_at(&path)(e)),
        };
        let mut bytes = vec![0u8; entry.meta.member_len as usize];
        file.read_exact_at(&mut bytes, entry.offset)
            .map_err(io_at(&path))?;
        Ok(bytes)
    }

    /// Uploads a complete hour to the object store: its archive (create-only: an object already there must hold
    /// the same bytes), then its index. Blocking.
    pub fn upload(&self, hour: Hour) -> Result<(), ArchiveError> {
        let Some((remote, series)) = &self.remote else {
            return Ok(());
        };
        let Some(index) = self.index(hour)? else {
            return Ok(());
        };
        let path = self.archive_path(hour);
        remote.create_from_file(&remote.archive(series, hour), &path)?;
        remote.create(&remote.index(series, hour), index::encode(&index).into())?;
        // Its members' summaries, when they were written: a complete hour's no longer change.
        let sums = summaries_path(&self.dir, hour);
        match fs::read(&sums) {
            Ok(bytes) => {
                remote.create(&remote.summaries(series, hour), bytes.into())?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&sums)(e)),
        }
        Ok(())
    }

    /// The summaries of the hours before `through`, as `hours.idx` holds them: for the object store's copy.
    pub fn summaries_before(&self, through: Hour) -> Vec<u8> {
        hours::encode(lock_read(&self.hours).range(..through))
    }

    /// The summary of an hour that holds events.
    pub fn hour_summary(&self, hour: Hour) -> Option<HourSummary> {
        lock_read(&self.hours).get(&hour).copied()
    }

    /// The hours that hold events in `[from, to)`.
    pub fn hours_in(&self, from: Hour, to: Hour) -> Vec<Hour> {
        lock_read(&self.hours)
            .range(from..to)
            .map(|(h, _)| *h)
            .collect()
    }

    /// Whether an hour's archive is in the local folder.
    pub fn is_local(&self, hour: Hour) -> bool {
        self.folder && self.archive_path(hour).exists()
    }

    /// Removes the local copy of an hour that is on the object store (archive and sidecar); its index in
    /// memory stays good, as the object holds the same bytes. The newest hour that holds events stays: a start
    /// reads it from the folder (`hours.idx` summarises only the hours before it).
    pub fn evict(&self, hour: Hour) -> Result<(), ArchiveError> {
        if self.remote.is_none() {
            return Ok(());
        }
        let _writing = lock(&self.writing);
        if lock_read(&self.hours).keys().next_back() == Some(&hour) {
            return Ok(());
        }
        for path in [
            self.archive_path(hour),
            sidecar_path(&self.dir, hour),
            summaries_path(&self.dir, hour),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&path)(e)),
            }
        }
        Ok(())
    }

    /// The stored bytes of one member, checked whole before anyone may send them as they are: its header is
    /// the index's, and its bytes after it have the CRC-32 they had when they were known good (or, for members
    /// an older index knew no such CRC of, its data inflates to the trailer's CRC-32 and length).
    pub fn read_verified(&self, entry: &IndexEntry) -> Result<Vec<u8>, ArchiveError> {
        let bytes = self.read_member(entry)?;
        let checked = match entry.data_crc {
            // The bytes are the ones that were good: a CRC over the compressed bytes, no inflating.
            Some(crc) => member::verify_stored(&bytes, &entry.meta, crc),
            None => member::verify(&bytes, &entry.meta),
        };
        checked.map_err(|e| self.damaged(entry, &e))?;
        Ok(bytes)
    }

    /// One member's lines, inflated and checked, and its stored bytes.
    pub fn read_part(&self, entry: &IndexEntry) -> Result<(Vec<u8>, Vec<u8>), ArchiveError> {
        let bytes = self.read_member(entry)?;
        let (meta, lines) = member::decode(&bytes).map_err(|e| self.damaged(entry, &e))?;
        if meta != entry.meta {
            let e = member::MemberError::Corrupt("header does not match the index".into());
            return Err(self.damaged(entry, &e));
        }
        Ok((lines, bytes))
    }

    /// The NDJSON lines of one sealed chunk, inflating only its own members; `None` when it holds no events.
    pub fn read_chunk(&self, start: ChunkStart) -> Result<Option<Vec<u8>>, ArchiveError> {
        let entries = self.chunk(start)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let mut lines = Vec::new();
        for entry in &entries {
            lines.extend_from_slice(&self.read_part(entry)?.0);
        }
        Ok(Some(lines))
    }

    /// The error for a member found damaged, logged the first time it is found.
    fn damaged(&self, entry: &IndexEntry, why: &member::MemberError) -> ArchiveError {
        let hour = entry.meta.chunk_start.hour();
        let e = ArchiveError::Damaged {
            file: shown(&self.archive_path(hour)),
            offset: entry.offset,
            reason: why.to_string(),
        };
        let first = lock(&self.damaged).insert((hour, entry.offset));
        if first {
            tracing::error!(error = %e, "a stored member is damaged: it is refused to readers");
        }
        e
    }

    /// How many members are known to be damaged.
    pub fn damaged_members(&self) -> usize {
        lock(&self.damaged).len()
    }

    pub fn summary(&self) -> Summary {
        *self.totals.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn summarize(last_part: &IndexEntry) -> ChunkSummary {
    ChunkSummary {
        start: last_part.meta.chunk_start,
        parts: last_part.meta.part + 1,
        sealed_at: last_part.meta.sealed_at,
    }
}

/// Writes `tmp`: the members of `old` (read from `path`) and the new chunks, in time order, made durable.
fn merge_hour(
    path: &Path,
    tmp: &Path,
    old: &HourIndex,
    chunks: &[&Vec<member::Member>],
) -> io::Result<HourIndex> {
    let source = File::open(path)?;
    let mut out = io::BufWriter::with_capacity(1 << 20, File::create(tmp)?);
    let mut merged = HourIndex::new(old.hour);
    let mut offset = 0;
    // New members are known good (just encoded); old ones keep what their entry knew: copying them is no check.
    let mut push = |entry: IndexEntry, bytes: &[u8], out: &mut io::BufWriter<File>| {
        merged.entries.push(IndexEntry { offset, ..entry });
        offset += bytes.len() as u64;
        out.write_all(bytes)
    };
    let mut new = chunks.iter().peekable();
    let mut buf = Vec::new();
    for e in &old.entries {
        while let Some(c) = new.next_if(|c| c[0].0.chunk_start < e.meta.chunk_start) {
            for (meta, bytes) in c.iter() {
                push(IndexEntry::of(0, *meta, bytes), bytes, &mut out)?;
            }
        }
        buf.resize(e.meta.member_len as usize, 0);
        source.read_exact_at(&mut buf, e.offset)?;
        push(*e, &buf, &mut out)?;
    }
    for c in new {
        for (meta, bytes) in c.iter() {
            push(IndexEntry::of(0, *meta, bytes), bytes, &mut out)?;
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    Ok(merged)
}

/// One hour archive being opened: its folder, its hour, and whether it is the series' newest.
struct Place<'a> {
    dir: &'a Path,
    hour: Hour,
    newest: bool,
}

/// Loads one hour's index: the sidecar's valid prefix, completed by scanning the archive, and the archive cut
/// back to the last whole chunk. A member of a chunk at or below `sealed` that does not check out is damage: it
/// stays indexed (in `damaged`), so readers are refused it and links do not change.
fn load_hour(
    place: &Place,
    sealed: Millis,
    repairs: &mut Vec<Repair>,
    damaged: &mut BTreeSet<(Hour, u64)>,
) -> Result<HourIndex, ArchiveError> {
    let (hour, path, sidecar) = (
        place.hour,
        archive_path(place.dir, place.hour),
        sidecar_path(place.dir, place.hour),
    );
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    let len = file.metadata().map_err(io_at(&path))?.len();
    let read = index::read_sidecar(&sidecar, hour, len).map_err(io_at(&sidecar))?;
    let (mut index, mut rewrite) = (read.index, read.stale);
    if read.beyond > 0 {
        // The sidecar is appended only after the members it names are durable in the archive.
        repairs.push(Repair::damage(format!(
            "{}: {len} bytes long, but its index names {} more members after them: they are gone",
            shown(&path),
            read.beyond
        )));
        let aside = sidecar.with_extension("idx.before-loss");
        fs::copy(&sidecar, &aside).map_err(io_at(&aside))?;
    }
    // In the newest hour the sidecar's last member is checked whole: a crash could have left it half-written.
    if place.newest
        && let Some(last) = index.entries.last().copied()
        && !index::verify_last(&file, &index).map_err(io_at(&path))?
    {
        if chunk_end(&last.meta) <= sealed {
            damaged.insert((hour, last.offset));
            repairs.push(Repair::damage(format!(
                "{}: the sealed member at offset {} is damaged; kept, and refused to readers",
                shown(&path),
                last.offset
            )));
        } else {
            index.entries.pop();
            rewrite = true;
        }
    }
    if index.end() < len {
        let scanned = index::scan(&file, len, &mut index, sealed).map_err(io_at(&path))?;
        if scanned.added > 0 {
            repairs.push(Repair::note(format!(
                "{}: indexed {} members from the archive",
                shown(&path),
                scanned.added
            )));
            rewrite = true;
        }
        for offset in scanned.damaged {
            damaged.insert((hour, offset));
            repairs.push(Repair::damage(format!(
                "{}: the sealed member at offset {offset} is damaged; kept, and refused to readers",
                shown(&path)
            )));
        }
    }
    index.drop_incomplete_tail();
    let keep = index.end();
    if keep < len {
        // Bytes past the last whole chunk are a torn append unless a sealed chunk's members were among them.
        let sealed_lost = index::any_member(&file, keep, len, |m| chunk_end(m) <= sealed)
            .map_err(io_at(&path))?;
        // The sidecar first: one that named cut members would look like durable members lost.
        index::write_sidecar(&sidecar, &index).map_err(io_at(&sidecar))?;
        rewrite = false;
        cut_tail(&file, &path, keep, len).map_err(io_at(&path))?;
        let text = format!(
            "{}: cut a torn tail of {} bytes at offset {keep} (kept as {}.tail-{keep})",
            shown(&path),
            len - keep,
            shown(&path)
        );
        repairs.push(if sealed_lost {
            Repair::damage(format!("{text}; a sealed chunk was in it"))
        } else {
            Repair::note(text)
        });
    }
    if rewrite {
        index::write_sidecar(&sidecar, &index).map_err(io_at(&sidecar))?;
    }
    Ok(index)
}

/// Where a chunk ends: the time below which its member had to be durable for the watermark to pass it.
fn chunk_end(meta: &MemberMeta) -> Millis {
    meta.chunk_start.millis() + Millis::from(meta.width_secs) * 1000
}

/// What an hour's sidecar names, for a message about an archive that is gone.
fn named_by_sidecar(dir: &Path, hour: Hour) -> String {
    match index::read_sidecar(&sidecar_path(dir, hour), hour, u64::MAX) {
        Ok(read) => format!(
            "{} members, {} events",
            read.index.entries.len(),
            read.index.events()
        ),
        Err(e) => format!("members it could not be read for ({e})"),
    }
}

/// Deletes the hour archives and sidecars before `keep_from`: retention's removal, also one cut short by a
/// crash. Returns how many archives went.
fn remove_files_before(dir: &Path, keep_from: Hour) -> Result<usize, ArchiveError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or("");
        let stem = name
            .strip_suffix(ARCHIVE_SUFFIX)
            .or_else(|| name.strip_suffix(SIDECAR_SUFFIX))
            .or_else(|| name.strip_suffix(SUMMARIES_SUFFIX));
        if stem
            .and_then(Hour::parse_stem)
            .is_some_and(|h| h < keep_from)
        {
            fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
            removed += usize::from(name.ends_with(ARCHIVE_SUFFIX));
        }
    }
    if removed > 0 {
        sync_dir(dir).map_err(io_at(dir))?;
    }
    Ok(removed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn lock_write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The series a folder holds: its name.
/// The hours `hours.idx` holds: all but the newest, the one a crash can leave mid-append.
fn complete_hours(hours: &BTreeMap<Hour, HourSummary>) -> BTreeMap<Hour, HourSummary> {
    let newest = hours.keys().next_back().copied();
    hours
        .iter()
        .filter(|(h, _)| Some(**h) != newest)
        .map(|(h, s)| (*h, *s))
        .collect()
}

fn series_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Identities of archives in the index cache.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Moves the bytes past `keep` aside (to `{archive}.tail-{keep}`, for inspection) and truncates the archive:
/// the copy is durable, folder entry included, before a byte is cut.
fn cut_tail(file: &File, path: &Path, keep: u64, len: u64) -> io::Result<()> {
    let mut tail = vec![0u8; (len - keep) as usize];
    file.read_exact_at(&mut tail, keep)?;
    durable::write_aside(
        &PathBuf::from(format!("{}.tail-{keep}", path.display())),
        &tail,
    )?;
    file.set_len(keep)?;
    file.sync_data()
}

fn archive_path(dir: &Path, hour: Hour) -> PathBuf {
    dir.join(format!("{}{ARCHIVE_SUFFIX}", hour.stem()))
}

fn summaries_path(dir: &Path, hour: Hour) -> PathBuf {
    dir.join(format!("{}{SUMMARIES_SUFFIX}", hour.stem()))
}

fn sidecar_path(dir: &Path, hour: Hour) -> PathBuf {
    dir.join(format!("{}{SIDECAR_SUFFIX}", hour.stem()))
}
