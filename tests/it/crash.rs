//! Crash safety: concurrent writers, `kill -9` at a random moment, restart, many times over. Afterwards every
//! acknowledged event is stored exactly once, every batch is all or nothing, and every archive is valid gzip.
//! `HOURGLASS_CRASH_CYCLES` sets the number of cycles (default 20).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::Value;

use crate::support::{FAST, Server, TempDir, now_ms, request, zcat_series};

const WRITERS: usize = 4;
const BATCH: usize = 40;

#[test]
fn acknowledged_events_survive_repeated_kill_9_exactly_once() {
    let cycles: usize = std::env::var("HOURGLASS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("crash");
    let next_batch = Arc::new(AtomicU64::new(0));
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut rng = rand::rng();

    for _ in 0..cycles {
        let server = Server::start(dir.path(), FAST);
        let addr = server.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (stop, next_batch, acked) = (stop.clone(), next_batch.clone(), acked.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let b = next_batch.fetch_add(1, Ordering::Relaxed);
                        let t = now_ms();
                        let body: String = (0..BATCH)
                            .map(|i| {
                                format!(
                                    "{{\"ts\":{},\"b\":{b},\"i\":{i},\"w\":{w}}}\n",
                                    t - (i as i64 % 3)
                                )
                            })
                            .collect();
                        let sent = request(
                            addr,
                            "POST",
                            "/api/series/crash/events",
                            &[("Content-Type", "application/x-ndjson")],
                            body.as_bytes(),
                        );
                        match sent {
                            Ok(r) if r.status == 202 => {
                                acked.lock().unwrap().insert(b);
                            }
                            Ok(r) => assert!(
                                r.status == 503 || r.status == 422,
                                "unexpected answer {}: {}",
                                r.status,
                                r.text()
                            ),
                            Err(_) => break, // the server is gone
                        }
                    }
                })
            })
            .collect();
        // Long enough, often enough, for kills to land during group commits and during seals.
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1500)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }

    let server = Server::start(dir.path(), FAST);
    server.wait_sealed("crash", now_ms() + 1);
    server.stop();

    let acked = acked.lock().unwrap();
    assert!(
        acked.len() > cycles,
        "too few batches acknowledged to mean anything: {}",
        acked.len()
    );
    let mut seen: HashMap<u64, HashSet<u64>> = HashMap::new();
    for line in zcat_series(&dir.path().join("crash")) {
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("garbage line {line:?}: {e}"));
        let (b, i) = (v["b"].as_u64().unwrap(), v["i"].as_u64().unwrap());
        assert!(
            seen.entry(b).or_default().insert(i),
            "event b={b} i={i} stored twice"
        );
    }
    for b in acked.iter() {
        assert!(seen.contains_key(b), "acknowledged batch {b} lost");
    }
    for (b, events) in &seen {
        assert_eq!(events.len(), BATCH, "batch {b} stored in part");
    }
    eprintln!(
        "crash test: {cycles} cycles, {} batches acknowledged, {} stored (the rest were in flight at a kill)",
        acked.len(),
        seen.len()
    );
}
