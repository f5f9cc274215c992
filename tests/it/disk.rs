//! A full disk: on a small tmpfs made for the test, ingest fills what is left. Writes get 507 storage_full and
//! nothing acknowledged is lost; reads go on; once space comes back, ingest and sealing resume by themselves.
//! Needs permission to mount (root); without it the test fails under CI and is skipped, loudly, elsewhere.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{Server, Tmpfs, now_ms, zcat_series};

const TEST: &str = "writes_on_a_full_disk_get_507_and_resume_when_space_returns";

fn batch(b: u64, n: usize) -> String {
    let t = now_ms();
    let pad = "x".repeat(200);
    (0..n)
        .map(|i| format!("{{\"ts\":{t},\"b\":{b},\"i\":{i},\"pad\":\"{pad}\"}}\n"))
        .collect()
}

#[test]
fn writes_on_a_full_disk_get_507_and_resume_when_space_returns() {
    let Some(disk) = Tmpfs::mount(TEST, "16m") else {
        return;
    };
    let data = disk.path().join("data");
    let server = Server::start_fast(&data, &[]);
    let mut acked = HashSet::new();
    let mut next = 0u64;
    let mut post = |server: &Server, acked: &mut HashSet<u64>| {
        next += 1;
        let r = server.post_ndjson("/api/series/d/events", &batch(next, 50));
        if r.status == 202 {
            acked.insert(next);
        }
        r
    };

    // Something sealed to read while the disk is full: a final page needs two newer chunks.
    for _ in 0..3 {
        assert_eq!(post(&server, &mut acked).status, 202);
        std::thread::sleep(Duration::from_millis(1_100));
    }
    server.wait_sealed("d", now_ms());
    let head = server.get("/api/series/d/data");
    let newer = server.get(&head.link("prev").unwrap());
    let final_url = newer.link("prev").unwrap();
    let final_page = server.get(&final_url);
    assert!(
        final_page
            .header("cache-control")
            .unwrap()
            .contains("immutable")
    );

    // A batch acknowledged just before the disk fills: its chunk is sealed a second later, onto a full disk.
    assert_eq!(post(&server, &mut acked).status, 202);
    // Fill the disk to the last byte with a ballast file.
    let ballast = disk.path().join("ballast");
    let mut f = std::fs::File::create(&ballast).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&block[..512]).is_ok() {}
    drop(f);

    // The log's last page may still take a batch or two; then every write is refused, clearly.
    let mut refused = 0;
    for _ in 0..200 {
        let r = post(&server, &mut acked);
        match r.status {
            202 => assert_eq!(
                refused, 0,
                "a write was accepted after one was refused for space"
            ),
            507 => {
                assert_eq!(r.error_code(), "storage_full");
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            s => panic!("unexpected answer {s}: {}", r.text()),
        }
    }
    assert_eq!(refused, 5, "the full disk was never noticed");
    // A new series' first batch, refused for space, leaves no series behind.
    let r = server.post_ndjson("/api/series/new/events", &batch(9999, 50));
    assert_eq!((r.status, r.error_code().as_str()), (507, "storage_full"));
    assert_eq!(server.get("/api/series/new").status, 404);
    assert!(!data.join("new").exists());

    // Reads go on: the final page is the same, the head answers.
    let again = server.get(&final_url);
    assert_eq!((again.status, &again.body), (200, &final_page.body));
    assert_eq!(server.get("/api/series/d/data").status, 200);
    // Sealing the acknowledged events fails while the disk is full.
    std::thread::sleep(Duration::from_millis(2_500));
    let metrics = server.get("/metrics").text();
    assert!(
        !metrics.contains("hourglass_seal_failures_total 0\n"),
        "sealing did not fail on a full disk:\n{metrics}"
    );

    // Space comes back: ingest and sealing resume without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(&server, &mut acked).status != 202 {
        assert!(Instant::now() < deadline, "ingest did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.wait_sealed("d", now_ms());
    server.stop();

    let mut stored = HashSet::new();
    for line in zcat_series(&data.join("d")) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let key = (v["b"].as_u64().unwrap(), v["i"].as_u64().unwrap());
        assert!(stored.insert(key), "{key:?} stored twice");
    }
    for b in &acked {
        for i in 0..50 {
            assert!(
                stored.contains(&(*b, i)),
                "acknowledged event b={b} i={i} lost"
            );
        }
    }
    let batches: HashSet<u64> = stored.iter().map(|(b, _)| *b).collect();
    assert_eq!(batches, acked, "a refused batch was stored");
}
