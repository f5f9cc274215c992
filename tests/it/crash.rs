//! Crash torture: concurrent writers and a reader, `kill -9` at a random moment, restart, verify, many times
//! over. Each cycle moves the server's clock (`--clock-offset-ms`) so that an hour rollover falls a moment after
//! the start: kills land during group commits, during seals, while the last chunk of an hour and the first of the
//! next are written, and during the seals a restart does as it recovers. After every restart:
//! - every acknowledged batch is there exactly once, every batch is all or nothing, and a batch seen once never
//!   goes away again;
//! - every hour archive passes `gzip -t`;
//! - every final page fetched before any crash is byte-identical (body, ETag, Link).
//!
//! `HOURGLASS_CRASH_CYCLES` sets the number of cycles (default 20).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use crate::support::{Response, Server, TempDir, gzip_test_series, now_ms, request};

const WRITERS: usize = 4;
const BATCH: usize = 10;
const HOUR: i64 = 3_600_000;
const SERIES: &str = "/api/series/crash";

/// A final page as first fetched: ETag, Link and body.
type Final = (String, String, Vec<u8>);

#[derive(Default)]
struct Seen {
    /// Batches acknowledged with a 202.
    acked: HashSet<u64>,
    /// Batches found stored by an earlier check.
    stored: HashSet<u64>,
    /// Final pages by URL.
    finals: HashMap<String, Final>,
}

#[test]
fn acknowledged_events_survive_repeated_kill_9_exactly_once() {
    let cycles: usize = std::env::var("HOURGLASS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("crash");
    let next_batch = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut rng = rand::rng();
    let mut offset = 0;
    let mut kills_after_rollover = 0;

    for _ in 0..cycles {
        // The restart after the last kill, checked with the clock where it was.
        let server = Server::start_fast(dir.path(), &["--clock-offset-ms", &offset.to_string()]);
        check(&server, &dir, &mut seen.lock().unwrap(), offset);
        server.stop();

        // The next hour boundary, at least 1.5 s of server time ahead, put 0.2-1.2 s after the start. The
        // server's clock only moves forward: a restart is like a server that was down for up to an hour.
        let virtual_now = now_ms() + offset;
        let mut boundary = (virtual_now / HOUR + 1) * HOUR;
        if boundary - virtual_now < 1_500 {
            boundary += HOUR;
        }
        offset = boundary - rng.random_range(200..1_200) - now_ms();
        let server = Server::start_fast(dir.path(), &["--clock-offset-ms", &offset.to_string()]);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<_> = (0..WRITERS as u64)
            .map(|w| {
                let (stop, next_batch, seen) = (stop.clone(), next_batch.clone(), seen.clone());
                let addr = server.addr;
                std::thread::spawn(move || write(addr, w, offset, &stop, &next_batch, &seen))
            })
            .collect();
        threads.push({
            let (stop, seen, addr) = (stop.clone(), seen.clone(), server.addr);
            std::thread::spawn(move || read_finals(addr, &stop, &seen))
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(100..2_500)));
        if now_ms() + offset >= boundary {
            kills_after_rollover += 1;
        }
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
    }

    let server = Server::start_fast(dir.path(), &["--clock-offset-ms", &offset.to_string()]);
    server.wait_sealed("crash", now_ms() + offset + 1);
    let mut seen = seen.lock().unwrap();
    check(&server, &dir, &mut seen, offset);
    server.stop();
    assert!(
        seen.acked.len() > cycles,
        "too few batches acknowledged to mean anything: {}",
        seen.acked.len()
    );
    assert!(!seen.finals.is_empty(), "no final page was ever read");
    eprintln!(
        "crash test: {cycles} cycles ({kills_after_rollover} killed after an hour rollover), {} batches \
         acknowledged, {} stored (the rest were in flight at a kill), {} final pages unchanged, {} hour archives",
        seen.acked.len(),
        seen.stored.len(),
        seen.finals.len(),
        crate::support::archive_files(&dir.path().join("crash")).len()
    );
}

/// Posts batches until told to stop or the server is gone, noting the acknowledged ones.
fn write(
    addr: SocketAddr,
    w: u64,
    offset: i64,
    stop: &AtomicBool,
    next: &AtomicU64,
    seen: &Mutex<Seen>,
) {
    while !stop.load(Ordering::Relaxed) {
        let b = next.fetch_add(1, Ordering::Relaxed);
        let t = now_ms() + offset;
        let body: String = (0..BATCH)
            .map(|i| {
                format!(
                    "{{\"ts\":{},\"b\":{b},\"i\":{i},\"w\":{w}}}\n",
                    t - (i as i64 % 3)
                )
            })
            .collect();
        let headers = [("Content-Type", "application/x-ndjson")];
        match request(
            addr,
            "POST",
            &format!("{SERIES}/events"),
            &headers,
            body.as_bytes(),
        ) {
            Ok(r) if r.status == 202 => {
                seen.lock().unwrap().acked.insert(b);
                // Paced, so the checks after each restart stay quick; four writers still overlap all the time.
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(r) => assert_eq!(r.status, 503, "unexpected answer: {}", r.text()),
            Err(_) => return, // the server is gone
        }
    }
}

/// Walks back a few pages from the head, over and over, remembering the final ones and checking any seen before.
fn read_finals(addr: SocketAddr, stop: &AtomicBool, seen: &Mutex<Seen>) {
    while !stop.load(Ordering::Relaxed) {
        let mut url = format!("{SERIES}/data");
        for _ in 0..4 {
            let Ok(page) = request(addr, "GET", &url, &[], b"") else {
                return; // the server is gone
            };
            if page.status == 404 {
                break; // no event yet
            }
            assert_eq!(page.status, 200, "{url}: {}", page.text());
            if page
                .header("cache-control")
                .is_some_and(|c| c.contains("immutable"))
            {
                let now = final_of(&page);
                let mut seen = seen.lock().unwrap();
                let first = seen
                    .finals
                    .entry(url.clone())
                    .or_insert_with(|| now.clone());
                assert!(*first == now, "final page {url} changed");
            }
            match page.link("prev") {
                Some(prev) => url = prev,
                None => break,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn final_of(page: &Response) -> Final {
    (
        page.header("etag").unwrap_or_default().to_string(),
        page.header("link").unwrap_or_default().to_string(),
        page.body.clone(),
    )
}

#[derive(serde::Deserialize)]
struct Event {
    b: u64,
    i: u64,
}

/// Everything a restarted server must show: see the module comment.
fn check(server: &Server, dir: &TempDir, seen: &mut Seen, offset: i64) {
    let to = (now_ms() + offset) / 1000 + 3_600;
    let export = server.get(&format!("{SERIES}/export?from=0&to={to}"));
    let mut stored: HashMap<u64, HashSet<u64>> = HashMap::new();
    if export.status != 404 {
        assert_eq!(export.status, 200, "{}", export.text());
        for line in export.text().lines() {
            let Event { b, i } =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("garbage line {line:?}: {e}"));
            assert!(
                stored.entry(b).or_default().insert(i),
                "event b={b} i={i} stored twice"
            );
        }
    }
    for (b, events) in &stored {
        assert_eq!(events.len(), BATCH, "batch {b} stored in part");
    }
    for b in seen.acked.iter().chain(&seen.stored) {
        assert!(
            stored.contains_key(b),
            "batch {b}, acknowledged or seen stored before, is lost"
        );
    }
    seen.stored.extend(stored.keys());
    if dir.path().join("crash").exists() {
        gzip_test_series(&dir.path().join("crash"));
    }
    for (url, before) in &seen.finals {
        let now = server.get(url);
        assert_eq!(now.status, 200, "{url}");
        assert!(
            final_of(&now) == *before,
            "final page {url} differs after a crash"
        );
    }
}
