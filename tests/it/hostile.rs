//! Clients that misbehave over HTTP: too slow with their headers or their body, or sending huge headers. The
//! server cuts them off and goes on serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{Server, TempDir, now_ms, parse_response, request};

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

/// Odd and hostile input, one regression each: every one gets a clear 4xx JSON error naming the problem (or,
/// for another spelling of a page's URL, a redirect to the one links use), stores nothing, panics nothing.
#[test]
fn odd_input_gets_a_clear_answer_and_changes_nothing() {
    let dir = TempDir::new("odd");
    let server = Server::start_fast(dir.path(), &[]);
    let t = now_ms();
    let post = |series: &str, body: &str, headers: &[(&str, &str)]| {
        let mut h = vec![("Content-Type", "application/x-ndjson")];
        h.extend_from_slice(headers);
        request(
            server.addr,
            "POST",
            &format!("/api/series/{series}/events"),
            &h,
            body.as_bytes(),
        )
        .unwrap()
    };
    let big = "123456789012345678901234567890";
    let good: String = (0..3)
        .map(|i| format!("{{\"ts\":{},\"big\":{big},\"i\":{i}}}\n", t + i))
        .collect();
    assert_eq!(post("odd", &good, &[]).status, 202);
    server.wait_sealed("odd", t + 2);

    // Values strict readers cannot read back, and a time too large for any integer type: 400, naming the
    // line and the value as sent.
    let deep = format!(
        "{{\"ts\":{t},\"a\":{}1{}}}",
        "[".repeat(130),
        "]".repeat(130)
    );
    for (body, says) in [
        (format!("{{\"ts\":{t},\"x\":1e400}}"), "line 1: "),
        (
            format!("{{\"ts\":{t}}}\n{{\"ts\":{t},\"s\":\"\\ud800\"}}"),
            "line 2: ",
        ),
        (deep, "nested more than 128 levels deep"),
        (
            "{\"ts\":18446744073709551616}".to_string(),
            "18446744073709551616 is outside",
        ),
    ] {
        let r = post("odd", &body, &[]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "malformed_event"),
            "{body:.60}"
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{message}");
    }
    // Two keys for one batch: which would a retry use?
    let r = post(
        "odd",
        &good,
        &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    assert_eq!(
        server.get("/api/series/odd").json()["events"],
        3,
        "nothing refused was stored"
    );

    // CSV: big integers as sent; columns without a name refused.
    let range = format!("from={}&to={}", t / 1000, t / 1000 + 1);
    let csv = server.get(&format!(
        "/api/series/odd/export?{range}&format=csv&fields=i,big"
    ));
    assert_eq!(
        csv.text(),
        format!("i,big\r\n0,{big}\r\n1,{big}\r\n2,{big}\r\n")
    );
    for fields in [",,,", "i,,big", ""] {
        let r = server.get(&format!(
            "/api/series/odd/export?{range}&format=csv&fields={fields}"
        ));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "bad_request"),
            "{fields:?}"
        );
    }

    // Histogram steps of any size: capped at the range, never an overflow.
    for step in ["2562047788015h", "106751991167d", "9223372036854775s"] {
        let r = server.get(&format!(
            "/api/series/odd/histogram?from=0&to=3600&step={step}"
        ));
        assert_eq!(r.status, 200, "{step}: {}", r.text());
        assert_eq!(r.json()["step_seconds"], 3600);
        assert_eq!(r.json()["buckets"].as_array().unwrap().len(), 1);
    }
    let r = server.get("/api/series/odd/histogram?from=0&to=3600&step=99999999999999999999d");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));

    // An explicit gzip;q=0 beats `*`, on every kind of answer.
    let end = chrono::DateTime::from_timestamp_millis((t / 1000 + 1) * 1000).unwrap();
    let before = format!(
        "/api/series/odd/data/before/{}",
        end.format("%Y_%m_%d_%H_%M_%S")
    );
    for encodings in ["gzip;q=0, *", "*, gzip;q=0"] {
        for url in [
            "/api/series/odd/data".to_string(),
            before.clone(),
            "/api/series/odd/data/after/1970_01_01_00_00_00".to_string(),
            format!("/api/series/odd/export?{range}"),
        ] {
            let r = request(
                server.addr,
                "GET",
                &url,
                &[("Accept-Encoding", encodings)],
                b"",
            )
            .unwrap();
            assert_eq!(r.status, 200, "{url}");
            assert_eq!(r.header("content-encoding"), None, "{encodings} {url}");
        }
    }

    // Times no URL can name: a year before 1970 or after 9999 is a 400, and no link leads past 9999.
    for url in [
        "/api/series/odd/data/before/0000_01_01_00_00_00",
        "/api/series/odd/data/after/1969_12_31_23_59_50",
        "/api/series/odd/data/before/10000_01_01_00_00_00",
    ] {
        let r = server.get(url);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "bad_request"),
            "{url}"
        );
    }
    let last = server.get("/api/series/odd/data/after/9999_12_31_23_59_59");
    assert_eq!(last.status, 200, "{}", last.text());
    assert_eq!(last.link("next"), None);
    let page = server.get("/api/series/odd/data/before/9999_12_31_23_59_59");
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.header("link").is_none_or(|l| !l.contains("+1")),
        "{:?}",
        page.header("link")
    );

    // One URL per page: other spellings of a part, or escaped characters, are sent to the one links use.
    let canonical = "/api/series/odd/data/before/2014_09_29_23_59_10/part/0";
    for spelling in [
        "/api/series/odd/data/before/2014_09_29_23_59_10/part/00",
        "/api/series/odd/data/before/2014_09_29_23_59_10/part/+0",
        "/api/series/odd/data/before/2014_09_29_23_59_10/part/%30",
        "/api/series/%6Fdd/data/before/2014_09_29_23_59_10/part/0",
        "/api/series/odd/data/before/2014%5F09_29_23_59_10/part/0",
    ] {
        let r = server.get(spelling);
        assert_eq!(r.status, 308, "{spelling}: {}", r.text());
        assert_eq!(r.header("location"), Some(canonical), "{spelling}");
    }
    let r = server.get("/api/series/odd/data/before/2014_09_29_23_59_10/part/1x");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));

    // Requests the HTTP layer refuses before any handler get JSON errors too.
    for (raw, status, code) in [
        ("GARBAGE\r\n\r\n".to_string(), 400, "bad_request"),
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".to_string(),
            400,
            "bad_request",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)),
            414,
            "uri_too_long",
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
                "x".repeat(1 << 20)
            ),
            431,
            "headers_too_large",
        ),
    ] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(raw.as_bytes());
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let r = parse_response(&answer).unwrap_or_else(|e| panic!("{e}: {raw:.40}"));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{raw:.40}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(server.get("/healthz").status, 200);
}
