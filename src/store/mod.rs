//! The store: every series, the events not sealed yet, and the two threads that move events along —
//! the commit thread (write-ahead log, group commit, then the open chunks) and the sealer (open chunks past the
//! lateness window into hour archives, then the sealed watermark).
//!
//! How a batch flows: `Store::ingest` checks what it can alone (series, future skew, backlog), then queues a
//! `Job` on a bounded channel. The commit thread takes every job waiting, checks each against its series'
//! closing boundary, appends the accepted ones to the log with one fsync, puts their events into open chunks,
//! and only then answers. The sealer raises a series' closing boundary first (so nothing new can land below it),
//! waits until every batch checked before that is settled, then seals the chunks below it in time order, and
//! last persists the watermark. Replaying a seal is idempotent: a chunk already whole in its archive is skipped.

mod chunk;
mod commit;
mod import;
mod read;
mod replica;
mod scan;
mod seal;
pub mod series;
mod takeover;
mod upload;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use crate::archive::{self, IndexCache, Remote, SeriesArchive};
use crate::ingest::log::{Lines, Log};
use crate::ingest::nats::{NatsConfig, NatsLog};
use crate::ingest::parse::{Parsed, Position, TimeSpec};
use crate::ingest::wal::{self, BatchKey, Logged, Wal};
use crate::metrics::{self, Histogram};
use crate::time::{self, ChunkStart, ChunkWidth, Hour, Millis};
use chunk::OpenChunk;
pub use import::{ImportChunk, Imported};
pub use read::{HourPiece, Located, PageLines, PageRef, PartAt, Parts, Read};
pub use scan::{Filtered, ScanLimits};
pub use series::{Generation, SeriesName, Settings};

/// What the store needs from the configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data: PathBuf,
    /// How long the server waits for stragglers before sealing a chunk.
    pub lateness: Millis,
    /// How far ahead of the clock an event may be.
    pub max_future: Millis,
    /// The width of series created without one.
    pub default_width: ChunkWidth,
    /// The most events in one gzip member: a bigger chunk is stored as several parts.
    pub max_member_entries: usize,
    /// How sealed members are deflated.
    pub deflater: crate::archive::deflate::Deflater,
    /// Whether sealing and imports write member summaries (`archive::summary`).
    pub member_summaries: bool,
    /// The most bytes of events not sealed yet (kept in the log; memory holds ~6 bytes per event) before
    /// ingest answers 503.
    pub max_backlog_bytes: u64,
    /// The most bytes of batches in memory, waiting for the log, before ingest answers 503.
    pub max_inflight_bytes: u64,
    /// The most bytes of hour indexes kept in memory; others are read from their sidecars when needed.
    pub index_cache_bytes: u64,
    /// The most batches waiting for the commit thread before ingest answers 503.
    pub max_queued_batches: usize,
    /// How long sealed hours are kept (None: for ever); older hour archives are removed.
    pub retention: Option<Millis>,
    /// Where complete hours go: an object store (`az://…`, `s3://…`); `None`: they stay in the data folder.
    pub archive: Option<String>,
    /// With an object store, how many uploaded hours of each series stay in the data folder too.
    pub local_hours: usize,
    /// A read replica of the object store, polling it this often: no log, no data folder, nothing written.
    pub replica: Option<std::time::Duration>,
    /// A replica's disk cache of what it read from the store (`None`: none), and its bound in bytes.
    pub cache_dir: Option<PathBuf>,
    pub cache_bytes: u64,
    /// The write-ahead log on a JetStream stream (`--log nats://…`); `None`: the local log in `_wal/`.
    pub log: Option<NatsConfig>,
    /// This node's name (`--node`): in its fence on a replicated log and its connection's name.
    pub node: String,
    /// For tests of supervision only: the thread (`commit` or `seal`) that panics at its first piece of work.
    pub panic_in: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{position}: ts {} is older than the sealed watermark {}: its chunk is sealed", time::format_rfc3339(*ts), time::format_rfc3339(*watermark))]
    Late {
        position: Position,
        ts: Millis,
        watermark: Millis,
    },
    #[error(
        "{position}: ts {} is older than the sealed watermark {}, which is ahead of the server clock ({}): the \
         series was sealed while the clock ran ahead. Nothing before the watermark can be stored; events are \
         accepted again once the clock reaches it, in {} s (see the README, \"A clock that went back\")",
        time::format_rfc3339(*ts),
        time::format_rfc3339(*watermark),
        time::format_rfc3339(*now),
        clears_in_secs(*watermark, *now)
    )]
    ClockBehind {
        position: Position,
        ts: Millis,
        watermark: Millis,
        now: Millis,
    },
    #[error("{position}: ts {} is more than {} s ahead of the server clock", time::format_rfc3339(*ts), max_future / 1000)]
    Future {
        position: Position,
        ts: Millis,
        max_future: Millis,
    },
    #[error("no series named {0:?}")]
    UnknownSeries(String),
    #[error("{} is not a multiple of the series' chunk width ({width}): use {} or {}", time::format_stamp(*t), time::format_stamp(width.align_down(*t)), time::format_stamp(width.align_down(*t) + width.millis()))]
    Misaligned { t: Millis, width: ChunkWidth },
    #[error("no part {part}: the chunk has {parts} part(s)")]
    NoSuchPart { part: u32, parts: u32 },
    #[error("series {series:?} exists with chunk width {existing}, not {requested}")]
    WidthConflict {
        series: String,
        existing: ChunkWidth,
        requested: ChunkWidth,
    },
    #[error(
        "Idempotency-Key {0:?} was used for a different batch: a retry must send the same body, a new batch a new key"
    )]
    KeyReused(String),
    #[error("events before {} were removed by retention", time::format_rfc3339(*.0))]
    Gone(Millis),
    #[error("server busy: {0}")]
    Busy(&'static str),
    #[error("server is shutting down")]
    ShuttingDown,
    /// Storage failed. The message names series and files relative to the data folder, never a path of the
    /// machine: it reaches clients.
    #[error("storage failed: {0}")]
    Storage(String, Option<io::ErrorKind>),
    /// Stored data does not check out (a CRC, a length, a header): it is never served as if it were whole.
    #[error("stored data is damaged: {0}")]
    Damaged(String),
    /// The object store did not answer, or failed: worth retrying; nothing was decided.
    #[error("the object store is unavailable: {0}")]
    Unavailable(String),
    /// A replicated log could not take a batch (unreachable, out of room, or taken over by another writer):
    /// the batch is not stored.
    #[error("the log is unavailable: {0}")]
    LogUnavailable(String),
    #[error("data folder {0} is in use by another hourglass process")]
    DataInUse(PathBuf),
}

/// Whole seconds until the clock reaches `watermark`, at least 1.
pub fn clears_in_secs(watermark: Millis, now: Millis) -> i64 {
    ((watermark - now).max(0) + 999) / 1000
}

impl StoreError {
    fn storage(e: impl std::fmt::Display, kind: Option<io::ErrorKind>) -> StoreError {
        StoreError::Storage(e.to_string(), kind)
    }

    /// A failed write or read of a series' settings file.
    fn settings(series: &str, e: io::Error) -> StoreError {
        let kind = e.kind();
        StoreError::Storage(
            format!("{series}/{}: {e}", series::SETTINGS_FILE),
            Some(kind),
        )
    }
}

impl From<wal::WalError> for StoreError {
    fn from(e: wal::WalError) -> StoreError {
        let kind = e.source.kind();
        StoreError::storage(e, Some(kind))
    }
}

impl From<archive::ArchiveError> for StoreError {
    fn from(e: archive::ArchiveError) -> StoreError {
        match e {
            archive::ArchiveError::Damaged { .. } => StoreError::Damaged(e.to_string()),
            archive::ArchiveError::Remote(r) if r.kind == archive::RemoteErrorKind::Unavailable => {
                StoreError::Unavailable(r.to_string())
            }
            _ => {
                let kind = e.io_kind();
                StoreError::storage(e, kind)
            }
        }
    }
}

/// What the store counts, for `GET /metrics`.
#[derive(Default)]
pub struct StoreMetrics {
    pub events_accepted: AtomicU64,
    pub batches_accepted: AtomicU64,
    /// Appends to the log, each with its fdatasync, and how long they took.
    pub fsyncs: AtomicU64,
    pub fsync_seconds: Histogram,
    pub chunks_sealed: AtomicU64,
    pub seal_failures: AtomicU64,
    /// Sealed members a filtered read inflated, and those it skipped because their summary rules the filter out.
    pub members_scanned: AtomicU64,
    pub members_skipped: AtomicU64,
    /// What replaying the log set aside at start, by `wal::RepairKind::ALL`: stretches and bytes.
    pub log_repairs: [AtomicU64; 3],
    pub log_repaired_bytes: [AtomicU64; 3],
    /// With `--archive`: hours uploaded, upload passes that failed, complete hours waiting for upload.
    pub hours_uploaded: AtomicU64,
    pub upload_failures: AtomicU64,
    pub upload_backlog_hours: AtomicU64,
    /// With a replicated log: what its stream still holds (`Log::pending`), as the sealer last read it.
    pub log_pending_messages: AtomicU64,
    pub log_pending_bytes: AtomicU64,
}

/// The answer to an accepted batch.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub accepted: usize,
    /// A retry of a batch stored before under the same `Idempotency-Key`: nothing was stored this time.
    pub replayed: bool,
}

/// A series as `GET /api/series/{series}` shows it.
#[derive(Debug, Clone)]
pub struct SeriesInfo {
    pub name: String,
    pub width: ChunkWidth,
    pub sealed: Millis,
    /// Retention removed everything before this time.
    pub retained_from: Option<Millis>,
    pub events: u64,
    pub unsealed_events: u64,
    pub sealed_chunks: u64,
    pub archive_bytes: u64,
    pub first_ts: Option<Millis>,
    pub last_ts: Option<Millis>,
    pub created: Millis,
    /// How far the sealed watermark is ahead of the clock (a clock that went back), when it is.
    pub watermark_ahead: Option<Millis>,
    /// With an object store: every hour before this one is on it.
    pub uploaded_through: Option<Millis>,
    /// Where its events without `ts` have their time.
    pub time: TimeSpec,
}

/// One series in memory.
struct Series {
    name: Arc<str>,
    dir: PathBuf,
    width: ChunkWidth,
    created: Millis,
    revision: u32,
    /// Whether this process gave the series a new revision already (imports).
    revised: bool,
    archive: Arc<SeriesArchive>,
    /// Whether the folder and settings file exist. A series made by its first batch is persisted only once
    /// that batch is durable in the log, so that a refused batch leaves nothing behind.
    persisted: bool,
    /// The sealed watermark S as persisted: what finality is decided by. It is persisted when chunks were
    /// sealed, and otherwise only when an answer needs it (`Store::final_watermark`): an idle series costs no
    /// fsyncs.
    sealed: Millis,
    /// How far the sealer has sealed in memory: every chunk below it is durable in the archive. At least
    /// `sealed`; ahead of it while the series is idle.
    swept: Millis,
    /// Retention removed everything before this hour boundary (0: nothing): pages and exports there are gone.
    retained_from: Millis,
    /// With `--archive`: every hour before this one is on object storage (see `Settings::uploaded_through`).
    uploaded_through: Millis,
    /// The boundary below which events are refused: S, or above it while the sealer works up to it.
    closing: Millis,
    /// Where its events without `ts` have their time (`Settings::time_field`).
    time: TimeSpec,
    /// Chunks still taking events.
    open: BTreeMap<ChunkStart, OpenChunk>,
    /// Chunks below `closing` that the sealer has taken but not yet appended to their archive.
    sealing: BTreeMap<ChunkStart, Arc<OpenChunk>>,
    /// Counts changes a reader can see (events applied, chunks sealed); held requests wait on it.
    changes: watch::Sender<u64>,
    /// Batches stored under an `Idempotency-Key`, until their newest event falls below `closing`: from then on a
    /// retry is refused as late, so it can never be stored twice.
    keys: HashMap<Box<str>, Keyed>,
    /// Raises of `closing` not sealed past yet, oldest first: (boundary, when). A chunk's seal time is when
    /// the first raise past its end was made, so that a writer replaying a replicated log's raises seals it
    /// byte for byte as the writer before it did.
    raises: VecDeque<(Millis, Millis)>,
}

/// What a retry with the same key is answered.
#[derive(Clone, Copy, Debug)]
struct Keyed {
    digest: u64,
    accepted: usize,
    newest: Millis,
}

impl Series {
    fn insert(&mut self, events: &[Logged]) {
        let mut current: Option<(ChunkStart, &mut OpenChunk)> = None;
        for e in events {
            let start = self.width.chunk_of(e.ts);
            let chunk = match current.take() {
                Some((s, chunk)) if s == start => chunk,
                _ => self.open.entry(start).or_default(),
            };
            chunk.push(*e);
            current = Some((start, chunk));
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Remembers a stored batch's key, while a retry of it could still be accepted.
    fn remember(&mut self, key: &BatchKey, events: &[Logged]) {
        let newest = events.iter().map(|e| e.ts).max().unwrap_or(Millis::MIN);
        if newest >= self.closing {
            let keyed = Keyed {
                digest: key.digest,
                accepted: events.len(),
                newest,
            };
            self.keys.insert(key.key.clone(), keyed);
        }
    }

    /// The answer to a batch whose key was seen: the first one's, or a refusal when the bodies differ.
    fn answer_again(&self, key: &BatchKey) -> Option<Result<Ack, StoreError>> {
        let seen = self.keys.get(&key.key)?;
        Some(if seen.digest == key.digest {
            Ok(Ack {
                accepted: seen.accepted,
                replayed: true,
            })
        } else {
            Err(StoreError::KeyReused(key.key.to_string()))
        })
    }

    /// A series made by its first batch, in memory only until that batch is durable (see `persisted`).
    fn new(
        name: &str,
        dir: PathBuf,
        width: ChunkWidth,
        now: Millis,
        sealed: Millis,
        cache: &IndexCache,
        remote: Option<Arc<Remote>>,
    ) -> Series {
        Series {
            name: Arc::from(name),
            archive: Arc::new(SeriesArchive::empty(&dir, cache, remote)),
            dir,
            width,
            created: now,
            revision: 0,
            revised: false,
            persisted: false,
            sealed,
            swept: sealed,
            retained_from: 0,
            uploaded_through: 0,
            closing: sealed,
            time: TimeSpec::default(),
            open: BTreeMap::new(),
            sealing: BTreeMap::new(),
            changes: watch::channel(0).0,
            keys: HashMap::new(),
            raises: VecDeque::new(),
        }
    }

    /// Raises the closing boundary to `boundary` (made at `at`), if that is a raise.
    fn raise(&mut self, boundary: Millis, at: Millis) {
        if boundary > self.closing {
            self.closing = boundary;
            self.raises.push_back((boundary, at));
            // A retry of these batches is refused as late from now on: their keys are not needed.
            self.keys.retain(|_, k| k.newest >= boundary);
        }
    }

    /// The seal time of the chunk that ends at `end`: when the closing boundary was first raised past it
    /// (`now` for a chunk whose raise this process did not see: one made before a restart of the local log).
    fn sealed_at(&self, end: Millis, now: Millis) -> Millis {
        self.raises
            .iter()
            .find(|&&(boundary, _)| boundary >= end)
            .map_or(now, |&(_, at)| at)
    }

    /// Takes settings just persisted: the watermark and the retention boundary only move forward.
    fn apply(&mut self, settings: &Settings) {
        self.persisted = true;
        self.sealed = self.sealed.max(settings.sealed);
        self.swept = self.swept.max(self.sealed);
        self.retained_from = self.retained_from.max(settings.retained_from);
        self.uploaded_through = self.uploaded_through.max(settings.uploaded_through);
        self.revision = settings.revision;
        self.time = TimeSpec {
            field: settings.time_field.clone(),
            unit: settings.time_unit,
        };
        self.changed();
    }

    /// The refusal for events of `parsed` below the closing boundary, if any: late, or, when the boundary is
    /// ahead of the clock, a clock that went back.
    fn late(&self, parsed: &Parsed, now: Millis) -> Option<StoreError> {
        late(self.closing, parsed, now)
    }

    fn settings(&self) -> Settings {
        Settings {
            chunk_seconds: self.width.secs(),
            sealed: self.sealed,
            created: self.created,
            revision: self.revision,
            retained_from: self.retained_from,
            uploaded_through: self.uploaded_through,
            time_field: self.time.field.clone(),
            time_unit: self.time.unit,
        }
    }

    fn generation(&self) -> Generation {
        self.settings().generation()
    }
}

struct State {
    series: BTreeMap<String, Series>,
    /// The last group of batches checked against the closing boundaries, and the last one settled
    /// (applied, or failed). The sealer waits for `settled` to reach what was `checked` when it raised a boundary.
    checked: u64,
    settled: u64,
    /// Bytes of events in open and sealing chunks, and of batches queued for the log.
    backlog: u64,
    /// Bytes of batches queued for the log (in memory until written).
    inflight: u64,
}

/// A batch on its way to the commit thread.
struct Job {
    series: Arc<str>,
    key: Option<BatchKey>,
    parsed: Parsed,
    bytes: u64,
    reply: oneshot::Sender<Result<Ack, StoreError>>,
}

enum Msg {
    Job(Job),
    Stop,
}

struct Inner {
    cfg: StoreConfig,
    /// A std mutex: held only for in-memory work, never across I/O or `.await`.
    state: Mutex<State>,
    settled: Condvar,
    /// The log; the commit thread holds it for an append and its fsync, the sealer briefly to collect. A
    /// replica has none (and neither thread).
    log: Option<Mutex<Box<dyn Log>>>,
    /// Reads the log's lines without holding it: for the sealer and for readers of what is not sealed.
    lines: Option<Box<dyn Lines>>,
    /// Every series' hour indexes that memory holds, within `--index-cache-bytes`.
    indexes: IndexCache,
    /// Where complete hours go, with `--archive`.
    remote: Option<Arc<Remote>>,
    /// The versions of the settings objects this process wrote last (see `upload::publish`).
    remote_versions: Mutex<upload::Versions>,
    /// Serializes writes of series folders and settings files (each replaced through one temporary name),
    /// which happen outside the state lock. Taken before `state`, never after.
    settings_files: Mutex<()>,
    stopping: Mutex<bool>,
    stop_signal: Condvar,
    metrics: StoreMetrics,
    /// The last append to the log failed: said once, not at every refused group (a full disk).
    log_failing: AtomicBool,
    /// Why the log takes no appends at all any more (`Log::trouble`), for `/readyz`; set by the commit thread.
    log_trouble: Mutex<Option<String>>,
    /// Passes of the sealer so far, for `Store::wait_for_sealer`.
    passes: AtomicU64,
    /// How long the last chunk took to seal, in thousandths of its width: how busy the sealer is.
    seal_share: AtomicU64,
    /// The data folder's lock (a replica has no folder).
    _lock: Option<File>,
}

impl Inner {
    fn new(
        cfg: StoreConfig,
        series: BTreeMap<String, Series>,
        log: Option<Box<dyn Log>>,
        lock: Option<File>,
        indexes: IndexCache,
        remote: Option<Arc<Remote>>,
        metrics: StoreMetrics,
    ) -> Inner {
        let backlog = series
            .values()
            .flat_map(|s| s.open.values())
            .map(|c| c.bytes())
            .sum();
        Inner {
            lines: log.as_ref().map(|l| l.lines()),
            cfg,
            state: Mutex::new(State {
                series,
                checked: 0,
                settled: 0,
                backlog,
                inflight: 0,
            }),
            settled: Condvar::new(),
            log: log.map(Mutex::new),
            indexes,
            remote,
            remote_versions: Mutex::new(Default::default()),
            settings_files: Mutex::new(()),
            stopping: Mutex::new(false),
            stop_signal: Condvar::new(),
            metrics,
            log_failing: AtomicBool::new(false),
            log_trouble: Mutex::new(None),
            passes: AtomicU64::new(0),
            seal_share: AtomicU64::new(0),
            _lock: lock,
        }
    }

    /// Waits `period`, or less when the store begins to stop: false then. For the store's threads' loops.
    fn pause(&self, period: std::time::Duration) -> bool {
        let stopping = lock(&self.stopping);
        if *stopping {
            return false;
        }
        let (stopping, _) = self
            .stop_signal
            .wait_timeout(stopping, period)
            .unwrap_or_else(|e| e.into_inner());
        !*stopping
    }

    /// The sealed watermark a series of `width` made at `now` starts with.
    fn first_watermark(&self, width: ChunkWidth, now: Millis) -> Millis {
        width.align_down(now - self.cfg.lateness)
    }

    /// A series made at `now`, in memory only (see `Series::persisted`).
    fn new_series(&self, name: &str, width: ChunkWidth, now: Millis) -> Series {
        let sealed = self.first_watermark(width, now);
        let dir = self.cfg.data.join(name);
        Series::new(
            name,
            dir,
            width,
            now,
            sealed,
            &self.indexes,
            self.remote.clone(),
        )
    }

    /// Logs that a series was made (its width and creation time), where the log wants it (`Log::marks`): a
    /// writer that takes the log over makes it the same. A series made by its first batch is logged with it.
    fn log_made(&self, name: &str) -> Result<(), StoreError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let made = {
            let st = lock(&self.state);
            st.series.get(name).map(|s| (s.width.secs(), s.created))
        };
        let mut log = lock(log);
        let Some((width, created)) = made.filter(|_| log.marks()) else {
            return Ok(());
        };
        let mut record = Vec::new();
        wal::encode_made(name, width, created, &mut record);
        log.append(&record)?;
        Ok(())
    }

    /// Forgets a series made in memory whose folder could not be made, unless it is persisted after all, holds
    /// events, or a batch checked against it may still be on its way to the log (then it stays, and is
    /// persisted before anything of it is sealed).
    fn forget_unpersisted(&self, name: &str) {
        let mut st = lock(&self.state);
        let quiet = st.checked == st.settled;
        if quiet
            && st
                .series
                .get(name)
                .is_some_and(|s| !s.persisted && s.open.is_empty() && s.sealing.is_empty())
        {
            st.series.remove(name);
        }
    }

    /// Persists a series' settings as memory holds them with `change` applied (making its folder first if it
    /// has none yet), then lets memory take them. The one way settings files are written. `None`: no such
    /// series.
    /// Refuses a batch with an event further ahead of the clock than `--max-future`.
    fn check_future(&self, parsed: &Parsed, now: Millis) -> Result<(), StoreError> {
        let limit = now + self.cfg.max_future;
        match parsed.batch.ts().iter().position(|&t| t > limit) {
            Some(i) => Err(StoreError::Future {
                position: parsed.position(i),
                ts: parsed.batch.ts()[i],
                max_future: self.cfg.max_future,
            }),
            None => Ok(()),
        }
    }

    fn persist_settings(
        &self,
        name: &str,
        change: impl FnOnce(&mut Settings),
    ) -> Result<Option<Settings>, StoreError> {
        let _one = lock(&self.settings_files);
        let (dir, persisted, mut settings) = {
            let st = lock(&self.state);
            let Some(s) = st.series.get(name) else {
                return Ok(None);
            };
            (s.dir.clone(), s.persisted, s.settings())
        };
        change(&mut settings);
        if !persisted {
            // The folder, durable in the data folder, before its settings file says anything.
            crate::durable::create_dir_all(&dir).map_err(|e| StoreError::settings(name, e))?;
        }
        settings
            .store(&dir)
            .map_err(|e| StoreError::settings(name, e))?;
        if let Some(s) = lock(&self.state).series.get_mut(name) {
            s.apply(&settings);
        }
        Ok(Some(settings))
    }
}

/// The object store of `--archive`, if any. Its calls block on the runtime that opens the store (from a
/// blocking thread of it).
fn open_remote(cfg: &StoreConfig) -> Result<Option<Arc<Remote>>, StoreError> {
    let Some(url) = &cfg.archive else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| StoreError::storage("an object store needs a runtime", None))?;
    let remote = Remote::open(url, runtime).map_err(|e| StoreError::storage(e, None))?;
    Ok(Some(Arc::new(remote)))
}

/// Starts a store thread, `hourglass-{name}`, whose death by panic ends the process (`AbortOnPanic`).
fn supervised(
    name: &'static str,
    inner: &Arc<Inner>,
    work: impl FnOnce(&Inner) + Send + 'static,
) -> Result<JoinHandle<()>, StoreError> {
    let inner = inner.clone();
    std::thread::Builder::new()
        .name(format!("hourglass-{name}"))
        .spawn(move || {
            let _supervised = AbortOnPanic(name);
            work(&inner)
        })
        .map_err(|e| StoreError::storage(e, None))
}

/// Ends the process when the thread it lives on dies of a panic. Without the commit thread every batch would
/// wait and be refused with 503 for ever, without the sealer nothing would be sealed again, while the process
/// still looked healthy: better to stop at once, loudly, so that a supervisor starts it again (nothing
/// acknowledged is lost: the log has it).
struct AbortOnPanic(&'static str);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                thread = self.0,
                "the {} thread panicked: stopping the process",
                self.0
            );
            eprintln!(
                "hourglass: the {} thread panicked; aborting so that a supervisor restarts the process",
                self.0
            );
            std::process::abort();
        }
    }
}

/// A handle on the store; clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    jobs: SyncSender<Msg>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens the store `cfg` says: a replica (`replica::open`) or the data folder (below).
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        if cfg.replica.is_some() {
            return replica::open(cfg);
        }
        Store::open_folder(cfg)
    }

    /// Opens the data folder: takes its lock, loads every series (repairing archives), replays the log, and
    /// starts the commit and seal threads. Blocking: call it before serving, or from a blocking context.
    fn open_folder(cfg: StoreConfig) -> Result<Store, StoreError> {
        let data = cfg.data.clone();
        crate::durable::create_dir_all(&data)
            .map_err(|e| StoreError::storage(format!("{}: {e}", data.display()), Some(e.kind())))?;
        let lock_file = File::create(data.join(".lock"))
            .map_err(|e| StoreError::storage(format!("{}: {e}", data.display()), Some(e.kind())))?;
        if lock_file.try_lock().is_err() {
            return Err(StoreError::DataInUse(data));
        }

        let indexes = IndexCache::new(cfg.index_cache_bytes);
        let remote = open_remote(&cfg)?;
        let load_all = || -> Result<BTreeMap<String, Series>, StoreError> {
            let mut series = BTreeMap::new();
            for (name, dir) in series_dirs(&data)? {
                let s = load_series(&name, &dir, &indexes, remote.as_ref())?;
                series.insert(name.as_str().to_string(), s);
            }
            Ok(series)
        };
        if cfg.log.is_some() {
            // The folder's own series are read only to judge a local log left there; then it is made again.
            if data.join("_wal").exists() {
                takeover::refuse_local_log(&data, &load_all()?)?;
            }
            if let Some(remote) = &remote {
                let made = takeover::rebuild_from_store(&data, remote)?;
                tracing::info!(
                    series = made,
                    "data folder made again from the object store"
                );
            }
        }
        let mut series = load_all()?;

        let now = time::now();
        let mut missing = Vec::new();
        let mut closes = Vec::new();
        let mut made: HashMap<String, wal::Made> = HashMap::new();
        let replay = |entry| match entry {
            wal::Entry::Batch(r) => match series.get_mut(&r.series) {
                Some(s) => replay_into(s, &r),
                None => missing.push(r),
            },
            // Applied once every series is there.
            wal::Entry::Close(c) => closes.push(c),
            wal::Entry::Made(m) => {
                made.insert(m.series.clone(), m);
            }
        };
        let (log, repairs): (Box<dyn Log>, _) = match &cfg.log {
            None => {
                let (wal, repairs) = Wal::open(&data.join("_wal"), replay)?;
                (Box::new(wal), repairs)
            }
            Some(nats) => {
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|_| StoreError::storage("a replicated log needs a runtime", None))?;
                let spool = data.join("_spool");
                let (log, repairs) = NatsLog::open(nats, &cfg.node, &spool, runtime, replay)?;
                (Box::new(log), repairs)
            }
        };
        let metrics = StoreMetrics::default();
        for repair in repairs {
            tracing::error!("{repair}");
            let kind = wal::RepairKind::ALL
                .iter()
                .position(|k| *k == repair.kind)
                .unwrap_or(0);
            metrics::add(&metrics.log_repairs[kind], 1);
            metrics::add(&metrics.log_repaired_bytes[kind], repair.bytes);
        }
        // Log records of a series whose folder is gone (a crash before a new series' folder was made, or a folder
        // deleted): the folder comes back, with a watermark below its oldest event, so that none is lost.
        let mut oldest: BTreeMap<&str, Millis> = BTreeMap::new();
        // A series made without a batch yet (`ensure_series`) is made again too, with nothing below the clock.
        for name in made.keys().filter(|n| !series.contains_key(n.as_str())) {
            oldest.insert(name.as_str(), Millis::MAX);
        }
        for r in &missing {
            let t = r.events.iter().map(|e| e.ts).min().unwrap_or(Millis::MAX);
            let o = oldest.entry(r.series.as_str()).or_insert(t);
            *o = (*o).min(t);
        }
        for (name, oldest) in oldest {
            let name = SeriesName::parse(name).map_err(|e| StoreError::storage(e, None))?;
            // As it was made, when the log says so (a log another writer took over, a folder lost).
            let (width, created) = made
                .get(name.as_str())
                .and_then(|m| Some((ChunkWidth::from_secs(m.width_secs).ok()?, m.created)))
                .unwrap_or((cfg.default_width, now));
            if cfg.log.is_none() {
                tracing::warn!(series = %name, "log names a series with no folder: recreating it");
            }
            let first = width.align_down(now - cfg.lateness);
            let sealed = first.min(width.align_down(oldest));
            let dir = data.join(name.as_str());
            let s = create_series(
                &dir,
                &name,
                width,
                created,
                sealed,
                &indexes,
                remote.as_ref(),
            )?;
            series.insert(name.as_str().to_string(), s);
        }
        for r in missing {
            if let Some(s) = series.get_mut(r.series.as_str()) {
                replay_into(s, &r);
            }
        }
        // Raises of a series with nothing left in the log raise nothing: it has nothing to seal.
        for c in closes {
            if let Some(s) = series.get_mut(c.series.as_str()) {
                s.raise(c.boundary, c.at);
            }
        }
        let mut log = log;
        if log.marks() {
            takeover::raise_to_clock(&mut *log, &mut series, cfg.lateness, now)?;
        }
        let (tx, rx) = mpsc::sync_channel(cfg.max_queued_batches.max(1));
        let inner = Arc::new(Inner::new(
            cfg,
            series,
            Some(log),
            Some(lock_file),
            indexes,
            remote,
            metrics,
        ));
        let mut threads = vec![
            supervised("commit", &inner, move |inner| {
                commit::commit_loop(inner, rx)
            })?,
            supervised("seal", &inner, seal::seal_loop)?,
        ];
        if let Some(remote) = inner.remote.clone() {
            threads.push(supervised("upload", &inner, move |inner| {
                upload::upload_loop(inner, &remote)
            })?);
        }
        Ok(Store {
            inner,
            jobs: tx,
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// Makes a batch durable and adds it to its series, which a first batch creates with default settings
    /// (once it is durable: a refused batch leaves nothing behind, and an empty one stores and creates nothing).
    /// A batch with a `key` already stored under it is answered as before and stored no second time.
    /// Whether `ingest` would take `parsed` now as far as event times go (none too far ahead, none late): for a
    /// request that stores several batches, checked for all before any is stored. Only `ingest` is exact.
    pub fn check(&self, name: &SeriesName, parsed: &Parsed) -> Result<(), StoreError> {
        let now = time::now();
        self.inner.check_future(parsed, now)?;
        let st = lock(&self.inner.state);
        let late = match st.series.get(name.as_str()) {
            Some(s) => s.late(parsed, now),
            None => late(
                self.inner
                    .first_watermark(self.inner.cfg.default_width, now),
                parsed,
                now,
            ),
        };
        late.map_or(Ok(()), Err)
    }

    pub async fn ingest(
        &self,
        name: &SeriesName,
        key: Option<BatchKey>,
        parsed: Parsed,
    ) -> Result<Ack, StoreError> {
        if parsed.batch.is_empty() {
            return Ok(Ack {
                accepted: 0,
                replayed: false,
            });
        }
        let cfg = &self.inner.cfg;
        let now = time::now();
        self.inner.check_future(&parsed, now)?;
        let bytes = parsed.batch.bytes() as u64;
        {
            let mut st = lock(&self.inner.state);
            // Fail fast; the commit thread checks again, exactly.
            let refused = match st.series.get(name.as_str()) {
                Some(s) => key
                    .as_ref()
                    .and_then(|k| s.answer_again(k))
                    .or_else(|| s.late(&parsed, now).map(Err)),
                None => {
                    let first = self.inner.first_watermark(cfg.default_width, now);
                    late(first, &parsed, now).map(Err)
                }
            };
            if let Some(answer) = refused {
                return answer;
            }
            if st.backlog + bytes > cfg.max_backlog_bytes {
                return Err(StoreError::Busy("too many events waiting to be sealed"));
            }
            // A batch alone always fits, whatever its size, as the HTTP intake lets it in.
            if st.inflight > 0 && st.inflight + bytes > cfg.max_inflight_bytes {
                return Err(StoreError::Busy("too many batches waiting for the log"));
            }
            st.backlog += bytes;
            st.inflight += bytes;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            series: Arc::from(name.as_str()),
            key,
            parsed,
            bytes,
            reply,
        };
        if let Err(e) = self.jobs.try_send(Msg::Job(job)) {
            let mut st = lock(&self.inner.state);
            st.backlog -= bytes;
            st.inflight -= bytes;
            drop(st);
            return Err(match e {
                TrySendError::Full(_) => StoreError::Busy("too many batches waiting for the log"),
                TrySendError::Disconnected(_) => StoreError::ShuttingDown,
            });
        }
        answer.await.unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Creates a series if it does not exist, folder and settings file, durably. With `width`, an existing
    /// series must have that width. Returns whether it was created.
    /// Makes a series unless it exists (`true` when made here), checking its width, and sets where its events
    /// without `ts` have their time when `time` says.
    pub async fn ensure_series(
        &self,
        name: &SeriesName,
        width: Option<ChunkWidth>,
        time: Option<TimeSpec>,
    ) -> Result<bool, StoreError> {
        let known = {
            let st = lock(&self.inner.state);
            st.series.get(name.as_str()).map(|s| {
                (
                    s.width,
                    s.persisted && time.as_ref().is_none_or(|t| *t == s.time),
                )
            })
        };
        if let Some((existing, true)) = known {
            return check_width(name, existing, width).map(|()| false);
        }
        let inner = self.inner.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || {
            loop {
                let created = {
                    let mut st = lock(&inner.state);
                    match st.series.get(name.as_str()) {
                        Some(s) => {
                            check_width(&name, s.width, width)?;
                            false
                        }
                        None => {
                            let width = width.unwrap_or(inner.cfg.default_width);
                            let s = inner.new_series(name.as_str(), width, time::now());
                            st.series.insert(name.as_str().to_string(), s);
                            true
                        }
                    }
                };
                let set_time = |settings: &mut Settings| {
                    if let Some(t) = &time {
                        settings.time_field = t.field.clone();
                        settings.time_unit = t.unit;
                    }
                };
                if created && let Err(e) = inner.log_made(name.as_str()) {
                    inner.forget_unpersisted(name.as_str());
                    return Err(e);
                }
                // Made here, or by a first batch still on its way to the log: either way it exists from now on.
                match inner.persist_settings(name.as_str(), set_time) {
                    Ok(Some(_)) => {
                        if created {
                            tracing::info!(series = %name, "series created");
                        }
                        return Ok(created);
                    }
                    // The first batch that made it was refused meanwhile, and it went with it: make it here.
                    Ok(None) => continue,
                    Err(e) => {
                        if created {
                            inner.forget_unpersisted(name.as_str());
                        }
                        return Err(e);
                    }
                }
            }
        })
        .await
        .unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Where the series' events without `ts` have their time (the default for a series not made yet).
    pub fn time_spec(&self, name: &SeriesName) -> TimeSpec {
        lock(&self.inner.state)
            .series
            .get(name.as_str())
            .map(|s| s.time.clone())
            .unwrap_or_default()
    }

    pub fn width_of(&self, name: &SeriesName) -> Option<ChunkWidth> {
        lock(&self.inner.state)
            .series
            .get(name.as_str())
            .map(|s| s.width)
    }

    pub fn series_names(&self) -> Vec<SeriesName> {
        lock(&self.inner.state)
            .series
            .keys()
            .filter_map(|n| SeriesName::parse(n).ok())
            .collect()
    }

    /// Refuses a range that begins where retention removed the events.
    pub fn check_kept(&self, name: &SeriesName, from: Millis) -> Result<(), StoreError> {
        let st = lock(&self.inner.state);
        match st.series.get(name.as_str()) {
            Some(s) if from < s.retained_from => Err(StoreError::Gone(s.retained_from)),
            Some(_) => Ok(()),
            None => Err(StoreError::UnknownSeries(name.to_string())),
        }
    }

    pub fn info(&self, name: &SeriesName) -> Option<SeriesInfo> {
        let (archive, mut info) = {
            let st = lock(&self.inner.state);
            let s = st.series.get(name.as_str())?;
            let mut info = SeriesInfo {
                name: name.to_string(),
                width: s.width,
                sealed: s.sealed,
                retained_from: (s.retained_from > 0).then_some(s.retained_from),
                events: 0,
                unsealed_events: 0,
                sealed_chunks: 0,
                archive_bytes: 0,
                first_ts: None,
                last_ts: None,
                created: s.created,
                watermark_ahead: Some(s.closing - time::now()).filter(|&d| d > 0),
                uploaded_through: (s.uploaded_through > 0).then_some(s.uploaded_through),
                time: s.time.clone(),
            };
            let sealing = s.sealing.values().map(|c| &**c);
            for chunk in sealing.chain(s.open.values()) {
                info.unsealed_events += chunk.len() as u64;
                if let Some((lo, hi)) = chunk.span() {
                    info.first_ts = min_opt(info.first_ts, Some(lo));
                    info.last_ts = max_opt(info.last_ts, Some(hi));
                }
            }
            (s.archive.clone(), info)
        };
        let sealed = archive.summary();
        info.events = sealed.events + info.unsealed_events;
        info.sealed_chunks = sealed.chunks;
        info.archive_bytes = sealed.bytes;
        info.first_ts = min_opt(sealed.first_ts, info.first_ts);
        info.last_ts = max_opt(sealed.last_ts, info.last_ts);
        Some(info)
    }

    /// Ticks each time what the series shows changes (events applied, chunks sealed); `None`: no such series.
    pub fn changes(&self, name: &SeriesName) -> Option<watch::Receiver<u64>> {
        lock(&self.inner.state)
            .series
            .get(name.as_str())
            .map(|s| s.changes.subscribe())
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    /// How far the sealer is behind the clock for the series it is furthest behind with (an idle series is
    /// swept in memory, without persisting), and the bytes of events not sealed yet.
    pub fn lag_and_backlog(&self) -> (Millis, u64) {
        let st = lock(&self.inner.state);
        let oldest = st.series.values().map(|s| s.swept).min();
        let lag = oldest.map_or(0, |s| (time::now() - s).max(0));
        (lag, st.backlog)
    }

    /// Waits until the sealer has made a whole pass begun after this call (at most a few seconds): for the
    /// commands, whose store was just opened, so that the sealer has caught up with the clock.
    pub fn wait_for_sealer(&self) {
        let passes = || self.inner.passes.load(std::sync::atomic::Ordering::Acquire);
        let wanted = passes() + 2;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while passes() < wanted && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Why this store's log takes no more writes, if it does not (another writer took a replicated log over).
    pub fn log_trouble(&self) -> Option<String> {
        lock(&self.inner.log_trouble).clone()
    }

    /// Series whose sealed watermark is ahead of the clock (a clock that went back), and by how much.
    pub fn clock_behind(&self) -> Vec<(String, Millis)> {
        let now = time::now();
        lock(&self.inner.state)
            .series
            .iter()
            .filter(|(_, s)| s.closing > now)
            .map(|(name, s)| (name.clone(), s.closing - now))
            .collect()
    }

    /// How many stored members were found damaged, over every series (each refused to readers, logged once).
    pub fn damaged_members(&self) -> usize {
        let archives: Vec<Arc<SeriesArchive>> = lock(&self.inner.state)
            .series
            .values()
            .map(|s| s.archive.clone())
            .collect();
        archives.iter().map(|a| a.damaged_members()).sum()
    }

    /// The archive of a series, for readers.
    pub fn archive(&self, name: &SeriesName) -> Option<Arc<SeriesArchive>> {
        lock(&self.inner.state)
            .series
            .get(name.as_str())
            .map(|s| s.archive.clone())
    }

    /// Stops the threads after the commit thread has answered every batch queued before this call. Whatever was
    /// acknowledged is in the log already; what is not sealed yet is sealed after the next start.
    pub fn shutdown(&self) {
        let _ = self.jobs.send(Msg::Stop);
        *lock(&self.inner.stopping) = true;
        self.inner.stop_signal.notify_all();
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn check_width(
    name: &SeriesName,
    existing: ChunkWidth,
    wanted: Option<ChunkWidth>,
) -> Result<(), StoreError> {
    match wanted {
        Some(w) if w != existing => Err(StoreError::WidthConflict {
            series: name.to_string(),
            existing,
            requested: w,
        }),
        _ => Ok(()),
    }
}

fn min_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    a.into_iter().chain(b).min()
}

fn max_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    a.into_iter().chain(b).max()
}

/// The refusal of the first event of `parsed` (in arrival order) that lies below `closing`.
fn late(closing: Millis, parsed: &Parsed, now: Millis) -> Option<StoreError> {
    let i = parsed.batch.ts().iter().position(|&t| t < closing)?;
    let (position, ts) = (parsed.position(i), parsed.batch.ts()[i]);
    Some(if closing > now {
        StoreError::ClockBehind {
            position,
            ts,
            watermark: closing,
            now,
        }
    } else {
        StoreError::Late {
            position,
            ts,
            watermark: closing,
        }
    })
}

/// Events from the log that are not sealed yet go back into open chunks; sealed ones are already archived.
/// A batch's key is remembered again.
fn replay_into(s: &mut Series, r: &wal::Replayed) {
    if let Some(key) = &r.key {
        s.remember(key, &r.events);
    }
    let events = &r.events;
    let sealed = s.sealed;
    if events.iter().all(|e| e.ts >= sealed) {
        s.insert(events);
    } else {
        let rest: Vec<Logged> = events.iter().filter(|e| e.ts >= sealed).copied().collect();
        s.insert(&rest);
    }
}

fn series_dirs(data: &Path) -> Result<Vec<(SeriesName, PathBuf)>, StoreError> {
    let read = fs::read_dir(data)
        .map_err(|e| StoreError::storage(format!("{}: {e}", data.display()), Some(e.kind())))?;
    let mut dirs = Vec::new();
    for entry in read.flatten() {
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| SeriesName::parse(n).ok())
        else {
            continue;
        };
        let dir = entry.path();
        if dir.join(series::SETTINGS_FILE).is_file() {
            dirs.push((name, dir));
        } else if dir.is_dir() {
            tracing::warn!(folder = %dir.display(), "folder without {} ignored", series::SETTINGS_FILE);
        }
    }
    Ok(dirs)
}

fn load_series(
    name: &SeriesName,
    dir: &Path,
    cache: &IndexCache,
    remote: Option<&Arc<Remote>>,
) -> Result<Series, StoreError> {
    let settings = Settings::load(dir).map_err(|e| StoreError::settings(name.as_str(), e))?;
    let width = settings.width().map_err(|e| StoreError::storage(e, None))?;
    let expect = archive::Expect {
        sealed: settings.sealed,
        kept_from: Hour::of(settings.retained_from),
        uploaded_through: Hour::of(settings.uploaded_through),
    };
    let (archive, repairs) = SeriesArchive::open(dir, expect, cache, remote.cloned())?;
    for r in repairs {
        if r.damage {
            tracing::error!(series = %name, "{r}");
        } else {
            tracing::warn!(series = %name, "{r}");
        }
    }
    // Chunks found whole in the archive are sealed even if the watermark did not get persisted after them
    // (a crash in between): no new event may land in them.
    let closing = archive.last_chunk().map_or(settings.sealed, |c| {
        settings.sealed.max(c.millis() + width.millis())
    });
    let now = time::now();
    if settings.sealed > now {
        tracing::warn!(
            series = %name,
            watermark = %time::format_rfc3339(settings.sealed),
            ahead_secs = clears_in_secs(settings.sealed, now),
            "the sealed watermark is ahead of the clock (it was sealed while the clock ran ahead): events before \
             it are refused until the clock reaches it; see the README, \"A clock that went back\""
        );
    }
    Ok(Series {
        name: Arc::from(name.as_str()),
        dir: dir.to_owned(),
        width,
        created: settings.created,
        revision: settings.revision,
        revised: false,
        archive: Arc::new(archive),
        persisted: true,
        sealed: settings.sealed,
        swept: settings.sealed,
        retained_from: settings.retained_from,
        uploaded_through: settings.uploaded_through,
        closing,
        time: TimeSpec {
            field: settings.time_field,
            unit: settings.time_unit,
        },
        open: BTreeMap::new(),
        sealing: BTreeMap::new(),
        changes: watch::channel(0).0,
        keys: HashMap::new(),
        raises: VecDeque::new(),
    })
}

/// Makes a series folder with its settings file, durably: for a series the log names whose folder is gone.
fn create_series(
    dir: &Path,
    name: &SeriesName,
    width: ChunkWidth,
    now: Millis,
    sealed: Millis,
    cache: &IndexCache,
    remote: Option<&Arc<Remote>>,
) -> Result<Series, StoreError> {
    let io_err = |e: io::Error| StoreError::settings(name.as_str(), e);
    crate::durable::create_dir_all(dir).map_err(io_err)?;
    let settings = Settings::new(width, sealed, now);
    settings.store(dir).map_err(io_err)?;
    load_series(name, dir, cache, remote)
}
