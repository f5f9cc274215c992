//! `--retention`: hours older than it are removed whole; their pages and exports answer 410 Gone, links never
//! lead there, the oldest page left gets a new identity, histogram and series info follow, and all of it holds
//! across a restart. The server's clock is moved (`--clock-offset-ms`) to write hours long past.

use serde_json::Value;

use crate::support::{Response, Server, TempDir, archive_files, now_ms, parse_time, walk};

const HOUR: i64 = 3_600_000;

/// Starts a server whose clock reads the middle of the hour `hours_ago` hours back (0: the real clock).
fn start_at(dir: &TempDir, hours_ago: i64, extra: &[&str]) -> (Server, i64) {
    Server::start_hours_back(dir.path(), hours_ago, extra)
}

/// Posts `chunks` batches of `n` events, each in its own chunk, and waits until they are sealed.
fn write(server: &Server, offset: i64, chunks: usize, n: usize) {
    for c in 0..chunks {
        let t = now_ms() + offset;
        let body: String = (0..n)
            .map(|i| format!("{{\"ts\":{t},\"c\":{c},\"i\":{i}}}\n"))
            .collect();
        assert_eq!(
            server.post_ndjson("/api/series/r/events", &body).status,
            202
        );
        std::thread::sleep(std::time::Duration::from_millis(1_100));
    }
    server.wait_sealed("r", now_ms() + offset);
}

fn count(pages: &[(String, Response)]) -> u64 {
    pages
        .iter()
        .map(|(_, p)| p.json()["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn retention_removes_old_hours_and_what_is_gone_answers_410() {
    let dir = TempDir::new("retention");
    // Hour A, five hours back: 2 chunks of 3 events; hour B, three hours back: 3 chunks of 4 events.
    let (a, offset) = start_at(&dir, 5, &[]);
    write(&a, offset, 2, 3);
    // Without retention nothing is gone, not even the first chunk boundary there is.
    assert_eq!(
        a.get("/api/series/r/data/before/1970_01_01_00_00_00")
            .status,
        200
    );
    a.stop();
    let (b, offset) = start_at(&dir, 3, &[]);
    write(&b, offset, 3, 4);
    let before = walk(&b, "r");
    assert_eq!(count(&before), 18);
    // A histogram of hour A, final before retention reaches it.
    let hour_a = (now_ms() + offset - 2 * HOUR).div_euclid(HOUR) * HOUR;
    let histogram_a = format!(
        "/api/series/r/histogram?from={}&to={}&step=1h",
        hour_a / 1000,
        (hour_a + HOUR) / 1000
    );
    let h = b.get(&histogram_a);
    assert_eq!(h.status, 200, "{}", h.text());
    assert!(h.header("cache-control").unwrap().contains("immutable"));
    assert_eq!(h.json()["buckets"][0]["count"], 6, "{}", h.text());
    b.stop();
    assert_eq!(archive_files(&dir.path().join("r")).len(), 2);
    // The oldest page of hour B, final, and the newest of hour A that its `prev` names.
    let edge = before.iter().position(|(_, p)| {
        p.json()["count"] == 4 && {
            let prev = p.link("prev").unwrap_or_default();
            before
                .iter()
                .any(|(u, q)| *u == prev && q.json()["count"] == 3)
        }
    });
    let (edge_url, edge_page) = &before[edge.expect("no page at the hour edge")];
    assert!(
        edge_page
            .header("cache-control")
            .unwrap()
            .contains("immutable")
    );
    let gone_url = edge_page.link("prev").unwrap();

    // Now, keeping 4 hours: hour A goes, hour B stays.
    let cutoff = (now_ms() - 4 * HOUR).div_euclid(HOUR) * HOUR;
    let serve_now = || start_at(&dir, 0, &["--retention", "4h"]).0;
    let server = serve_now();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The boundary is published first (410 from then on), then the hours leave the index, then the disk.
    let info = loop {
        let info = server.get("/api/series/r").json();
        let files = archive_files(&dir.path().join("r")).len();
        if !info["retained_from"].is_null() && info["events"] == 12 && files == 1 {
            break info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run: {info}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(parse_time(info["retained_from"].as_str().unwrap()), cutoff);
    assert_eq!(info["events"], 12, "{info}");
    assert_eq!(
        archive_files(&dir.path().join("r")).len(),
        1,
        "hour A is still on disk"
    );

    let check = |server: &Server| {
        let gone = server.get(&gone_url);
        assert_eq!(
            (gone.status, gone.error_code()),
            (410, "gone".to_string()),
            "{gone_url}"
        );
        let after = server.get(&gone_url.replace("/before/", "/after/"));
        assert_eq!(after.status, 410);
        // The walk from the head ends cleanly at the oldest page left: no link leads into removed data.
        let pages = walk(server, "r");
        assert_eq!(count(&pages), 12);
        let (url, oldest) = pages.last().unwrap();
        assert_eq!(url, edge_url);
        assert!(oldest.link("prev").is_none());
        assert!(
            oldest
                .header("cache-control")
                .unwrap()
                .contains("immutable")
        );
        assert_ne!(
            oldest.header("etag"),
            edge_page.header("etag"),
            "same ETag, other links"
        );
        // Exports: from before the boundary is gone; from the boundary on is whole.
        let to = (now_ms() + HOUR) / 1000;
        let export = server.get(&format!("/api/series/r/export?from=0&to={to}"));
        assert_eq!(
            (export.status, export.error_code()),
            (410, "gone".to_string())
        );
        let export = server.get(&format!(
            "/api/series/r/export?from={}&to={to}",
            cutoff / 1000
        ));
        assert_eq!((export.status, export.text().lines().count()), (200, 12));
        // A histogram that reaches where hour A was is gone like its export, never a smaller count under the
        // same ETag; one from the boundary on counts what is kept.
        let gone = server.get(&histogram_a);
        assert_eq!((gone.status, gone.error_code()), (410, "gone".to_string()));
        let h = server.get(&format!(
            "/api/series/r/histogram?from={}&to={}&step=1h",
            cutoff / 1000,
            (cutoff + 3 * HOUR) / 1000
        ));
        let counts: Vec<u64> = h.json()["buckets"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", h.text()))
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 12, "{counts:?}");
        oldest.header("etag").unwrap().to_string()
    };
    let etag = check(&server);
    // Persisted: the same after a crash.
    server.kill9();
    let server = serve_now();
    assert_eq!(check(&server), etag);
    let info: Value = server.get("/api/series/r").json();
    assert_eq!(parse_time(info["retained_from"].as_str().unwrap()), cutoff);
}
