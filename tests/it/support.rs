//! The harness: the real `hourglass` binary on a loopback port with its own data folder, and a small HTTP/1.1
//! client, so every test speaks to the server exactly as a user would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("hourglass-it-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server; killed (SIGKILL) on drop unless stopped first.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// Where its log goes, when the test reads it (`start_logged`); the test's own stderr otherwise.
    log: Option<PathBuf>,
}

/// Short widths and lateness, so sealing happens within a couple of seconds.
pub const FAST: &[&str] = &["--chunk-seconds", "1", "--lateness", "1"];

impl Server {
    pub fn start(data: &Path, args: &[&str]) -> Server {
        Server::spawn(data, args, &[], None)
    }

    /// `start`, with the server's log (warnings and errors) written to `log` for the test to read.
    pub fn start_logged(data: &Path, args: &[&str], log: &Path) -> Server {
        Server::spawn(data, args, &[], Some(log))
    }

    /// `start_logged`, with variables added to the server's environment (an object store's configuration).
    pub fn start_env(data: &Path, args: &[&str], env: &[(String, String)], log: &Path) -> Server {
        Server::spawn(data, args, env, Some(log))
    }

    fn spawn(data: &Path, args: &[&str], env: &[(String, String)], log: Option<&Path>) -> Server {
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_hourglass"))
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("HOURGLASS_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start hourglass");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            log: log.map(Path::to_owned),
        }
    }

    /// Waits for the process to end by itself, up to `timeout`; its exit status, or `None` if it is still up.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has logged so far (`start_logged`).
    pub fn log(&self) -> String {
        let path = self.log.as_ref().expect("started with start_logged");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "server exited with {exit}");
    }

    /// `FAST` and then `extra`.
    pub fn start_fast(data: &Path, extra: &[&str]) -> Server {
        let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
        Server::start(data, &args)
    }

    /// `start_fast`, with the server's clock reading the middle of the hour `hours_ago` hours back (0: the real
    /// clock); returns the server and its clock's offset.
    pub fn start_hours_back(data: &Path, hours_ago: i64, extra: &[&str]) -> (Server, i64) {
        const HOUR: i64 = 3_600_000;
        let now = now_ms();
        let offset = if hours_ago == 0 {
            0
        } else {
            (now - hours_ago * HOUR).div_euclid(HOUR) * HOUR + HOUR / 2 - now
        };
        let offset_arg = offset.to_string();
        let mut args = vec!["--clock-offset-ms", &offset_arg];
        args.extend(extra);
        (Server::start_fast(data, &args), offset)
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], b"").unwrap()
    }

    pub fn post_ndjson(&self, path: &str, body: &str) -> Response {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        )
        .unwrap()
    }

    /// Waits until the series has nothing left in memory and its watermark has passed `t`, or its last event
    /// when that is older: an idle series persists its watermark only as far as its last sealed chunk.
    pub fn wait_sealed(&self, series: &str, t: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = self.get(&format!("/api/series/{series}")).json();
            let time = |key: &str| info[key].as_str().map(parse_time);
            let sealed = time("sealed_watermark").unwrap_or(0);
            let t = time("last_event").map_or(t, |last| t.min(last));
            if info["unsealed_events"] == 0 && sealed > t {
                return info;
            }
            assert!(Instant::now() < deadline, "not sealed in time: {info}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every page of `series` from the head back along `prev`: URL and answer.
pub fn walk(server: &Server, series: &str) -> Vec<(String, Response)> {
    let mut pages = Vec::new();
    let mut url = Some(format!("/api/series/{series}/data"));
    while let Some(u) = url {
        let page = server.get(&u);
        assert_eq!(page.status, 200, "{u}: {}", page.text());
        url = page.link("prev");
        pages.push((u, page));
    }
    pages
}

pub fn parse_time(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The URL of the `Link` header's relation `rel`.
    pub fn link(&self, rel: &str) -> Option<String> {
        self.header("link")?.split(", ").find_map(|l| {
            let (url, params) = l.split_once(';')?;
            (params.trim() == format!("rel=\"{rel}\""))
                .then(|| url.trim_matches(|c| c == '<' || c == '>').to_string())
        })
    }

    /// The `error.code` of a JSON error body, checking the error's shape on the way.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        v["error"]["code"].as_str().unwrap().to_string()
    }
}

/// One HTTP/1.1 request on its own connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    parse_response(&request_raw(addr, method, path, headers, body)?)
}

/// One HTTP/1.1 request on its own connection: every byte of the answer until the server closed it, unparsed.
pub fn request_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(raw)
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

pub fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..nl]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The hour archives of a series folder, in time order.
pub fn archive_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
        .collect();
    files.sort();
    files
}

/// Checks every hour archive of a series with the system's `gzip -t`.
pub fn gzip_test_series(dir: &Path) {
    for f in archive_files(dir) {
        let t = Command::new("gzip").arg("-t").arg(&f).output().unwrap();
        assert!(
            t.status.success(),
            "gzip -t {}: {}",
            f.display(),
            String::from_utf8_lossy(&t.stderr)
        );
    }
}

/// Every line of every hour archive of a series, in file-name (time) order, read with the system's `zcat`;
/// each archive is checked with `gzip -t` first.
pub fn zcat_series(dir: &Path) -> Vec<String> {
    gzip_test_series(dir);
    let mut lines = Vec::new();
    for f in archive_files(dir) {
        let out = Command::new("zcat").arg(&f).output().unwrap();
        assert!(out.status.success(), "zcat {}", f.display());
        lines.extend(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string),
        );
    }
    lines
}

pub fn iso(t: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `b` as one gzip member.
pub fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(b).unwrap();
    enc.finish().unwrap()
}

/// Inflates a gzip body (any number of members).
pub fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A port free on 127.0.0.1 (from the ephemeral range, so never one of SeaweedFS' fixed ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `hourglass ARGS` to completion.
pub fn hourglass(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(args)
        .env("HOURGLASS_LOG", "warn")
        .output()
        .expect("run hourglass")
}

/// Waits, when the clock is within `margin` of the next hour, until that hour has begun: for a test whose
/// events of "now" must all fall in one hour (an event in the next one completes the hour, which is then
/// sealed and uploaded under the test's feet).
pub fn clear_of_an_hour_boundary(margin: std::time::Duration) {
    const HOUR: i64 = 3_600_000;
    let left = HOUR - now_ms().rem_euclid(HOUR);
    if left < margin.as_millis() as i64 {
        std::thread::sleep(std::time::Duration::from_millis(left as u64 + 50));
    }
}

/// Runs `cmd` to completion; its standard output, once it has exited 0 (else a failure saying all it wrote).
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Whether a part a test needs is there: `program args` runs and succeeds (its output discarded). When not,
/// `missing` says so, `why` naming how to install it (a failure under CI).
pub fn have(test: &str, program: &str, args: &[&str], why: &str) -> bool {
    let found = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        missing(test, why);
    }
    found
}

/// A test cannot find a part it needs: fails under CI (`CI` set), where `.ci/run` installs everything, and
/// elsewhere says loudly that the test was skipped.
pub fn missing(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run under CI: {why}"
    );
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}

/// A tmpfs of `size` (e.g. "8m") mounted on a fresh folder, unmounted on drop; None (after `missing`) where
/// this process may not mount.
pub struct Tmpfs(TempDir);

impl Tmpfs {
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new("tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir)),
            Ok(o) => {
                missing(
                    test,
                    &format!(
                        "mount -t tmpfs: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                );
                None
            }
            Err(e) => {
                missing(test, &format!("mount: {e}"));
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}
