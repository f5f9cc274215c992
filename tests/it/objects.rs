//! Sealed hours on object storage (`--archive`), against real stores on 127.0.0.1 (`stores.rs`): Azurite for
//! `az://`, SeaweedFS for `s3://`. Hours are written with a wide lateness and sealed at the next start, so a
//! test makes several complete hours in seconds.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::stores::{self, Store};
use crate::support::{Response, Server, TempDir, gunzip, now_ms, parse_time};

pub const HOUR: i64 = 3_600_000;
pub const SERIES: &str = "s";

/// Events posted by `seed`: per hour, its start and its lines' `i`.
pub struct Seeded {
    pub hours: Vec<i64>,
    pub events: usize,
}

/// Posts `per_hour` events into each of the `hours` hours before the last complete one, into a server with a
/// lateness wide enough to take them, and stops it: they are in the log, sealed at the next start.
pub fn seed(data: &Path, hours: i64, per_hour: usize) -> Seeded {
    let lateness = ((hours + 2) * 3600).to_string();
    let server = Server::start(data, &["--chunk-seconds", "1", "--lateness", &lateness]);
    let this_hour = now_ms().div_euclid(HOUR) * HOUR;
    let starts: Vec<i64> = (2..hours + 2).rev().map(|k| this_hour - k * HOUR).collect();
    let mut i = 0;
    for &start in &starts {
        let body: String = (0..per_hour)
            .map(|n| {
                i += 1;
                let t = start + (n as i64 + 1) * (HOUR / (per_hour as i64 + 2));
                format!("{{\"ts\":{t},\"i\":{i}}}\n")
            })
            .collect();
        let r = server.post_ndjson(&format!("/api/series/{SERIES}/events"), &body);
        assert_eq!(r.status, 202, "{}", r.text());
    }
    // The sealer makes the series' folder at its next pass: the series is the same one at every later start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !data.join(SERIES).join("series.json").exists() {
        assert!(Instant::now() < deadline, "the series folder is not made");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
    Seeded {
        hours: starts,
        events: i,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn stem(hour: i64) -> String {
    chrono::DateTime::from_timestamp_millis(hour)
        .unwrap()
        .format("%Y%m%d%H")
        .to_string()
}

/// A writer with `--archive` on `store`, sealing what the log holds at once.
pub fn writer(data: &Path, store: &Store, prefix: &str, log: &Path, extra: &[&str]) -> Server {
    let url = store.url(prefix);
    let mut args = vec!["--chunk-seconds", "1", "--lateness", "1", "--archive", &url];
    args.extend(extra);
    Server::start_env(data, &args, &store.env(), log)
}

/// Waits until the series says every hour before `t` is on the object store.
pub fn wait_uploaded(server: &Server, t: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = server.get(&format!("/api/series/{SERIES}")).json();
        if info["uploaded_through"].as_str().map(parse_time) >= Some(t) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not uploaded through {t} in time: {info}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every page of the series from the head back along `prev`: URL and answer.
pub fn walk(server: &Server) -> Vec<(String, Response)> {
    crate::support::walk(server, SERIES)
}

/// Final pages (the ones that may be cached) as a comparable list: URL, ETag, Link and body.
pub fn finals(pages: &[(String, Response)]) -> Vec<(String, String, String, Vec<u8>)> {
    pages
        .iter()
        .filter(|(_, p)| {
            p.header("cache-control")
                .is_some_and(|c| c.contains("immutable"))
        })
        .map(|(u, p)| {
            let h = |name| p.header(name).unwrap_or_default().to_string();
            (u.clone(), h("etag"), h("link"), p.body.clone())
        })
        .collect()
}

pub fn metric(server: &Server, name: &str) -> f64 {
    let text = server.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits for a gauge to read `value`: it is set at the end of the uploader's pass, after what it counts.
fn wait_metric(server: &Server, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(server, name) != value {
        assert!(
            Instant::now() < deadline,
            "{name} stays at {}",
            metric(server, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_writer_uploads_complete_hours_and_serves_them_from_the_store_as_from_its_folder() {
    for store in stores::each("a_writer_uploads_complete_hours") {
        let kind = store.kind;
        let work = TempDir::new("objects-upload");
        let (data, local) = (work.path().join("data"), work.path().join("local"));
        let seeded = seed(&data, 3, 40);
        copy_dir(&data, &local);

        let log = work.path().join("log");
        let server = writer(&data, &store, "p", &log, &["--local-hours", "1"]);
        let last = *seeded.hours.last().unwrap();
        wait_uploaded(&server, last + HOUR);

        // Each hour is an object valid for zcat, beside its index and its members' summaries; the hours'
        // summaries and the settings.
        let objects = store.list();
        let mut expected: Vec<String> = seeded
            .hours
            .iter()
            .flat_map(|&h| {
                [
                    format!("p/s/{}.idx", stem(h)),
                    format!("p/s/{}.json.gz", stem(h)),
                    format!("p/s/{}.sum", stem(h)),
                ]
            })
            .collect();
        expected.extend(["p/s/hours.idx".to_string(), "p/s/series.json".to_string()]);
        expected.sort();
        assert_eq!(objects, expected, "{kind:?}");
        let mut seen = 0;
        for &h in &seeded.hours {
            let lines = gunzip(&store.get(&format!("p/s/{}.json.gz", stem(h))).unwrap());
            let lines = String::from_utf8(lines).unwrap();
            for line in lines.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let t = v["ts"].as_i64().unwrap();
                assert!(t >= h && t < h + HOUR, "{kind:?}: {line} in the hour {h}");
                seen += 1;
            }
        }
        assert_eq!(seen, seeded.events, "{kind:?}");
        // The newest uploaded hour stays in the folder (--local-hours 1), the older ones went.
        let deadline = Instant::now() + Duration::from_secs(10);
        let local_archives = || crate::support::archive_files(&data.join(SERIES)).len();
        while local_archives() > 1 {
            assert!(Instant::now() < deadline, "{kind:?}: local copies stay");
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_metric(&server, "hourglass_upload_backlog_archives", 0.0);
        assert!(metric(&server, "hourglass_archives_uploaded_total") >= 3.0);

        // The same pages, ETags and links as a server that has every hour in its folder, and the same exports
        // and histograms.
        let folder = Server::start(&local, &["--chunk-seconds", "1", "--lateness", "1"]);
        folder.wait_sealed(SERIES, last + HOUR);
        let from_store = walk(&server);
        let from_folder = walk(&folder);
        let count = |pages: &[(String, Response)]| -> u64 {
            pages
                .iter()
                .map(|(_, p)| p.json()["count"].as_u64().unwrap())
                .sum()
        };
        assert_eq!(count(&from_store), seeded.events as u64, "{kind:?}");
        assert!(finals(&from_store).len() >= 3 * 40 - 1, "{kind:?}");
        let (a, b) = (finals(&from_store), finals(&from_folder));
        let heads = |f: &[(String, String, String, Vec<u8>)]| -> Vec<(String, String, String)> {
            f.iter()
                .map(|(u, e, l, _)| (u.clone(), e.clone(), l.clone()))
                .collect()
        };
        assert_eq!(heads(&a), heads(&b), "{kind:?}");
        assert!(a == b, "{kind:?}: the same pages hold other bytes");
        let (from, to) = (seeded.hours[0] / 1000, (last + HOUR) / 1000);
        for url in [
            format!("/api/series/{SERIES}/export?from={from}&to={to}"),
            format!("/api/series/{SERIES}/histogram?from={from}&to={to}&step=10m"),
        ] {
            let (a, b) = (server.get(&url), folder.get(&url));
            assert_eq!(a.status, 200, "{kind:?} {url}: {}", a.text());
            assert_eq!(a.body, b.body, "{kind:?} {url}");
            assert_eq!(a.header("etag"), b.header("etag"), "{kind:?} {url}");
        }
        folder.stop();
        server.stop();
        assert!(
            !server_log_has_errors(&log),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
    }
}

fn server_log_has_errors(log: &Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("ERROR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != ".lock" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every archive object's lines, by object name.
fn archive_objects(store: &Store) -> Vec<(String, Vec<u8>)> {
    store
        .list()
        .into_iter()
        .filter(|n| n.ends_with(".json.gz"))
        .map(|n| {
            let bytes = store.get(&n).unwrap();
            (n, bytes)
        })
        .collect()
}

fn lines_of(objects: &[(String, Vec<u8>)]) -> usize {
    objects
        .iter()
        .map(|(_, b)| gunzip(b).iter().filter(|&&c| c == b'\n').count())
        .sum()
}

#[test]
fn a_writer_killed_mid_upload_loses_nothing_and_leaves_no_second_object() {
    for store in stores::each("a_writer_killed_mid_upload") {
        let kind = store.kind;
        let work = TempDir::new("objects-kill");
        let data = work.path().join("data");
        let seeded = seed(&data, 6, 50);
        let log = work.path().join("log");
        let last = *seeded.hours.last().unwrap();
        let keep = ["--local-hours", "100"];
        // Killed as soon as the first object is there, wherever the uploader is then.
        let server = writer(&data, &store, "k", &log, &keep);
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.list().is_empty() {
            assert!(Instant::now() < deadline, "{kind:?}: nothing uploaded");
        }
        server.kill9();
        let server = writer(&data, &store, "k", &log, &keep);
        wait_uploaded(&server, last + HOUR);
        server.stop();
        let objects = archive_objects(&store);
        assert_eq!(
            objects.len(),
            seeded.hours.len(),
            "{kind:?}: {:?}",
            store.list()
        );
        assert_eq!(lines_of(&objects), seeded.events, "{kind:?}");

        // A crash after the objects were written and before the settings said so: the next start uploads the
        // same hours again, finds each object there with the same bytes, and goes on.
        let settings = data.join(SERIES).join("series.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&settings).unwrap()).unwrap();
        let uploaded = v.as_object_mut().unwrap().remove("uploaded_through");
        assert!(uploaded.is_some(), "{v}");
        std::fs::write(&settings, serde_json::to_vec(&v).unwrap()).unwrap();
        let again = writer(&data, &store, "k", &log, &keep);
        wait_uploaded(&again, last + HOUR);
        again.stop();
        assert_eq!(archive_objects(&store), objects, "{kind:?}");

        // Every event is there to read once the folder keeps nothing.
        let lean = writer(&data, &store, "k", &log, &["--local-hours", "0"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::support::archive_files(&data.join(SERIES)).len() > 1 {
            assert!(Instant::now() < deadline, "{kind:?}: local copies stay");
            std::thread::sleep(Duration::from_millis(50));
        }
        let count: u64 = walk(&lean)
            .iter()
            .map(|(_, p)| p.json()["count"].as_u64().unwrap())
            .sum();
        assert_eq!(count, seeded.events as u64, "{kind:?}");
        lean.stop();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("ERROR"), "{kind:?}: {text}");
    }
}

#[test]
fn with_the_store_down_ingest_goes_on_and_uploads_resume_by_themselves() {
    for mut store in stores::each("with_the_store_down_uploads_resume") {
        let kind = store.kind;
        let work = TempDir::new("objects-down");
        let data = work.path().join("data");
        let seeded = seed(&data, 2, 20);
        let log = work.path().join("log");
        let last = *seeded.hours.last().unwrap();
        store.halt();
        let server = writer(&data, &store, "d", &log, &["--local-hours", "0"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Both hours wait once the sealer has sealed what the log holds (the first pass may come before).
        while metric(&server, "hourglass_upload_failures_total") < 1.0
            || metric(&server, "hourglass_upload_backlog_archives") != 2.0
        {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: no failed upload of both hours: {}",
                server.get("/metrics").text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Ingest goes on, and every hour is read from the folder meanwhile.
        let t = now_ms();
        let r = server.post_ndjson(
            &format!("/api/series/{SERIES}/events"),
            &format!("{{\"ts\":{t},\"i\":0}}\n"),
        );
        assert_eq!(r.status, 202, "{kind:?}: {}", r.text());
        let count: u64 = walk(&server)
            .iter()
            .map(|(_, p)| p.json()["count"].as_u64().unwrap())
            .sum();
        assert_eq!(count, seeded.events as u64 + 1, "{kind:?}");
        assert!(server.get(&format!("/api/series/{SERIES}")).json()["uploaded_through"].is_null());

        store.resume();
        wait_uploaded(&server, last + HOUR);
        wait_metric(&server, "hourglass_upload_backlog_archives", 0.0);
        assert_eq!(
            lines_of(&archive_objects(&store)),
            seeded.events,
            "{kind:?}"
        );
        server.stop();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("upload to the object store failed"),
            "{kind:?}: {text}"
        );
    }
}

#[test]
fn retention_on_an_object_store_publishes_the_boundary_then_deletes_the_objects() {
    for store in stores::each("retention_on_an_object_store") {
        let kind = store.kind;
        let work = TempDir::new("objects-retention");
        let data = work.path().join("data");
        let seeded = seed(&data, 4, 10);
        let log = work.path().join("log");
        let last = *seeded.hours.last().unwrap();
        let server = writer(&data, &store, "r", &log, &["--local-hours", "0"]);
        wait_uploaded(&server, last + HOUR);
        server.stop();
        let all = store.list();

        // Hours before the one three hours back go: the two oldest of the four (one more when the clock has
        // passed an hour since the seed).
        let retention = ["--local-hours", "0", "--retention", "3h"];
        let server = writer(&data, &store, "r", &log, &retention);
        let deadline = Instant::now() + Duration::from_secs(30);
        let gone = |h: i64| format!("r/s/{}.json.gz", stem(h));
        while store.list().contains(&gone(seeded.hours[1])) {
            assert!(Instant::now() < deadline, "{kind:?}: old objects stay");
            std::thread::sleep(Duration::from_millis(100));
        }
        let info = server.get(&format!("/api/series/{SERIES}")).json();
        let boundary = parse_time(info["retained_from"].as_str().unwrap());
        assert!(boundary >= seeded.hours[2], "{kind:?}: {info}");
        let settings: serde_json::Value =
            serde_json::from_slice(&store.get("r/s/series.json").unwrap()).unwrap();
        assert_eq!(settings["retained_from"], boundary, "{kind:?}: {settings}");
        let kept_hours: Vec<i64> = seeded
            .hours
            .iter()
            .copied()
            .filter(|&h| h >= boundary)
            .collect();
        let kept: Vec<String> = all
            .iter()
            .filter(|n| {
                seeded
                    .hours
                    .iter()
                    .all(|&h| h >= boundary || !n.contains(&stem(h)))
            })
            .cloned()
            .collect();
        assert_eq!(store.list(), kept, "{kind:?}");
        let count: u64 = walk(&server)
            .iter()
            .map(|(_, p)| p.json()["count"].as_u64().unwrap())
            .sum();
        assert_eq!(
            count,
            10 * kept_hours.len() as u64,
            "{kind:?}: {boundary} {:?} {:?}",
            seeded.hours,
            walk(&server)
                .iter()
                .map(|(u, p)| (u.clone(), p.json()["count"].clone()))
                .collect::<Vec<_>>()
        );
        let before = chrono::DateTime::from_timestamp_millis(boundary).unwrap();
        let before = format!(
            "/api/series/{SERIES}/data/before/{}",
            before.format("%Y_%m_%d_%H_%M_%S")
        );
        assert_eq!(server.get(&before).status, 410, "{kind:?}");
        server.stop();

        // An object left below the boundary (a crash between the boundary and the deletes) goes at the next
        // start.
        store.put(&gone(seeded.hours[0]), b"left behind".to_vec());
        let server = writer(&data, &store, "r", &log, &retention);
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.list().contains(&gone(seeded.hours[0])) {
            assert!(Instant::now() < deadline, "{kind:?}: the leftover stays");
            std::thread::sleep(Duration::from_millis(100));
        }
        server.stop();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("ERROR"), "{kind:?}: {text}");
    }
}

#[test]
fn an_import_on_an_object_store_never_changes_an_uploaded_hour_and_names_its_revision_there() {
    for store in stores::each("an_import_on_an_object_store") {
        let kind = store.kind;
        let work = TempDir::new("objects-import");
        let data = work.path().join("data");
        let seeded = seed(&data, 2, 10);
        let log = work.path().join("log");
        let server = writer(&data, &store, "i", &log, &["--local-hours", "0"]);
        // Every hour before this one counts as uploaded, the empty ones too.
        let mut now = now_ms();
        if now % HOUR < 5_000 {
            std::thread::sleep(Duration::from_millis((5_000 - now % HOUR) as u64));
            now = now_ms();
        }
        let this_hour = now.div_euclid(HOUR) * HOUR;
        wait_uploaded(&server, this_hour);
        server.stop();
        let uploaded = |h: i64| store.get(&format!("i/s/{}.json.gz", stem(h))).unwrap();
        let old = uploaded(seeded.hours[0]);
        let settings = |store: &Store| -> serde_json::Value {
            serde_json::from_slice(&store.get("i/s/series.json").unwrap()).unwrap()
        };
        let revision = settings(&store)["revision"].as_u64().unwrap_or(0);

        // One chunk in an uploaded hour, one in this hour below the watermark.
        let src = work.path().join("src");
        let (in_uploaded, in_this) = (seeded.hours[0] + 500, now - 3_000);
        for t in [in_uploaded, in_this] {
            let dir = src.join("p");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{}.json.gz", stem(t)));
            std::fs::write(
                file,
                gzip(format!("{{\"ts\":{t},\"imported\":true}}\n").as_bytes()),
            )
            .unwrap();
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hourglass"))
            .args([
                "import",
                src.to_str().unwrap(),
                "--series",
                SERIES,
                "--chunk-seconds",
                "1",
            ])
            .args([
                "--data",
                data.to_str().unwrap(),
                "--archive",
                &store.url("i"),
            ])
            .envs(store.env())
            .env("HOURGLASS_LOG", "warn")
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{kind:?}: {report}");
        assert!(
            report.contains("its hour is on the object store"),
            "{kind:?}: {report}"
        );
        assert!(
            uploaded(seeded.hours[0]) == old,
            "{kind:?}: an uploaded hour changed"
        );
        // The new revision is on the store before anything is written: replicas name their ETags by it.
        assert_eq!(settings(&store)["revision"], revision + 1, "{kind:?}");

        // The imported hour goes up whole once it is complete (a clock an hour on).
        let offset = (this_hour + HOUR + 3_000 - now_ms()).to_string();
        let server = writer(
            &data,
            &store,
            "i",
            &log,
            &["--local-hours", "0", "--clock-offset-ms", &offset],
        );
        wait_uploaded(&server, this_hour + HOUR);
        let lines = String::from_utf8(gunzip(&uploaded(this_hour))).unwrap();
        assert!(
            lines.contains(&format!("{{\"ts\":{in_this},\"imported\":true}}")),
            "{kind:?}: {lines}"
        );
        server.stop();
    }
}
