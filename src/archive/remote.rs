//! Sealed hours on object storage: `--archive az://container/prefix` (Azure Blob) or `s3://bucket/prefix` (S3 and
//! stores that speak it), through the `object_store` crate, configured from the environment as its builders read
//! it (`AZURE_*`, `AWS_*`). Objects keep the archive layout: `{prefix}/{series}/{YYYYMMDDHH}.json.gz` (an hour
//! archive, uploaded whole once complete, valid for `zcat` as it is), `{YYYYMMDDHH}.idx` (its index), `hours.idx`
//! (the summaries of its uploaded hours) and `series.json` (its settings, with how far it is uploaded).
//!
//! Calls block: they run on the runtime handed in at open, from the threads that read and write archives
//! (never an async worker). Errors name the object, never the store's endpoint or credentials.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};

use crate::time::Hour;

/// Archives this large or larger are uploaded in parts, never held in memory whole.
pub const WHOLE_PUT_BYTES: u64 = 16 << 20;
const PART_BYTES: usize = 8 << 20;

/// A failed call to the object store.
#[derive(Debug, thiserror::Error)]
#[error("object store: {op} {object}: {reason}")]
pub struct RemoteError {
    pub op: &'static str,
    pub object: String,
    /// What went wrong, in a few words (the full error is logged where it happens).
    pub reason: String,
    pub kind: RemoteErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteErrorKind {
    /// The store did not answer, or failed: worth retrying.
    Unavailable,
    /// A conditional write found another version than the one expected.
    Conflict,
    /// An object that should be the same as ours holds other bytes.
    Different,
}

/// The outcome of a create-only upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Now,
    /// It was there already, with the same bytes (a retry after a crash).
    Already,
}

/// What a conditional GET found.
pub enum Changed {
    /// The version known.
    Same,
    /// No such object.
    Gone,
    /// Another version: its bytes and ETag.
    Now(Bytes, Option<String>),
}

/// A version of an object, for a conditional write after it.
pub type Version = UpdateVersion;

/// An object store holding sealed hours.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjectPath>,
    /// `az://container/prefix` as given, for messages.
    url: String,
    runtime: tokio::runtime::Handle,
}

impl RemoteError {
    /// An object that should be there and is not (yet, or any more): worth asking again later.
    pub fn not_found(op: &'static str, object: &ObjectPath) -> RemoteError {
        RemoteError {
            op,
            object: object.to_string(),
            reason: "not found".into(),
            kind: RemoteErrorKind::Unavailable,
        }
    }
}

impl Remote {
    /// The store of an `az://` or `s3://` URL, with the rest of its configuration from the environment.
    pub fn open(url: &str, runtime: tokio::runtime::Handle) -> Result<Remote, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("--archive {url:?}: expected az://container/prefix or s3://bucket/prefix")
        })?;
        let (root, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if root.is_empty() {
            return Err(format!("--archive {url:?}: no container or bucket"));
        }
        // TLS through ring, the one provider built in; a second install (another store, a test) changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A reader waits seconds, not the minutes a batch job would, for a store that fails (then it answers
        // 503); the uploader retries on its own schedule. Timeouts stay the crate's (5 s to connect, 30 s a
        // request) or what the environment says.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            "az" | "azure" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(root)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| format!("--archive {url:?}: {e}"))?,
            ),
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(root)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| format!("--archive {url:?}: {e}"))?,
            ),
            other => {
                return Err(format!(
                    "--archive {url:?}: {other}:// is not a store hourglass speaks: use az:// or s3://"
                ));
            }
        };
        let prefix = prefix.trim_matches('/');
        Ok(Remote {
            store,
            prefix: (!prefix.is_empty()).then(|| ObjectPath::from(prefix)),
            url: url.to_string(),
            runtime,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, series: &str, file: &str) -> ObjectPath {
        let rel = format!("{series}/{file}");
        match &self.prefix {
            Some(p) => ObjectPath::from(format!("{p}/{rel}")),
            None => ObjectPath::from(rel),
        }
    }

    pub fn archive(&self, series: &str, hour: Hour) -> ObjectPath {
        self.path(series, &format!("{}.json.gz", hour.stem()))
    }

    pub fn index(&self, series: &str, hour: Hour) -> ObjectPath {
        self.path(series, &format!("{}.idx", hour.stem()))
    }

    pub fn summaries(&self, series: &str, hour: Hour) -> ObjectPath {
        self.path(series, &format!("{}.sum", hour.stem()))
    }

    pub fn hours(&self, series: &str) -> ObjectPath {
        self.path(series, super::HOURS_FILE)
    }

    pub fn settings(&self, series: &str) -> ObjectPath {
        self.path(series, "series.json")
    }

    fn fail(&self, op: &'static str, object: &ObjectPath, e: object_store::Error) -> RemoteError {
        let kind = match e {
            object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. } => RemoteErrorKind::Conflict,
            _ => RemoteErrorKind::Unavailable,
        };
        tracing::debug!(store = %self.url, object = %object, error = %e, "object store call failed");
        let reason = match &e {
            object_store::Error::NotFound { .. } => "not found".to_string(),
            object_store::Error::Precondition { .. } => "another version is there".to_string(),
            object_store::Error::AlreadyExists { .. } => "it exists already".to_string(),
            object_store::Error::Generic { source, .. } => {
                // The cause, without the endpoint URL the client's error carries.
                let text = source.to_string();
                match text.rsplit_once(" - ") {
                    Some((_, cause)) => cause.trim().to_string(),
                    None => text
                        .split(" http")
                        .next()
                        .unwrap_or(&text)
                        .trim()
                        .to_string(),
                }
            }
            other => other.to_string(),
        };
        RemoteError {
            op,
            object: object.to_string(),
            reason,
            kind,
        }
    }

    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// The whole object, or `None` when there is none.
    pub fn get(&self, object: &ObjectPath) -> Result<Option<(Bytes, Version)>, RemoteError> {
        self.block(async {
            match self.store.get(object).await {
                Ok(got) => {
                    let version = Version {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    let bytes = got.bytes().await.map_err(|e| self.fail("GET", object, e))?;
                    Ok(Some((bytes, version)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.fail("GET", object, e)),
            }
        })
    }

    /// An object if it is not the version whose ETag is `known` (a conditional GET, for polling).
    pub fn get_changed(
        &self,
        object: &ObjectPath,
        known: Option<&str>,
    ) -> Result<Changed, RemoteError> {
        let options = GetOptions {
            if_none_match: known.map(str::to_string),
            ..GetOptions::default()
        };
        self.block(async {
            match self.store.get_opts(object, options).await {
                Ok(got) => {
                    let e_tag = got.meta.e_tag.clone();
                    let bytes = got.bytes().await.map_err(|e| self.fail("GET", object, e))?;
                    Ok(Changed::Now(bytes, e_tag))
                }
                Err(object_store::Error::NotModified { .. }) => Ok(Changed::Same),
                Err(object_store::Error::NotFound { .. }) => Ok(Changed::Gone),
                Err(e) => Err(self.fail("GET", object, e)),
            }
        })
    }

    /// The bytes `range` of an object.
    pub fn get_range(&self, object: &ObjectPath, range: Range<u64>) -> Result<Bytes, RemoteError> {
        self.block(self.store.get_range(object, range))
            .map_err(|e| self.fail("GET", object, e))
    }

    /// Uploads `bytes` unless the object exists; if it does, it must hold the same bytes.
    pub fn create(&self, object: &ObjectPath, bytes: Bytes) -> Result<Created, RemoteError> {
        let put = self.block(self.store.put_opts(
            object,
            PutPayload::from(bytes.clone()),
            PutOptions::from(PutMode::Create),
        ));
        match put {
            Ok(_) => Ok(Created::Now),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let there = self.get(object)?.map(|(b, _)| b);
                if there.as_deref() == Some(&bytes[..]) {
                    Ok(Created::Already)
                } else {
                    Err(self.different(object))
                }
            }
            Err(e) => Err(self.fail("PUT", object, e)),
        }
    }

    fn different(&self, object: &ObjectPath) -> RemoteError {
        RemoteError {
            op: "PUT",
            object: object.to_string(),
            reason: "an object of that name holds other bytes; it is never overwritten".into(),
            kind: RemoteErrorKind::Different,
        }
    }

    /// Uploads a local file unless the object exists (then it must hold the same bytes). Small files go in one
    /// create-only PUT; larger ones in parts, after a look that the object is not there (one writer uploads a
    /// series, so nothing can come in between).
    pub fn create_from_file(
        &self,
        object: &ObjectPath,
        file: &std::path::Path,
    ) -> Result<Created, RemoteError> {
        let io = |e: std::io::Error| RemoteError {
            op: "PUT",
            object: object.to_string(),
            reason: format!("reading the local copy: {e}"),
            kind: RemoteErrorKind::Unavailable,
        };
        let len = std::fs::metadata(file).map_err(io)?.len();
        if len < WHOLE_PUT_BYTES {
            let bytes = std::fs::read(file).map_err(io)?;
            return self.create(object, Bytes::from(bytes));
        }
        if let Some(meta) = self.head(object)? {
            return if meta == len && self.same_as_file(object, file, len)? {
                Ok(Created::Already)
            } else {
                Err(self.different(object))
            };
        }
        let mut f = File::open(file).map_err(io)?;
        self.block(async {
            let upload = self
                .store
                .put_multipart(object)
                .await
                .map_err(|e| self.fail("PUT", object, e))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                let n = f.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                // At most a few parts in flight: memory stays a few parts, whatever the hour's size.
                parts
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| self.fail("PUT", object, e))?;
                parts.write(&buf[..n]);
            }
            parts
                .finish()
                .await
                .map_err(|e| self.fail("PUT", object, e))?;
            Ok(Created::Now)
        })
    }

    /// The size of an object, or `None` when there is none.
    pub fn head(&self, object: &ObjectPath) -> Result<Option<u64>, RemoteError> {
        match self.block(self.store.head(object)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("HEAD", object, e)),
        }
    }

    /// Whether an object holds exactly the bytes of a local file, compared a part at a time.
    fn same_as_file(
        &self,
        object: &ObjectPath,
        file: &std::path::Path,
        len: u64,
    ) -> Result<bool, RemoteError> {
        let mut f = File::open(file).map_err(|e| RemoteError {
            op: "GET",
            object: object.to_string(),
            reason: format!("reading the local copy: {e}"),
            kind: RemoteErrorKind::Unavailable,
        })?;
        let mut at = 0;
        let mut local = vec![0u8; PART_BYTES];
        while at < len {
            let n = (len - at).min(PART_BYTES as u64) as usize;
            if f.read_exact(&mut local[..n]).is_err() {
                return Ok(false);
            }
            if self.get_range(object, at..at + n as u64)? != local[..n] {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// Writes an object that others update too (series settings): only over `expected` (the version last read
    /// or written), or, with `None`, only where there is none yet. Returns the new version.
    pub fn put_versioned(
        &self,
        object: &ObjectPath,
        bytes: Bytes,
        expected: Option<Version>,
    ) -> Result<Version, RemoteError> {
        let mode = match expected {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        let put = self.block(
            self.store
                .put_opts(object, PutPayload::from(bytes), mode.into()),
        );
        put.map(|r| Version {
            e_tag: r.e_tag,
            version: r.version,
        })
        .map_err(|e| self.fail("PUT", object, e))
    }

    /// Writes an object whatever is there: for derived ones (the hour summaries), rewritten whole.
    pub fn put(&self, object: &ObjectPath, bytes: Bytes) -> Result<(), RemoteError> {
        self.block(self.store.put(object, PutPayload::from(bytes)))
            .map(drop)
            .map_err(|e| self.fail("PUT", object, e))
    }

    pub fn delete(&self, object: &ObjectPath) -> Result<(), RemoteError> {
        match self.block(self.store.delete(object)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("DELETE", object, e)),
        }
    }

    /// The series the store holds: the folders under the prefix.
    pub fn series(&self) -> Result<Vec<String>, RemoteError> {
        let listed = self.block(self.store.list_with_delimiter(self.prefix.as_ref()));
        let root = self.prefix.clone().unwrap_or_default();
        let listed = listed.map_err(|e| self.fail("LIST", &root, e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Deletes a series' archive, index and summaries objects of the hours before `from`; returns how many went.
    pub fn delete_hours_before(&self, series: &str, from: Hour) -> Result<usize, RemoteError> {
        let folder = self.path(series, "");
        let listed = self.block(self.store.list_with_delimiter(Some(&folder)));
        let listed = listed.map_err(|e| self.fail("LIST", &folder, e))?;
        let old = listed.objects.iter().filter(|o| {
            let name = o.location.filename().unwrap_or_default();
            let stem = name
                .strip_suffix(".json.gz")
                .or_else(|| name.strip_suffix(".idx"))
                .or_else(|| name.strip_suffix(".sum"));
            stem.and_then(Hour::parse_stem).is_some_and(|h| h < from)
        });
        let mut deleted = 0;
        for o in old {
            self.delete(&o.location)?;
            deleted += 1;
        }
        Ok(deleted)
    }
}
