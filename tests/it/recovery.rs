//! Restarts and repairs: the log replayed, a torn archive tail cut, a lost index rebuilt, one chunk read alone.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use hourglass::archive::SeriesArchive;
use hourglass::time::ChunkStart;
use serde_json::Value;

use crate::support::{FAST, Server, TempDir, now_ms, parse_time, zcat_series};

fn ndjson(ts: &[i64], tag: &str) -> String {
    ts.iter()
        .enumerate()
        .map(|(i, t)| format!("{{\"ts\":{t},\"tag\":\"{tag}\",\"i\":{i}}}\n"))
        .collect()
}

fn tags(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!("{}{}", v["tag"].as_str().unwrap(), v["i"])
        })
        .collect()
}

#[test]
fn acknowledged_events_in_the_log_survive_kill_9_and_are_sealed_after_restart() {
    let dir = TempDir::new("replay");
    // A long lateness: nothing is sealed before the crash, everything lives in the log only.
    let server = Server::start(dir.path(), &["--chunk-seconds", "1", "--lateness", "3600"]);
    let t = now_ms();
    let r = server.post_ndjson("/api/series/r/events", &ndjson(&[t, t + 1, t - 1], "a"));
    assert_eq!(r.status, 202);
    let before = server.get("/api/series/r").json();
    assert_eq!(before["unsealed_events"], 3);
    server.kill9();

    let server = Server::start(dir.path(), FAST);
    let after = server.get("/api/series/r").json();
    assert_eq!(after["events"], 3);
    let watermark = |v: &Value| parse_time(v["sealed_watermark"].as_str().unwrap());
    assert!(
        watermark(&after) >= watermark(&before),
        "the watermark never moves back"
    );
    // New events still go in: the restart kept the old watermark, not a new one.
    let r = server.post_ndjson("/api/series/r/events", &ndjson(&[t + 2], "b"));
    assert_eq!(r.status, 202, "{}", r.text());
    server.wait_sealed("r", t + 2);
    assert_eq!(
        tags(&zcat_series(&dir.path().join("r"))),
        ["a2", "a0", "a1", "b0"]
    );
    server.stop();

    // A third start finds everything sealed and the log collected; nothing is sealed twice.
    let server = Server::start(dir.path(), FAST);
    let info = server.get("/api/series/r").json();
    assert_eq!(
        (info["events"].as_u64(), info["unsealed_events"].as_u64()),
        (Some(4), Some(0))
    );
    server.stop();
    assert_eq!(zcat_series(&dir.path().join("r")).len(), 4);
}

/// Seals three one-second chunks in the same hour and returns their starts.
fn three_sealed_chunks(data: &Path) -> [i64; 3] {
    let server = Server::start(data, FAST);
    let mut base = (now_ms() / 1000 + 1) * 1000;
    let hour_end = (base / 3_600_000 + 1) * 3_600_000;
    if base + 3000 > hour_end {
        base = hour_end; // all three in the next hour, still within the allowed skew
    }
    for k in 0..3 {
        let ts: Vec<i64> = (0..50).map(|i| base + k * 1000 + i * 7).collect();
        let r = server.post_ndjson("/api/series/h/events", &ndjson(&ts, &format!("c{k}-")));
        assert_eq!(r.status, 202);
    }
    server.wait_sealed("h", base + 2999);
    server.stop();
    [base, base + 1000, base + 2000]
}

fn archive_and_index(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let gz = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".json.gz"))
        .unwrap();
    let idx = gz.with_extension("").with_extension("idx");
    (gz, idx)
}

#[test]
fn a_torn_archive_tail_is_cut_and_a_deleted_index_rebuilt_at_start() {
    let dir = TempDir::new("torn");
    let starts = three_sealed_chunks(dir.path());
    let series = dir.path().join("h");
    let (gz, idx) = archive_and_index(&series);
    let whole = fs::read(&gz).unwrap();
    assert!(idx.exists());

    // A crash in the middle of appending a member: half of a copy of the last member, and no index.
    let archive = SeriesArchive::open_alone(&series).unwrap().0;
    let last = archive.chunk(ChunkStart::from_stored(starts[2])).unwrap()[0];
    let member = archive.read_member(&last).unwrap();
    OpenOptions::new()
        .append(true)
        .open(&gz)
        .unwrap()
        .write_all(&member[..member.len() / 2])
        .unwrap();
    fs::remove_file(&idx).unwrap();
    assert!(
        std::process::Command::new("gzip")
            .arg("-t")
            .arg(&gz)
            .status()
            .unwrap()
            .code()
            != Some(0)
    );

    let server = Server::start(dir.path(), FAST);
    let info = server.get("/api/series/h").json();
    assert_eq!(
        (info["events"].as_u64(), info["sealed_chunks"].as_u64()),
        (Some(150), Some(3))
    );
    server.stop();
    assert_eq!(
        fs::read(&gz).unwrap(),
        whole,
        "the archive is back to its whole members"
    );
    assert!(idx.exists(), "the index is rebuilt");
    let aside: Vec<_> = fs::read_dir(&series)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tail-"))
        .collect();
    assert_eq!(aside.len(), 1, "the cut bytes are kept aside");
    let lines = zcat_series(&series);
    assert_eq!(lines.len(), 150);

    // A wrong index (another hour's, say) is not believed either.
    fs::write(&idx, b"HGIDX1\n\0garbage").unwrap();
    let (archive, repairs) = SeriesArchive::open_alone(&series).unwrap();
    assert_eq!(archive.summary().events, 150, "{repairs:?}");
}

#[test]
fn one_chunk_is_read_from_its_own_member_without_touching_the_others() {
    let dir = TempDir::new("onechunk");
    let starts = three_sealed_chunks(dir.path());
    let series = dir.path().join("h");
    let (gz, _) = archive_and_index(&series);
    let archive = SeriesArchive::open_alone(&series).unwrap().0;
    let entries: Vec<_> = starts
        .iter()
        .map(|&s| archive.chunk(ChunkStart::from_stored(s)).unwrap()[0])
        .collect();
    // Wreck the compressed data of the first and the last member.
    let mut bytes = fs::read(&gz).unwrap();
    for e in [&entries[0], &entries[2]] {
        let mid = (e.offset + e.meta.member_len / 2) as usize;
        for b in &mut bytes[mid - 8..mid + 8] {
            *b ^= 0x5a;
        }
    }
    fs::write(&gz, &bytes).unwrap();

    let middle = archive
        .read_chunk(ChunkStart::from_stored(starts[1]))
        .unwrap()
        .unwrap();
    let text = String::from_utf8(middle).unwrap();
    assert_eq!(text.lines().count(), 50);
    assert!(text.lines().all(|l| l.contains("\"tag\":\"c1-\"")));
    assert!(
        archive
            .read_chunk(ChunkStart::from_stored(starts[0]))
            .is_err()
    );
    assert!(
        archive
            .read_chunk(ChunkStart::from_stored(starts[2]))
            .is_err()
    );
    assert_eq!(
        archive
            .read_chunk(ChunkStart::from_stored(starts[0] - 1000))
            .unwrap(),
        None
    );
}

#[test]
fn a_second_server_on_the_same_data_folder_is_refused() {
    let dir = TempDir::new("lock");
    let _server = Server::start(dir.path(), FAST);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another hourglass"));
}

/// Seals one event in each of two hours, the older two hours back (the server's clock moved), the newer now;
/// returns the series folder's two archives, oldest first.
fn two_hours_sealed(data: &Path) -> Vec<std::path::PathBuf> {
    for hours_ago in [2, 0] {
        let (server, offset) = Server::start_hours_back(data, hours_ago, &[]);
        let t = now_ms() + offset;
        let r = server.post_ndjson("/api/series/g/events", &ndjson(&[t], "x"));
        assert_eq!(r.status, 202);
        server.wait_sealed("g", t);
        server.stop();
    }
    crate::support::archive_files(&data.join("g"))
}

#[test]
fn a_deleted_or_emptied_older_archive_is_logged_as_an_error_not_a_silent_gap() {
    for emptied in [false, true] {
        let dir = TempDir::new("gap");
        let files = two_hours_sealed(dir.path());
        assert_eq!(files.len(), 2);
        if emptied {
            fs::write(&files[0], b"").unwrap();
        } else {
            fs::remove_file(&files[0]).unwrap();
        }
        let log = dir.path().join("server.log");
        let server = Server::start_logged(dir.path(), FAST, &log);
        assert_eq!(server.get("/api/series/g").json()["events"], 1);
        let text = server.log();
        let line = text
            .lines()
            .find(|l| {
                l.contains("ERROR") && l.contains(&*files[0].file_name().unwrap().to_string_lossy())
            })
            .unwrap_or_else(|| panic!("no error for the lost hour (emptied {emptied}): {text}"));
        assert!(
            line.contains("1 members, 1 events") || line.contains("1 more members"),
            "{line}"
        );
        server.stop();
        // Said once: the index that named the lost hour is kept aside, never read again for a new archive.
        let server = Server::start_logged(dir.path(), FAST, &log);
        let errors = server.log().lines().filter(|l| l.contains("ERROR")).count();
        assert_eq!(errors, 1, "{}", server.log());
        let aside = fs::read_dir(dir.path().join("g"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".idx.")
            })
            .count();
        assert_eq!(aside, 1);
    }
}
