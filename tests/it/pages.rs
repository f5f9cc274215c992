//! Pages over HTTP: walks through `Link` headers, finality, and every rule of the caching contract (SPEC §4, §5).

use std::collections::HashSet;
use std::path::Path;

use hourglass::archive::SeriesArchive;
use hourglass::archive::deflate::Deflater;
use hourglass::archive::member::{self, MemberMeta};
use hourglass::store::Settings;
use hourglass::time::{ChunkStart, ChunkWidth, parse_rfc3339};
use serde_json::Value;

use crate::support::{FAST, Response, Server, TempDir, gunzip, now_ms, request};

/// Writes a sealed series straight into a data folder: `chunks` are (start, number of events), the width is
/// 10 s, parts hold at most `per_part` events. Event `n` of the whole series is `{"ts":..,"n":n}`.
pub fn seed(data: &Path, name: &str, chunks: &[(&str, usize)], per_part: usize) -> Vec<i64> {
    let dir = data.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let now = now_ms();
    Settings::new(
        ChunkWidth::from_secs(10).unwrap(),
        now - now % 10_000,
        1_400_000_000_000,
    )
    .store(&dir)
    .unwrap();
    let (archive, _) = SeriesArchive::open_alone(&dir).unwrap();
    let mut n = 0;
    let mut all = Vec::new();
    for (start, count) in chunks {
        let start = parse_rfc3339(start).unwrap();
        let events: Vec<i64> = (0..*count)
            .map(|i| start + (i as i64 * 9_999) / *count as i64)
            .collect();
        let parts: Vec<&[i64]> = events.chunks(per_part).collect();
        let members: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(p, ts)| {
                let raw: String = ts
                    .iter()
                    .map(|t| {
                        n += 1;
                        format!("{{\"ts\":{t},\"n\":{}}}\n", n - 1)
                    })
                    .collect();
                let meta = MemberMeta {
                    chunk_start: ChunkStart::from_stored(start),
                    width_secs: 10,
                    part: p as u32,
                    last_part: p + 1 == parts.len(),
                    entries: ts.len() as u32,
                    sealed_at: start + 40_000,
                    first_ts: ts[0],
                    last_ts: ts[ts.len() - 1],
                    raw_len: 0,
                    member_len: 0,
                };
                member::encode(meta, raw.as_bytes(), Deflater::Zlib(6))
            })
            .collect();
        archive.append_chunk(&members).unwrap();
        all.extend(events);
    }
    all
}

/// Chunks months apart, one of them bigger than a page.
pub const SPARSE: &[(&str, usize)] = &[
    ("2014-01-01T00:00:00Z", 3),
    ("2014-01-01T00:00:10Z", 2),
    ("2014-05-17T13:20:00Z", 12),
    ("2014-09-29T23:59:10Z", 4),
    ("2014-09-29T23:59:30Z", 1),
];

/// A server on a data folder seeded with `SPARSE` as series `name`, pages of at most 5 events.
fn sparse_server(tag: &str, name: &str, extra: &[&str]) -> (TempDir, Server) {
    let dir = TempDir::new(tag);
    seed(dir.path(), name, SPARSE, 5);
    let server = Server::start(dir.path(), &pages_of_5(extra));
    (dir, server)
}

/// `--max-page-entries 5`, as the seeds' parts, and `extra`.
fn pages_of_5<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    ["--max-page-entries", "5"]
        .iter()
        .chain(extra)
        .copied()
        .collect()
}

fn numbers(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["n"].as_u64().unwrap())
        .collect()
}

/// Follows `rel` from `start`, returning each page's body.
fn walk(server: &Server, start: &str, direction: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut url = Some(start.to_string());
    while let Some(u) = url {
        let r = server.get(&u);
        assert_eq!(r.status, 200, "{u}: {}", r.text());
        let body = r.json();
        // The body repeats the links, for clients that cannot read headers.
        assert_eq!(
            body[direction].as_str().map(str::to_string),
            r.link(direction),
            "{u}"
        );
        url = r.link(direction);
        pages.push(body);
        assert!(pages.len() < 100, "walk does not end");
    }
    pages
}

#[test]
fn walking_prev_from_the_head_and_next_back_visits_every_event_once() {
    let dir = TempDir::new("walk");
    let total = seed(dir.path(), "w", SPARSE, 5).len() as u64;
    let server = Server::start(dir.path(), &["--max-page-entries", "5"]);

    let back = walk(&server, "/api/series/w/data", "prev");
    let seen: Vec<u64> = back.iter().rev().flat_map(numbers).collect();
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "newest page first, each event once"
    );
    // The 12-event chunk is three parts of 5, 5 and 2; empty months are skipped.
    let counts: Vec<u64> = back.iter().map(|p| p["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, [1, 4, 2, 5, 5, 2, 3]);
    assert_eq!(
        back.last().unwrap()["prev"],
        Value::Null,
        "no page before the first event"
    );

    let oldest = "/api/series/w/data/before/2014_01_01_00_00_10";
    let forward = walk(&server, oldest, "next");
    let seen: Vec<u64> = forward.iter().flat_map(numbers).collect();
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
    // Every sealed page whose next is a before link is final; the newest is not, its next is `after`, where
    // newer events will appear: an empty page that ends the walk.
    let finals: Vec<bool> = forward
        .iter()
        .map(|p| p["final"].as_bool().unwrap())
        .collect();
    assert_eq!(finals, [true, true, true, true, true, true, false, false]);
    assert!(
        forward[6]["next"]
            .as_str()
            .unwrap()
            .contains("/data/after/2014_09_29_23_59_40")
    );
    assert_eq!(
        (forward[7]["count"].as_u64(), &forward[7]["next"]),
        (Some(0), &Value::Null)
    );
}

#[test]
fn page_urls_are_checked() {
    let (_dir, server) = sparse_server("urls", "u", &[]);
    let cases = [
        (
            "/api/series/u/data/before/2014-01-01",
            400,
            "YYYY_MM_DD_HH_MM_SS",
        ),
        (
            "/api/series/u/data/before/2014_01_01_00_00_15",
            400,
            "use 2014_01_01_00_00_10 or 2014_01_01_00_00_20",
        ),
        (
            "/api/series/u/data/after/2014_13_01_00_00_00",
            400,
            "YYYY_MM_DD_HH_MM_SS",
        ),
        ("/api/series/nope/data", 404, "no series"),
        (
            "/api/series/nope/data/before/2014_01_01_00_00_10",
            404,
            "no series",
        ),
        (
            "/api/series/u/data/before/2014_05_17_13_20_10/part/3",
            404,
            "3 part",
        ),
        (
            "/api/series/u/data/before/2014_05_17_13_20_10/part/x",
            400,
            "not a number",
        ),
        ("/api/series/U/data", 400, "series name"),
    ];
    for (url, status, words) in cases {
        let r = server.get(url);
        assert_eq!(r.status, status, "{url}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(words), "{url}: {message}");
    }
    // An empty chunk inside the range is an empty page that links onward; so is one in the future.
    let empty = server
        .get("/api/series/u/data/before/2014_03_01_00_00_00")
        .json();
    assert_eq!(
        (empty["count"].as_u64(), empty["final"].as_bool()),
        (Some(0), Some(true))
    );
    assert!(
        empty["prev"]
            .as_str()
            .unwrap()
            .ends_with("before/2014_01_01_00_00_20")
    );
    assert!(
        empty["next"]
            .as_str()
            .unwrap()
            .ends_with("before/2014_05_17_13_20_10/part/0")
    );
    let future = server.get("/api/series/u/data/before/2999_01_01_00_00_00");
    assert_eq!(future.status, 200);
    assert_eq!(future.header("cache-control"), Some("no-cache"));
    assert_eq!(future.json()["count"], 0);
    // `after` a point: the first page at or after it, never cached.
    let after = server.get("/api/series/u/data/after/2014_02_01_00_00_00");
    assert_eq!(after.header("cache-control"), Some("no-cache"));
    assert_eq!(numbers(&after.json()), [5, 6, 7, 8, 9]);
}

fn validators(r: &Response) -> (String, String, Option<String>) {
    (
        r.header("etag").unwrap().to_string(),
        r.header("link").unwrap_or("").to_string(),
        r.header("last-modified").map(str::to_string),
    )
}

const REPRESENTATIONS: [&[(&str, &str)]; 4] = [
    &[],
    &[("Accept-Encoding", "gzip")],
    &[("Accept", "application/x-ndjson")],
    &[
        ("Accept", "application/x-ndjson"),
        ("Accept-Encoding", "gzip"),
    ],
];

#[test]
fn a_final_page_never_changes_across_ingest_restarts_and_an_empty_cache() {
    let dir = TempDir::new("final");
    let server = Server::start(dir.path(), FAST);
    // Two sealed chunks: the older one's page becomes final once the newer is sealed.
    let t = (now_ms() / 1000 + 1) * 1000;
    for (k, ts) in [t, t + 1000].iter().enumerate() {
        let body: String = (0..3)
            .map(|i| format!("{{\"ts\":{},\"k\":{k},\"i\":{i}}}\n", ts + i))
            .collect();
        assert_eq!(
            server.post_ndjson("/api/series/f/events", &body).status,
            202
        );
    }
    server.wait_sealed("f", t + 1000);
    let url = format!("/api/series/f/data/before/{}", stamp(t + 1000));
    let fetch = |server: &Server| -> Vec<Fetched> {
        REPRESENTATIONS
            .iter()
            .map(|h| {
                let r = request(server.addr, "GET", &url, h, b"").unwrap();
                assert_eq!(r.status, 200);
                assert_eq!(
                    r.header("cache-control"),
                    Some("public, max-age=31536000, immutable")
                );
                assert_eq!(r.header("vary"), Some("Accept, Accept-Encoding"));
                (
                    r.body.clone(),
                    validators(&r),
                    r.header("content-encoding").map(str::to_string),
                )
            })
            .collect()
    };
    let first = fetch(&server);
    assert!(first[0].1.2.is_some(), "a final page has Last-Modified");
    let etags: HashSet<&String> = first.iter().map(|f| &f.1.0).collect();
    assert_eq!(etags.len(), 4, "each representation has its own ETag");
    let plain = String::from_utf8(first[2].0.clone()).unwrap();
    assert_eq!(plain.lines().count(), 3);
    assert_eq!(
        gunzip(&first[3].0),
        first[2].0,
        "gzip'd NDJSON is the same lines"
    );
    assert_eq!(gunzip(&first[1].0), first[0].0);

    // More events, in a later chunk.
    let body = format!("{{\"ts\":{},\"k\":9}}\n", now_ms());
    assert_eq!(
        server.post_ndjson("/api/series/f/events", &body).status,
        202
    );
    assert_eq!(fetch(&server), first, "after more ingest");
    server.stop();
    let server = Server::start(dir.path(), FAST);
    assert_eq!(fetch(&server), first, "after a restart");
    server.stop();
    let server = Server::start_fast(dir.path(), &["--page-cache-bytes", "0"]);
    assert_eq!(fetch(&server), first, "without the server's page cache");
}

/// A response's body, validators (ETag, Link, Last-Modified) and content encoding.
type Fetched = (Vec<u8>, (String, String, Option<String>), Option<String>);

fn stamp(t: i64) -> String {
    hourglass::time::format_stamp(t)
}

#[test]
fn validators_answer_304_by_rfc_9110_precedence() {
    let (_dir, server) = sparse_server("cond", "c", &[]);
    let url = "/api/series/c/data/before/2014_01_01_00_00_10";
    let r = server.get(url);
    let (etag, link, lm) = validators(&r);
    let lm = lm.unwrap();
    assert_eq!(
        lm, "Wed, 01 Jan 2014 00:00:40 GMT",
        "Last-Modified is the seal time in the archive"
    );
    let get = |h: &[(&str, &str)]| request(server.addr, "GET", url, h, b"").unwrap();
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"nope\", {etag}"),
        "*".to_string(),
    ] {
        let r = get(&[("If-None-Match", &inm)]);
        assert_eq!(r.status, 304, "If-None-Match: {inm}");
        assert!(r.body.is_empty());
        assert_eq!(
            (r.header("etag"), r.header("link")),
            (Some(etag.as_str()), Some(link.as_str()))
        );
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
    }
    assert_eq!(get(&[("If-None-Match", "\"nope\"")]).status, 200);
    assert_eq!(get(&[("If-Modified-Since", &lm)]).status, 304);
    assert_eq!(
        get(&[("If-Modified-Since", "Wed, 01 Jan 2014 00:00:39 GMT")]).status,
        200
    );
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(
        get(&[("If-None-Match", "\"nope\""), ("If-Modified-Since", &lm)]).status,
        200
    );
    // HEAD: the same headers, no body.
    let h = request(server.addr, "HEAD", url, &[], b"").unwrap();
    assert_eq!((h.status, h.header("etag")), (200, Some(etag.as_str())));
    assert!(h.body.is_empty());
    // CORS, for browsers on other origins.
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("Link")
    );
    let pre = request(
        server.addr,
        "OPTIONS",
        url,
        &[("Access-Control-Request-Headers", "if-none-match")],
        b"",
    )
    .unwrap();
    assert_eq!(pre.status, 204);
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap()
            .contains("If-None-Match")
    );
}

#[test]
fn the_head_is_never_cached_and_its_etag_changes_only_with_the_series() {
    let dir = TempDir::new("head");
    let server = Server::start(dir.path(), FAST);
    let t = now_ms();
    assert_eq!(
        server
            .post_ndjson("/api/series/h/events", &format!("{{\"ts\":{t}}}\n"))
            .status,
        202
    );
    let a = server.get("/api/series/h/data");
    assert_eq!(a.header("cache-control"), Some("no-cache"));
    assert_eq!(
        a.header("last-modified"),
        None,
        "no Last-Modified on a page that is not final"
    );
    let etag = a.header("etag").unwrap().to_string();
    let again = request(
        server.addr,
        "GET",
        "/api/series/h/data",
        &[("If-None-Match", &etag)],
        b"",
    )
    .unwrap();
    assert_eq!(again.status, 304);
    // Sealing alone changes nothing the head shows.
    server.wait_sealed("h", t);
    assert_eq!(
        server.get("/api/series/h/data").header("etag"),
        Some(etag.as_str())
    );
    // A new event does.
    assert_eq!(
        server
            .post_ndjson(
                "/api/series/h/events",
                &format!("{{\"ts\":{}}}\n", now_ms())
            )
            .status,
        202
    );
    let b = server.get("/api/series/h/data");
    assert_ne!(b.header("etag"), Some(etag.as_str()));
    // The page that was the head is now a `before` page whose next is `after`: not final, not cached.
    let before = server.get(&b.link("prev").unwrap());
    assert!(
        before.json()["next"].as_str().unwrap().contains("/after/"),
        "{}",
        before.text()
    );
    assert_eq!(before.header("cache-control"), Some("no-cache"));
    assert_eq!(before.header("last-modified"), None);
    assert_eq!(before.json()["final"], false);
    // A series with no events has an empty head without links.
    assert_eq!(
        request(server.addr, "PUT", "/api/series/empty", &[], b"")
            .unwrap()
            .status,
        201
    );
    let e = server.get("/api/series/empty/data");
    assert_eq!((e.status, e.header("link")), (200, None));
    assert_eq!(e.json()["count"], 0);
    // The short URLs serve `default`, and link with the long form.
    assert_eq!(
        server
            .post_ndjson("/api/data", &format!("{{\"ts\":{}}}\n", now_ms()))
            .status,
        202
    );
    let d = server.get("/api/data").json();
    assert_eq!(
        (d["series"].as_str(), d["count"].as_u64()),
        (Some("default"), Some(1))
    );
}

#[test]
fn a_read_token_makes_pages_private() {
    let (_dir, server) = sparse_server("private", "p", &["--read-token", "r"]);
    let url = "/api/series/p/data/before/2014_01_01_00_00_10";
    assert_eq!(server.get(url).status, 401);
    let r = request(
        server.addr,
        "GET",
        url,
        &[("Authorization", "Bearer r")],
        b"",
    )
    .unwrap();
    assert_eq!(
        r.header("cache-control"),
        Some("private, max-age=31536000, immutable")
    );
    // Answers from memory (the page cache, a 304) ask for the token too.
    let etag = r.header("etag").unwrap();
    assert_eq!(server.get(url).status, 401);
    let again = request(server.addr, "GET", url, &[("If-None-Match", etag)], b"").unwrap();
    assert_eq!(again.status, 401);
    let with_token = [("Authorization", "Bearer r"), ("If-None-Match", etag)];
    assert_eq!(
        request(server.addr, "GET", url, &with_token, b"")
            .unwrap()
            .status,
        304
    );
    // Series info changes with every batch and is private like the rest: no shared cache may keep it (it had
    // no Cache-Control, so one with a default lifetime would). /metrics needs the token too; probes do not.
    let with_token = |url: &str| {
        request(
            server.addr,
            "GET",
            url,
            &[("Authorization", "Bearer r")],
            b"",
        )
        .unwrap()
    };
    for url in ["/api/series", "/api/series/p", "/metrics"] {
        assert_eq!(server.get(url).status, 401, "{url}");
        let r = with_token(url);
        assert_eq!(r.status, 200, "{url}");
        let control = r.header("cache-control").unwrap_or("");
        assert!(
            control == "private, no-cache" || control == "no-store",
            "{url}: {control}"
        );
    }
    for url in ["/healthz", "/readyz"] {
        assert_eq!(server.get(url).status, 200, "{url}");
    }
}

/// An answer as a reader keeps it: URL, ETag, Link, body.
type Kept = (String, Option<String>, Option<String>, Vec<u8>);

/// Every answer a reader can collect from a series: each page from the head back (JSON and NDJSON, with their
/// ETags and links), and a histogram and an export of the whole range.
fn everything(server: &Server, name: &str) -> Vec<Kept> {
    let mut seen = Vec::new();
    let mut url = Some(format!("/api/series/{name}/data"));
    while let Some(u) = url {
        for accept in ["application/json", "application/x-ndjson"] {
            let r = request(server.addr, "GET", &u, &[("Accept", accept)], b"").unwrap();
            assert_eq!(r.status, 200, "{u}: {}", r.text());
            seen.push((
                u.clone(),
                r.header("etag").map(str::to_string),
                r.header("link").map(str::to_string),
                r.body.clone(),
            ));
        }
        url = server.get(&u).link("prev");
    }
    for u in [
        format!("/api/series/{name}/histogram?from=1388534400&to=1412035200&step=1h"),
        format!("/api/series/{name}/histogram?from=1411257600&to=1411516800&step=10s"),
        format!("/api/series/{name}/export?from=1388534400&to=1412035200"),
    ] {
        let r = server.get(&u);
        assert_eq!(r.status, 200, "{u}: {}", r.text());
        seen.push((
            u,
            r.header("etag").map(str::to_string),
            None,
            r.body.clone(),
        ));
    }
    seen
}

#[test]
fn a_series_reads_the_same_whatever_memory_holds_of_its_history() {
    let dir = TempDir::new("history");
    // Chunks in many hours, sparse and dense, and one hour summarised by a file made before it.
    let mut chunks: Vec<(String, usize)> =
        SPARSE.iter().map(|(t, n)| (t.to_string(), *n)).collect();
    for h in 0..30 {
        chunks.push((
            format!("2014-09-2{}T{:02}:00:{}0Z", 1 + h / 24 * 2, h % 24, h % 6),
            1 + h % 4,
        ));
    }
    chunks.sort();
    chunks.dedup_by(|a, b| a.0 == b.0);
    let refs: Vec<(&str, usize)> = chunks.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    seed(dir.path(), "h", &refs, 5);
    let run = |extra: &[&str]| {
        let server = Server::start(dir.path(), &pages_of_5(extra));
        let seen = everything(&server, "h");
        server.stop();
        seen
    };
    let plenty = run(&[]);
    let walked: usize = plenty.iter().filter(|s| s.0.contains("/data")).count() / 2;
    assert!(walked > 30, "{walked} pages");
    // An index cache of one byte: every lookup reads its hour's index again; links across hours come from
    // the hour summaries. The same answers, to the byte.
    assert_eq!(run(&["--index-cache-bytes", "1"]), plenty);
    // The hour summaries lost: rebuilt from the hours' own indexes, the same answers again.
    let summaries = dir.path().join("h/hours.idx");
    assert!(summaries.is_file());
    std::fs::remove_file(&summaries).unwrap();
    assert_eq!(run(&[]), plenty);
    assert!(summaries.is_file(), "the summaries are written again");
}

#[test]
fn pages_come_in_zstd_when_the_client_prefers_it_under_their_own_etag() {
    let (_dir, server) = sparse_server("pages-zstd", "z", &[]);
    let get = |path: &str, headers: &[(&str, &str)]| {
        request(server.addr, "GET", path, headers, b"").unwrap()
    };
    let final_page = "/api/series/z/data/before/2014_05_17_13_20_10";
    for (path, accept) in [
        (final_page, "application/json"),
        (final_page, "application/x-ndjson"),
        ("/api/series/z/data", "application/json"),
    ] {
        let plain = get(path, &[("Accept", accept)]);
        let gz = get(path, &[("Accept", accept), ("Accept-Encoding", "gzip")]);
        let z = get(
            path,
            &[("Accept", accept), ("Accept-Encoding", "zstd, gzip;q=0.5")],
        );
        assert_eq!(plain.status, 200, "{path}: {}", plain.text());
        assert_eq!(
            (z.status, z.header("content-encoding")),
            (200, Some("zstd")),
            "{path} {accept}"
        );
        assert_eq!(
            zstd::decode_all(&z.body[..]).unwrap(),
            plain.body,
            "{path} {accept}"
        );
        assert_eq!(z.header("link"), plain.header("link"));
        assert_eq!(z.header("cache-control"), plain.header("cache-control"));
        // Another representation, another ETag; its own revalidates.
        let etags = [plain.header("etag"), gz.header("etag"), z.header("etag")];
        assert!(etags[0] != etags[2] && etags[1] != etags[2], "{etags:?}");
        let etag = z.header("etag").unwrap();
        let again = get(
            path,
            &[
                ("Accept", accept),
                ("Accept-Encoding", "zstd, gzip;q=0.5"),
                ("If-None-Match", etag),
            ],
        );
        assert_eq!(again.status, 304, "{path} {accept}");
    }
    // Browsers list zstd with gzip at the same quality: they get gzip.
    let browser = get(
        final_page,
        &[("Accept-Encoding", "gzip, deflate, br, zstd")],
    );
    assert_eq!(browser.header("content-encoding"), Some("gzip"));
}
