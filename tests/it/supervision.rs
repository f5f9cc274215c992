//! Supervision and bounds: a store thread that dies takes the process down at once (for a supervisor to
//! restart it, nothing acknowledged lost) rather than leave it up and refusing; stopping is bounded by
//! `--shutdown-timeout` whatever the clients do; connections are bounded by `--max-connections`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::support::{FAST, Server, TempDir, now_ms, request};

fn assert_aborted(server: &mut Server, thread: &str) {
    let status = server
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running after the {thread} thread died"));
    assert_eq!(status.signal(), Some(6), "not aborted: {status}");
    let log = server.log();
    assert!(
        log.contains(&format!("the {thread} thread panicked")),
        "{log}"
    );
}

#[test]
fn a_dead_commit_thread_stops_the_process_and_loses_nothing_acknowledged() {
    let dir = TempDir::new("commit-dies");
    // A first server acknowledges a batch and is killed before sealing it.
    let server = Server::start(dir.path(), &["--chunk-seconds", "1", "--lateness", "3600"]);
    let t = now_ms();
    let r = server.post_ndjson("/api/series/s/events", &format!("{{\"ts\":{t}}}\n"));
    assert_eq!(r.status, 202);
    server.kill9();
    // The next one's commit thread dies at its first batch: the batch is not answered 202, the process ends.
    let log = dir.path().join("server.log");
    let args = [
        "--chunk-seconds",
        "1",
        "--lateness",
        "3600",
        "--panic-in",
        "commit",
    ];
    let mut server = Server::start_logged(dir.path(), &args, &log);
    let r = request(
        server.addr,
        "POST",
        "/api/series/s/events",
        &[("Content-Type", "application/x-ndjson")],
        format!("{{\"ts\":{t}}}\n").as_bytes(),
    );
    assert!(r.as_ref().map_or(true, |r| r.status != 202), "{r:?}");
    assert_aborted(&mut server, "commit");
    // Restarted, as a supervisor would: what was acknowledged is there.
    let server = Server::start_fast(dir.path(), &[]);
    assert_eq!(server.get("/api/series/s").json()["events"], 1);
}

#[test]
fn a_dead_seal_thread_stops_the_process() {
    let dir = TempDir::new("seal-dies");
    let log = dir.path().join("server.log");
    let args: Vec<&str> = FAST.iter().copied().chain(["--panic-in", "seal"]).collect();
    let mut server = Server::start_logged(dir.path(), &args, &log);
    let r = server.post_ndjson(
        "/api/series/s/events",
        &format!("{{\"ts\":{}}}\n", now_ms()),
    );
    assert_eq!(r.status, 202);
    assert_aborted(&mut server, "seal");
}

#[test]
fn stopping_is_bounded_by_the_shutdown_timeout() {
    let dir = TempDir::new("shutdown");
    let args = ["--request-timeout", "60", "--shutdown-timeout", "1"];
    let mut server = Server::start(dir.path(), &args);
    // A client that sends a tenth of its body and then nothing: its request would hold the server for a minute.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(
        b"POST /api/series/s/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n\
          Content-Length: 1000\r\n\r\n{\"ts\":1",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server
        .wait_exit(Duration::from_secs(15))
        .expect("the server waited for the slow client");
    let took = asked.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn connections_past_the_limit_wait_for_one_to_close() {
    let dir = TempDir::new("maxconn");
    let server = Server::start(dir.path(), &["--max-connections", "2"]);
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // A third connection is taken by the kernel but not served while two are open.
    let mut third = TcpStream::connect(server.addr).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        third.read(&mut buf).is_err(),
        "served past the connection limit"
    );
    drop(idle);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert_eq!(server.get("/healthz").status, 200);
}
