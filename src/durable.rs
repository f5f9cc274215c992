//! Making file-system changes durable: the few calls every layer that writes files shares. A new or renamed
//! file survives power loss only once its folder is fsync'd too, and a new folder only once its parent is.
//! Nothing here knows what the files hold.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Makes a folder's entries (a new, renamed or removed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and whichever of its parents are missing, each one made durable in its own parent.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Made meanwhile by another thread or process: its parent entry is someone else's to sync, but
            // syncing it again is cheap and makes this call's promise hold either way.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty());
        sync_dir(parent.unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` (replacing a file of that name) and makes file and folder entry durable: for
/// bytes moved aside from a damaged or torn file, which must exist for sure before the original is cut.
pub fn write_aside(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_accepts_existing_ones() {
        let base = std::env::temp_dir().join(format!("hourglass-durable-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let deep = base.join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        write_aside(&deep.join("x.tail-3"), b"abc").unwrap();
        assert_eq!(fs::read(deep.join("x.tail-3")).unwrap(), b"abc");
        fs::remove_dir_all(&base).unwrap();
    }
}
