//! `GET /metrics` reads back as Prometheus text, and its counts follow what the server did.

use std::collections::HashMap;

use crate::support::{Server, TempDir, now_ms, request};

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
        m["hourglass_fsync_seconds_count"],
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
        .map(|le| m[&format!("hourglass_http_request_seconds_bucket{{{route},le=\"{le}\"}}")])
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets[5], 3.0);
    assert_eq!(
        m[&format!("hourglass_http_request_seconds_count{{{route}}}")],
        3.0
    );

    assert_eq!(server.get("/readyz").status, 200);
}
