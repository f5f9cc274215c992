//! Ingest over HTTP: the round trip into hour archives, and every way a batch is refused.

use std::io::Write;

use serde_json::{Value, json};

use crate::support::{FAST, Server, TempDir, now_ms, request, zcat_series};

#[test]
fn events_come_back_from_zcat_in_time_order_ties_in_arrival_order() {
    let dir = TempDir::new("roundtrip");
    let server = Server::start(dir.path(), FAST);
    let base = now_ms() + 500;
    // Three chunks' worth, sent out of order and in several batches, with ties and a missing ts.
    let batches = [
        vec![
            json!({"ts": base + 2100, "n": 0}),
            json!({"ts": base, "n": 1}),
        ],
        vec![
            json!({"ts": base + 1000, "n": 2}),
            json!({"ts": base, "n": 3, "nested": {"ts": 1}}),
        ],
        vec![
            json!({"ts": crate::support::iso(base + 2100), "n": 4}),
            json!({"ts": base + 50, "n": 5}),
        ],
    ];
    for b in &batches {
        let body: String = b.iter().map(|e| format!("{e}\n")).collect();
        let r = server.post_ndjson("/api/series/rt/events", &body);
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(r.json()["accepted"], b.len());
    }
    // An array body, and an event without ts (gets the receive time).
    let r = request(
        server.addr,
        "POST",
        "/api/series/rt/events",
        &[("Content-Type", "application/json")],
        format!("[{{\"ts\":{},\"n\":6}}, {{\"n\":7}}]", base + 1500).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());

    let info = server.wait_sealed("rt", base + 2100);
    assert_eq!(info["events"], 8);
    assert_eq!(info["chunk_seconds"], 1);
    let lines = zcat_series(&dir.path().join("rt"));
    let order: Vec<i64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    // n=7 was received at about `base - 500`, before everything else.
    assert_eq!(order, [7, 1, 3, 5, 2, 6, 0, 4]);
    // Lines are stored as sent.
    assert!(lines.contains(&json!({"ts": base, "n": 3, "nested": {"ts": 1}}).to_string()));
    let seven: Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(
        seven["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{seven}"
    );
}

#[test]
fn gzip_bodies_and_the_default_series_short_url() {
    let dir = TempDir::new("gzip");
    let server = Server::start(dir.path(), FAST);
    let t = now_ms();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    write!(enc, "{{\"ts\":{t},\"g\":1}}\n{{\"ts\":{t},\"g\":2}}\n").unwrap();
    let body = enc.finish().unwrap();
    let r = request(
        server.addr,
        "POST",
        "/api/data",
        &[
            ("Content-Type", "application/x-ndjson"),
            ("Content-Encoding", "gzip"),
        ],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({"accepted": 2, "series": "default"}));
    server.wait_sealed("default", t);
    assert_eq!(zcat_series(&dir.path().join("default")).len(), 2);
    let list = server.get("/api/series").json();
    assert_eq!(list["series"][0]["name"], "default");
}

#[test]
fn refused_batches_get_the_right_status_and_store_nothing() {
    let dir = TempDir::new("errors");
    let server = Server::start_fast(
        dir.path(),
        &[
            "--write-token",
            "sesame",
            "--max-body-bytes",
            "2000",
            "--max-future",
            "60",
        ],
    );
    let auth = ("Authorization", "Bearer sesame");
    let nd = ("Content-Type", "application/x-ndjson");
    let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        request(server.addr, "POST", path, headers, body).unwrap()
    };
    let t = now_ms();
    let good = format!("{{\"ts\":{t},\"ok\":1}}\n");

    let r = post("/api/series/e/events", &[nd], good.as_bytes());
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = post(
        "/api/series/e/events",
        &[nd, ("Authorization", "Bearer nope")],
        good.as_bytes(),
    );
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));

    let r = post(
        "/api/series/e/events",
        &[nd, auth],
        format!("{good}{{\"ts\":{t},oops}}\n").as_bytes(),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "malformed_event")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 2: "),
        "{}",
        r.text()
    );

    let r = post(
        "/api/series/e/events",
        &[("Content-Type", "text/csv"), auth],
        b"a,b",
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (415, "unsupported_media_type")
    );
    let r = post(
        "/api/series/e/events",
        &[nd, ("Content-Encoding", "br"), auth],
        good.as_bytes(),
    );
    assert_eq!(r.status, 415);

    let big = good.repeat(100);
    let r = post("/api/series/e/events", &[nd, auth], big.as_bytes());
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large")
    );
    // A small gzip body that inflates past the limit is refused at the limit.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b' '; 1 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 2000);
    let r = post(
        "/api/series/e/events",
        &[nd, ("Content-Encoding", "gzip"), auth],
        &bomb,
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large")
    );
    let r = post(
        "/api/series/e/events",
        &[nd, ("Content-Encoding", "gzip"), auth],
        b"not gzip",
    );
    assert_eq!(r.status, 400);

    let late = format!("{good}{{\"ts\":{},\"late\":1}}\n", t - 60_000);
    let r = post("/api/series/e/events", &[nd, auth], late.as_bytes());
    assert_eq!((r.status, r.error_code().as_str()), (422, "late_event"));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with("line 2: ") && message.contains("sealed watermark"),
        "{message}"
    );
    let future = format!("{good}{{\"ts\":{},\"future\":1}}\n", t + 120_000);
    let r = post("/api/series/e/events", &[nd, auth], future.as_bytes());
    assert_eq!((r.status, r.error_code().as_str()), (422, "future_event"));

    let r = post("/api/series/Bad..Name/events", &[nd, auth], good.as_bytes());
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let r = server.get("/api/series/nothing");
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_series"));
    let r = server.get("/no/such/route");
    assert_eq!(r.status, 404);
    let r = request(server.addr, "DELETE", "/api/series/e", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );

    // Width: created with PUT, 200 again with the same width, 409 with another, 400 for a bad one.
    let put = |body: &str| {
        request(
            server.addr,
            "PUT",
            "/api/series/w",
            &[auth],
            body.as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(put("{\"chunk_seconds\": 60}").status, 201);
    assert_eq!(put("{\"chunk_seconds\": 60}").status, 200);
    let r = put("{\"chunk_seconds\": 10}");
    assert_eq!((r.status, r.error_code().as_str()), (409, "width_conflict"));
    assert_eq!(put("{\"chunk_seconds\": 7}").status, 400);
    assert_eq!(put("{\"chunk_secs\": 10}").status, 400);
    assert_eq!(server.get("/api/series/w").json()["chunk_seconds"], 60);

    // Only the one good batch is stored.
    let r = post("/api/series/e/events", &[nd, auth], good.as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    server.wait_sealed("e", t);
    assert_eq!(
        zcat_series(&dir.path().join("e")),
        vec![good.trim_end().to_string()]
    );
}

#[test]
fn a_full_backlog_answers_503_with_retry_after() {
    let dir = TempDir::new("backlog");
    // Nothing seals for an hour, and memory holds at most 4 KB of events.
    let server = Server::start(
        dir.path(),
        &["--lateness", "3600", "--max-backlog-bytes", "4096"],
    );
    let t = now_ms();
    let batch: String = (0..20)
        .map(|i| format!("{{\"ts\":{t},\"i\":{i},\"pad\":\"........\"}}\n"))
        .collect();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = server.post_ndjson("/api/series/b/events", &batch);
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("1"));
            assert_eq!(r.error_code(), "overloaded");
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.starts_with(&[202]) && statuses.ends_with(&[503]),
        "{statuses:?}"
    );
    let accepted = statuses.iter().filter(|&&s| s == 202).count() as u64;
    assert_eq!(server.get("/api/series/b").json()["events"], accepted * 20);
}

#[test]
fn bodies_past_the_memory_budget_are_refused_at_once_with_503() {
    let dir = TempDir::new("intake");
    let server = Server::start(dir.path(), &["--max-inflight-bytes", "100000"]);
    let t = now_ms();
    let line = |i: usize| format!("{{\"ts\":{t},\"i\":{i},\"pad\":\"{}\"}}\n", ".".repeat(60));
    let big: String = (0..1_000).map(line).collect(); // ~90 KB of the 100 KB budget
    let small: String = (0..200).map(line).collect(); // ~18 KB
    assert!(big.len() < 100_000 && big.len() + small.len() > 100_000);

    // A slow client holds room for its whole declared body while it sends it.
    let mut slow = std::net::TcpStream::connect(server.addr).unwrap();
    write!(
        slow,
        "POST /api/series/m/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{}",
        big.len(),
        &big[..10]
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let refused = server.post_ndjson("/api/series/m/events", &small);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.error_code(), "overloaded");
    assert_eq!(refused.header("retry-after"), Some("1"));

    slow.write_all(&big.as_bytes()[10..]).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut slow, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // The room is given back with the answer; a body larger than the whole budget still fits when alone.
    assert_eq!(
        server.post_ndjson("/api/series/m/events", &small).status,
        202
    );
    let huge: String = (0..1_500).map(line).collect();
    assert_eq!(
        server.post_ndjson("/api/series/m/events", &huge).status,
        202
    );
    assert_eq!(server.get("/api/series/m").json()["events"], 2_700);
}

#[test]
fn a_retry_with_the_same_idempotency_key_is_stored_once_also_after_a_crash() {
    let dir = TempDir::new("idempotency");
    // Keys are kept while a retry could still be accepted: until the batch's chunk closes (lateness 60 s).
    let start = || Server::start(dir.path(), &["--lateness", "60"]);
    let server = start();
    let t = now_ms();
    let body: String = (0..3)
        .map(|i| format!("{{\"ts\":{t},\"i\":{i}}}\n"))
        .collect();
    let post = |server: &Server, series: &str, key: &str, body: &str| {
        let headers = [
            ("Content-Type", "application/x-ndjson"),
            ("Idempotency-Key", key),
        ];
        let path = format!("/api/series/{series}/events");
        request(server.addr, "POST", &path, &headers, body.as_bytes()).unwrap()
    };
    let events = |server: &Server, series: &str| {
        server.get(&format!("/api/series/{series}")).json()["events"].clone()
    };

    let first = post(&server, "k", "batch-1", &body);
    assert_eq!(
        (first.status, first.json()),
        (202, json!({"accepted": 3, "series": "k"}))
    );
    let again = post(&server, "k", "batch-1", &body);
    assert_eq!(
        (again.status, again.json()),
        (202, json!({"accepted": 3, "series": "k", "replayed": true}))
    );
    let other = post(&server, "k", "batch-1", &body.replace("\"i\":2", "\"i\":9"));
    assert_eq!(other.status, 422, "{}", other.text());
    assert_eq!(other.error_code(), "idempotency_key_reused");
    // Keys belong to their series.
    assert_eq!(
        post(&server, "k2", "batch-1", &body).json()["replayed"],
        Value::Null
    );
    for bad in ["", "caf\u{e9}", &"k".repeat(256)] {
        let r = post(&server, "k", bad, &body);
        assert_eq!(
            (r.status, r.error_code()),
            (400, "bad_request".to_string()),
            "{bad:?}"
        );
    }

    // Several copies of a new batch at once: stored once, every copy acknowledged.
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let (addr, body) = (server.addr, body.clone());
            std::thread::spawn(move || {
                let headers = [
                    ("Content-Type", "application/x-ndjson"),
                    ("Idempotency-Key", "batch-2"),
                ];
                request(
                    addr,
                    "POST",
                    "/api/series/k/events",
                    &headers,
                    body.as_bytes(),
                )
                .unwrap()
            })
        })
        .collect();
    let answers: Vec<Value> = copies
        .into_iter()
        .map(|c| c.join().unwrap().json())
        .collect();
    assert!(answers.iter().all(|a| a["accepted"] == 3), "{answers:?}");
    assert_eq!(
        answers.iter().filter(|a| a["replayed"].is_null()).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(events(&server, "k"), 6);

    // The keys are in the log: known again after a crash.
    server.kill9();
    let server = start();
    for key in ["batch-1", "batch-2"] {
        let r = post(&server, "k", key, &body);
        assert_eq!(
            (r.status, &r.json()["replayed"]),
            (202, &json!(true)),
            "{key}"
        );
    }
    assert_eq!(events(&server, "k"), 6);
}

/// A refused request has no side effect: a first batch that is refused (late, from the future, badly formed),
/// or an empty one, leaves no series behind, listed or on disk.
#[test]
fn a_refused_or_empty_first_batch_creates_no_series() {
    let dir = TempDir::new("noseries");
    let server = Server::start_fast(dir.path(), &[]);
    let t = now_ms();
    let bodies = [
        (
            format!("{{\"ts\":{t}}}\n{{\"ts\":{}}}\n", t - 600_000),
            422,
            "late_event",
        ),
        (
            format!("{{\"ts\":{}}}\n", t + 3_600_000),
            422,
            "future_event",
        ),
        ("{\"ts\":1}\n{oops\n".to_string(), 400, "malformed_event"),
    ];
    for (i, (body, status, code)) in bodies.iter().enumerate() {
        let r = server.post_ndjson(&format!("/api/series/n{i}/events"), body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (*status, *code),
            "{body}"
        );
    }
    for body in ["", "\n  \n", "[]"] {
        let r = request(
            server.addr,
            "POST",
            "/api/series/empty/events",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 202, "{body:?}: {}", r.text());
        assert_eq!(r.json()["accepted"], 0);
    }
    for name in ["n0", "n1", "n2", "empty"] {
        let r = server.get(&format!("/api/series/{name}"));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "unknown_series"),
            "{name}"
        );
        assert!(!dir.path().join(name).exists(), "{name} has a folder");
    }
    assert_eq!(
        server.get("/api/series").json()["series"],
        serde_json::json!([])
    );
    // The same series then takes a good batch, and exists from then on, also after a restart.
    assert_eq!(
        server
            .post_ndjson("/api/series/n0/events", &format!("{{\"ts\":{t}}}\n"))
            .status,
        202
    );
    // Its folder is made off the ingest path, within a pass of the sealer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !dir.path().join("n0/series.json").is_file() {
        assert!(std::time::Instant::now() < deadline, "no folder for n0");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.stop();
    let server = Server::start_fast(dir.path(), &[]);
    assert_eq!(server.get("/api/series/n0").json()["events"], 1);
}

#[test]
fn shippers_event_times_are_read_where_they_put_them() {
    let tmp = TempDir::new("shippers");
    let server = Server::start(tmp.path(), FAST);
    let t = now_ms() / 1000 * 1000 + 200;
    let iso = |t: i64| {
        chrono::DateTime::from_timestamp_millis(t)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    // Vector's http sink (a JSON array, `timestamp`), Fluent Bit's json (float seconds in `date`), Beats
    // (`@timestamp`), each in its own chunk a second apart, sent newest first.
    let vector = format!(r#"[{{"message":"v","timestamp":"{}"}}]"#, iso(t + 2_000));
    let fluent = format!(r#"[{{"date":{}.{},"log":"f"}}]"#, (t + 1_000) / 1000, 200);
    let beats = format!("{{\"@timestamp\":\"{}\",\"message\":\"b\"}}\n", iso(t));
    for (body, kind) in [
        (vector.as_str(), "application/json"),
        (fluent.as_str(), "application/json"),
        (beats.as_str(), "application/x-ndjson"),
    ] {
        let r = request(
            server.addr,
            "POST",
            "/api/series/sh/events",
            &[("Content-Type", kind)],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 202, "{body}: {}", r.text());
    }
    // A field and unit named by the request; a bad unit is refused and stores nothing.
    let named = format!("{{\"at\":{},\"message\":\"n\"}}\n", (t + 3_000) * 1000);
    let path = "/api/series/sh/events?time_field=at&time_unit=us";
    let r = request(
        server.addr,
        "POST",
        path,
        &[("Content-Type", "application/x-ndjson")],
        named.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let bad = request(
        server.addr,
        "POST",
        "/api/series/sh/events?time_unit=days",
        &[("Content-Type", "application/x-ndjson")],
        named.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "bad_request")
    );
    assert!(
        bad.text().contains("time_unit \\\"days\\\""),
        "{}",
        bad.text()
    );

    let (from, to) = (t / 1000 - 5, t / 1000 + 10);
    let export = server.get(&format!("/api/series/sh/export?from={from}&to={to}"));
    assert_eq!(export.status, 200, "{}", export.text());
    let lines: Vec<Value> = export
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String)> = lines
        .iter()
        .map(|v| {
            (
                v["ts"].as_str().unwrap().to_string(),
                v["message"]
                    .as_str()
                    .or(v["log"].as_str())
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        (t, "b"),
        (t + 1_000, "f"),
        (t + 2_000, "v"),
        (t + 3_000, "n"),
    ]
    .iter()
    .map(|(t, m)| (iso(*t), m.to_string()))
    .collect();
    assert_eq!(got, want);
    // The lines are as sent, with the time written in first.
    assert_eq!(
        export.text().lines().next().unwrap(),
        format!("{{\"ts\":\"{}\",{}", iso(t), &beats.trim_end()[1..])
    );
    // Each is in the chunk of its time.
    let page = server.get(&format!(
        "/api/series/sh/data/before/{}",
        chrono::DateTime::from_timestamp_millis(t / 1000 * 1000 + 1000)
            .unwrap()
            .format("%Y_%m_%d_%H_%M_%S")
    ));
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.json()["count"], 1, "{}", page.text());
    assert_eq!(page.json()["events"][0]["message"], "b");
}

#[test]
fn a_series_keeps_where_its_events_have_their_time_across_restarts() {
    let tmp = TempDir::new("series-time");
    let t = now_ms() / 1000 * 1000 + 300;
    let put = |server: &Server, body: &str| {
        request(server.addr, "PUT", "/api/series/app", &[], body.as_bytes()).unwrap()
    };
    let server = Server::start(tmp.path(), FAST);
    let r = put(&server, r#"{"time_field": "http.at", "time_unit": "s"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        (
            r.json()["time_field"].as_str(),
            r.json()["time_unit"].as_str()
        ),
        (Some("http.at"), Some("s"))
    );
    // Refused settings change nothing.
    for bad in [
        r#"{"time_field": ""}"#,
        r#"{"time_unit": "days"}"#,
        r#"{"time_field": 5}"#,
    ] {
        let r = put(&server, bad);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "bad_request"),
            "{bad}"
        );
        assert!(r.text().contains("time_"), "{bad}: {}", r.text());
    }
    server.kill9();

    let server = Server::start(tmp.path(), FAST);
    let info = server.get("/api/series/app").json();
    assert_eq!(
        (info["time_field"].as_str(), info["time_unit"].as_str()),
        (Some("http.at"), Some("s"))
    );
    let secs = |t: i64| format!("{}.{:03}", t / 1000, t % 1000);
    let nested = format!("{{\"http\":{{\"at\":{}}},\"m\":\"nested\"}}\n", secs(t));
    assert_eq!(
        server.post_ndjson("/api/series/app/events", &nested).status,
        202
    );
    // The request's own setting wins over the series'.
    let own = format!("{{\"at\":{},\"m\":\"own\"}}\n", t + 1_000);
    let r = server.post_ndjson("/api/series/app/events?time_field=at&time_unit=ms", &own);
    assert_eq!(r.status, 202, "{}", r.text());
    // Back to the default: the shippers' fields.
    let r = put(&server, r#"{"time_field": null}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().get("time_field").is_none(), "{}", r.text());
    let vector = format!("{{\"timestamp\":{},\"m\":\"default\"}}\n", t + 2_000);
    assert_eq!(
        server.post_ndjson("/api/series/app/events", &vector).status,
        202
    );

    let (from, to) = (t / 1000 - 5, t / 1000 + 10);
    let export = server.get(&format!("/api/series/app/export?from={from}&to={to}"));
    assert_eq!(export.status, 200, "{}", export.text());
    let got: Vec<(i64, String)> = export
        .text()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let ts = chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap()).unwrap();
            (ts.timestamp_millis(), v["m"].as_str().unwrap().to_string())
        })
        .collect();
    let want: Vec<(i64, String)> = [(t, "nested"), (t + 1_000, "own"), (t + 2_000, "default")]
        .iter()
        .map(|(t, m)| (*t, m.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn zstd_bodies_are_taken_and_bad_ones_refused_storing_nothing() {
    let dir = TempDir::new("zstd");
    let server = Server::start(
        dir.path(),
        &[
            "--chunk-seconds",
            "1",
            "--lateness",
            "1",
            "--max-body-bytes",
            "100000",
        ],
    );
    let post = |body: &[u8]| {
        let headers = [
            ("Content-Type", "application/x-ndjson"),
            ("Content-Encoding", "zstd"),
        ];
        request(server.addr, "POST", "/api/series/z/events", &headers, body).unwrap()
    };
    let t = now_ms();
    let lines = format!("{{\"ts\":{t},\"z\":1}}\n{{\"ts\":{t},\"z\":2}}\n");
    let r = post(&zstd::encode_all(lines.as_bytes(), 3).unwrap());
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["accepted"], 2);

    // Not zstd; more than --max-body-bytes once inflated; a frame asking for a 128 MiB window.
    let r = post(b"certainly not zstd");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not valid zstd"), "{}", r.text());
    let big: String = (0..20_000)
        .map(|i| format!("{{\"ts\":{t},\"i\":{i}}}\n"))
        .collect();
    let r = post(&zstd::encode_all(big.as_bytes(), 3).unwrap());
    assert_eq!(r.status, 413, "{}", r.text());
    let mut wide = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    wide.set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
        .unwrap();
    wide.set_pledged_src_size(None).unwrap();
    wide.write_all(lines.as_bytes()).unwrap();
    let r = post(&wide.finish().unwrap());
    assert_eq!(r.status, 400, "{}", r.text());
    let r = request(
        server.addr,
        "POST",
        "/api/series/z/events",
        &[("Content-Encoding", "br")],
        b"{}",
    )
    .unwrap();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (415, "unsupported_media_type")
    );
    assert!(r.text().contains("gzip, zstd or none"), "{}", r.text());

    server.wait_sealed("z", t);
    assert_eq!(
        zcat_series(&dir.path().join("z")).len(),
        2,
        "only the good batch is stored"
    );
}
