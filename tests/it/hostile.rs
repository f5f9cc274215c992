//! Clients that misbehave over HTTP: too slow with their headers or their body, or sending huge headers. The
//! server cuts them off and goes on serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{Server, TempDir, request};

/// Sends `head` (and no more), then reads until the server answers or closes: what it said, and when.
fn stall(server: &Server, head: &str) -> (String, Duration) {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn slow_clients_are_cut_off_and_huge_headers_refused() {
    let dir = TempDir::new("hostile");
    // One thread for requests: the stalled clients below must not hold it from anyone else.
    let server = Server::start(dir.path(), &["--request-timeout", "2", "--threads", "1"]);

    // Headers that never end: the connection is closed after the timeout.
    let (said, took) = stall(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    assert!(!said.contains("200 OK"), "{said}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // The same on a connection kept alive: each request's headers get the whole timeout, counted from when the
    // server waits for them, not from the first request's.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let get = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(get.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    s.write_all(get.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    // 2.4 s in: past the first wait's deadline (2 s), 0.8 s before the second's.
    let stalled = Instant::now();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let (said, took) = (String::from_utf8_lossy(&answer), stalled.elapsed());
    assert_eq!(said.matches("200 OK").count(), 2, "{said}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // A body that never arrives: 408 with a JSON error, nothing stored.
    let (said, took) = stall(
        &server,
        "POST /api/series/s/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n\
         Content-Length: 100\r\n\r\n{\"ts\":1",
    );
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(said.contains("\"request_timeout\""), "{said}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A megabyte of header: refused before any handler runs.
    let huge = "x".repeat(1 << 20);
    let res = request(server.addr, "GET", "/healthz", &[("X-Huge", &huge)], b"");
    assert!(
        res.as_ref().map_or(true, |r| r.status == 431),
        "{:?}",
        res.map(|r| r.status)
    );

    // Everyone else is served as before.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/api/series/s").status, 404);
}

#[test]
fn hostile_series_names_never_reach_the_file_system() {
    let parent = TempDir::new("names");
    let data = parent.path().join("data");
    let server = Server::start(&data, &[]);
    let names = [
        "..",
        ".",
        "%2e%2e",
        "%2E%2E%2F%2E%2E%2Fescaped",
        "..%2F..%2Fescaped",
        "%252e%252e",
        "a%2Fb",
        "a%5Cb",
        "a%00b",
        "%00",
        "_wal",
        ".hidden",
        "-dash",
        "Upper",
        "%C3%A9t%C3%A9",
        "%E2%80%AE",
        "a%20b",
        "%7E",
        &"n".repeat(129),
    ];
    let paths = |n: &str| {
        [
            ("POST", format!("/api/series/{n}/events")),
            ("PUT", format!("/api/series/{n}")),
            ("GET", format!("/api/series/{n}")),
            ("GET", format!("/api/series/{n}/data")),
            (
                "GET",
                format!("/api/series/{n}/data/before/2014_09_29_00_00_00"),
            ),
            ("GET", format!("/api/series/{n}/export?from=0&to=1")),
            ("GET", format!("/api/series/{n}/histogram?from=0&to=3600")),
        ]
    };
    let event = format!("{{\"ts\":{}}}\n", crate::support::now_ms());
    for name in names {
        for (method, path) in paths(name) {
            let headers = [("Content-Type", "application/x-ndjson")];
            let r = request(server.addr, method, &path, &headers, event.as_bytes()).unwrap();
            assert!(
                matches!(r.status, 400 | 404),
                "{method} {path}: {} {}",
                r.status,
                r.text()
            );
            if r.status == 400 {
                assert_eq!(r.error_code(), "bad_request", "{method} {path}");
            }
        }
    }
    // Raw bytes in the request line that are not a valid path are refused by the HTTP layer.
    for raw in [
        "/api/series/\u{e9}/events",
        "/api/series/a b/events",
        "/api/series/a\\b/events",
    ] {
        let r = request(server.addr, "POST", raw, &[], event.as_bytes());
        assert!(
            r.as_ref().map_or(true, |r| matches!(r.status, 400 | 404)),
            "{raw}: {r:?}"
        );
    }
    assert_eq!(server.get("/healthz").status, 200);
    server.stop();

    let listing = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        listing(parent.path()),
        ["data"],
        "something was written beside the data folder"
    );
    let series: Vec<String> = listing(&data)
        .into_iter()
        .filter(|n| !n.starts_with(['_', '.']))
        .collect();
    assert!(
        series.is_empty(),
        "series created from hostile names: {series:?}"
    );
}
