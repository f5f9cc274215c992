//! `hourglass import` and `hourglass export`: archives written by another tool go in, every good event comes
//! back out, through the server and straight from the data folder.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::support::{Server, TempDir, gunzip, hourglass, iso, zcat_series};

/// 2023-11-14T22:00:00Z, an hour start long sealed.
const H0: i64 = 1_699_999_200_000;
const HOUR: i64 = 3_600_000;

fn stem(t: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .unwrap()
        .format("%Y%m%d%H")
        .to_string()
}

/// Writes `lines` as a gzip file of `members` members, as some tools do.
fn write_gz(path: &Path, lines: &[String], members: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    for part in lines.chunks(lines.len().div_ceil(members).max(1)) {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        for l in part {
            writeln!(enc, "{l}").unwrap();
        }
        f.write_all(&enc.finish().unwrap()).unwrap();
    }
}

fn event(ts: i64, partition: &str, i: usize) -> String {
    format!(r#"{{"ts":{ts},"p":"{partition}","i":{i}}}"#)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn export_all(server: &Server, series: &str, from: i64, to: i64) -> String {
    let res = server.get(&format!(
        "/api/series/{series}/export?from={}&to={}",
        from / 1000,
        to / 1000
    ));
    assert_eq!(res.status, 200, "{}", res.text());
    res.text()
}

#[test]
fn an_imported_tree_exports_back_every_good_event() {
    let tmp = TempDir::new("import");
    let src = tmp.path().join("src");
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();

    // Two partitions; hours H0, H0+1 and H0+3 (H0+2 is missing); files of 1 to 4 members.
    let mut expected: Vec<(i64, String)> = Vec::new();
    let mut p1_h0: Vec<String> = (0..300)
        .map(|i| event(H0 + i as i64 * 7_000, "p1", i))
        .collect();
    p1_h0.insert(120, r#"{"ts": 1699999200000, broken"#.into());
    p1_h0.push(r#"{"no_time":true}"#.into());
    let p1_h1: Vec<String> = (0..200)
        .map(|i| event(H0 + HOUR + i as i64 * 11_000, "p1", i))
        .collect();
    let mut p2_h0: Vec<String> = (0..100)
        .map(|i| event(H0 + 3_500 + i as i64 * 13_000, "p2", i))
        .collect();
    // Another hour's event in this hour's file.
    p2_h0.push(event(H0 + 2 * HOUR, "p2", 999));
    let p2_h3: Vec<String> = (0..50)
        .map(|i| event(H0 + 3 * HOUR + i as i64 * 60_000, "p2", i))
        .collect();
    write_gz(&src.join(format!("p1/{}.json.gz", stem(H0))), &p1_h0, 2);
    write_gz(
        &src.join(format!("p1/{}.json.gz", stem(H0 + HOUR))),
        &p1_h1,
        1,
    );
    write_gz(&src.join(format!("p2/{}.json.gz", stem(H0))), &p2_h0, 3);
    write_gz(
        &src.join(format!("p2/{}.json.gz", stem(H0 + 3 * HOUR))),
        &p2_h3,
        4,
    );
    std::fs::write(src.join("p2/README.txt"), "not an archive").unwrap();
    for l in p1_h0.iter().chain(&p1_h1).chain(&p2_h0).chain(&p2_h3) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            match v["ts"].as_i64() {
                Some(ts) if ts != H0 + 2 * HOUR => expected.push((ts, l.clone())),
                Some(_) => {}
                None => expected.push((H0, format!(r#"{{"ts":"{}","no_time":true}}"#, iso(H0)))),
            }
        }
    }
    // Time order; ties (the event without a time, at H0, and the first of p1) in file order.
    expected.sort_by_key(|(ts, _)| *ts);
    let expected: String = expected.iter().map(|(_, l)| format!("{l}\n")).collect();

    let src_arg = src.to_str().unwrap();
    let out = hourglass(&["import", src_arg, "--series", "imported", "--data", data]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert!(report.contains("imported 651 events"), "{report}");
    assert!(report.contains("2 lines could not be used"), "{report}");
    assert!(
        report.contains(&format!("p1/{}.json.gz line 121", stem(H0))),
        "{report}"
    );
    assert!(report.contains("outside the file's hour"), "{report}");
    assert!(report.contains("1 files not named"), "{report}");
    let series_dir = Path::new(data).join("imported");
    assert_eq!(zcat_series(&series_dir).join("\n") + "\n", expected);

    // Resumable: a second run finds every chunk in place and writes nothing.
    let before: Vec<Vec<u8>> = archives(&series_dir);
    let out = hourglass(&["import", src_arg, "--series", "imported", "--data", data]);
    let report = stdout(&out);
    assert!(report.contains("imported 0 events in 0 chunks"), "{report}");
    assert!(report.contains("651 events were there already"), "{report}");
    assert_eq!(archives(&series_dir), before);

    // Through the server, and through `hourglass export --url`.
    let server = Server::start(Path::new(data), &[]);
    let (from, to) = (H0 - HOUR, H0 + 5 * HOUR);
    assert_eq!(export_all(&server, "imported", from, to), expected);
    let url = format!("http://{}", server.addr);
    let (from_arg, to_arg) = (iso(from), iso(to));
    let range = ["--series", "imported", "--from", &from_arg, "--to", &to_arg];
    let out = hourglass(&[&["export", "--url", &url][..], &range].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), expected);
    // The folder is the server's while it runs.
    let out = hourglass(&[&["export", "--data", data][..], &range].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--url"));
    server.stop();

    // Straight from the data folder, gzip'd to a file, and as CSV.
    let file = tmp.path().join("out.ndjson.gz");
    let file_arg = file.to_str().unwrap();
    let out = hourglass(
        &[
            &["export", "--data", data, "--gzip", "-o", file_arg][..],
            &range,
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::process::Command::new("gzip")
            .arg("-t")
            .arg(&file)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        String::from_utf8(gunzip(&std::fs::read(&file).unwrap())).unwrap(),
        expected
    );
    let out = hourglass(
        &[
            &[
                "export", "--data", data, "--format", "csv", "--fields", "p,i",
            ][..],
            &range,
        ]
        .concat(),
    );
    let csv = stdout(&out);
    assert_eq!(csv.lines().count(), 652, "{csv}");
    assert!(csv.starts_with("p,i\r\n"), "{csv}");
}

fn archives(dir: &Path) -> Vec<Vec<u8>> {
    let files = crate::support::archive_files(dir);
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn an_import_merges_into_hours_that_hold_events_and_refuses_their_chunks() {
    let tmp = TempDir::new("merge");
    let data = tmp.path().join("data");
    let data_arg = data.to_str().unwrap();
    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    // First: minutes 10..20 of H0. Second: minutes 0..5 and 30..40, and one event in a chunk of the first.
    let a: Vec<String> = (0..60)
        .map(|i| event(H0 + 600_000 + i * 10_000, "a", i as usize))
        .collect();
    let mut b: Vec<String> = (0..30)
        .map(|i| event(H0 + i * 10_000, "b", i as usize))
        .collect();
    b.extend((0..60).map(|i| event(H0 + 1_800_000 + i * 10_000, "b", 100 + i as usize)));
    b.push(event(H0 + 600_001, "b", 999));
    write_gz(&first.join(format!("x/{}.json.gz", stem(H0))), &a, 2);
    write_gz(&second.join(format!("x/{}.json.gz", stem(H0))), &b, 2);

    let import = |dir: &Path| {
        hourglass(&[
            "import",
            dir.to_str().unwrap(),
            "--series",
            "m",
            "--data",
            data_arg,
        ])
    };
    let out = import(&first);
    assert!(out.status.success(), "{}", stdout(&out));

    let server = Server::start(&data, &[]);
    let page = format!(
        "/api/series/m/data/before/{}",
        hourglass::time::format_stamp(H0 + 610_000)
    );
    let etag_before = server.get(&page).header("etag").unwrap().to_string();
    server.stop();

    let out = import(&second);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert!(report.contains("imported 90 events"), "{report}");
    assert!(
        report.contains("1 chunks (1 events) were refused"),
        "{report}"
    );
    assert!(report.contains("holds 1 events already"), "{report}");

    let mut expected: Vec<&String> = a.iter().chain(&b[..90]).collect();
    expected.sort_by_key(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["ts"].as_i64());
    let expected: String = expected.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(zcat_series(&data.join("m")).join("\n") + "\n", expected);

    // After a restart (indexes read back), the export and the counts agree, and pages got new identities.
    let server = Server::start(&data, &[]);
    assert_eq!(export_all(&server, "m", H0, H0 + HOUR), expected);
    assert_eq!(server.get("/api/series/m").json()["events"], 150);
    let res = server.get(&page);
    assert_ne!(res.header("etag").unwrap(), etag_before);
    assert_eq!(res.status, 200);
}

/// An export and a histogram of an empty sealed range, answered as final, then an import of one event into it:
/// the answers change, and so must their ETags (the series held no events, so the import used to keep them).
#[test]
fn an_import_into_an_empty_sealed_range_gives_its_answers_new_etags() {
    let tmp = TempDir::new("import-etag");
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let server = Server::start(std::path::Path::new(data), &[]);
    let put = crate::support::request(server.addr, "PUT", "/api/series/e", &[], b"").unwrap();
    assert_eq!(put.status, 201, "{}", put.text());
    let urls = [
        format!(
            "/api/series/e/export?from={}&to={}",
            H0 / 1000,
            (H0 + HOUR) / 1000
        ),
        format!(
            "/api/series/e/histogram?from={}&to={}&step=1h",
            H0 / 1000,
            (H0 + HOUR) / 1000
        ),
    ];
    let before: Vec<(String, String)> = urls
        .iter()
        .map(|u| {
            let r = server.get(u);
            assert_eq!(r.status, 200, "{u}: {}", r.text());
            assert!(
                r.header("cache-control").unwrap().contains("immutable"),
                "{u}"
            );
            (r.header("etag").unwrap().to_string(), r.text())
        })
        .collect();
    assert_eq!(before[0].1, "");
    server.stop();

    let src = tmp.path().join("src");
    write_gz(
        &src.join(format!("p/{}.json.gz", stem(H0))),
        &[event(H0 + 5_000, "p", 0)],
        1,
    );
    let out = hourglass(&[
        "import",
        src.to_str().unwrap(),
        "--series",
        "e",
        "--data",
        data,
    ]);
    assert!(out.status.success(), "{}", stdout(&out));

    let server = Server::start(std::path::Path::new(data), &[]);
    for (u, (etag, body)) in urls.iter().zip(&before) {
        let r = server.get(u);
        assert_eq!(r.status, 200);
        assert_ne!(&r.text(), body, "{u}: the import is in the answer");
        assert_ne!(
            r.header("etag"),
            Some(etag.as_str()),
            "{u}: same ETag, other body"
        );
        let again = crate::support::request(server.addr, "GET", u, &[("If-None-Match", etag)], b"")
            .unwrap();
        assert_eq!(again.status, 200, "{u}: the old ETag must not revalidate");
    }
}
