//! The write-ahead log on NATS JetStream (`--log nats://`), against a real 3-server cluster (`natsd`) and
//! Azurite for the sealed past: acknowledged batches survive `kill -9` of the node and of a NATS server,
//! exactly once; standbys take writes and reads for the lease's holder, and take over from a writer paused
//! past its lease (which stops when it resumes) and from a killed one; a writer taking over on a fresh folder,
//! from the stream alone or from the object store and the stream (what is uploaded having left the stream),
//! serves every final page of the one before byte for byte; a cluster crash torture.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::natsd::Cluster;
use crate::support::{Server, TempDir, now_ms, request};

const SERIES: &str = "/api/series/js/events";

/// A node on `log` with 1 s chunks and `lateness` seconds of lateness.
/// Leases of tests that take over from a writer: short, so that a standby takes over in seconds.
const LEASE_MS: &str = "1500";

/// What every test here runs against: a NATS cluster and an object store (Azurite) for the sealed past.
struct Setup {
    cluster: Cluster,
    store: crate::stores::Store,
    archive: String,
    logs: TempDir,
}

/// The cluster and the store, `None` (after `missing`) where either is not installed.
fn setup(test: &str, prefix: &str) -> Option<Setup> {
    let cluster = Cluster::start(test, 3)?;
    let store = crate::stores::Store::start(test, crate::stores::Kind::Azurite)?;
    Some(Setup {
        archive: store.url(prefix),
        cluster,
        store,
        logs: TempDir::new("nats-logs"),
    })
}

impl Setup {
    /// A node on `log` with 1 s chunks, `lateness` seconds of lateness and the short lease.
    fn start(&self, data: &Path, log: &str, node: &str, lateness: u32) -> Server {
        self.start_with(data, log, node, lateness, &["--lease-ms", LEASE_MS])
    }

    /// `start` with other flags: a long lease where NATS servers are killed under a writer that must not
    /// lose its lease while JetStream elects new leaders, or smaller parts.
    fn start_with(
        &self,
        data: &Path,
        log: &str,
        node: &str,
        lateness: u32,
        extra: &[&str],
    ) -> Server {
        let lateness = lateness.to_string();
        let mut args = vec!["--chunk-seconds", "1", "--lateness", &lateness];
        args.extend(["--archive", &self.archive, "--log", log, "--node", node]);
        args.extend(extra);
        let log_file = self.logs.path().join(format!("{node}.log"));
        Server::start_env(data, &args, &self.store.env(), &log_file)
    }
}

/// A batch of `n` events of batch number `b`, each naming its batch and place.
fn batch(b: u64, n: usize) -> String {
    let t = now_ms();
    (0..n)
        .map(|i| {
            format!(
                "{{\"ts\":{t},\"b\":{b},\"i\":{i},\"pad\":\"{}\"}}\n",
                "x".repeat(64)
            )
        })
        .collect()
}

/// What became of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Posted {
    Acked,
    /// An attempt got no answer (the node was killed) and a later one was refused as late: stored whole
    /// once, or not at all.
    Unknown,
    /// Refused every time (503s while there was no writer, then as late): never stored.
    Refused,
}

/// Posts batch `b` under its own Idempotency-Key until it is acknowledged: a 503 (a NATS server lost, a
/// leader being elected) or no answer (the node down) is tried again, up to `patience`.
fn post(addr: &Mutex<SocketAddr>, b: u64, n: usize, patience: Duration) -> Posted {
    let body = batch(b, n);
    let key = format!("batch-{b}");
    let deadline = Instant::now() + patience;
    let mut unanswered = false;
    loop {
        let to = *addr.lock().unwrap();
        let answer = request(
            to,
            "POST",
            SERIES,
            &[
                ("Content-Type", "application/x-ndjson"),
                ("Idempotency-Key", &key),
            ],
            body.as_bytes(),
        );
        match answer {
            Ok(r) if r.status == 202 => return Posted::Acked,
            Ok(r) if r.status == 422 && r.text().contains("late_event") => {
                return if unanswered {
                    Posted::Unknown
                } else {
                    Posted::Refused
                };
            }
            // 503: no writer yet, or the log cannot take it; 502: sent on to a writer that is gone.
            Ok(r) => assert!([502, 503].contains(&r.status), "batch {b}: {}", r.text()),
            Err(_) => unanswered = true,
        }
        assert!(
            Instant::now() < deadline,
            "batch {b} was never acknowledged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `server` holds the log's lease and serves as its writer.
fn wait_writing(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = server.get("/readyz");
        if ready.status == 200 && ready.json().get("role").is_none() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never the writer: {}",
            ready.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn acked(addr: &Mutex<SocketAddr>, b: u64, n: usize) {
    assert_eq!(
        post(addr, b, n, Duration::from_secs(10)),
        Posted::Acked,
        "batch {b}"
    );
}

/// Every event of the series, exported once sealed: how many times each (batch, place) is there.
fn stored(server: &Server, from: i64) -> HashMap<(u64, u64), usize> {
    let to = now_ms() + 60_000;
    server.wait_sealed("js", to - 60_000);
    let res = server.get(&format!(
        "/api/series/js/export?from={}&to={}",
        from / 1000 - 1,
        to / 1000
    ));
    assert_eq!(res.status, 200, "{}", res.text());
    let mut counts = HashMap::new();
    for line in res.text().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let key = (v["b"].as_u64().unwrap(), v["i"].as_u64().unwrap());
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Every acknowledged batch is there whole and once, an unknown one whole once or not at all, nothing else.
fn assert_exactly_once(counts: &HashMap<(u64, u64), usize>, posted: &[(u64, Posted)], n: usize) {
    let mut batches: std::collections::HashSet<u64> = counts.keys().map(|&(b, _)| b).collect();
    for &(b, outcome) in posted {
        let present = batches.remove(&b);
        assert!(
            !(outcome == Posted::Refused && present),
            "batch {b} was refused, and stored"
        );
        if outcome != Posted::Acked && !present {
            continue;
        }
        for i in 0..n as u64 {
            assert_eq!(
                counts.get(&(b, i)),
                Some(&1),
                "event {i} of batch {b} ({outcome:?})"
            );
        }
    }
    assert!(
        batches.is_empty(),
        "batches stored but never sent: {batches:?}"
    );
}

#[test]
fn acknowledged_batches_survive_kill_9_of_the_node_and_of_a_nats_server_exactly_once() {
    let test =
        "nats::acknowledged_batches_survive_kill_9_of_the_node_and_of_a_nats_server_exactly_once";
    let Some(mut s) = setup(test, "survive") else {
        return;
    };
    let log = s.cluster.log_url("survive", 3);
    let dir = TempDir::new("nats-survive");
    let from = now_ms();
    // Lateness long enough for a retry to reach the restarted node before its batch is late.
    let server = s.start_with(dir.path(), &log, "a", 5, &["--lease-ms", "20000"]);
    wait_writing(&server);
    let addr = Arc::new(Mutex::new(server.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let posted: Arc<Mutex<Vec<(u64, Posted)>>> = Arc::default();
    const N: usize = 20;
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop, next, posted) =
                (addr.clone(), stop.clone(), next.clone(), posted.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    let outcome = post(&addr, b, N, Duration::from_secs(30));
                    posted.lock().unwrap().push((b, outcome));
                }
            })
        })
        .collect();
    let acked_now = || posted.lock().unwrap().len();
    let wait_for_more = |more: usize| {
        let target = acked_now() + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked_now() < target {
            assert!(
                Instant::now() < deadline,
                "ingest stopped at {} batches",
                acked_now()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_more(50);
    // One NATS server goes: the stream keeps a quorum and ingest goes on.
    s.cluster.kill9(0);
    wait_for_more(50);
    // The node goes, mid-ingest; it comes back on the same folder and reads its log back from the stream.
    server.kill9();
    let server = s.start_with(dir.path(), &log, "a", 5, &["--lease-ms", "20000"]);
    *addr.lock().unwrap() = server.addr;
    wait_for_more(50);
    // The lost server comes back and catches up.
    s.cluster.resume(0);
    wait_for_more(50);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let posted = posted.lock().unwrap().clone();
    assert_exactly_once(&stored(&server, from), &posted, N);
    server.stop();
}

/// `kill -STOP` or `kill -CONT` of a process.
fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Which of `nodes` writes, once one does (the others stand by and name it).
fn writer_of(nodes: &[&Server]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            // A node that stopped by itself (it lost its lease) does not answer.
            let Ok(ready) = request(n.addr, "GET", "/readyz", &[], b"") else {
                continue;
            };
            if ready.status == 200 && ready.json().get("role").is_none() {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no writer");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn standbys_take_writes_and_take_over_from_a_paused_then_a_killed_writer_with_every_batch_once() {
    let test = "nats::standbys_take_writes_and_take_over_from_a_paused_then_a_killed_writer_with_every_batch_once";
    let Some(s) = setup(test, "failover") else {
        return;
    };
    let log = s.cluster.log_url("failover", 3);
    let dirs: Vec<TempDir> = (0..3)
        .map(|i| TempDir::new(&format!("nats-node{i}")))
        .collect();
    let a = s.start(dirs[0].path(), &log, "a", 2);
    wait_writing(&a);
    let b = s.start(dirs[1].path(), &log, "b", 2);
    let c = s.start(dirs[2].path(), &log, "c", 2);
    // Standbys say who writes, and send what they get to it.
    for standby in [&b, &c] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while standby.get("/readyz").json().get("writer") != Some(&Value::from("a")) {
            assert!(
                Instant::now() < deadline,
                "{}",
                standby.get("/readyz").text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let addrs: Vec<Mutex<SocketAddr>> = [&a, &b, &c].iter().map(|s| Mutex::new(s.addr)).collect();
    let mut posted = Vec::new();
    for n in 0..12u64 {
        acked(&addrs[n as usize % 3], n, 5);
        posted.push((n, Posted::Acked));
    }
    // Reads too: the same pages from a standby as from the writer.
    let bodies = |s: &Server| -> Vec<(String, Vec<u8>)> {
        crate::support::walk(s, "js")
            .into_iter()
            .map(|(u, p)| (u, p.body))
            .collect()
    };
    let from_a = bodies(&a);
    assert!(!from_a.is_empty());
    assert_eq!(bodies(&b), from_a);
    // Metrics are each node's own: a standby's say it stands by, and count nothing of the writer's.
    let metrics = b.get("/metrics").text();
    assert!(metrics.contains("hourglass_standby 1"), "{metrics}");
    assert!(!metrics.contains("hourglass_events_accepted"), "{metrics}");

    // The writer is paused past its lease: a standby takes the lease, fences the log and writes.
    signal(a.pid(), "-STOP");
    let paused = Instant::now();
    let second = writer_of(&[&b, &c]);
    let took = paused.elapsed();
    let second_addr = Mutex::new([&b, &c][second].addr);
    for n in 12..20u64 {
        acked(&second_addr, n, 5);
        posted.push((n, Posted::Acked));
    }
    // Resumed, the old writer finds its lease gone and stops; nothing it does reaches the stream.
    signal(a.pid(), "-CONT");
    let mut a = a;
    let exit = a
        .wait_exit(Duration::from_secs(10))
        .expect("the paused writer stops");
    assert!(!exit.success());

    // The second writer is killed during ingest sent to the last standby: it takes over.
    let (second, third) = if second == 0 { (b, c) } else { (c, b) };
    let third_addr = Arc::new(Mutex::new(third.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (addr, stop) = (third_addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut done = Vec::new();
                let mut n = 100 + w * 1000;
                while !stop.load(Ordering::Relaxed) {
                    done.push((n, post(&addr, n, 5, Duration::from_secs(30))));
                    n += 1;
                }
                done
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    second.kill9();
    let killed = Instant::now();
    wait_writing(&third);
    let failover = killed.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        posted.extend(w.join().unwrap());
    }
    eprintln!("failover: paused writer replaced in {took:?}, killed writer in {failover:?}");
    assert_exactly_once(&stored(&third, now_ms() - 600_000), &posted, 5);
    third.stop();
}

#[test]
fn a_folder_whose_local_log_holds_unsealed_events_is_refused_a_replicated_log() {
    let test = "nats::a_folder_whose_local_log_holds_unsealed_events_is_refused_a_replicated_log";
    let Some(s) = setup(test, "local") else {
        return;
    };
    let log = s.cluster.log_url("local", 1);
    let dir = TempDir::new("nats-local");
    let server = Server::start(dir.path(), &["--chunk-seconds", "1", "--lateness", "3600"]);
    assert_eq!(server.post_ndjson(SERIES, &batch(0, 3)).status, 202);
    server.kill9();
    // Refused: the local log's batches are acknowledged and only it has them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .arg("serve")
        .arg("--data")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--archive",
            &s.archive,
            "--log",
            &log,
        ])
        .env("HOURGLASS_LOG", "warn")
        .envs(s.store.env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("_wal/) holds 3 events not sealed yet"),
        "{said}"
    );
    // Served without it, the events are there still.
    let server = Server::start(dir.path(), &["--chunk-seconds", "1", "--lateness", "3600"]);
    assert_eq!(server.get("/api/series/js").json()["unsealed_events"], 3);
    server.stop();
}

/// Final pages as a comparable list: URL, ETag, Last-Modified, Link and body.
type Finals = Vec<(String, String, String, String, Vec<u8>)>;

fn finals(server: &Server) -> Finals {
    crate::support::walk(server, "js")
        .into_iter()
        .filter(|(_, p)| {
            p.header("cache-control")
                .is_some_and(|c| c.contains("immutable"))
        })
        .map(|(u, p)| {
            let h = |name| p.header(name).unwrap_or_default().to_string();
            (u, h("etag"), h("last-modified"), h("link"), p.body.clone())
        })
        .collect()
}

/// Every page of `before` is in `after`, the same to the byte (ETag, Last-Modified, Link and body).
fn assert_still_final(before: &Finals, after: &Finals) {
    for page in before {
        let now = after.iter().find(|p| p.0 == page.0);
        assert_eq!(now, Some(page), "{} changed or went", page.0);
    }
}

#[test]
fn a_writer_taking_the_log_over_on_a_fresh_folder_seals_byte_for_byte_what_the_first_did() {
    let test = "nats::a_writer_taking_the_log_over_on_a_fresh_folder_seals_byte_for_byte_what_the_first_did";
    let Some(s) = setup(test, "again") else {
        return;
    };
    let log = s.cluster.log_url("again", 3);
    let (dir_a, dir_b) = (TempDir::new("nats-again-a"), TempDir::new("nats-again-b"));
    // Parts of 4 events: chunks of several members each. Nothing is uploaded (the hour is not complete):
    // the second writer has it all from the stream.
    let start_node = |dir: &Path, node: &str| {
        let extra = ["--lease-ms", LEASE_MS, "--max-page-entries", "4"];
        s.start_with(dir, &log, node, 1, &extra)
    };
    let a = start_node(dir_a.path(), "a");
    wait_writing(&a);
    let a_addr = Mutex::new(a.addr);
    for b in 0..8 {
        acked(&a_addr, b, 5);
        std::thread::sleep(Duration::from_millis(300));
    }
    a.wait_sealed("js", now_ms());
    let before = finals(&a);
    assert!(before.len() >= 4, "{} final pages", before.len());
    // The first writer is gone with its folder; a second one has only the stream.
    a.kill9();
    drop(dir_a);
    let b = start_node(dir_b.path(), "b");
    b.wait_sealed("js", now_ms());
    let after = finals(&b);
    assert_still_final(&before, &after);
    b.stop();
}

#[test]
fn a_writer_on_a_fresh_folder_takes_over_from_the_object_store_and_the_stream() {
    let test = "nats::a_writer_on_a_fresh_folder_takes_over_from_the_object_store_and_the_stream";
    let Some(s) = setup(test, "takeover") else {
        return;
    };
    const HOUR: i64 = 3_600_000;
    let log = s.cluster.log_url("takeover", 3);
    let tmp = TempDir::new("nats-takeover");
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let start_node = |dir: &Path, node: &str, lateness: u32| {
        let extra = ["--lease-ms", LEASE_MS, "--max-page-entries", "4"];
        s.start_with(dir, &log, node, lateness, &extra)
    };
    // Events in three hours before the last complete one, and now, taken with a lateness that lets them in.
    let a = start_node(&dir_a, "a", 18000);
    wait_writing(&a);
    let this_hour = now_ms().div_euclid(HOUR) * HOUR;
    let mut sent = 0u64;
    for k in (2..5).rev() {
        let start = this_hour - k * HOUR;
        let body: String = (0..12)
            .map(|n| {
                sent += 1;
                format!(
                    "{{\"ts\":{},\"b\":{sent},\"i\":0}}\n",
                    start + (n + 1) * 60_000
                )
            })
            .collect();
        assert_eq!(a.post_ndjson(SERIES, &body).status, 202);
    }
    a.stop();
    // The same writer with a short lateness seals it all and uploads the complete hours, and takes events
    // of now, whose chunks are sealed in its folder only.
    let a = start_node(&dir_a, "a", 1);
    wait_writing(&a);
    let now_batch: String = (0..12)
        .map(|_| {
            sent += 1;
            format!("{{\"ts\":{},\"b\":{sent},\"i\":0}}\n", now_ms())
        })
        .collect();
    assert_eq!(a.post_ndjson(SERIES, &now_batch).status, 202);
    let uploaded_through = |s: &Server| {
        let info = s.get("/api/series/js").json();
        info["uploaded_through"]
            .as_str()
            .map(crate::support::parse_time)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while uploaded_through(&a) < Some(this_hour - HOUR) {
        assert!(Instant::now() < deadline, "not uploaded: {}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    a.wait_sealed("js", now_ms());
    let before = finals(&a);
    assert!(before.len() >= 12, "{} final pages", before.len());
    // What is uploaded has left the stream: the next writer can have it from the object store only.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.cluster.stream_state("takeover").unwrap().first_seq <= 2 {
        assert!(Instant::now() < deadline, "never purged");
        std::thread::sleep(Duration::from_millis(100));
    }
    // /metrics says what the stream still holds, as the sealer last asked.
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = s.cluster.stream_state("takeover").unwrap();
    while crate::filters::counter(&a, "hourglass_log_pending_messages") != held.messages {
        assert!(
            Instant::now() < deadline,
            "pending messages never {}",
            held.messages
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Gone, folder and all: the next writer has the object store and the stream.
    a.kill9();
    std::fs::remove_dir_all(&dir_a).unwrap();
    let b = start_node(&dir_b, "b", 1);
    b.wait_sealed("js", now_ms());
    assert!(uploaded_through(&b) >= Some(this_hour - HOUR));
    let after = finals(&b);
    assert_still_final(&before, &after);
    let counts = stored(&b, this_hour - 5 * HOUR);
    assert_eq!(counts.len() as u64, sent, "every event, once: {counts:?}");
    assert!(counts.values().all(|&n| n == 1));
    b.stop();
}

/// The nodes running.
fn live(nodes: &[Option<Server>]) -> Vec<&Server> {
    nodes.iter().flatten().collect()
}

/// Starts again (`restart(i)`) every node that stopped by itself, as a supervisor would: how many.
fn supervise(
    nodes: &mut [Option<Server>],
    addrs: &[Mutex<SocketAddr>],
    restart: impl Fn(usize) -> Server,
) -> usize {
    let mut restarted = 0;
    for i in 0..nodes.len() {
        let exited = nodes[i]
            .as_mut()
            .is_some_and(|n| n.wait_exit(Duration::ZERO).is_some());
        if exited {
            restarted += 1;
            let again = restart(i);
            *addrs[i].lock().unwrap() = again.addr;
            nodes[i] = Some(again);
        }
    }
    restarted
}

/// One cycle of the cluster torture: what was killed, and how long until a node wrote again.
#[derive(Debug)]
enum Cycle {
    Writer(Duration),
    Nats,
}

/// Cluster crash torture: three nodes and three NATS servers, batches sent to every node all along, and at
/// every cycle a random kill: the writer (`kill -9`, started again as a standby once another writes) or a NATS
/// server (`kill -9`, started again a moment later). Ingest must go on through every cycle; at the end each
/// acknowledged batch is stored exactly once, whole, and a refused one never. `HOURGLASS_CLUSTER_CYCLES` sets the cycles (default 20); the
/// failover times are printed (`benches/cluster.sh`).
#[test]
fn a_cluster_torture_of_killed_writers_and_nats_servers_loses_nothing() {
    use rand::Rng;
    let test = "nats::a_cluster_torture_of_killed_writers_and_nats_servers_loses_nothing";
    let cycles: usize = std::env::var("HOURGLASS_CLUSTER_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let Some(mut s) = setup(test, "torture") else {
        return;
    };
    let log = s.cluster.log_url("torture", 3);
    let dirs: Vec<TempDir> = (0..3)
        .map(|i| TempDir::new(&format!("torture{i}")))
        .collect();
    let names = ["a", "b", "c"];
    // A lateness past a failover: batches retried across one are mostly taken, not refused as late.
    let lateness = 10;
    let mut nodes: Vec<Option<Server>> = (0..3)
        .map(|i| Some(s.start(dirs[i].path(), &log, names[i], lateness)))
        .collect();
    let addrs: Arc<Vec<Mutex<SocketAddr>>> = Arc::new(
        nodes
            .iter()
            .map(|n| Mutex::new(n.as_ref().unwrap().addr))
            .collect(),
    );
    writer_of(&live(&nodes));
    let stop = Arc::new(AtomicBool::new(false));
    let posted: Arc<Mutex<Vec<(u64, Posted)>>> = Arc::default();
    let senders: Vec<_> = (0..2u64)
        .map(|w| {
            let (addrs, stop, posted) = (addrs.clone(), stop.clone(), posted.clone());
            std::thread::spawn(move || {
                let mut n = w << 32;
                let mut rng = rand::rng();
                while !stop.load(Ordering::Relaxed) {
                    let to = &addrs[rng.random_range(0..addrs.len())];
                    let outcome = post(to, n, 5, Duration::from_secs(60));
                    posted.lock().unwrap().push((n, outcome));
                    n += 1;
                }
            })
        })
        .collect();
    let mut rng = rand::rng();
    let mut done = Vec::new();
    let mut stopped_by_themselves = 0;
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..800)));
        // As a supervisor would: a node that stopped by itself (a writer that could not renew its lease while
        // JetStream elected new leaders) is started again.
        let restart = |i: usize| s.start(dirs[i].path(), &log, names[i], lateness);
        stopped_by_themselves += supervise(&mut nodes, &addrs, restart);
        if rng.random_bool(0.6) {
            let w = writer_of(&live(&nodes));
            let i = nodes
                .iter()
                .position(|n| n.as_ref().is_some_and(|s| s.addr == live(&nodes)[w].addr))
                .unwrap();
            nodes[i].take().unwrap().kill9();
            let killed = Instant::now();
            writer_of(&live(&nodes));
            done.push(Cycle::Writer(killed.elapsed()));
            let again = s.start(dirs[i].path(), &log, names[i], lateness);
            *addrs[i].lock().unwrap() = again.addr;
            nodes[i] = Some(again);
        } else {
            let k = rng.random_range(0..3);
            s.cluster.kill9(k);
            std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
            s.cluster.resume(k);
            done.push(Cycle::Nats);
        }
        let so_far = posted.lock().unwrap().len();
        assert!(so_far > cycle, "ingest stopped after {so_far} batches");
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let posted = posted.lock().unwrap().clone();
    // The writer at the end, looked at until it answers (one may still stop by itself while the last NATS
    // server started again settles).
    let mut counts = None;
    for _ in 0..3 {
        let restart = |i: usize| s.start(dirs[i].path(), &log, names[i], lateness);
        stopped_by_themselves += supervise(&mut nodes, &addrs, restart);
        let w = writer_of(&live(&nodes));
        let writer = live(&nodes)[w];
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stored(writer, now_ms() - 3_600_000)
        }));
        if let Ok(read) = read {
            counts = Some(read);
            break;
        }
    }
    assert_exactly_once(&counts.expect("the writer answers"), &posted, 5);
    let mut times: Vec<Duration> = done
        .iter()
        .filter_map(|c| match c {
            Cycle::Writer(t) => Some(*t),
            Cycle::Nats => None,
        })
        .collect();
    times.sort();
    let acked = posted.iter().filter(|(_, p)| *p == Posted::Acked).count();
    eprintln!(
        "cluster torture: {cycles} cycles ({} writers killed, {} NATS servers; {stopped_by_themselves} nodes stopped by themselves), {} batches sent, {acked} acknowledged; failover p50 {:?}, max {:?}",
        times.len(),
        cycles - times.len(),
        posted.len(),
        times.get(times.len() / 2),
        times.last()
    );
    for node in nodes.into_iter().flatten() {
        node.kill9();
    }
}
