//! The viewer in a real browser: Debian's Chromium driven by playwright-core (`tests/browser/scroll.mjs`,
//! `tests/browser/filter.mjs`).
//! Needs `node`, `/usr/bin/chromium` and `npm ci` in `tests/browser`, which `.ci/run` installs. Where they are
//! missing the test fails under CI (`CI` set) and is skipped, loudly, elsewhere.

use std::path::Path;
use std::process::Command;

use crate::pages::seed;
use crate::support::{Server, TempDir, missing};

/// Fourteen chunks an hour apart, one of them three pages.
const CHUNKS: &[(&str, usize)] = &[
    ("2014-03-01T00:00:00Z", 20),
    ("2014-03-01T01:00:00Z", 20),
    ("2014-03-01T02:00:00Z", 20),
    ("2014-03-01T03:00:00Z", 45),
    ("2014-03-01T04:00:00Z", 20),
    ("2014-03-01T05:00:00Z", 20),
    ("2014-03-01T06:00:00Z", 20),
    ("2014-03-01T07:00:00Z", 20),
    ("2014-03-02T00:00:00Z", 20),
    ("2014-03-03T00:00:00Z", 20),
    ("2014-03-04T00:00:00Z", 20),
    ("2014-03-05T00:00:00Z", 20),
    ("2014-03-06T00:00:00Z", 20),
    ("2014-03-07T00:00:00Z", 20),
];

fn missing_tools(dir: &Path) -> Option<String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not installed".into());
    }
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("/usr/bin/chromium is not installed (apt-get install chromium)".into());
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Some(format!(
            "playwright-core is not installed (npm ci in {})",
            dir.display()
        ));
    }
    None
}

#[test]
fn the_viewer_scrolls_back_through_cached_pages_and_shows_new_events() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    if let Some(why) = missing_tools(&browser_dir) {
        missing("the browser test", &why);
        return;
    }
    let dir = TempDir::new("browser");
    seed(dir.path(), "viewer", CHUNKS, 20);
    // Newest first, as the viewer shows them: event n is {"ts":..,"n":n}, n growing with time.
    let total: usize = CHUNKS.iter().map(|(_, n)| n).sum();
    let lines = crate::support::zcat_series(&dir.path().join("viewer"));
    assert_eq!(lines.len(), total);
    let expected: String = lines.iter().rev().map(|l| format!("{l}\n")).collect();
    let expected_file = dir.path().join("expected.ndjson");
    std::fs::write(&expected_file, expected).unwrap();

    let server = Server::start(dir.path(), &["--max-page-entries", "20"]);
    run(
        &browser_dir.join("scroll.mjs"),
        &server,
        &[
            ("SERIES", "viewer"),
            ("EXPECTED", expected_file.to_str().unwrap()),
        ],
    );
}

#[test]
fn the_viewers_filter_lives_in_its_url_and_the_timeline_stacks_by_a_field() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    if let Some(why) = missing_tools(&browser_dir) {
        missing("the browser filter test", &why);
        return;
    }
    let dir = TempDir::new("browser-filter");
    let data = dir.path().join("data");
    let lines = crate::filters::month();
    crate::filters::import(&data, "month", &lines);
    // The matches of `level:error`, newest first, as the viewer shows them (the stored lines are compact JSON).
    let expected: String = lines
        .iter()
        .rev()
        .filter(|(_, l)| l.contains(r#""level":"error""#))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let expected_file = dir.path().join("expected.ndjson");
    std::fs::write(&expected_file, expected).unwrap();
    // The newest event of the typed filter: a request with ms below 100.
    let typed_first = lines
        .iter()
        .rev()
        .find_map(|(_, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["level"] == "info" && v["ms"].as_i64().unwrap() < 100)
                .then(|| format!("\"{}\"", v["msg"].as_str().unwrap()))
        })
        .unwrap();

    let server = Server::start(&data, &[]);
    run(
        &browser_dir.join("filter.mjs"),
        &server,
        &[
            ("SERIES", "month"),
            ("FILTER", "level:error"),
            ("EXPECTED", expected_file.to_str().unwrap()),
            ("TYPED", "ms<100 request"),
            ("TYPED_FIRST", &typed_first),
            ("GROUP", "host"),
            ("GROUPS", "3"),
        ],
    );
}

/// Runs a browser script against the server (`BASE`, `SHOTS` and `env` set), failing with what it said.
fn run(script: &Path, server: &Server, env: &[(&str, &str)]) {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    let out = Command::new("node")
        .arg(script)
        .env("BASE", format!("http://{}", server.addr))
        .env("SHOTS", &shots)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    eprintln!("{said}screenshots in {}", shots.display());
}
