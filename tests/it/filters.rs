//! Filters (`where=`, `q=`) on pages, exports and histograms: every operator against a reference computed here,
//! one URL per filter, a filtered walk back through a month of sealed hours, final filtered pages that never
//! change, the scan budget, and grouped and aggregated histograms.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;

use crate::support::{Server, TempDir, hourglass, iso, now_ms, request};

/// 2026-10-01T00:00:00Z: a month of sealed past begins here.
const M0: i64 = 1_790_812_800_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Imports `lines` (each with a numeric `ts`) into `series` of the data folder, one file per hour.
pub fn import(data: &Path, series: &str, lines: &[(i64, String)]) {
    let src = data.parent().unwrap().join(format!("src-{series}"));
    let mut hours: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for (ts, line) in lines {
        hours.entry(ts - ts % HOUR).or_default().push(line);
    }
    for (hour, lines) in hours {
        let stem = chrono::DateTime::from_timestamp_millis(hour)
            .unwrap()
            .format("%Y%m%d%H");
        let path = src.join(format!("p/{stem}.json.gz"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        for l in lines {
            writeln!(enc, "{l}").unwrap();
        }
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
    }
    let out = hourglass(&[
        "import",
        src.to_str().unwrap(),
        "--series",
        series,
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A month of events every 10 minutes on three hosts, and an error every 3 hours: (time, line), in time order.
pub fn month() -> Vec<(i64, String)> {
    let mut lines = Vec::new();
    for i in 0..30 * 24 * 6i64 {
        let ts = M0 + i * 600_000;
        let (host, ms, status) = (
            i % 3,
            (i * 7919) % 1000,
            [200, 404, 500][(i % 7 % 3) as usize],
        );
        lines.push((
            ts,
            format!(
                r#"{{"ts":{ts},"host":"web{host}","level":"info","ms":{ms},"http":{{"status":{status}}},"msg":"request {i}"}}"#
            ),
        ));
        if i % 18 == 5 {
            let ts = ts + 1_000;
            lines.push((
                ts,
                format!(
                    r#"{{"ts":{ts},"host":"web{host}","level":"error","ms":{},"code":"E42","msg":"failure {i}"}}"#,
                    ms * 3
                ),
            ));
        }
    }
    lines
}

fn get(server: &Server, url: &str) -> crate::support::Response {
    let res = server.get(url);
    assert_eq!(res.status, 200, "{url}: {}", res.text());
    res
}

/// The events of a filtered walk back from `head`: pages (URL, answer) newest first.
fn filtered_walk(server: &Server, head: &str) -> Vec<(String, crate::support::Response)> {
    let mut pages = Vec::new();
    let mut url = Some(head.to_string());
    while let Some(u) = url {
        let page = get(server, &u);
        url = page.json()["prev"].as_str().map(str::to_string);
        assert_eq!(url, page.link("prev"), "{u}");
        pages.push((u, page));
        assert!(pages.len() < 1000, "the walk does not end");
    }
    pages
}

fn events_of(pages: &[(String, crate::support::Response)]) -> Vec<String> {
    pages
        .iter()
        .rev()
        .flat_map(|(_, p)| {
            p.json()["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Each stored line as the JSON pages hold it (the same text, re-serialised for comparison).
fn as_json(line: &str) -> String {
    serde_json::from_str::<Value>(line).unwrap().to_string()
}

#[test]
fn a_filtered_walk_back_through_a_month_returns_each_match_once_in_order_and_final_pages_never_change()
 {
    let tmp = TempDir::new("filter-month");
    let data = tmp.path().join("data");
    let lines = month();
    import(&data, "month", &lines);
    let expected: Vec<String> = lines
        .iter()
        .filter(|(_, l)| l.contains(r#""level":"error""#))
        .map(|(_, l)| as_json(l))
        .collect();
    assert_eq!(expected.len(), 240);

    let server = Server::start(&data, &[]);
    let head = "/api/series/month/data?where=level:error&limit=50";
    let pages = filtered_walk(&server, head);
    assert_eq!(events_of(&pages), expected);
    // 240 matches, 50 a page: five pages, not a run of empty ones.
    assert!(pages.len() <= 6, "{} pages", pages.len());
    let mut finals = Vec::new();
    for (url, page) in &pages[1..] {
        assert!(url.ends_with("?where=level:error&limit=50"), "{url}");
        let cc = page.header("cache-control").unwrap();
        assert!(cc.contains("immutable"), "{url}: {cc}");
        let etag = page.header("etag").unwrap().to_string();
        assert!(etag.starts_with("\"hg1."), "{etag}");
        assert_eq!(page.json()["final"], true);
        let again = request(server.addr, "GET", url, &[("If-None-Match", &etag)], b"").unwrap();
        assert_eq!(again.status, 304, "{url}");
        finals.push((url.clone(), etag, page.body.clone()));
    }
    assert!(finals.len() >= 4);

    // More events, one of them a match, and a restart: every final page is the same, byte for byte.
    let t = now_ms();
    let fresh = format!(
        "{{\"ts\":{t},\"level\":\"error\",\"msg\":\"new\"}}\n{{\"ts\":{t},\"level\":\"info\"}}\n"
    );
    assert_eq!(
        server
            .post_ndjson("/api/series/month/events", &fresh)
            .status,
        202
    );
    server.stop();
    let server = Server::start(&data, &[]);
    for (url, etag, body) in &finals {
        let page = get(&server, url);
        assert_eq!(page.header("etag"), Some(etag.as_str()), "{url}");
        assert_eq!(&page.body, body, "{url}");
    }
    let head_now = get(&server, head).json();
    assert_eq!(
        head_now["events"].as_array().unwrap().last().unwrap()["msg"],
        "new"
    );

    // The same filter spelled otherwise is sent to the one URL.
    let res = server.get("/api/series/month/data?limit=50&where=level%3Derror");
    assert_eq!(res.status, 308);
    assert_eq!(res.header("location"), Some(head));
}

#[test]
fn the_scan_budget_bounds_a_filter_that_matches_nothing() {
    let tmp = TempDir::new("filter-budget");
    let data = tmp.path().join("data");
    import(&data, "month", &month());
    let server = Server::start(&data, &["--filter-scan-bytes", "20000"]);
    let mut url = "/api/series/month/data?where=level:nope".to_string();
    let mut ends = Vec::new();
    for _ in 0..5 {
        let page = get(&server, &url);
        let body = page.json();
        assert_eq!(body["count"], 0);
        let scanned = body["scanned_bytes"].as_u64().unwrap();
        // At most one part (here one or two events) past the budget.
        assert!((20_000..20_400).contains(&scanned), "{scanned}");
        ends.push(body["to"].as_str().unwrap().to_string());
        url = body["prev"].as_str().expect("the walk goes on").to_string();
    }
    // Each page goes on where the one before stopped.
    assert!(ends.windows(2).all(|w| w[1] < w[0]), "{ends:?}");
}

/// Events with every kind of value, for the operators.
fn variety() -> Vec<(i64, String)> {
    let t0 = M0 + 5 * DAY;
    [
        r#""level":"error","status":500,"http":{"host":"web1","ms":12.5},"tags":["a","b"]"#,
        r#""level":"warn","status":404,"http":{"host":"web2","ms":3},"at":"2026-10-06T00:30:00Z""#,
        r#""level":"info","status":200,"http.host":"web1","ok":true,"at":"2026-10-06T01:30:00+01:00""#,
        r#""level":"\u0065rror","status":"500","msg":"a \"quoted\" word""#,
        r#""status":503,"ok":false,"n":null,"http":{"host":"web3"}"#,
        r#""level":"info","status":-1.5e1,"tags":["c"],"k8s:pod":"x-1""#,
    ]
    .iter()
    .enumerate()
    .map(|(i, fields)| {
        let ts = t0 + i as i64 * 1_000;
        (ts, format!(r#"{{"ts":{ts},"i":{i},{fields}}}"#))
    })
    .collect()
}

#[test]
fn every_operator_on_strings_numbers_nested_and_missing_fields() {
    let tmp = TempDir::new("filter-ops");
    let data = tmp.path().join("data");
    let lines = variety();
    import(&data, "ops", &lines);
    let server = Server::start(&data, &[]);
    let (from, to) = (iso(M0), iso(M0 + 30 * DAY));
    let matched = |query: &str| -> Vec<u64> {
        let url = format!("/api/series/ops/export?from={from}&to={to}&{query}");
        let res = server.get(&url);
        let res = match res.status {
            308 => server.get(res.header("location").unwrap()),
            _ => res,
        };
        assert_eq!(res.status, 200, "{query}: {}", res.text());
        res.text()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["i"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    for (query, expected) in [
        ("where=level:error", vec![0, 3]),
        ("where=level=error", vec![0, 3]),
        ("where=level:%22error%22", vec![0, 3]),
        ("where=level!=error", vec![1, 2, 4, 5]),
        ("where=level?", vec![0, 1, 2, 3, 5]),
        ("where=status:500", vec![0]),
        ("where=status:%22500%22", vec![3]),
        ("where=status:-15", vec![5]),
        ("where=status%3E=500", vec![0, 4]),
        ("where=status%3E404", vec![0, 4]),
        ("where=status%3C200", vec![5]),
        ("where=status%3C=200", vec![2, 5]),
        ("where=http.host:web1", vec![0, 2]),
        ("where=http.ms%3E5", vec![0]),
        ("where=http?", vec![0, 1, 4]),
        ("where=tags:b", vec![0]),
        ("where=ok:true", vec![2]),
        ("where=ok:false", vec![4]),
        ("where=n:null", vec![4]),
        ("where=missing!=x", vec![0, 1, 2, 3, 4, 5]),
        ("where=missing?", vec![]),
        ("where=at%3E2026-10-06T00:15:00Z", vec![1, 2]),
        ("where=at%3C2026-10-06T00:31:00Z", vec![1, 2]),
        ("where=at%3E=2026-10-06T00:30:00.001Z", vec![]),
        ("where=k8s%5C:pod:x-1", vec![5]),
        ("where=msg:%22a%20%5C%22quoted%5C%22%20word%22", vec![3]),
        ("q=quoted", vec![3]),
        ("q=web", vec![0, 1, 2, 4]),
        ("where=level:info&q=web1", vec![2]),
        ("where=level:info&where=status%3E0", vec![2]),
    ] {
        assert_eq!(matched(query), expected, "{query}");
    }

    // Pages hold what exports hold, a page at a time.
    let pages = filtered_walk(&server, "/api/series/ops/data?where=level!=error&limit=2");
    let got: Vec<u64> = events_of(&pages)
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(got, [1, 2, 4, 5]);

    // Bad terms are 400s that name them, on every route that takes a filter; nothing is redirected first.
    for url in [
        "/api/series/ops/data?where=status%3Eabc".to_string(),
        format!("/api/series/ops/export?from={from}&to={to}&where=status%3Eabc"),
        format!("/api/series/ops/histogram?from={from}&to={to}&step=1d&where=status%3Eabc"),
    ] {
        let res = server.get(&url);
        assert_eq!(res.status, 400, "{url}");
        assert_eq!(res.error_code(), "bad_request");
        assert!(res.text().contains("status>abc"), "{}", res.text());
    }
    for (url, says) in [
        ("/api/series/ops/data?where=level", "no operator"),
        ("/api/series/ops/data?q=", "empty"),
        ("/api/series/ops/data?limit=5", "limit="),
        ("/api/series/ops/data?where=a:1&limit=0", "limit="),
    ] {
        let res = server.get(url);
        assert_eq!(res.status, 400, "{url}");
        assert!(res.text().contains(says), "{url}: {}", res.text());
    }

    // One spelling per filter: terms sorted, numbers and operators in one form, the rest of the query as sent.
    for (url, canonical) in [
        (
            "/api/series/ops/data?where=status%3E=5e2&where=level=error",
            "/api/series/ops/data?where=level:error&where=status%3E=500",
        ),
        (
            "/api/series/ops/data/before/2026_10_07_00_00_00?q=b&q=a&where=level:%22info%22",
            "/api/series/ops/data/before/2026_10_07_00_00_00?where=level:info&q=a&q=b",
        ),
    ] {
        let res = server.get(url);
        assert_eq!(res.status, 308, "{url}");
        assert_eq!(res.header("location"), Some(canonical));
        assert_eq!(server.get(canonical).status, 200, "{canonical}");
    }
    let res = server.get(&format!(
        "/api/series/ops/export?where=level=error&from={from}&to={to}"
    ));
    assert_eq!(res.status, 308);
    assert_eq!(
        res.header("location").unwrap(),
        format!("/api/series/ops/export?from={from}&to={to}&where=level:error")
    );
}

#[test]
fn grouped_and_aggregated_histograms_equal_a_reference_and_are_final_when_sealed() {
    let tmp = TempDir::new("filter-hist");
    let data = tmp.path().join("data");
    let lines = month();
    import(&data, "month", &lines);
    let server = Server::start(&data, &[]);
    let url = format!(
        "/api/series/month/histogram?from={}&to={}&step=1d&group_by=host&top=2&agg=sum(ms),min(ms),max(ms),avg(ms),p50(ms),p90(ms),p99(ms)&where=level:info",
        iso(M0),
        iso(M0 + 30 * DAY)
    );
    let res = get(&server, &url);
    assert!(res.header("cache-control").unwrap().contains("immutable"));
    let body = res.json();
    assert_eq!(body["percentile_relative_error"], 0.01);
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 30);

    // The reference: the same events read here.
    let events: Vec<Value> = lines
        .iter()
        .map(|(_, l)| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["level"] == "info")
        .collect();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        *totals
            .entry(e["host"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut ranked: Vec<(String, u64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<&str> = ranked.iter().take(2).map(|(h, _)| h.as_str()).collect();
    for (d, bucket) in buckets.iter().enumerate() {
        let day: Vec<&Value> = events
            .iter()
            .filter(|e| (e["ts"].as_i64().unwrap() - M0) / DAY == d as i64)
            .collect();
        assert_eq!(bucket["start"], iso(M0 + d as i64 * DAY));
        assert_eq!(bucket["count"], day.len() as u64);
        let groups = bucket["groups"].as_object().unwrap();
        assert_eq!(groups.len(), 2);
        let mut named = 0;
        for host in &top {
            let n = day.iter().filter(|e| e["host"] == *host).count() as u64;
            assert_eq!(groups[*host], n, "day {d} {host}");
            named += n;
        }
        assert_eq!(bucket["other"], day.len() as u64 - named);
        assert_eq!(bucket["missing"], 0);
        let mut ms: Vec<f64> = day.iter().map(|e| e["ms"].as_f64().unwrap()).collect();
        ms.sort_by(f64::total_cmp);
        let aggs = &bucket["aggs"];
        let sum: f64 = ms.iter().sum();
        assert_eq!(aggs["sum(ms)"], sum);
        assert_eq!(aggs["min(ms)"], ms[0]);
        assert_eq!(aggs["max(ms)"], ms[ms.len() - 1]);
        assert!((aggs["avg(ms)"].as_f64().unwrap() - sum / ms.len() as f64).abs() < 1e-9);
        for (name, q) in [("p50(ms)", 0.5), ("p90(ms)", 0.9), ("p99(ms)", 0.99)] {
            let exact = ms[(q * (ms.len() - 1) as f64) as usize];
            let got = aggs[name].as_f64().unwrap();
            assert!(
                (got - exact).abs() <= 0.01 * exact.abs() + 1e-9,
                "day {d} {name}: {got} vs {exact}"
            );
        }
    }

    // A field some events lack: they are counted as missing; a bad aggregation is a 400 naming it.
    let url = format!(
        "/api/series/month/histogram?from={}&to={}&step=30d&group_by=code",
        iso(M0),
        iso(M0 + 30 * DAY)
    );
    let b = &get(&server, &url).json()["buckets"][0];
    assert_eq!(b["groups"]["E42"], 240);
    assert_eq!(b["missing"], 4320);
    let bad = server.get(&format!(
        "/api/series/month/histogram?from={}&to={}&step=1d&agg=median(ms)",
        iso(M0),
        iso(M0 + 30 * DAY)
    ));
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("median(ms)"), "{}", bad.text());
}

/// A counter of `/metrics`.
pub fn counter(server: &Server, name: &str) -> u64 {
    let text = get(server, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn members_whose_summary_rules_a_filter_out_are_not_inflated() {
    let tmp = TempDir::new("filter-skip");
    let data = tmp.path().join("data");
    let lines = month();
    import(&data, "month", &lines);
    // 4,320 chunks of one member each, 240 of which hold an error.
    let members = 30 * 24 * 6;
    let export = |server: &Server, query: &str| {
        get(
            server,
            &format!(
                "/api/series/month/export?from={}&to={}&{query}",
                iso(M0),
                iso(M0 + 30 * DAY)
            ),
        )
        .text()
    };
    let counts = |server: &Server| {
        (
            counter(server, "hourglass_members_scanned_total"),
            counter(server, "hourglass_members_skipped_total"),
        )
    };
    let server = Server::start(&data, &[]);
    let errors = export(&server, "where=code:E42");
    assert_eq!(errors.lines().count(), 240);
    let (scanned, skipped) = counts(&server);
    assert_eq!(scanned + skipped, members);
    // Every member with a match is read; of the others at most a few (false positives).
    assert!(
        (240..240 + members / 50).contains(&scanned),
        "{scanned} read"
    );

    // A filter nothing matches reads (almost) nothing; a text whose tokens are inside it skips as well.
    assert_eq!(export(&server, "where=level:nope"), "");
    let (scanned_2, skipped_2) = counts(&server);
    assert!(
        scanned_2 - scanned < members / 50,
        "{}",
        scanned_2 - scanned
    );
    assert_eq!(export(&server, "q=%22code%22:%22E42%22"), errors);
    let (scanned_3, _) = counts(&server);
    assert!(scanned_3 - scanned_2 < 240 + members / 50);
    // A number is not a token: `ms:0` reads every member, and finds what it should.
    let zeros = export(&server, "where=ms:0");
    let expected = lines
        .iter()
        .filter(|(_, l)| l.contains(r#""ms":0,"#))
        .count();
    assert_eq!(zeros.lines().count(), expected);
    assert_eq!(counts(&server).0 - scanned_3, members);
    let _ = skipped_2;

    // Without summaries (archives written before them, or a sidecar lost) every member is read, and the answers
    // are the same.
    server.stop();
    for entry in std::fs::read_dir(data.join("month")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sum") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let server = Server::start(&data, &[]);
    assert_eq!(export(&server, "where=code:E42"), errors);
    assert_eq!(counts(&server), (members, 0));
}

/// Twenty events of the last 20 s, one of them an error, taken with a 30 s lateness; then a clock a minute
/// ahead seals them. The server, still running, and the time of the events.
fn sealed_twenty(data: &Path, extra: &[&str]) -> (Server, i64) {
    let args: Vec<&str> = ["--chunk-seconds", "1", "--lateness", "30"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let server = Server::start(data, &args);
    let t = now_ms();
    let body: String = (0..20)
        .map(|i| {
            let level = if i == 7 { "error" } else { "info" };
            format!(
                "{{\"ts\":{},\"level\":\"{level}\",\"i\":{i}}}\n",
                t - 20_000 + i * 1_000
            )
        })
        .collect();
    let res = server.post_ndjson("/api/series/live/events", &body);
    assert_eq!(res.status, 202, "{}", res.text());
    server.stop();
    let args: Vec<&str> = ["--clock-offset-ms", "60000"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let server = Server::start_fast(data, &args);
    server.wait_sealed("live", t);
    (server, t)
}

fn summary_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sum")
        })
        .count()
}

#[test]
fn the_sealer_writes_summaries_that_skip_members_unless_told_not_to() {
    let tmp = TempDir::new("filter-seal");
    let (server, t) = sealed_twenty(tmp.path(), &[]);
    assert!(
        summary_files(&tmp.path().join("live")) >= 1,
        "no summaries written"
    );
    let url = format!(
        "/api/series/live/export?from={}&to={}&where=level:error",
        iso(t - 60_000),
        iso(t + 1_000)
    );
    let found = get(&server, &url).text();
    assert_eq!(found.lines().count(), 1, "{found}");
    assert!(counter(&server, "hourglass_members_skipped_total") >= 15);

    // Without summaries: none written, every member read, the same answer.
    let off = TempDir::new("filter-seal-off");
    let (server, t) = sealed_twenty(off.path(), &["--member-summaries", "false"]);
    assert_eq!(summary_files(&off.path().join("live")), 0);
    let url = format!(
        "/api/series/live/export?from={}&to={}&where=level:error",
        iso(t - 60_000),
        iso(t + 1_000)
    );
    assert_eq!(get(&server, &url).text().lines().count(), 1);
    assert_eq!(counter(&server, "hourglass_members_skipped_total"), 0);
    assert!(counter(&server, "hourglass_members_scanned_total") >= 20);
}

#[test]
fn a_filtered_head_held_by_prefer_wait_answers_when_a_match_arrives() {
    let tmp = TempDir::new("filter-wait");
    let server = Server::start_fast(tmp.path(), &[]);
    let post = |level: &str| {
        let body = format!("{{\"ts\":{},\"level\":\"{level}\"}}\n", now_ms());
        assert_eq!(
            server.post_ndjson("/api/series/w/events", &body).status,
            202
        );
    };
    post("info");
    let head = "/api/series/w/data?where=level:error";
    let first = get(&server, head);
    assert_eq!(first.json()["count"], 0);
    let etag = first.header("etag").unwrap().to_string();
    let addr = server.addr;
    let began = std::time::Instant::now();
    let held = std::thread::spawn(move || {
        let headers = [("Prefer", "wait=20"), ("If-None-Match", etag.as_str())];
        request(addr, "GET", head, &headers, b"").unwrap()
    });
    // Events the filter does not match change the series, not the filtered head: the request stays held.
    std::thread::sleep(std::time::Duration::from_millis(700));
    post("info");
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(!held.is_finished(), "answered before a match arrived");
    post("error");
    let res = held.join().unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("preference-applied"), Some("wait=20"));
    let body = res.json();
    assert_eq!(body["count"], 1);
    assert_eq!(body["events"][0]["level"], "error");
    assert!(began.elapsed() < std::time::Duration::from_secs(10));
}
