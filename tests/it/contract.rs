//! The caching contract as a property: an answer sent as `immutable` is the answer at that URL for ever, byte
//! for byte under the same ETag, or `410 Gone` once retention removed it; and no ETag ever names two bodies.
//!
//! Phase A runs with the server's clock moved to a few seconds before an hour boundary four hours back:
//! writers ingest across chunk and hour boundaries while a reader collects every answer it gets (pages in
//! their four representations, exports in every format and encoding, histograms). The server is stopped, one
//! event is imported into a range phase A saw empty and final, and phase B runs on the real clock with
//! `--retention 4h`, which removes phase A's first hour, the imported event with it; writers and the reader go
//! on. Then `kill -9`, a restart, and every answer ever marked immutable is fetched again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Response, Server, TempDir, hourglass, now_ms, request};

const HOUR: i64 = 3_600_000;
const SERIES: &str = "/api/series/k";

/// The four representations of a page, and the two encodings of the other answers.
const PAGE_REPRS: [(&str, &str); 4] = [
    ("application/json", "identity"),
    ("application/json", "gzip"),
    ("application/x-ndjson", "identity"),
    ("application/x-ndjson", "gzip"),
];

/// A request as the reader made it: URL, Accept, Accept-Encoding.
type Key = (String, &'static str, &'static str);

/// An answer as the reader got it.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    etag: Option<String>,
    link: Option<String>,
    immutable: bool,
    body: Vec<u8>,
}

impl Answer {
    fn of(r: &Response) -> Answer {
        Answer {
            status: r.status,
            etag: r.header("etag").map(str::to_string),
            link: r.header("link").map(str::to_string),
            immutable: r
                .header("cache-control")
                .is_some_and(|c| c.contains("immutable")),
            body: r.body.clone(),
        }
    }
}

#[derive(Default)]
struct Seen {
    /// The first immutable answer at each request, and in which phase it was seen.
    finals: HashMap<Key, (char, Answer)>,
    /// Every body each ETag was ever sent with, in any answer: there must be one per ETag.
    by_etag: HashMap<String, (Key, Vec<u8>)>,
}

impl Seen {
    fn record(&mut self, key: Key, phase: char, a: &Answer) {
        if a.status != 200 {
            return;
        }
        if let Some(etag) = &a.etag {
            match self.by_etag.get(etag) {
                Some((first, body)) => assert!(
                    *body == a.body,
                    "ETag {etag} names two bodies: at {first:?} and at {key:?}"
                ),
                None => {
                    self.by_etag
                        .insert(etag.clone(), (key.clone(), a.body.clone()));
                }
            }
        }
        if a.immutable {
            match self.finals.get(&key) {
                // Within a phase an immutable answer never changes at all.
                Some((p, first)) if *p == phase => assert_eq!(
                    (&first.etag, &first.link, &first.body),
                    (&a.etag, &a.link, &a.body),
                    "{key:?} changed within phase {phase}"
                ),
                Some(_) => {}
                None => {
                    self.finals.insert(key, (phase, a.clone()));
                }
            }
        }
    }
}

fn get(addr: SocketAddr, url: &str, accept: &str, encoding: &str) -> Option<Response> {
    request(
        addr,
        "GET",
        url,
        &[("Accept", accept), ("Accept-Encoding", encoding)],
        b"",
    )
    .ok()
}

/// One pass of the reader: the pages from the head back, and the exports and histograms of what is sealed.
fn read_everything(addr: SocketAddr, h0: i64, phase: char, seen: &Mutex<Seen>) {
    let mut urls = Vec::new();
    let mut url = Some(format!("{SERIES}/data"));
    while let Some(u) = url.take() {
        let Some(r) = get(addr, &u, "application/json", "identity") else {
            return;
        };
        if r.status != 200 {
            break;
        }
        url = r.link("prev");
        urls.push(u);
    }
    let info = match get(addr, SERIES, "application/json", "identity") {
        Some(r) if r.status == 200 => r.json(),
        _ => return,
    };
    let sealed = info["sealed_watermark"]
        .as_str()
        .map_or(0, crate::support::parse_time);
    let secs = |t: i64| t.div_euclid(1000);
    // Phase A's first hour (retention removes it), its second (the import renames it), the last seconds.
    let mut ranges = vec![(h0 - HOUR, h0 - HOUR + 20 * 60_000)];
    let sealed = sealed.div_euclid(1000) * 1000;
    for to in [sealed - 3_000, sealed] {
        for from in [h0 - HOUR, h0, sealed - 10_000] {
            if to > from {
                ranges.push((from, to));
            }
        }
    }
    for (from, to) in &ranges {
        for format in ["ndjson", "json", "csv&fields=ts,w,i"] {
            urls.push(format!(
                "{SERIES}/export?from={}&to={}&format={format}",
                secs(*from),
                secs(*to)
            ));
        }
        urls.push(format!(
            "{SERIES}/histogram?from={}&to={}&step=60s",
            secs(*from),
            secs(*to)
        ));
    }
    for u in urls {
        for (accept, encoding) in PAGE_REPRS {
            let Some(r) = get(addr, &u, accept, encoding) else {
                return;
            };
            seen.lock()
                .unwrap()
                .record((u.clone(), accept, encoding), phase, &Answer::of(&r));
        }
    }
}

/// Writers and a reader for `run`; returns how many batches were acknowledged.
fn traffic(
    server: &Server,
    offset: i64,
    h0: i64,
    phase: char,
    run: Duration,
    seen: &Arc<Mutex<Seen>>,
) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (addr, stop) = (server.addr, stop.clone());
            std::thread::spawn(move || {
                let mut acked = 0;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = now_ms() + offset;
                    let body: String = (0..5)
                        .map(|k| format!("{{\"ts\":{},\"w\":{w},\"i\":{}}}\n", t - k * 97, i + k))
                        .collect();
                    i += 5;
                    let headers = [("Content-Type", "application/x-ndjson")];
                    if let Ok(r) = request(
                        addr,
                        "POST",
                        &format!("{SERIES}/events"),
                        &headers,
                        body.as_bytes(),
                    ) && r.status == 202
                    {
                        acked += 1;
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
                acked
            })
        })
        .collect();
    let reader = {
        let (addr, stop, seen) = (server.addr, stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                read_everything(addr, h0, phase, &seen);
            }
        })
    };
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    writers.into_iter().map(|w| w.join().unwrap()).sum()
}

#[test]
fn immutable_answers_never_change_across_ingest_import_retention_and_kill_9() {
    let dir = TempDir::new("contract");
    let seen: Arc<Mutex<Seen>> = Arc::default();
    // Four hours back, aligned; phase A's clock starts 6 s before it.
    let h0 = (now_ms() - 4 * HOUR).div_euclid(HOUR) * HOUR;
    let offset = h0 - 6_000 - now_ms();
    let offset_arg = offset.to_string();
    let server = Server::start_fast(dir.path(), &["--clock-offset-ms", &offset_arg]);
    let acked_a = traffic(&server, offset, h0, 'A', Duration::from_secs(12), &seen);
    assert!(acked_a > 100, "{acked_a} batches");
    // Let the last chunks seal, and read once more: more of phase A is final now.
    server.wait_sealed("k", now_ms() + offset - 1_500);
    read_everything(server.addr, h0, 'A', &seen);
    server.stop();
    {
        let seen = seen.lock().unwrap();
        let pages = seen
            .finals
            .keys()
            .filter(|k| k.0.contains("/before/"))
            .count();
        let ranges = seen
            .finals
            .keys()
            .filter(|k| !k.0.contains("/before/"))
            .count();
        assert!(
            pages > 40 && ranges > 20,
            "too few final answers: {pages} pages, {ranges} ranges"
        );
        assert!(
            seen.finals
                .keys()
                .any(|k| k.0.contains(&format!("from={}&", (h0 - HOUR) / 1000))),
            "the range to import into was never final"
        );
    }

    // One event into the empty range phase A saw as final.
    let src = dir.path().join("src");
    let hour = chrono::DateTime::from_timestamp_millis(h0 - HOUR)
        .unwrap()
        .format("%Y%m%d%H");
    std::fs::create_dir_all(src.join("p")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(
        &mut gz,
        format!("{{\"ts\":{},\"w\":9,\"i\":0}}\n", h0 - HOUR + 600_000).as_bytes(),
    )
    .unwrap();
    std::fs::write(src.join(format!("p/{hour}.json.gz")), gz.finish().unwrap()).unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    let out = hourglass(&[
        "import",
        &src.to_string_lossy(),
        "--series",
        "k",
        "--data",
        &data,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Phase B: the real clock, with retention removing phase A's first hour (and the import in it).
    let b_args = [
        "--chunk-seconds",
        "1",
        "--lateness",
        "1",
        "--retention",
        "4h",
    ];
    let server = Server::start(dir.path(), &b_args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.get(SERIES).json()["retained_from"].is_null() {
        assert!(Instant::now() < deadline, "retention did not run");
        std::thread::sleep(Duration::from_millis(50));
    }
    let acked_b = traffic(&server, 0, h0, 'B', Duration::from_secs(5), &seen);
    assert!(acked_b > 30, "{acked_b} batches");
    server.kill9();

    let server = Server::start(dir.path(), &b_args);
    let seen = seen.lock().unwrap();
    let (mut same, mut gone, mut renamed) = (0, 0, 0);
    for ((url, accept, encoding), (phase, first)) in &seen.finals {
        let r = get(server.addr, url, accept, encoding).unwrap();
        let now = Answer::of(&r);
        if now.status == 410 {
            gone += 1;
            continue;
        }
        assert_eq!(now.status, 200, "{url} {accept} {encoding}: {}", r.text());
        let etag = first.etag.as_deref().unwrap();
        if *phase == 'B' {
            // Nothing since phase B could change it: the same answer, to the byte.
            assert_eq!(
                (&now.etag, &now.link, &now.body),
                (&first.etag, &first.link, &first.body),
                "{url} {accept} {encoding} changed after kill -9"
            );
            same += 1;
        } else if now.etag.as_deref() == Some(etag) {
            assert_eq!(
                (&now.link, &now.body),
                (&first.link, &first.body),
                "{url}: same ETag, other answer"
            );
            same += 1;
        } else {
            // The import gave the series a new revision: a new ETag, and the old one no longer revalidates.
            let headers = [
                ("Accept", *accept),
                ("Accept-Encoding", *encoding),
                ("If-None-Match", etag),
            ];
            let again = request(server.addr, "GET", url, &headers, b"").unwrap();
            assert_eq!(again.status, 200, "{url}: the old ETag still revalidates");
            renamed += 1;
        }
        if let Some(etag) = &now.etag
            && let Some((key, body)) = seen.by_etag.get(etag)
        {
            assert!(
                *body == now.body,
                "ETag {etag} names two bodies: {key:?} and {url} now"
            );
        }
    }
    eprintln!(
        "immutable answers fetched again: {same} the same, {gone} gone, {renamed} renamed by the import"
    );
    assert!(
        same > 40 && gone > 40 && renamed > 40,
        "same {same}, gone {gone}, renamed {renamed}"
    );
}
