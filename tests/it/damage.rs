//! Damaged stored data is never served as whole. A bit flipped inside a sealed member's deflate data (so that it
//! still inflates, to the wrong lines) or in its header makes its page a 500 that no cache keeps, an export that
//! reaches it break off without its terminating chunk (or a plain 500 when it is the first chunk), and
//! `hourglass export` exit non-zero; each damaged member is logged once and counted in /metrics.

use std::fs;
use std::path::{Path, PathBuf};

use hourglass::archive::{IndexEntry, SeriesArchive, member};
use hourglass::time::ChunkStart;

use crate::support::{
    FAST, Response, Server, TempDir, dechunk, hourglass, now_ms, request, request_raw,
};

/// Seals three one-second chunks of 300 events each in one hour archive of the series `d`; their starts.
fn three_sealed_chunks(data: &Path) -> [i64; 3] {
    let server = Server::start(data, FAST);
    let mut base = (now_ms() / 1000 + 1) * 1000;
    let hour_end = (base / 3_600_000 + 1) * 3_600_000;
    if base + 3000 > hour_end {
        base = hour_end;
    }
    for k in 0..3 {
        let body: String = (0..300)
            .map(|i| {
                let t = base + k * 1000 + i * 3;
                format!(
                    "{{\"ts\":{t},\"chunk\":{k},\"i\":{i},\"msg\":\"event {i} of chunk {k}\"}}\n"
                )
            })
            .collect();
        assert_eq!(
            server.post_ndjson("/api/series/d/events", &body).status,
            202
        );
    }
    server.wait_sealed("d", base + 2999);
    server.stop();
    [base, base + 1000, base + 2000]
}

fn archive_file(series: &Path) -> PathBuf {
    fs::read_dir(series)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".json.gz"))
        .unwrap()
}

/// Flips one bit inside the deflate data of `entry` so that the member still inflates, to other bytes: only
/// its CRC-32 tells. Returns the offset flipped.
fn flip_inside_deflate_data(gz: &Path, entry: &IndexEntry) -> u64 {
    let mut bytes = fs::read(gz).unwrap();
    let start = entry.offset as usize;
    let end = start + entry.meta.member_len as usize;
    for at in (start + member::HEADER_LEN + 40..end - 16).rev() {
        bytes[at] ^= 0x01;
        let verdict = member::decode(&bytes[start..end]);
        if matches!(&verdict, Err(member::MemberError::Corrupt(why)) if why.contains("CRC32")) {
            fs::write(gz, &bytes).unwrap();
            return at as u64;
        }
        bytes[at] ^= 0x01;
    }
    panic!("no bit of the member flips into a member that still inflates");
}

fn assert_refused(r: &Response, what: &str, data: &Path) {
    assert_eq!(r.status, 500, "{what}: {}", r.text());
    assert_eq!(r.error_code(), "damaged_data", "{what}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
    assert!(r.header("etag").is_none(), "{what}");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("d/") && message.contains(".json.gz"),
        "{what}: the message names the series and hour: {message}"
    );
    assert!(
        !message.contains(&*data.to_string_lossy()),
        "{what}: no path of the machine: {message}"
    );
}

/// A streamed answer that began as a 200 and broke off: no terminating chunk, so no client or cache takes it
/// for complete.
fn assert_broken_off(raw: &[u8], what: &str) {
    let text = String::from_utf8_lossy(raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text:.200}");
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(
        text[..end]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{what}"
    );
    assert!(
        dechunk(&raw[end + 4..]).is_none(),
        "{what}: the body ended as if it were complete"
    );
}

#[test]
fn a_damaged_member_is_refused_never_sent_as_whole() {
    let dir = TempDir::new("damage");
    let starts = three_sealed_chunks(dir.path());
    let series = dir.path().join("d");
    let gz = archive_file(&series);
    let entries: Vec<IndexEntry> = {
        let (archive, _) = SeriesArchive::open_alone(&series).unwrap();
        starts
            .iter()
            .map(|&s| archive.chunk(ChunkStart::from_stored(s)).unwrap()[0])
            .collect()
    };
    // The middle chunk: damage in its deflate data. The last: a byte of its header (its metadata).
    flip_inside_deflate_data(&gz, &entries[1]);
    let mut bytes = fs::read(&gz).unwrap();
    bytes[entries[2].offset as usize + 30] ^= 0x40;
    fs::write(&gz, &bytes).unwrap();

    let log = dir.path().join("server.log");
    let server = Server::start_logged(dir.path(), FAST, &log);
    let stamp = |t: i64| {
        chrono::DateTime::from_timestamp_millis(t)
            .unwrap()
            .format("%Y_%m_%d_%H_%M_%S")
            .to_string()
    };
    let page = |k: usize, headers: &[(&str, &str)]| {
        let url = format!("/api/series/d/data/before/{}", stamp(starts[k] + 1000));
        request(server.addr, "GET", &url, headers, b"").unwrap()
    };
    // The first chunk is whole, and still final: its `next` is the damaged one, whose place is unchanged.
    let first = page(0, &[]);
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.header("cache-control").unwrap().contains("immutable"));
    for (k, what) in [(1, "deflate data"), (2, "header")] {
        for headers in [
            &[][..],
            &[
                ("Accept", "application/x-ndjson"),
                ("Accept-Encoding", "gzip"),
            ][..],
        ] {
            // Twice: the second is answered the same way, and not logged again.
            for _ in 0..2 {
                assert_refused(
                    &page(k, headers),
                    &format!("page, {what}, {headers:?}"),
                    dir.path(),
                );
            }
        }
    }

    let (from, to) = (starts[0] / 1000, starts[2] / 1000 + 1);
    for gzip in [true, false] {
        let headers: &[(&str, &str)] = if gzip {
            &[("Accept-Encoding", "gzip")]
        } else {
            &[]
        };
        // Beginning with the whole chunk: it has gone out by the time the damaged one is met.
        let url = format!("/api/series/d/export?from={from}&to={to}");
        let raw = request_raw(server.addr, "GET", &url, headers, b"").unwrap();
        assert_broken_off(&raw, &format!("export from the first chunk, gzip {gzip}"));
        // Beginning with the damaged chunk: nothing has gone out, so the answer is a plain error.
        let url = format!("/api/series/d/export?from={}&to={to}", starts[1] / 1000);
        let r = request(server.addr, "GET", &url, headers, b"").unwrap();
        assert_refused(
            &r,
            &format!("export from the damaged chunk, gzip {gzip}"),
            dir.path(),
        );
    }
    // Through the server, the command fails too.
    let url = format!("http://{}", server.addr);
    for gzip in [true, false] {
        let (from, to) = (from.to_string(), to.to_string());
        let mut args = vec![
            "export", "--url", &url, "--series", "d", "--from", &from, "--to", &to,
        ];
        if gzip {
            args.push("--gzip");
        }
        let out = hourglass(&args);
        assert!(!out.status.success(), "export --url, gzip {gzip}: exit 0");
    }

    let metrics = server.get("/metrics").text();
    assert!(
        metrics.lines().any(|l| l == "hourglass_damaged_members 2"),
        "{metrics}"
    );
    let text = server.log();
    for e in &entries[1..] {
        let mentions = text
            .lines()
            .filter(|l| l.contains("damaged") && l.contains(&format!("offset {}", e.offset)))
            .count();
        assert_eq!(
            mentions, 1,
            "logged once for the member at {}: {text}",
            e.offset
        );
    }
    server.stop();

    // From the folder, with the server stopped: the same.
    let data = dir.path().to_string_lossy().into_owned();
    for gzip in [true, false] {
        let out_file = dir.path().join(format!("out-{gzip}"));
        let (from, to) = (from.to_string(), to.to_string());
        let out_path = out_file.to_string_lossy().into_owned();
        let mut args = vec![
            "export", "--data", &data, "--series", "d", "--from", &from, "--to", &to, "-o",
            &out_path,
        ];
        if gzip {
            args.push("--gzip");
        }
        let out = hourglass(&args);
        assert!(!out.status.success(), "export --data, gzip {gzip}: exit 0");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("damaged"), "{stderr}");
    }
}

/// Six acknowledged batches of 14,000 events in the log, nothing sealed (an hour's lateness); the server is
/// killed. With `restart_between`, a second start and kill leave the batches' segment older than the newest.
fn six_logged_batches(data: &Path, restart_between: bool) -> PathBuf {
    let args = ["--chunk-seconds", "1", "--lateness", "3600"];
    let server = Server::start(data, &args);
    let t = now_ms();
    for b in 0..6 {
        let body: String = (0..14_000)
            .map(|i| format!("{{\"ts\":{},\"b\":{b},\"i\":{i}}}\n", t - 1000 + i % 1000))
            .collect();
        let r = server.post_ndjson("/api/series/w/events", &body);
        assert_eq!(r.status, 202, "{}", r.text());
    }
    server.kill9();
    if restart_between {
        Server::start(data, &args).kill9();
    }
    data.join("_wal").join(format!("{:016}.log", 1))
}

fn check_log_repair(data: &Path, segment: &Path, kind: &str) {
    let len_before = fs::metadata(segment).unwrap().len();
    let log = data.join("server.log");
    let server = Server::start_logged(data, &["--chunk-seconds", "1", "--lateness", "3600"], &log);
    let info = server.get("/api/series/w").json();
    assert_eq!(info["events"], 70_000, "five of six batches: {info}");
    let metrics = server.get("/metrics").text();
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{kind=\"{kind}\"}}")))
            .unwrap_or_else(|| panic!("{name} {kind}: {metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(line("hourglass_log_repairs_total"), 1);
    let cut = line("hourglass_log_repaired_bytes_total");
    assert!(
        cut > 14_000 * 20,
        "a whole batch's record is set aside: {cut} bytes"
    );
    // Kept aside, whole; the segment itself is not cut, as intact records follow.
    let aside: Vec<PathBuf> = fs::read_dir(data.join("_wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".log.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::metadata(&aside[0]).unwrap().len(), cut);
    assert_eq!(fs::metadata(segment).unwrap().len(), len_before);
    assert!(
        server.log().contains("damaged records skipped"),
        "{}",
        server.log()
    );
    server.stop();
}

#[test]
fn a_damaged_log_record_in_an_older_segment_loses_only_its_own_batch() {
    let dir = TempDir::new("logdamage-old");
    let segment = six_logged_batches(dir.path(), true);
    let mut bytes = fs::read(&segment).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    fs::write(&segment, &bytes).unwrap();
    check_log_repair(dir.path(), &segment, "damaged");
}

#[test]
fn a_damaged_log_record_in_the_newest_segment_is_damage_not_a_torn_tail() {
    let dir = TempDir::new("logdamage-new");
    let segment = six_logged_batches(dir.path(), false);
    let mut bytes = fs::read(&segment).unwrap();
    bytes[100] ^= 0x20;
    fs::write(&segment, &bytes).unwrap();
    check_log_repair(dir.path(), &segment, "damaged");
}
