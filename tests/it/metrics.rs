//! `GET /metrics` reads back as Prometheus text, and its counts follow what the server did.

use std::collections::HashMap;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, TempDir, free_port, have, now_ms, request};

/// Parses the text format: `# HELP`/`# TYPE` lines, then `name{labels} value` samples; panics on anything else.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next(), parts.next(), parts.next());
            assert!(matches!(kind, Some("HELP" | "TYPE")), "{line}");
            assert!(name.is_some_and(valid_name) && value.is_some(), "{line}");
            if kind == Some("TYPE") {
                let t = value.unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&t), "{line}");
                typed.insert(name.unwrap().to_string(), t.to_string());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
            for pair in inner.unwrap_or_else(|| panic!("{line}")).split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(valid_name(k) && !v.contains('\n'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(typed.contains_key(family), "no TYPE before {line}");
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !n.starts_with(|c: char| c.is_ascii_digit())
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let dir = TempDir::new("metrics");
    let server = Server::start_fast(dir.path(), &[]);
    let t = now_ms() - 300;
    let body: String = (0..10)
        .map(|i| format!("{{\"ts\":{}}}\n", t + i * 100))
        .collect();
    assert_eq!(
        server.post_ndjson("/api/series/m/events", &body).status,
        202
    );
    assert_eq!(
        server
            .post_ndjson("/api/series/m/events", "{\"ts\":\n")
            .status,
        400
    );
    server.wait_sealed("m", t + 2_000);
    // One more chunk, so the first is final; then its page twice, the second time revalidated.
    assert_eq!(
        server
            .post_ndjson(
                "/api/series/m/events",
                &format!("{{\"ts\":{}}}\n", now_ms())
            )
            .status,
        202
    );
    server.wait_sealed("m", now_ms());
    let page = format!(
        "/api/series/m/data/before/{}",
        hourglass::time::format_stamp(t / 1000 * 1000 + 1000)
    );
    let first = server.get(&page);
    assert_eq!(
        first.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let etag = first.header("etag").unwrap().to_string();
    let again = request(server.addr, "GET", &page, &[("If-None-Match", &etag)], b"").unwrap();
    assert_eq!(again.status, 304);
    assert_eq!(server.get(&page).body, first.body); // from the page cache

    let res = server.get("/metrics");
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = parse(&res.text());
    assert_eq!(m["hourglass_events_accepted_total"], 11.0);
    assert_eq!(m["hourglass_batches_accepted_total"], 2.0);
    assert_eq!(
        m["hourglass_batches_refused_total{reason=\"malformed_event\"}"],
        1.0
    );
    assert!(m["hourglass_fsyncs_total"] >= 2.0);
    assert_eq!(
        m["hourglass_fsync_duration_seconds_count"],
        m["hourglass_fsyncs_total"]
    );
    assert!(m["hourglass_chunks_sealed_total"] >= 2.0);
    assert_eq!(
        m["hourglass_pages_total{kind=\"before\",status=\"200\"}"],
        2.0
    );
    assert_eq!(
        m["hourglass_pages_total{kind=\"before\",status=\"304\"}"],
        1.0
    );
    assert_eq!(m["hourglass_page_cache_misses_total"], 1.0);
    assert_eq!(m["hourglass_page_cache_hits_total"], 1.0);
    let before = "method=\"GET\",route=\"/api/series/{series}/data/before/{t}\"";
    for status in ["200", "304"] {
        assert_eq!(
            m[&format!("hourglass_http_requests_total{{{before},status=\"{status}\"}}")],
            1.0 + f64::from(status == "200"),
            "{status}"
        );
    }
    assert!(m["hourglass_open_files"] > 3.0);
    assert!(m["hourglass_seal_lag_seconds"] < 10.0);
    let route = "method=\"POST\",route=\"/api/series/{series}/events\"";
    assert_eq!(
        m[&format!("hourglass_http_requests_total{{{route},status=\"202\"}}")],
        2.0
    );
    let buckets: Vec<f64> = ["0.0005", "0.005", "0.05", "0.5", "5", "+Inf"]
        .iter()
        .map(|le| {
            m[&format!("hourglass_http_request_duration_seconds_bucket{{{route},le=\"{le}\"}}")]
        })
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets[5], 3.0);
    assert_eq!(
        m[&format!("hourglass_http_request_duration_seconds_count{{{route}}}")],
        3.0
    );

    assert_eq!(server.get("/readyz").status, 200);
}

/// `promtool check metrics` (the Prometheus project's linter) finds nothing to say about `/metrics` in the text
/// format, and Prometheus itself scrapes a running server (in OpenMetrics, which it asks for) and answers
/// queries with the counts the server has.
#[test]
fn prometheus_scrapes_the_server_and_promtool_finds_nothing_to_lint() {
    const TEST: &str = "prometheus_scrapes_the_server_and_promtool_finds_nothing_to_lint";
    let why = "Prometheus is not installed (apt-get install prometheus)";
    if !have(TEST, "promtool", &["--version"], why)
        || !have(TEST, "prometheus", &["--version"], why)
    {
        return;
    }
    let dir = TempDir::new("prometheus");
    let server = Server::start(&dir.path().join("data"), &[]);
    let body = "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
    assert_eq!(server.post_ndjson("/api/series/p/events", body).status, 202);
    assert_eq!(server.post_ndjson("/api/series/p/events", "{").status, 400);
    assert_eq!(server.get("/api/series/p/data").status, 200);

    let text = server.get("/metrics");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin.take().unwrap().write_all(&text.body).unwrap();
    let lint = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        lint.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );

    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: hourglass\n    \
             static_configs: [{{targets: ['{}']}}]\n",
            server.addr
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let stop = scopeguard(|| {
        let _ = prometheus.kill();
        let _ = prometheus.wait();
    });
    let query = |q: &str| -> Option<Value> {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let path = format!("/api/v1/query?query={q}");
        let r = request(addr, "GET", &path, &[], b"").ok()?;
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        v["data"]["result"].get(0).cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let accepted = loop {
        if let Some(sample) = query("hourglass_events_accepted_total") {
            break sample;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus scraped nothing in 30 s: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(accepted["value"][1], "3", "{accepted}");
    assert_eq!(accepted["metric"]["job"], "hourglass", "{accepted}");
    let refused = query("hourglass_batches_refused_total").unwrap();
    assert_eq!(refused["metric"]["reason"], "malformed_event", "{refused}");
    assert_eq!(refused["value"][1], "1", "{refused}");
    let up = query("up").unwrap();
    assert_eq!(up["value"][1], "1", "{up}");
    // A histogram Prometheus can take quantiles of.
    let q =
        query("histogram_quantile(0.5,sum(hourglass_http_request_duration_seconds_bucket)by(le))");
    assert!(q.is_some_and(|v| {
        v["value"][1]
            .as_str()
            .is_some_and(|x| x.parse::<f64>().is_ok())
    }));
    drop(stop);
}

/// Runs `f` when dropped, so a failing assertion still stops what the test started.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}
