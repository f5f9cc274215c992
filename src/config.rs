//! The command line and its `HOURGLASS_*` environment variables. `hourglass` with no arguments serves `./data`
//! on `127.0.0.1:8080`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::archive::deflate::Deflater;
use crate::ingest::nats::NatsConfig;
use crate::store::StoreConfig;
use crate::time::{ChunkWidth, HOUR, SECOND};

#[derive(Parser, Debug)]
#[command(
    name = "hourglass",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand, `hourglass` serves with these options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Write a range of a series to a file or stdout, from a data folder or a running server.
    Export(ExportArgs),
    /// Put archives written by other tools (`{partition}/{YYYYMMDDHH}.json.gz`) into a series.
    Import(ImportArgs),
}

/// What the store needs: the data folder and how events move through it.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The data folder: one folder per series, and the write-ahead log in `_wal`.
    #[arg(long, env = "HOURGLASS_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// Seconds to wait for late events before a chunk is sealed.
    #[arg(long, env = "HOURGLASS_LATENESS", default_value_t = 30)]
    pub lateness: u32,
    /// Chunk width in seconds for new series: a divisor of 3600.
    #[arg(long, env = "HOURGLASS_CHUNK_SECONDS", default_value_t = 10, value_parser = parse_width)]
    pub chunk_seconds: u32,
    /// Seconds an event's time may be ahead of the server clock.
    #[arg(long, env = "HOURGLASS_MAX_FUTURE", default_value_t = 300)]
    pub max_future: u32,
    /// Bytes of events not sealed yet before ingest answers 503. They wait in the log on disk; memory holds
    /// about 6 bytes per event (12 GiB of 192-byte events: about 0.4 GB). The default holds 45 s of a million
    /// such events a second: the 30 s lateness and a 10 s chunk, sealed in steady state.
    #[arg(long, env = "HOURGLASS_MAX_BACKLOG_BYTES", default_value_t = 12 << 30)]
    pub max_backlog_bytes: u64,
    /// Bytes of batches in memory waiting for the log before ingest answers 503.
    #[arg(long, env = "HOURGLASS_MAX_INFLIGHT_BYTES", default_value_t = 256 << 20)]
    pub max_inflight_bytes: u64,
    /// Bytes of hour indexes kept in memory (every series together); the others are read from their sidecars
    /// when a page, an export or a histogram needs them. About 30 KB per hour of 10 s chunks.
    #[arg(long, env = "HOURGLASS_INDEX_CACHE_BYTES", default_value_t = 64 << 20)]
    pub index_cache_bytes: u64,
    /// Most events on one page; a sealed chunk with more is stored as several gzip members, one per page.
    #[arg(long, env = "HOURGLASS_MAX_PAGE_ENTRIES", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_page_entries: u32,
    /// Keep sealed hours this long (`30d`, `12h`, `90m`; at least 1h), then remove their hour archives: their pages
    /// and exports answer 410 Gone. Default: keep everything.
    #[arg(long, env = "HOURGLASS_RETENTION", value_parser = parse_retention)]
    pub retention: Option<i64>,
    /// How sealed chunks and answers compressed on the fly are deflated: `isal:1` to `isal:3` (Intel's ISA-L,
    /// the default, about 4x zlib level 3's speed at 96% of its ratio on log lines), or `zlib:1` to `zlib:9`
    /// (zlib-rs; a plain number is a zlib level, 1 fastest .. 9 smallest).
    #[arg(long, env = "HOURGLASS_GZIP_LEVEL", default_value_t = Deflater::default())]
    pub gzip_level: Deflater,
    /// Write a summary of each sealed member (a Bloom filter of its tokens, in `{hour}.sum`) so that filters
    /// skip members that cannot match; about ISA-L's compression time at sealing, left out for chunks sealed late.
    #[arg(long, env = "HOURGLASS_MEMBER_SUMMARIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub member_summaries: bool,
    /// Where complete hours go: `az://container/prefix` (Azure Blob) or `s3://bucket/prefix` (S3 and stores that
    /// speak it), configured from the environment as the `object_store` crate reads it (`AZURE_*`, `AWS_*`).
    /// Default: they stay in the data folder.
    #[arg(long, env = "HOURGLASS_ARCHIVE")]
    pub archive: Option<String>,
    /// With --archive: uploaded hours of each series that stay in the data folder too (the newest ones; the
    /// newest hour that holds events always stays).
    #[arg(long, env = "HOURGLASS_LOCAL_HOURS", default_value_t = 24)]
    pub local_hours: usize,
    /// For tests of supervision: the store thread (`commit` or `seal`) that panics at its first piece of work.
    #[arg(long, hide = true, value_parser = ["commit", "seal"])]
    pub panic_in: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = "HOURGLASS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The write-ahead log: `nats://host:port[,host:port…]/STREAM[?replicas=N]` puts it on a NATS JetStream
    /// stream (created with N replicas if missing), so a batch is acknowledged once the stream has stored it;
    /// several nodes may share it (the one holding its lease writes, the others send requests to it). Needs
    /// --archive. Default: `_wal/` in the data folder, fsync'd.
    #[arg(long, env = "HOURGLASS_LOG_URL", value_parser = NatsConfig::parse, conflicts_with = "replica", requires = "archive")]
    pub log: Option<NatsConfig>,
    /// This node's name, in what it writes to a replicated log. Default: the host name and the listen port.
    #[arg(long, env = "HOURGLASS_NODE")]
    pub node: Option<String>,
    /// With --log: how long the log's lease (which node writes) lasts unless renewed; a standby takes over a
    /// writer that stopped renewing within about this, plus its store's opening.
    #[arg(long, env = "HOURGLASS_LEASE_MS", default_value_t = 6000, value_parser = clap::value_parser!(u64).range(1000..=600_000))]
    pub lease_ms: u64,
    /// With --log: where the other nodes send requests to this one while it writes (`http://host:port`).
    /// Default: the listen address.
    #[arg(long, env = "HOURGLASS_ADVERTISE")]
    pub advertise: Option<String>,
    /// Bearer token required for writes (none: writes are open).
    #[arg(long, env = "HOURGLASS_WRITE_TOKEN", hide_env_values = true)]
    pub write_token: Option<String>,
    /// Bearer token required for reads (none: reads are public).
    #[arg(long, env = "HOURGLASS_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    /// Largest request body, in bytes, before and after gzip inflation.
    #[arg(long, env = "HOURGLASS_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's headers, and then its body; slower clients are cut off (the
    /// body with a 408).
    #[arg(long, env = "HOURGLASS_REQUEST_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,
    /// Requests that may be held at once by `Prefer: wait` (long polls); past it they are answered at once.
    #[arg(long, env = "HOURGLASS_MAX_HELD_REQUESTS", default_value_t = 1024)]
    pub max_held_requests: usize,
    /// Threads that answer HTTP requests (default: one per CPU core). Sealing, the log's fsyncs, and page
    /// reads and body parsing have threads of their own.
    #[arg(long, env = "HOURGLASS_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Bytes of rendered final pages kept in memory (0: none).
    #[arg(long, env = "HOURGLASS_PAGE_CACHE_BYTES", default_value_t = 256 << 20)]
    pub page_cache_bytes: u64,
    /// Bytes of events (inflated) one filtered page may read, past its first part, looking for matches; where
    /// it stops, its `prev` link goes on.
    #[arg(long, env = "HOURGLASS_FILTER_SCAN_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub filter_scan_bytes: u64,
    /// Seconds to let requests in flight finish once the server is told to stop; then their connections are
    /// closed (the store still stops cleanly).
    #[arg(long, env = "HOURGLASS_SHUTDOWN_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout: u64,
    /// Connections served at once; more wait in the kernel's queue until one closes.
    #[arg(long, env = "HOURGLASS_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// OTLP logs (`POST /v1/logs`): the attributes whose value names an event's series, the first one present
    /// (resource attributes, then the record's), comma-separated.
    #[arg(
        long,
        env = "HOURGLASS_OTLP_SERIES_ATTRIBUTE",
        default_value = "service.name",
        value_delimiter = ','
    )]
    pub otlp_series_attribute: Vec<String>,
    /// Loki push (`POST /loki/api/v1/push`): the stream labels whose value names a stream's series, the first
    /// one present, comma-separated.
    #[arg(
        long,
        env = "HOURGLASS_LOKI_SERIES_LABEL",
        default_value = "service_name,job",
        value_delimiter = ','
    )]
    pub loki_series_label: Vec<String>,
    /// Elasticsearch `_bulk`: document fields (dotted paths) whose value names a document's series, the first
    /// one present, comma-separated. Default: the index the action or the URL names.
    #[arg(long, env = "HOURGLASS_ELASTIC_SERIES_FIELD", value_delimiter = ',')]
    pub elastic_series_field: Vec<String>,
    /// Serve the object store of --archive read-only, as a replica of the writer that uploads to it: no log,
    /// no data folder, nothing written (see --upstream).
    #[arg(long, env = "HOURGLASS_REPLICA", requires = "archive")]
    pub replica: bool,
    /// With --replica: the writer (`http://host:port`) that answers what the object store does not hold yet:
    /// writes, the head, `after` pages, series info, and pages and ranges that are not final on the store.
    /// Without one, those are answered from the store, never as final, and writes are refused.
    #[arg(long, env = "HOURGLASS_UPSTREAM", requires = "replica", value_parser = parse_upstream)]
    pub upstream: Option<axum::http::Uri>,
    /// With --replica: milliseconds between looks at the object store's series and their settings.
    #[arg(long, env = "HOURGLASS_REFRESH_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub refresh_ms: u64,
    /// With --replica: a folder for a disk cache of the hour indexes and members it read from the object
    /// store (its `hourglass-cache` subfolder, emptied at start). Default: no disk cache.
    #[arg(long, env = "HOURGLASS_CACHE_DIR", requires = "replica")]
    pub cache_dir: Option<PathBuf>,
    /// With --cache-dir: the most bytes it keeps; the least recently used go first.
    #[arg(long, env = "HOURGLASS_CACHE_BYTES", default_value_t = 1 << 30)]
    pub cache_bytes: u64,
    /// Milliseconds added to the system clock: for tests that must cross an hour boundary now.
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    pub clock_offset_ms: i64,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// The series to export.
    #[arg(long, default_value = "default")]
    pub series: String,
    /// Start of the range, inclusive: RFC 3339 or Unix seconds.
    #[arg(long)]
    pub from: String,
    /// End of the range, exclusive: RFC 3339 or Unix seconds.
    #[arg(long)]
    pub to: String,
    /// ndjson, json (one array) or csv.
    #[arg(long, default_value = "ndjson")]
    pub format: String,
    /// The columns of a csv export: top-level fields, comma-separated.
    #[arg(long)]
    pub fields: Option<String>,
    /// Only events this term holds for (repeatable, all must hold): `field:value`, `!=`, `<`, `<=`, `>`, `>=`
    /// or `field?`, as the URLs' `where=`.
    #[arg(long = "where", value_name = "TERM")]
    pub wheres: Vec<String>,
    /// Only events whose stored line contains this text (repeatable), as the URLs' `q=`.
    #[arg(long = "q", value_name = "TEXT")]
    pub texts: Vec<String>,
    /// Write gzip (stored chunks are copied as they are).
    #[arg(long)]
    pub gzip: bool,
    /// The file to write (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Read from a running server (`http://host:port`) instead of a data folder (`--data` is then not used).
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: fetch the range's hours N at a time (from its export manifest) and write them in order,
    /// holding at most N hours in memory; ndjson only.
    #[arg(long, requires = "url", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: Option<u16>,
    /// Read a data folder directly (the server must be stopped: the folder is locked while in use).
    #[arg(long, env = "HOURGLASS_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// Bearer token for a server that needs one for reads.
    #[arg(long, env = "HOURGLASS_READ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The folder to import: `{partition}/{YYYYMMDDHH}.json.gz` files, at any depth.
    pub dir: PathBuf,
    /// The series to import into; created with --chunk-seconds when it does not exist.
    #[arg(long)]
    pub series: String,
    /// The field holding each event's time (RFC 3339 or Unix milliseconds); events without it get the start of
    /// their file's hour.
    #[arg(long, default_value = "ts")]
    pub ts_field: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_retention(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a duration like 30d, 12h or 90m");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: i64 = s[..split].parse().map_err(|_| bad())?;
    let unit = match &s[split..] {
        "w" => 7 * 24 * HOUR,
        "d" => 24 * HOUR,
        "h" => HOUR,
        "m" => 60 * SECOND,
        "s" => SECOND,
        _ => return Err(bad()),
    };
    let t = n.checked_mul(unit).ok_or_else(bad)?;
    if t < HOUR {
        return Err(format!("retention {s} is shorter than an hour"));
    }
    Ok(t)
}

fn parse_width(s: &str) -> Result<u32, String> {
    let secs: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    ChunkWidth::from_secs(secs).map(ChunkWidth::secs)
}

/// `http://host:port`: checked before anything starts.
fn parse_upstream(s: &str) -> Result<axum::http::Uri, String> {
    let uri: axum::http::Uri = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(uri),
        _ => Err(format!("{s:?}: expected http://host:port")),
    }
}

impl ServeArgs {
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.request_timeout)
    }

    /// The store's settings: `StoreArgs`' and, with `--replica`, how often to look at the object store.
    pub fn store_config(&self) -> StoreConfig {
        let mut cfg = self.store.store_config();
        cfg.log = self.log.clone();
        cfg.node = self.node.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}:{}", host.trim(), self.listen.port())
        });
        cfg.replica = self
            .replica
            .then(|| std::time::Duration::from_millis(self.refresh_ms));
        cfg.cache_dir = self.cache_dir.clone();
        cfg.cache_bytes = self.cache_bytes;
        cfg
    }
}

impl StoreArgs {
    /// The settings from the environment and the defaults, for the data folder `data`.
    pub fn for_data(data: PathBuf) -> Result<StoreArgs, clap::Error> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            store: StoreArgs,
        }
        let mut args = Only::try_parse_from(["hourglass"])?.store;
        args.data = data;
        Ok(args)
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            data: self.data.clone(),
            lateness: i64::from(self.lateness) * SECOND,
            max_future: i64::from(self.max_future) * SECOND,
            default_width: ChunkWidth::from_secs(self.chunk_seconds).unwrap_or(ChunkWidth::DEFAULT),
            max_member_entries: self.max_page_entries as usize,
            deflater: self.gzip_level,
            member_summaries: self.member_summaries,
            max_backlog_bytes: self.max_backlog_bytes,
            max_inflight_bytes: self.max_inflight_bytes,
            index_cache_bytes: self.index_cache_bytes,
            max_queued_batches: 4096,
            retention: self.retention,
            archive: self.archive.clone(),
            local_hours: self.local_hours,
            replica: None,
            cache_dir: None,
            cache_bytes: 0,
            log: None,
            node: String::new(),
            panic_in: self.panic_in.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_a_duration_of_at_least_an_hour() {
        assert_eq!(parse_retention("30d"), Ok(30 * 24 * HOUR));
        assert_eq!(parse_retention("2w"), Ok(14 * 24 * HOUR));
        assert_eq!(parse_retention("12h"), Ok(12 * HOUR));
        assert_eq!(parse_retention("90m"), Ok(90 * 60 * SECOND));
        assert_eq!(parse_retention("3600s"), Ok(HOUR));
        for bad in [
            "",
            "30",
            "d",
            "59m",
            "1x",
            "-1h",
            "1.5h",
            "99999999999999999w",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }
}
