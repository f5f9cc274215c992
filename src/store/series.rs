//! A series' name and its settings file, `{data}/{series}/series.json`: the chunk width, fixed at creation, and
//! the sealed watermark, which only moves forward. The file is replaced atomically (write, fsync, rename,
//! fsync the folder), so a crash leaves either the old or the new settings.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable::sync_dir;
use crate::ingest::parse::TimeUnit;
use crate::time::{ChunkWidth, Millis};

pub const SETTINGS_FILE: &str = "series.json";

/// The series of the short URLs (`/api/data`), and of shippers' events that name none.
const DEFAULT_SERIES: &str = "default";

/// A valid series name: `[a-z0-9][a-z0-9_.-]{0,127}`. It is a folder name, so nothing else may pass: no `/`,
/// no `..` on its own, nothing a shell or URL would need to escape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesName(String);

impl SeriesName {
    pub fn parse(s: &str) -> Result<SeriesName, String> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        });
        if first_ok && rest_ok && b.len() <= 128 {
            Ok(SeriesName(s.to_string()))
        } else {
            Err(format!(
                "series name {s:?} does not match [a-z0-9][a-z0-9_.-]{{0,127}}"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `default`: the series of the short URLs, and of events that name none.
    pub fn default_series() -> SeriesName {
        SeriesName(DEFAULT_SERIES.to_string())
    }
}

impl fmt::Display for SeriesName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `series.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub chunk_seconds: u32,
    /// The sealed watermark S, Unix milliseconds: every chunk below it is final.
    pub sealed: Millis,
    pub created: Millis,
    /// How many imports wrote into the sealed past of the series (each changes every ETag).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u32,
    /// Retention removed every hour before this one (an hour boundary; 0: nothing removed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retained_from: Millis,
    /// With `--archive`, every hour before this one (an hour boundary; 0: none) that holds events is on object
    /// storage, whole, and may be gone from the local folder.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uploaded_through: Millis,
    /// Where events without `ts` have their time, unless a request says (`PUT /api/series/{s}`; it changes
    /// what later batches are read as, never a stored line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_field: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time_unit: TimeUnit,
}

fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

/// What a series' page identities are made of: when it was created and its revision. A series deleted and made
/// again, or a past rewritten by an import, gives every page a new ETag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Generation {
    pub created: Millis,
    pub revision: u32,
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.revision {
            0 => write!(f, "{:x}", self.created),
            r => write!(f, "{:x}r{r}", self.created),
        }
    }
}

impl Settings {
    /// The settings of a new series: nothing imported, removed, uploaded, default time fields.
    pub fn new(width: ChunkWidth, sealed: Millis, created: Millis) -> Settings {
        Settings {
            chunk_seconds: width.secs(),
            sealed,
            created,
            revision: 0,
            retained_from: 0,
            uploaded_through: 0,
            time_field: None,
            time_unit: TimeUnit::Auto,
        }
    }

    pub fn generation(&self) -> Generation {
        Generation {
            created: self.created,
            revision: self.revision,
        }
    }

    pub fn width(&self) -> Result<ChunkWidth, String> {
        ChunkWidth::from_secs(self.chunk_seconds)
    }

    pub fn load(dir: &Path) -> io::Result<Settings> {
        let bytes = fs::read(dir.join(SETTINGS_FILE))?;
        let settings: Settings = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        settings
            .width()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(settings)
    }

    /// Replaces the settings file durably.
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join("series.json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        f.sync_data()?;
        fs::rename(&tmp, dir.join(SETTINGS_FILE))?;
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_data_folder_are_refused() {
        for ok in ["default", "a", "0", "cpu.load-1_a", &"a".repeat(128)] {
            assert!(SeriesName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "A",
            "-a",
            "_wal",
            ".hidden",
            "a\0",
            "é",
            "a b",
            "%2e%2e",
            &"a".repeat(129),
        ] {
            assert!(SeriesName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
