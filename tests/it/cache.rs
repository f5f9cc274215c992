//! A real HTTP cache in front: nginx with `proxy_cache`, configured only to cache what our headers allow.
//! Final pages are served from nginx's cache without reaching the server; the head and `after` never are.
//! Needs nginx (`apt-get install nginx`; `.ci/run` installs it). Without it the test fails under CI and is
//! skipped, loudly, elsewhere.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::{FAST, Response, Server, TempDir, missing, now_ms, request};

struct Nginx {
    child: Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn start_nginx(bin: &Path, dir: &Path, upstream: std::net::SocketAddr) -> Nginx {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        r#"
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=pages:10m max_size=100m inactive=1d use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_cache pages;
            proxy_cache_revalidate on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(bin)
        .args(["-p"])
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .spawn()
        .expect("start nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {:?}",
            std::fs::read_to_string(dir.join("error.log"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx { child, port }
}

fn via(n: &Nginx, path: &str) -> Response {
    request(([127, 0, 0, 1], n.port).into(), "GET", path, &[], b"").unwrap()
}

#[test]
fn nginx_keeps_final_pages_and_never_the_head() {
    let Some(bin) = nginx_binary() else {
        missing(
            "nginx_keeps_final_pages_and_never_the_head",
            "nginx is not installed (apt-get install -y nginx)",
        );
        return;
    };
    let data = TempDir::new("nginx-data");
    let work = TempDir::new("nginx");
    let server = Server::start(data.path(), FAST);
    let nginx = start_nginx(&bin, work.path(), server.addr);

    let t = (now_ms() / 1000 + 1) * 1000;
    for ts in [t, t + 1000] {
        assert_eq!(
            server
                .post_ndjson("/api/series/n/events", &format!("{{\"ts\":{ts}}}\n"))
                .status,
            202
        );
    }
    server.wait_sealed("n", t + 1000);
    let final_url = format!(
        "/api/series/n/data/before/{}",
        hourglass::time::format_stamp(t + 1000)
    );

    let first = via(&nginx, &final_url);
    assert_eq!(
        (first.status, first.header("x-cache-status")),
        (200, Some("MISS"))
    );
    let second = via(&nginx, &final_url);
    assert_eq!(
        (second.status, second.header("x-cache-status")),
        (200, Some("HIT"))
    );
    assert_eq!(second.body, first.body);

    // The head goes to the server every time, and shows new events at once.
    for _ in 0..2 {
        let head = via(&nginx, "/api/series/n/data");
        assert_eq!(head.status, 200);
        assert_ne!(
            head.header("x-cache-status"),
            Some("HIT"),
            "the head must not be served from cache"
        );
    }
    let after = format!(
        "/api/series/n/data/after/{}",
        hourglass::time::format_stamp(t)
    );
    for _ in 0..2 {
        assert_ne!(via(&nginx, &after).header("x-cache-status"), Some("HIT"));
    }
    let newest = now_ms();
    assert_eq!(
        server
            .post_ndjson(
                "/api/series/n/events",
                &format!("{{\"ts\":{newest},\"new\":true}}\n")
            )
            .status,
        202
    );
    let head = via(&nginx, "/api/series/n/data").json();
    assert_eq!(head["events"][0]["new"], true, "{head}");

    // With the server gone, the final page still comes from nginx: it never needed the server again.
    server.kill9();
    let third = via(&nginx, &final_url);
    assert_eq!(
        (third.status, third.header("x-cache-status")),
        (200, Some("HIT"))
    );
    assert_eq!(third.body, first.body);
    assert_eq!(
        via(&nginx, "/api/series/n/data").status,
        502,
        "the head is not in the cache"
    );
}
