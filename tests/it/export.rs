//! Exports and histograms over HTTP: ranges that cut chunks, hours and days give back exactly the events in
//! them, in every format; gzip output is valid gzip; histograms match counts made from the events.

use std::io::Read;

use serde_json::Value;

use crate::pages::{SPARSE, seed};
use crate::support::{Server, TempDir, now_ms, request};

/// The seeded events as stored: `{"ts":t,"n":n}`.
fn lines(ts: &[i64], from: i64, to: i64) -> Vec<String> {
    ts.iter()
        .enumerate()
        .filter(|&(_, &t)| t >= from && t < to)
        .map(|(n, t)| format!("{{\"ts\":{t},\"n\":{n}}}"))
        .collect()
}

fn ms(rfc3339: &str) -> i64 {
    hourglass::time::parse_rfc3339(rfc3339).unwrap()
}

#[test]
fn exports_give_back_exactly_the_events_of_the_range_in_every_format() {
    let dir = TempDir::new("export");
    let ts = seed(dir.path(), "x", SPARSE, 5);
    let server = Server::start(dir.path(), &["--max-page-entries", "5"]);
    let ranges = [
        // whole series, as Unix seconds
        ("1388534400", "1412035200"),
        // starts and ends inside chunks
        ("2014-01-01T00:00:04Z", "2014-05-17T13:20:05.5Z"),
        // across months, ending mid-hour
        ("2014-01-01T00:00:10Z", "2014-09-29T23:59:35Z"),
        // one empty stretch only
        ("2014-02-01T00:00:00Z", "2014-03-01T00:00:00Z"),
    ];
    for (from, to) in ranges {
        let (f, t) = (
            hourglass::time::parse_rfc3339(from)
                .unwrap_or_else(|| from.parse::<i64>().unwrap() * 1000),
            hourglass::time::parse_rfc3339(to).unwrap_or_else(|| to.parse::<i64>().unwrap() * 1000),
        );
        let want = lines(&ts, f, t);
        let base = format!("/api/series/x/export?from={from}&to={to}");

        let nd = server.get(&format!("{base}&format=ndjson"));
        assert_eq!(nd.status, 200, "{}", nd.text());
        assert_eq!(nd.header("content-type"), Some("application/x-ndjson"));
        let got: Vec<String> = nd.text().lines().map(str::to_string).collect();
        assert_eq!(got, want, "ndjson {from}..{to}");

        let js: Value = server.get(&format!("{base}&format=json")).json();
        let want_values: Vec<Value> = want
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(js.as_array().unwrap(), &want_values, "json {from}..{to}");

        let csv = server
            .get(&format!("{base}&format=csv&fields=n,ts,missing"))
            .text();
        let mut rows = csv.split("\r\n");
        assert_eq!(rows.next(), Some("n,ts,missing"));
        let want_rows: Vec<String> = want_values
            .iter()
            .map(|v| format!("{},{},", v["n"], v["ts"]))
            .collect();
        let got_rows: Vec<&str> = rows.filter(|r| !r.is_empty()).collect();
        assert_eq!(got_rows, want_rows, "csv {from}..{to}");

        // gzip: one member (what every HTTP client decodes, curl --compressed included), valid for `gzip -t`,
        // the same lines; whole sealed members go out as they are stored, without being inflated.
        let gz = request(
            server.addr,
            "GET",
            &format!("{base}&format=ndjson"),
            &[("Accept-Encoding", "gzip")],
            b"",
        )
        .unwrap();
        assert_eq!(gz.header("content-encoding"), Some("gzip"));
        let file = dir.path().join("export.gz");
        std::fs::write(&file, &gz.body).unwrap();
        let tested = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&file)
            .status()
            .unwrap();
        assert!(tested.success(), "gzip -t {from}..{to}");
        let mut one_member = Vec::new();
        flate2::read::GzDecoder::new(&gz.body[..])
            .read_to_end(&mut one_member)
            .unwrap();
        assert_eq!(one_member, nd.body, "gzip {from}..{to}");
        let curl = std::process::Command::new("curl")
            .args(["-sSf", "--compressed"])
            .arg(format!("http://{}{base}&format=ndjson", server.addr))
            .output()
            .unwrap();
        assert!(curl.status.success(), "curl --compressed {from}..{to}");
        assert_eq!(curl.stdout, nd.body, "curl --compressed {from}..{to}");
        if from == "1388534400" {
            // The first chunk is whole in the range: its stored deflate data is in the answer as it is.
            let archive = hourglass::archive::SeriesArchive::open_alone(&dir.path().join("x"))
                .unwrap()
                .0;
            let start = hourglass::time::ChunkStart::from_stored(ms("2014-01-01T00:00:00Z"));
            let entry = archive.chunk(start).unwrap()[0];
            let stored = archive.read_member(&entry).unwrap();
            let (data, _) =
                hourglass::archive::member::joinable(&stored, entry.meta.raw_len).unwrap();
            let data = &stored[data];
            assert!(
                gz.body.windows(data.len()).any(|w| w == data),
                "the stored member's deflate data is sent as it is"
            );
        }
    }
}

#[test]
fn final_ranges_are_cacheable_and_bad_ranges_are_refused() {
    let dir = TempDir::new("export-cache");
    seed(dir.path(), "c", SPARSE, 5);
    let server = Server::start(dir.path(), &["--max-page-entries", "5"]);
    let url = "/api/series/c/export?from=2014-01-01T00:00:00Z&to=2014-06-01T00:00:00Z";
    let r = server.get(url);
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let etag = r.header("etag").unwrap().to_string();
    let again = request(server.addr, "GET", url, &[("If-None-Match", &etag)], b"").unwrap();
    assert_eq!((again.status, again.body.len()), (304, 0));
    // Reaching above the sealed watermark: not final.
    let live = server.get(&format!(
        "/api/series/c/export?from=2014-01-01T00:00:00Z&to={}",
        now_ms() / 1000 + 60
    ));
    assert_eq!(
        (live.status, live.header("cache-control")),
        (200, Some("no-cache"))
    );
    assert_eq!(live.header("etag"), None);

    for (query, words) in [
        (
            "from=2014-02-01T00:00:00Z&to=2014-01-01T00:00:00Z",
            "must be before",
        ),
        ("from=2014-02-01T00:00:00Z", "missing to="),
        (
            "from=yesterday&to=2014-01-01T00:00:00Z",
            "not an RFC 3339 time",
        ),
        ("from=1&to=2&format=xml", "not one of"),
        ("from=1&to=2&format=csv", "needs fields="),
    ] {
        let r = server.get(&format!("/api/series/c/export?{query}"));
        assert_eq!(r.status, 400, "{query}");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(words),
            "{query}: {}",
            r.text()
        );
    }
    assert_eq!(
        server.get("/api/series/nope/export?from=1&to=2").status,
        404
    );
}

#[test]
fn histograms_count_from_the_index() {
    let dir = TempDir::new("histogram");
    let ts = seed(dir.path(), "h", SPARSE, 5);
    let server = Server::start(dir.path(), &["--max-page-entries", "5"]);
    let (from, to, step) = (
        ms("2014-01-01T00:00:00Z"),
        ms("2014-01-01T00:01:00Z"),
        20_000,
    );
    let r = server
        .get("/api/series/h/histogram?from=2014-01-01T00:00:00Z&to=2014-01-01T00:01:00Z&step=20s");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let buckets = r.json()["buckets"].as_array().unwrap().clone();
    assert_eq!(buckets.len(), 3);
    for (i, b) in buckets.iter().enumerate() {
        let start = from + i as i64 * step;
        let want = ts
            .iter()
            .filter(|&&t| t >= start && t < (start + step).min(to))
            .count();
        assert_eq!(b["count"].as_u64(), Some(want as u64), "{b}");
        assert_eq!(ms(b["start"].as_str().unwrap()), start);
    }
    let day = server
        .get("/api/series/h/histogram?from=2014-01-01T00:00:00Z&to=2015-01-01T00:00:00Z&step=1d")
        .json();
    let total: u64 = day["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, ts.len() as u64);
    for query in [
        "from=2014-01-01T00:00:00Z&to=2014-01-01T00:01:00Z&step=15s",
        "from=2014-01-01T00:00:05Z&to=2014-01-01T00:01:00Z&step=10s",
        "from=2014-01-01T00:00:00Z&to=2015-01-01T00:00:00Z&step=10s",
    ] {
        assert_eq!(
            server
                .get(&format!("/api/series/h/histogram?{query}"))
                .status,
            400,
            "{query}"
        );
    }
}

#[test]
fn events_not_sealed_yet_export_from_the_log() {
    let dir = TempDir::new("export-live");
    let server = Server::start(dir.path(), &["--lateness", "3600"]);
    let t = now_ms();
    let body: String = (0..5)
        .map(|i| format!("{{\"ts\":{},\"i\":{i}}}\n", t + i))
        .collect();
    assert_eq!(
        server.post_ndjson("/api/series/l/events", &body).status,
        202
    );
    let r = server.get(&format!(
        "/api/series/l/export?from={}&to={}",
        t / 1000,
        t / 1000 + 60
    ));
    assert_eq!(r.text(), body);
    assert_eq!(r.header("cache-control"), Some("no-cache"));
}

/// A server that sealed 40 events into hour archives, in chunks of one member and of several (parts of at most
/// 7 events); the archive files.
fn sealed_hour_archives() -> (TempDir, Server, Vec<std::path::PathBuf>) {
    let tmp = TempDir::new("readers");
    let server = Server::start_fast(tmp.path(), &["--max-page-entries", "7"]);
    let t = now_ms();
    // Chunks of one member and of several (parts of at most 7 events).
    let body: String = (0..40)
        .map(|i| format!("{{\"ts\":{},\"i\":{i}}}\n", t - 400 + (i / 20) * 1000 + i))
        .collect();
    let r = server.post_ndjson("/api/series/rd/events", &body);
    assert_eq!(r.status, 202, "{}", r.text());
    server.wait_sealed("rd", t + 1_000);
    let files = crate::support::archive_files(&tmp.path().join("rd"));
    assert!(!files.is_empty());
    (tmp, server, files)
}

/// Go's standard library (`compress/gzip`, `encoding/json`) reads the hour archives as they are.
#[test]
fn hour_archives_are_read_by_gos_standard_library() {
    if !crate::support::have(
        "hour_archives_are_read_by_gos_standard_library",
        "go",
        &["version"],
        "Go is not installed (apt-get install golang-go)",
    ) {
        return;
    }
    let (tmp, _server, files) = sealed_hour_archives();
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers/count.go");
    let text = crate::support::stdout_of(
        std::process::Command::new("go")
            .arg("run")
            .arg(&program)
            .args(&files)
            .env("GOCACHE", tmp.path().join("gocache")),
    );
    let total: usize = text.lines().map(|l| l.parse::<usize>().unwrap()).sum();
    assert_eq!(total, 40);
}

/// Counts the events of each file with Python's `gzip` and with DuckDB's `read_json`, one line per file:
/// `gzip_count duckdb_count`.
const READERS: &str = r#"
import gzip, sys
import duckdb
for path in sys.argv[1:]:
    with gzip.open(path, "rt") as f:
        by_gzip = sum(1 for _ in f)
    by_duckdb = duckdb.sql(f"select count(*) from read_json('{path}', format='newline_delimited')").fetchall()[0][0]
    print(by_gzip, by_duckdb)
"#;

#[test]
fn hour_archives_are_read_as_they_are_by_python_gzip_and_duckdb() {
    if !crate::support::have(
        "hour_archives_are_read_as_they_are_by_python_gzip_and_duckdb",
        "python3",
        &["-c", "import duckdb"],
        "DuckDB for Python is not installed (pip install duckdb)",
    ) {
        return;
    }
    let (_tmp, _server, files) = sealed_hour_archives();
    let text = crate::support::stdout_of(
        std::process::Command::new("python3")
            .arg("-c")
            .arg(READERS)
            .args(&files),
    );
    let mut total = 0;
    for line in text.lines() {
        let (a, b) = line.split_once(' ').unwrap();
        assert_eq!(a, b, "Python's gzip and DuckDB disagree");
        total += a.parse::<usize>().unwrap();
    }
    assert_eq!(total, 40);
}

#[test]
fn exports_come_in_zstd_when_the_client_prefers_it() {
    let dir = TempDir::new("export-zstd");
    seed(dir.path(), "x", SPARSE, 5);
    let server = Server::start(dir.path(), &["--max-page-entries", "5"]);
    let url = "/api/series/x/export?from=1388534400&to=1412035200";
    let get = |accept: &str| {
        request(server.addr, "GET", url, &[("Accept-Encoding", accept)], b"").unwrap()
    };
    let plain = get("identity");
    assert_eq!(plain.status, 200);
    assert!(plain.header("cache-control").unwrap().contains("immutable"));
    for format in ["", "&format=csv&fields=ts,n", "&format=json"] {
        let u = format!("{url}{format}");
        let plain = request(server.addr, "GET", &u, &[], b"").unwrap();
        let z = request(
            server.addr,
            "GET",
            &u,
            &[("Accept-Encoding", "gzip;q=0.5, zstd")],
            b"",
        )
        .unwrap();
        assert_eq!(
            (z.status, z.header("content-encoding")),
            (200, Some("zstd")),
            "{u}"
        );
        assert_eq!(zstd::decode_all(&z.body[..]).unwrap(), plain.body, "{u}");
    }
    let zstd_answer = get("zstd");
    let gzip_answer = get("gzip, zstd");
    assert_eq!(zstd_answer.header("content-encoding"), Some("zstd"));
    // Equal preference: gzip, which sends stored members as they are.
    assert_eq!(gzip_answer.header("content-encoding"), Some("gzip"));
    // Three representations, three ETags; each revalidates to 304.
    let etags = [&plain, &zstd_answer, &gzip_answer].map(|r| r.header("etag").unwrap().to_string());
    assert!(
        etags[0] != etags[1] && etags[1] != etags[2] && etags[0] != etags[2],
        "{etags:?}"
    );
    let again = request(
        server.addr,
        "GET",
        url,
        &[("Accept-Encoding", "zstd"), ("If-None-Match", &etags[1])],
        b"",
    )
    .unwrap();
    assert_eq!(again.status, 304);
    assert_eq!(get("zstd;q=0").header("content-encoding"), None);
}

/// Hours with events, some whole, the first and last cut by the range.
const HOURS: &[(&str, usize)] = &[
    ("2014-03-01T10:10:00Z", 40),
    ("2014-03-01T10:59:50Z", 7),
    ("2014-03-01T11:00:00Z", 30),
    ("2014-03-01T13:20:00Z", 12),
    ("2014-03-01T16:00:00Z", 25),
    ("2014-03-01T16:30:00Z", 5),
];

#[test]
fn a_manifest_lists_the_hours_and_a_parallel_export_equals_the_serial_one() {
    let dir = TempDir::new("manifest");
    let ts = seed(dir.path(), "m", HOURS, 8);
    let server = Server::start(dir.path(), &["--max-page-entries", "8"]);
    let (from, to) = ("2014-03-01T10:30:00Z", "2014-03-01T16:15:00Z");
    let path = format!("/api/series/m/export/manifest?from={from}&to={to}");
    let r = server.get(&path);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let etag = r.header("etag").unwrap().to_string();
    let again = request(server.addr, "GET", &path, &[("If-None-Match", &etag)], b"").unwrap();
    assert_eq!(again.status, 304);
    let m = r.json();
    assert_eq!(m["final"], true, "{m}");
    let hours = m["hours"].as_array().unwrap();
    let spans: Vec<(&str, &str)> = hours
        .iter()
        .map(|h| (h["from"].as_str().unwrap(), h["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        spans,
        [
            ("2014-03-01T10:30:00.000Z", "2014-03-01T11:00:00.000Z"),
            ("2014-03-01T11:00:00.000Z", "2014-03-01T12:00:00.000Z"),
            ("2014-03-01T13:00:00.000Z", "2014-03-01T14:00:00.000Z"),
            ("2014-03-01T16:00:00.000Z", "2014-03-01T16:15:00.000Z"),
        ],
        "hours without events are left out: {m}"
    );
    // Each hour's count is its export's; whole sealed hours have their archive's size (its file here), cut
    // ones none.
    let mut total = 0;
    for h in hours {
        let url = h["url"].as_str().unwrap();
        let export = server.get(url);
        assert_eq!(export.status, 200, "{url}");
        assert_eq!(
            export.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        let n = export.text().lines().count() as u64;
        assert_eq!(h["events"], n, "{h}");
        assert_eq!(h["final"], true, "{h}");
        total += n;
        let start = h["from"].as_str().unwrap();
        let whole =
            start.ends_with(":00:00.000Z") && !h["to"].as_str().unwrap().ends_with(":15:00.000Z");
        let stem: String = start[..13].chars().filter(char::is_ascii_digit).collect();
        let file = dir.path().join("m").join(format!("{stem}.json.gz"));
        let stored = std::fs::metadata(file).unwrap().len();
        assert_eq!(h["archive_bytes"].as_u64(), whole.then_some(stored), "{h}");
    }
    let (f, t) = (ms(from), ms(to));
    assert_eq!(total, lines(&ts, f, t).len() as u64);
    assert_eq!(m["events"], total);

    // `hourglass export --parallel 4` writes exactly what the serial export writes, gzip or not.
    let url = format!("http://{}", server.addr);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "export", "--url", &url, "--series", "m", "--from", from, "--to", to,
        ];
        args.extend(extra);
        let out = crate::support::hourglass(&args);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let serial = run(&[]);
    assert_eq!(
        String::from_utf8(serial.clone()).unwrap().lines().count() as u64,
        total
    );
    assert_eq!(run(&["--parallel", "4"]), serial);
    assert_eq!(run(&["--parallel", "2"]), serial);
    let serial_gz = run(&["--gzip"]);
    let parallel_gz = run(&["--gzip", "--parallel", "4"]);
    assert_eq!(crate::support::gunzip(&parallel_gz), serial);
    assert_eq!(crate::support::gunzip(&serial_gz), serial);
    // Formats whose exports do not join are refused.
    let out = crate::support::hourglass(&[
        "export",
        "--url",
        &url,
        "--series",
        "m",
        "--from",
        from,
        "--to",
        to,
        "--parallel",
        "4",
        "--format",
        "csv",
        "--fields",
        "ts",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ndjson only"));
}
