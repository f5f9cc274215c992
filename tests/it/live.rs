//! Live tail: `Prefer: wait=N` on the head and `after` pages holds a request while there is nothing new, and
//! lets it go when events are acknowledged, when the wait ends, and when the server stops.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Response, Server, TempDir, now_ms, request};

fn held_get(server: &Server, path: &str, etag: Option<&str>, wait: u32) -> (Response, Instant) {
    let prefer = format!("wait={wait}");
    let mut headers = vec![("Prefer", prefer.as_str())];
    if let Some(etag) = etag {
        headers.push(("If-None-Match", etag));
    }
    let res = request(server.addr, "GET", path, &headers, b"").unwrap();
    (res, Instant::now())
}

fn post_now(server: &Server, series: &str) -> Instant {
    let body = format!("{{\"ts\":{},\"live\":true}}\n", now_ms());
    let res = server.post_ndjson(&format!("/api/series/{series}/events"), &body);
    assert_eq!(res.status, 202, "{}", res.text());
    Instant::now()
}

/// Sends the series' first event; returns the head's ETag.
fn first_event(server: &Server) -> String {
    post_now(server, "s");
    let head = server.get("/api/series/s/data");
    head.header("etag").unwrap().to_string()
}

#[test]
fn a_held_head_answers_within_100_ms_of_an_ingest() {
    let dir = TempDir::new("live");
    let server = Server::start(dir.path(), &["--chunk-seconds", "1"]);
    let etag = first_event(&server);

    thread::scope(|scope| {
        let held = scope.spawn(|| held_get(&server, "/api/series/s/data", Some(&etag), 20));
        thread::sleep(Duration::from_millis(500));
        assert!(!held.is_finished(), "the request was not held");
        let acked = post_now(&server, "s");
        let (res, answered) = held.join().unwrap();
        assert_eq!(res.status, 200, "{}", res.text());
        assert_ne!(res.header("etag"), Some(etag.as_str()));
        assert_eq!(res.header("preference-applied"), Some("wait=20"));
        let late = answered.saturating_duration_since(acked);
        assert!(
            late < Duration::from_millis(100),
            "answered {late:?} after the ack"
        );
    });

    // An `after` page with nothing at or after T waits for the first event there.
    let t = now_ms() / 1000 * 1000 + 1000;
    let path = format!(
        "/api/series/s/data/after/{}",
        hourglass::time::format_stamp(t)
    );
    thread::scope(|scope| {
        let held = scope.spawn(|| held_get(&server, &path, None, 20));
        thread::sleep(Duration::from_millis(300));
        assert!(!held.is_finished(), "an empty after page was not held");
        // Wait for T on the clock, then send an event at or after it.
        while now_ms() < t {
            thread::sleep(Duration::from_millis(50));
        }
        let acked = post_now(&server, "s");
        let (res, answered) = held.join().unwrap();
        assert_eq!(res.json()["count"], 1, "{}", res.text());
        assert!(answered.saturating_duration_since(acked) < Duration::from_millis(100));
    });
}

#[test]
fn the_wait_is_bounded_and_so_are_held_requests() {
    let dir = TempDir::new("live-bound");
    let server = Server::start(dir.path(), &["--max-held-requests", "1"]);
    let etag = first_event(&server);

    let start = Instant::now();
    let (res, done) = held_get(&server, "/api/series/s/data", Some(&etag), 1);
    let took = done - start;
    assert_eq!(res.status, 304);
    assert_eq!(res.header("preference-applied"), Some("wait=1"));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // Over 60 s is read as 60 s; while one request is held, a second is answered at once.
    thread::scope(|scope| {
        let first = scope.spawn(|| held_get(&server, "/api/series/s/data", Some(&etag), 600));
        thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let (res, done) = held_get(&server, "/api/series/s/data", Some(&etag), 30);
        assert_eq!(res.status, 304);
        assert_eq!(res.header("preference-applied"), None);
        assert!(done - start < Duration::from_millis(500));
        post_now(&server, "s");
        let (res, _) = first.join().unwrap();
        assert_eq!(
            (res.status, res.header("preference-applied")),
            (200, Some("wait=60"))
        );
    });
}

#[test]
fn stopping_the_server_answers_held_requests() {
    let dir = TempDir::new("live-stop");
    let server = Server::start(dir.path(), &[]);
    let etag = first_event(&server);
    let addr = server.addr;
    let held = thread::spawn(move || {
        request(
            addr,
            "GET",
            "/api/series/s/data",
            &[("Prefer", "wait=60"), ("If-None-Match", &etag)],
            b"",
        )
        .unwrap()
    });
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    server.stop();
    let res = held.join().unwrap();
    assert_eq!(res.status, 304);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
