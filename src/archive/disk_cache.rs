//! A replica's disk cache of what it read from the object store (`--cache-dir`, `--cache-bytes`): hour indexes
//! and member ranges, one file each, the least recently used removed past the bound. Only objects that never
//! change are kept (an uploaded hour is written once), under the identity of the archive that read them, which
//! a new revision or a series made again replaces. Not kept across starts: its folder is emptied at open.
//!
//! What comes back from it is checked like what comes from the store (members against their CRC-32 before
//! they are sent as they are; indexes against their hour's summary).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::time::Hour;

/// What is kept: an archive's identity, its hour, and the byte range of the archive object (`None`: the
/// hour's index object).
type Key = (u64, Hour, Option<(u64, u64)>);

/// One cached file and its length, removed when the cache lets go of it and no reader holds it.
struct Kept(PathBuf, u32);

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

pub struct DiskCache {
    dir: PathBuf,
    files: moka::sync::Cache<Key, Arc<Kept>>,
    names: AtomicU64,
}

impl DiskCache {
    /// The cache in `{dir}/hourglass-cache`, made empty, keeping at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<DiskCache> {
        let dir = dir.join("hourglass-cache");
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir_all(&dir)?;
        let files = moka::sync::Cache::builder()
            .weigher(|_, kept: &Arc<Kept>| kept.1)
            .max_capacity(max_bytes)
            .build();
        Ok(DiskCache {
            dir,
            files,
            names: AtomicU64::new(0),
        })
    }

    /// The bytes kept under `key`, or those `fetch` gets (then kept, when they can be written).
    pub fn get_or<E>(
        &self,
        key: Key,
        fetch: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Vec<u8>, E> {
        if let Some(kept) = self.files.get(&key)
            && let Ok(bytes) = fs::read(&kept.0)
        {
            return Ok(bytes);
        }
        let bytes = fetch()?;
        let path = self
            .dir
            .join(self.names.fetch_add(1, Ordering::Relaxed).to_string());
        match fs::write(&path, &bytes) {
            Ok(()) => {
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                self.files.insert(key, Arc::new(Kept(path, len)));
            }
            Err(e) => {
                let _ = fs::remove_file(&path);
                tracing::warn!(error = %e, "the disk cache cannot keep what was read");
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn the_cache_keeps_within_its_bound_and_removes_what_it_lets_go() {
        let dir = std::env::temp_dir().join(format!("hg-disk-cache-{}", std::process::id()));
        fs::create_dir_all(dir.join("hourglass-cache")).unwrap();
        fs::write(dir.join("hourglass-cache").join("left"), b"from before").unwrap();
        let cache = DiskCache::open(&dir, 1_000).unwrap();
        assert_eq!(folder_bytes(&cache.dir), 0, "not emptied at open");
        let hour = Hour::of(0);
        let mut fetched = 0;
        for i in 0..100u64 {
            let bytes = cache
                .get_or((1, hour, Some((i, i + 100))), || {
                    fetched += 1;
                    Ok::<_, ()>(vec![i as u8; 100])
                })
                .unwrap();
            assert_eq!(bytes, vec![i as u8; 100]);
        }
        assert_eq!(fetched, 100);
        for _ in 0..10 {
            cache.files.run_pending_tasks();
        }
        assert!(
            folder_bytes(&cache.dir) <= 1_000,
            "{} bytes kept",
            folder_bytes(&cache.dir)
        );
        // What it holds is answered without fetching.
        let held = (0..100u64)
            .find(|i| cache.files.contains_key(&(1, hour, Some((*i, *i + 100)))))
            .unwrap();
        let again = cache
            .get_or((1, hour, Some((held, held + 100))), || Err(()))
            .unwrap();
        assert_eq!(again, vec![held as u8; 100]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
