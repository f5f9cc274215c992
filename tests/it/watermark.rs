//! The sealed watermark: persisted only when something was sealed or an answer needs it (an idle series costs
//! no fsyncs), never below an event that the log still holds, and named as the problem when the clock went back.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::support::{FAST, Server, TempDir, now_ms, parse_time, request};

#[test]
fn idle_series_are_not_rewritten_every_chunk_width() {
    let dir = TempDir::new("idle");
    let server = Server::start_fast(dir.path(), &[]);
    let t = now_ms();
    let n = 50;
    for k in 0..n {
        let r = server.post_ndjson(
            &format!("/api/series/s{k}/events"),
            &format!("{{\"ts\":{t}}}\n"),
        );
        assert_eq!(r.status, 202);
    }
    for k in 0..n {
        server.wait_sealed(&format!("s{k}"), t);
    }
    // The settings files as they are once the one chunk of each is sealed (a rename gives a new inode).
    let files = || -> Vec<(u64, i64)> {
        (0..n)
            .map(|k| {
                let m = fs::metadata(dir.path().join(format!("s{k}/series.json"))).unwrap();
                (m.ino(), m.mtime_nsec())
            })
            .collect()
    };
    let before = files();
    // Four chunk widths and lateness windows pass: the old sealer rewrote and fsync'd every file each second.
    std::thread::sleep(Duration::from_millis(4_000));
    assert_eq!(
        files(),
        before,
        "idle series' settings files were rewritten"
    );
    // The sealer kept up all the same: no lag builds for idle series.
    let metrics = server.get("/metrics").text();
    let lag: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hourglass_seal_lag_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(lag < 3.5, "seal lag {lag} s on idle series");
    // An answer that needs the watermark past the idle stretch gets it persisted first: final, and durable.
    let to = (now_ms() - 2_500) / 1000;
    let r = server.get(&format!("/api/series/s0/export?from={}&to={to}", t / 1000));
    assert!(
        r.header("cache-control").unwrap().contains("immutable"),
        "{:?}",
        r.headers
    );
    let persisted: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("s0/series.json")).unwrap()).unwrap();
    assert!(persisted["sealed"].as_i64().unwrap() >= to * 1000);
    server.kill9();
    let server = Server::start_fast(dir.path(), &[]);
    let again = server.get(&format!("/api/series/s0/export?from={}&to={to}", t / 1000));
    assert_eq!(
        (again.header("etag"), &again.body),
        (r.header("etag"), &r.body)
    );
}

#[test]
fn a_series_remade_from_the_log_keeps_every_event_in_it() {
    let dir = TempDir::new("remade");
    // Nothing seals for an hour: the events are in the log only.
    let server = Server::start(dir.path(), &["--chunk-seconds", "1", "--lateness", "3600"]);
    let t = now_ms() - 5_000;
    let r = server.post_ndjson(
        "/api/series/lost/events",
        &format!("{{\"ts\":{t}}}\n{{\"ts\":{}}}\n", t + 1),
    );
    assert_eq!(r.status, 202);
    server.kill9();
    // The folder is gone, or was never made: the sealer makes it at its next pass, which the kill may beat.
    let _ = fs::remove_dir_all(dir.path().join("lost"));
    let server = Server::start_fast(dir.path(), &[]);
    let info = server.wait_sealed("lost", t + 1);
    assert_eq!(info["events"], 2, "{info}");
    assert!(parse_time(info["sealed_watermark"].as_str().unwrap()) > t);
}

#[test]
fn a_watermark_ahead_of_the_clock_is_named_and_says_when_it_clears() {
    let dir = TempDir::new("clock");
    let day = 86_400_000i64;
    // A day ahead: events get the server's time, and a day's worth of chunks is sealed.
    let ahead = Server::start_fast(dir.path(), &["--clock-offset-ms", &day.to_string()]);
    assert_eq!(
        ahead
            .post_ndjson("/api/series/c/events", "{\"v\":1}\n")
            .status,
        202
    );
    ahead.wait_sealed("c", now_ms() + day - 1_000);
    ahead.stop();

    let log = dir.path().join("server.log");
    let server = Server::start_logged(dir.path(), FAST, &log);
    assert!(
        server.log().contains("ahead of the clock"),
        "warned at start: {}",
        server.log()
    );
    let info = server.get("/api/series/c").json();
    let seconds = info["watermark_ahead_of_clock_seconds"].as_i64().unwrap();
    assert!((86_300..=86_400).contains(&seconds), "{info}");
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains("ahead of the clock"),
        "{}",
        ready.text()
    );

    // An event the server stamps itself is refused for the clock, not as late, with when it clears.
    let r = server.post_ndjson("/api/series/c/events", "{\"v\":2}\n");
    assert_eq!((r.status, r.error_code().as_str()), (503, "clock_behind"));
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((86_300..=86_400).contains(&retry), "Retry-After {retry}");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("ahead of the server clock"), "{message}");
    // Other series are not affected.
    assert_eq!(
        server
            .post_ndjson("/api/series/other/events", "{\"v\":3}\n")
            .status,
        202
    );
    let other = request(server.addr, "GET", "/api/series/other", &[], b"")
        .unwrap()
        .json();
    assert!(
        other.get("watermark_ahead_of_clock_seconds").is_none(),
        "{other}"
    );
}
