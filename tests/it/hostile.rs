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
    let server = Server::start(dir.path(), &["--request-timeout", "1"]);

    // Headers that never end: the connection is closed after the timeout.
    let (said, took) = stall(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    assert!(!said.contains("200 OK"), "{said}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
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
