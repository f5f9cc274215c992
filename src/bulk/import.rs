//! `hourglass import`: archives written by other tools, `{partition}/{YYYYMMDDHH}.json.gz` (NDJSON lines, any gzip
//! framing: one member or many), into a series as sealed chunks in our own format.
//!
//! Hour by hour, oldest first, every file of the hour (from every partition) is inflated and read line by line.
//! A line's time is its time field (`ts` unless told otherwise) or, when it has none, the start of the hour in
//! its file name; either way the stored line carries it as `ts`. Lines that are not JSON objects, have a bad time
//! or a time outside the file's hour are counted, the first few reported, and the rest goes on. The hour's events,
//! sorted by time (ties in file, then line order), are cut into chunks and handed to the store, which writes
//! below the sealed watermark only and never over a chunk that holds events. Memory holds one hour of events.
//!
//! Running the same import again changes nothing: chunks that hold exactly the lines offered count as imported.
//! That is how an interrupted import resumes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::ingest::parse::import_line;
use crate::store::{ImportChunk, Imported, SeriesName, Store, StoreError};
use crate::time::{self, ChunkWidth, Hour, Millis};

/// How many problems are described; the rest are only counted.
const EXAMPLES: usize = 10;

pub struct Options {
    pub dir: PathBuf,
    pub series: SeriesName,
    /// The field that holds an event's time.
    pub ts_field: String,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Hour files read, and their compressed bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files under the folder not named like an hour archive.
    pub ignored_files: u64,
    pub events_written: u64,
    pub chunks_written: u64,
    /// Events in chunks that held exactly these lines already.
    pub events_present: u64,
    /// Chunks refused (they hold other events, or are not sealed yet), and their events.
    pub chunks_refused: u64,
    pub events_refused: u64,
    /// Lines that could not be used.
    pub bad_lines: u64,
    /// The first problems, one line each.
    pub examples: Vec<String>,
}

impl Report {
    /// Whether anything offered was left out.
    pub fn is_complete(&self) -> bool {
        self.bad_lines == 0 && self.chunks_refused == 0
    }

    fn problem(&mut self, text: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(text);
        }
    }
}

/// The hour files under `dir` with their sizes, by hour, each hour's files in path order.
pub struct Sources {
    pub hours: BTreeMap<Hour, Vec<(PathBuf, u64)>>,
    pub bytes: u64,
    pub ignored: u64,
}

pub fn find_sources(dir: &Path) -> io::Result<Sources> {
    let mut sources = Sources {
        hours: BTreeMap::new(),
        bytes: 0,
        ignored: 0,
    };
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                folders.push(path);
                continue;
            }
            let hour = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json.gz"))
                .and_then(Hour::parse_stem);
            match hour {
                Some(hour) if kind.is_file() => {
                    let size = entry.metadata()?.len();
                    sources.bytes += size;
                    sources.hours.entry(hour).or_default().push((path, size));
                }
                _ => sources.ignored += 1,
            }
        }
    }
    for files in sources.hours.values_mut() {
        files.sort();
    }
    Ok(sources)
}

/// Imports every hour of `sources`; `progress` is told the compressed bytes read so far after each file.
pub fn import(
    store: &Store,
    options: &Options,
    sources: &Sources,
    progress: &mut dyn FnMut(u64),
) -> Result<Report, StoreError> {
    let width = store
        .width_of(&options.series)
        .ok_or_else(|| StoreError::UnknownSeries(options.series.to_string()))?;
    let mut report = Report {
        ignored_files: sources.ignored,
        ..Report::default()
    };
    for (&hour, files) in &sources.hours {
        let mut events = HourEvents::default();
        for (path, size) in files {
            let shown = path.strip_prefix(&options.dir).unwrap_or(path).display();
            read_file(
                path,
                hour,
                &options.ts_field,
                &mut events,
                &mut |line, why| {
                    report.bad_lines += 1;
                    match line {
                        Some(n) => report.problem(format!("{shown} line {n}: {why}")),
                        None => report.problem(format!("{shown}: {why}")),
                    }
                },
            );
            report.files += 1;
            report.bytes += size;
            progress(report.bytes);
        }
        let chunks = events.into_chunks(width);
        let counts: Vec<(Millis, u64)> = chunks
            .iter()
            .map(|c| (c.start.millis(), c.ts.len() as u64))
            .collect();
        let answers = store.import_chunks(&options.series, chunks)?;
        for ((start, n), answer) in counts.into_iter().zip(answers) {
            match answer {
                Imported::Written => {
                    report.chunks_written += 1;
                    report.events_written += n;
                }
                Imported::AlreadyThere => report.events_present += n,
                Imported::Refused(why) => {
                    report.chunks_refused += 1;
                    report.events_refused += n;
                    report.problem(format!(
                        "chunk {}: {n} events refused: {why}",
                        time::format_rfc3339(start)
                    ));
                }
            }
        }
    }
    Ok(report)
}

/// One hour's events: their lines back to back, and where each is.
#[derive(Default)]
struct HourEvents {
    lines: Vec<u8>,
    /// Time, offset in `lines`, length (with its `\n`).
    events: Vec<(Millis, usize, usize)>,
}

impl HourEvents {
    fn push(&mut self, ts: Millis, line: &[u8]) {
        self.events.push((ts, self.lines.len(), line.len() + 1));
        self.lines.extend_from_slice(line);
        self.lines.push(b'\n');
    }

    /// The events in time order (ties in the order read), cut into chunks.
    fn into_chunks(mut self, width: ChunkWidth) -> Vec<ImportChunk> {
        self.events.sort_by_key(|&(ts, _, _)| ts);
        let mut chunks: Vec<ImportChunk> = Vec::new();
        for &(ts, at, len) in &self.events {
            let start = width.chunk_of(ts);
            if chunks.last().is_none_or(|c| c.start != start) {
                chunks.push(ImportChunk {
                    start,
                    ts: Vec::new(),
                    lines: Vec::new(),
                });
            }
            let Some(chunk) = chunks.last_mut() else {
                continue;
            };
            chunk.ts.push(ts);
            chunk.lines.extend_from_slice(&self.lines[at..at + len]);
        }
        chunks
    }
}

/// Reads one hour file into `events`; `bad(line number, why)` for what cannot be used. A file that stops
/// being readable (a damaged gzip stream) keeps the lines read before the damage.
fn read_file(
    path: &Path,
    hour: Hour,
    field: &str,
    events: &mut HourEvents,
    bad: &mut dyn FnMut(Option<u64>, String),
) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return bad(None, format!("cannot open: {e}")),
    };
    let mut reader = BufReader::with_capacity(
        1 << 20,
        MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file)),
    );
    let (from, to) = (hour.start(), hour.start() + time::HOUR);
    let mut line = Vec::new();
    let mut stored = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => return bad(None, format!("unreadable after line {number}: {e}")),
        }
        number += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match import_line(text, field, from, &mut stored) {
            Ok(ts) if (from..to).contains(&ts) => events.push(ts, &stored),
            Ok(ts) => bad(
                Some(number),
                format!(
                    "time {} is outside the file's hour {}",
                    time::format_rfc3339(ts),
                    hour.stem()
                ),
            ),
            Err(why) => bad(Some(number), why),
        }
    }
}
