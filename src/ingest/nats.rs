//! The write-ahead log on a NATS JetStream stream (`--log nats://…`): a batch is durable once the stream has
//! acknowledged it (stored by a quorum of its replicas), not once a local file is fsync'd, so the data folder
//! can be lost without losing anything acknowledged.
//!
//! What the stream holds: on the subject `{stream}.log`, the same framed records as the local log (`wal`),
//! one commit group per publish, cut into messages of at most the server's `max_payload` (headers `Hg-Group`
//! and `Hg-Part: i/n`), and fence messages (`Hg-Fence: node`). Lines are read back from a local spool (a
//! `Wal` opened with `open_spool`: the same segments, not fsync'd), never from the network.
//!
//! One writer at a time, by fencing: a writer that opens the log first publishes a fence, then copies every
//! whole group before it into a fresh spool and replays them. Every publish expects the subject's last
//! sequence to be the one this writer last saw (`Nats-Expected-Last-Subject-Sequence`), so once another
//! writer has fenced, every publish of the old one fails and nothing it did after that reaches the stream.
//! A group whose last part never arrived (its writer failed or was fenced midway) was never acknowledged and
//! is not replayed. A publish whose answer was lost is sent again under the same `Nats-Msg-Id`, which the
//! stream stores once.
//!
//! Messages leave the stream (a purge of the subject below a sequence) only once the spool segments holding
//! them are collected, that is once every event in them is durable in the archive.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Handle;

use super::log::{Lines, Log};
use super::wal::{Entry, Position, Repair, Wal, WalError};
use crate::time::Millis;

const GROUP: &str = "Hg-Group";
const PART: &str = "Hg-Part";
const FENCE: &str = "Hg-Fence";
/// Room left in a message for its headers.
const HEADER_ROOM: usize = 1024;
/// How long a publish is tried again (a server lost, a leader being elected) before this writer gives up:
/// the group's clients wait meanwhile, since a refusal must mean "not stored".
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// How often collection asks the stream what it holds, for `/metrics`.
const PENDING_EVERY: Duration = Duration::from_secs(1);
/// How long opening waits for the servers and JetStream (starting beside them).
const OPEN_PATIENCE: Duration = Duration::from_secs(30);

/// `--log nats://host:port[,host:port…]/STREAM[?replicas=N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    pub servers: Vec<String>,
    pub stream: String,
    /// Replicas of the stream when this writer creates it (an existing stream keeps its own).
    pub replicas: usize,
}

impl NatsConfig {
    pub fn parse(url: &str) -> Result<NatsConfig, String> {
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| format!("{url:?}: a log is nats://host:port[,host:port…]/STREAM"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, stream) = rest
            .split_once('/')
            .ok_or_else(|| format!("{url:?}: no stream name (nats://host:port/STREAM)"))?;
        let servers: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("nats://{h}"))
            .collect();
        if servers.is_empty() {
            return Err(format!("{url:?}: no server"));
        }
        let named = !stream.is_empty()
            && stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !named {
            return Err(format!(
                "{url:?}: the stream name {stream:?} must be letters, digits, '_' or '-'"
            ));
        }
        let mut replicas = 1;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("replicas", n)) => {
                    replicas = n
                        .parse()
                        .ok()
                        .filter(|n| (1..=5).contains(n))
                        .ok_or_else(|| format!("{url:?}: replicas must be 1 to 5"))?;
                }
                _ => return Err(format!("{url:?}: unknown parameter {pair:?} (replicas=N)")),
            }
        }
        Ok(NatsConfig {
            servers,
            stream: stream.to_string(),
            replicas,
        })
    }

    fn subject(&self) -> String {
        format!("{}.log", self.stream)
    }
}

/// The log on JetStream, with its spool. Owned by the store like the local log.
pub struct NatsLog {
    spool: Wal,
    cfg: NatsConfig,
    subject: String,
    js: jetstream::Context,
    stream: stream::Stream,
    runtime: Handle,
    /// The sequence of the last message this writer saw on its subject: every publish expects it.
    last: u64,
    /// This writer's fence: it names its groups, so message ids never repeat across writers.
    fence: u64,
    groups: u64,
    /// The most payload bytes in one message.
    piece: usize,
    /// Spool segments still kept, with the stream sequence of the first message copied into each.
    firsts: VecDeque<(u32, u64)>,
    /// Everything below this sequence has been purged from the subject.
    purged_below: u64,
    /// What the stream held when last asked (messages, bytes), and when that was.
    pending: Option<(u64, u64)>,
    asked: Option<Instant>,
    /// Why this writer takes no more appends: another one fenced it, or a publish went unanswered so long
    /// that whether it is stored is unknown until a restart reads the stream back.
    trouble: Option<String>,
}

/// A failure of the replicated log, as a log error of kind `NotConnected`: the store answers it as "try again
/// later" (503), never as damage or a full disk.
fn nats_error(cfg: &NatsConfig, what: impl std::fmt::Display) -> WalError {
    WalError {
        path: PathBuf::from(format!("nats:{}", cfg.stream)),
        source: io::Error::new(io::ErrorKind::NotConnected, what.to_string()),
    }
}

impl NatsLog {
    /// Connects, fences every writer before this one, copies the stream's whole groups into a fresh spool in
    /// `spool_dir`, and hands their records to `replay` in order. Blocking: runs the client on `runtime`.
    pub fn open(
        cfg: &NatsConfig,
        node: &str,
        spool_dir: &Path,
        runtime: Handle,
        replay: impl FnMut(Entry),
    ) -> Result<(NatsLog, Vec<Repair>), WalError> {
        let subject = cfg.subject();
        let (js, stream, piece) = runtime.block_on(connect(cfg, node))?;
        let fence = runtime
            .block_on(fence(&js, &subject, node))
            .map_err(|e| nats_error(cfg, format!("publishing this writer's fence: {e}")))?;
        if spool_dir.exists() {
            std::fs::remove_dir_all(spool_dir).map_err(|e| WalError {
                path: spool_dir.to_owned(),
                source: e,
            })?;
        }
        crate::durable::create_dir_all(spool_dir).map_err(|e| WalError {
            path: spool_dir.to_owned(),
            source: e,
        })?;
        let copied = runtime
            .block_on(patiently("reading the stream back", || {
                copy_groups(&stream, &subject, fence, spool_dir)
            }))
            .map_err(|e| nats_error(cfg, format!("reading the stream back: {e}")))?;
        let (spool, repairs) = Wal::open_spool(spool_dir, replay)?;
        let mut firsts = VecDeque::new();
        if let Some(first) = copied.first {
            firsts.push_back((1, first));
        }
        tracing::info!(
            stream = %cfg.stream,
            fence,
            groups = copied.groups,
            bytes = copied.bytes,
            "the log on JetStream: fenced and read back"
        );
        Ok((
            NatsLog {
                spool,
                cfg: cfg.clone(),
                subject,
                js,
                stream,
                runtime,
                last: fence,
                fence,
                groups: 0,
                piece,
                firsts,
                purged_below: copied.first.unwrap_or(fence),
                pending: None,
                asked: None,
                trouble: None,
            },
            repairs,
        ))
    }

    /// Publishes one commit group, in as many messages as it needs, each expecting the one before it.
    /// Returns the sequence of its first message.
    fn publish(&mut self, records: &[u8]) -> Result<u64, WalError> {
        self.groups += 1;
        let group = format!("{}.{}", self.fence, self.groups);
        let pieces: Vec<&[u8]> = records.chunks(self.piece).collect();
        let mut first = None;
        for (i, piece) in pieces.iter().enumerate() {
            let id = format!("{group}.{i}");
            let mut headers = HeaderMap::new();
            headers.insert(GROUP, group.as_str());
            headers.insert(PART, format!("{}/{}", i + 1, pieces.len()).as_str());
            let seq = self.publish_one(&id, headers, Bytes::copy_from_slice(piece))?;
            first.get_or_insert(seq);
            self.last = seq;
        }
        first.ok_or_else(|| nats_error(&self.cfg, "an empty append"))
    }

    /// Publishes one message expecting `self.last` before it, sending it again (same id) while the servers
    /// cannot answer. A wrong last sequence means either that an earlier send did land (its id is the
    /// subject's last) or that another writer fenced this one.
    fn publish_one(
        &mut self,
        id: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<u64, WalError> {
        let deadline = Instant::now() + PUBLISH_PATIENCE;
        let mut pause = Duration::from_millis(50);
        loop {
            let message = jetstream::message::PublishMessage::build()
                .headers(headers.clone())
                .payload(payload.clone())
                .message_id(id)
                .expected_last_subject_sequence(self.last);
            let js = &self.js;
            let subject = self.subject.clone();
            let sent = self
                .runtime
                .block_on(async move { js.send_publish(subject, message).await?.await });
            match sent {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    if let Some(seq) = self.landed(id) {
                        return Ok(seq);
                    }
                    let why = "another writer took the log over (its fence is on the stream): this node \
                               takes no more writes";
                    tracing::error!(stream = %self.cfg.stream, "{why}");
                    self.trouble = Some(why.to_string());
                    return Err(nats_error(&self.cfg, why));
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(stream = %self.cfg.stream, error = %e, "publish failed: trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    let why = format!(
                        "a publish went unanswered for {} s ({e}): whether its batches are stored is known \
                         only once this node restarts and reads the stream back; no more writes until then \
                         (a batch sent again with its Idempotency-Key after that is stored once)",
                        PUBLISH_PATIENCE.as_secs()
                    );
                    tracing::error!(stream = %self.cfg.stream, "{why}");
                    self.trouble = Some(why.clone());
                    return Err(nats_error(&self.cfg, why));
                }
            }
        }
    }

    /// The sequence of the subject's last message if it is the one named `id` (an earlier send landed).
    fn landed(&self, id: &str) -> Option<u64> {
        let last = self
            .runtime
            .block_on(self.stream.get_last_raw_message_by_subject(&self.subject))
            .ok()?;
        let named = last
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .is_some_and(|v| v.as_str() == id);
        named.then_some(last.sequence)
    }

    /// Purges the subject below the first message still in a kept spool segment (never its last message,
    /// which the next publish expects).
    fn purge(&mut self) {
        let oldest = self.spool.oldest_segment().unwrap_or(0) as u32;
        while self.firsts.front().is_some_and(|&(s, _)| s < oldest) {
            self.firsts.pop_front();
        }
        let keep_from = self
            .firsts
            .front()
            .map_or(self.last, |&(_, f)| f)
            .min(self.last);
        if keep_from <= self.purged_below {
            return;
        }
        let purge = self
            .stream
            .purge()
            .filter(self.subject.as_str())
            .sequence(keep_from);
        match self.runtime.block_on(async move { purge.await }) {
            Ok(p) => {
                tracing::debug!(stream = %self.cfg.stream, below = keep_from, purged = p.purged, "stream purged");
                self.purged_below = keep_from;
            }
            Err(e) => {
                tracing::warn!(stream = %self.cfg.stream, error = %e, "purging the stream failed: trying again later")
            }
        }
    }
}

impl Log for NatsLog {
    /// Copies the records into the spool, then publishes them; a refused publish takes the copy back.
    fn append(&mut self, records: &[u8]) -> Result<Position, WalError> {
        if let Some(why) = &self.trouble {
            return Err(nats_error(&self.cfg, why));
        }
        let at = self.spool.append(records)?;
        match self.publish(records) {
            Ok(first) => {
                if self.firsts.back().map(|&(s, _)| s) != Some(at.segment) {
                    self.firsts.push_back((at.segment, first));
                }
                Ok(at)
            }
            Err(e) => {
                self.spool.cut_back(at);
                Err(e)
            }
        }
    }

    fn note(&mut self, series: &Arc<str>, newest: Millis) {
        self.spool.note(series, newest);
    }

    fn rotate_if_full(&mut self) -> Result<(), WalError> {
        self.spool.rotate_if_full()
    }

    fn collect(&mut self, sealed: &dyn Fn(&str, Millis) -> bool) -> usize {
        let removed = self.spool.collect(sealed);
        self.purge();
        if self.asked.is_none_or(|t| t.elapsed() >= PENDING_EVERY) {
            self.asked = Some(Instant::now());
            let stream = &mut self.stream;
            if let Ok(info) = self
                .runtime
                .block_on(async move { stream.info().await.cloned() })
            {
                self.pending = Some((info.state.messages, info.state.bytes));
            }
        }
        removed
    }

    fn pending(&self) -> Option<(u64, u64)> {
        self.pending
    }

    fn marks(&self) -> bool {
        true
    }

    fn lines(&self) -> Box<dyn Lines> {
        self.spool.lines()
    }

    fn trouble(&self) -> Option<String> {
        self.trouble.clone()
    }
}

/// Connects to the servers and finds (or creates) the stream, waiting up to `OPEN_PATIENCE` for them.
/// Returns the context, the stream and the most payload bytes of one message.
async fn connect(
    cfg: &NatsConfig,
    node: &str,
) -> Result<(jetstream::Context, stream::Stream, usize), WalError> {
    let client = connect_client(cfg, node)
        .await
        .map_err(|e| nats_error(cfg, e))?;
    let piece = client
        .server_info()
        .max_payload
        .saturating_sub(HEADER_ROOM)
        .max(4096);
    // A request lost with a server is sent again (same id) after this, not after the client's 5 s.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    let config = stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.subject()],
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        // Refuse a publish rather than lose an acknowledged one when a limit is reached.
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let stream = patiently("finding the stream", || {
        js.get_or_create_stream(config.clone())
    })
    .await
    .map_err(|e| nats_error(cfg, format!("the stream: {e}")))?;
    Ok((js, stream, piece))
}

/// A connection to the log's servers, waiting up to `OPEN_PATIENCE` for one to answer.
pub async fn connect_client(cfg: &NatsConfig, node: &str) -> Result<async_nats::Client, String> {
    let servers: Vec<async_nats::ServerAddr> = cfg
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a server address: {e}"))?;
    patiently("connecting", || async {
        let connecting = async_nats::ConnectOptions::new()
            .name(format!("hourglass {node}"))
            .connect(servers.clone());
        match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(connected) => connected.map_err(|e| e.to_string()),
            Err(_) => Err("no server answered".to_string()),
        }
    })
    .await
    .map_err(|e| format!("connecting: {e}"))
}

/// Runs `attempt` until it works or `OPEN_PATIENCE` has passed (servers starting beside this one, JetStream
/// electing its leaders, a server lost moments ago): its last error then.
pub async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = Instant::now() + OPEN_PATIENCE;
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "{what}: trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Publishes this writer's fence (expecting nothing: it takes over whoever was before). Its sequence.
async fn fence(js: &jetstream::Context, subject: &str, node: &str) -> Result<u64, String> {
    let ack = patiently("publishing the fence", || async {
        let message = jetstream::message::PublishMessage::build()
            .header(FENCE, node)
            .payload(Bytes::new());
        js.send_publish(subject.to_string(), message).await?.await
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

/// What `copy_groups` copied.
struct Copied {
    /// The sequence of the first message read (the spool's first segment begins with it).
    first: Option<u64>,
    groups: u64,
    bytes: u64,
}

/// Copies every whole group of `subject` below the fence into the spool's first segment, in order.
async fn copy_groups(
    stream: &stream::Stream,
    subject: &str,
    fence: u64,
    dir: &Path,
) -> Result<Copied, String> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let path = dir.join(format!("{:016}.log", 1));
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&path).map_err(|e| e.to_string())?,
    );
    let mut copied = Copied {
        first: None,
        groups: 0,
        bytes: 0,
    };
    let mut group = Pending::default();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
        if seq >= fence {
            break;
        }
        copied.first.get_or_insert(seq);
        if let Some(whole) = group.take(message.headers.as_ref(), &message.payload) {
            copied.groups += 1;
            copied.bytes += whole.len() as u64;
            out.write_all(&whole).map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    if copied.bytes == 0 {
        std::fs::remove_file(&path).map_err(|e| e.to_string())?;
    }
    Ok(copied)
}

/// A group being read back: its name and the parts so far.
#[derive(Default)]
struct Pending {
    group: Option<String>,
    next: usize,
    bytes: Vec<u8>,
}

impl Pending {
    /// Takes one message; the group's bytes once its last part is in. A fence, or a group that begins before
    /// the one in hand is whole, drops the one in hand: it was never acknowledged.
    fn take(&mut self, headers: Option<&HeaderMap>, payload: &[u8]) -> Option<Vec<u8>> {
        let header = |name| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let (Some(group), Some(part)) = (header(GROUP), header(PART)) else {
            *self = Pending::default();
            return None;
        };
        let (i, n) = part.split_once('/')?;
        let (i, n): (usize, usize) = (i.parse().ok()?, n.parse().ok()?);
        if i == 1 || self.group.as_deref() != Some(group.as_str()) || i != self.next {
            *self = Pending::default();
            if i != 1 {
                return None;
            }
            self.group = Some(group);
        }
        self.bytes.extend_from_slice(payload);
        self.next = i + 1;
        if i == n {
            let whole = std::mem::take(&mut self.bytes);
            *self = Pending::default();
            return Some(whole);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_url_names_servers_a_stream_and_replicas() {
        let c =
            NatsConfig::parse("nats://127.0.0.1:4222,127.0.0.1:4223/events?replicas=3").unwrap();
        assert_eq!(
            c.servers,
            ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
        );
        assert_eq!(c.stream, "events");
        assert_eq!(c.replicas, 3);
        assert_eq!(c.subject(), "events.log");
        assert_eq!(NatsConfig::parse("nats://h:1/s").unwrap().replicas, 1);
        for bad in [
            "http://h:1/s",
            "nats://h:1",
            "nats://h:1/",
            "nats:///s",
            "nats://h:1/a.b",
            "nats://h:1/s?replicas=0",
            "nats://h:1/s?replicas=9",
            "nats://h:1/s?r=1",
        ] {
            assert!(NatsConfig::parse(bad).is_err(), "{bad}");
        }
    }

    fn headers(group: &str, part: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(GROUP, group);
        h.insert(PART, part);
        h
    }

    #[test]
    fn only_whole_groups_are_read_back() {
        let mut p = Pending::default();
        assert_eq!(
            p.take(Some(&headers("1.1", "1/1")), b"a"),
            Some(b"a".to_vec())
        );
        assert_eq!(p.take(Some(&headers("1.2", "1/2")), b"b"), None);
        assert_eq!(
            p.take(Some(&headers("1.2", "2/2")), b"c"),
            Some(b"bc".to_vec())
        );
        // A group cut short by a refusal, then the next group.
        assert_eq!(p.take(Some(&headers("1.3", "1/3")), b"x"), None);
        assert_eq!(
            p.take(Some(&headers("1.4", "1/1")), b"d"),
            Some(b"d".to_vec())
        );
        // A group cut short by another writer's fence.
        assert_eq!(p.take(Some(&headers("1.5", "1/2")), b"y"), None);
        let mut fence = HeaderMap::new();
        fence.insert(FENCE, "node");
        assert_eq!(p.take(Some(&fence), b""), None);
        assert_eq!(p.take(Some(&headers("1.5", "2/2")), b"z"), None);
        assert_eq!(
            p.take(Some(&headers("2.1", "1/1")), b"e"),
            Some(b"e".to_vec())
        );
        // Parts out of order are not a group.
        assert_eq!(p.take(Some(&headers("2.2", "2/2")), b"f"), None);
    }
}
