//! Writes a sealed series straight into a data folder, through the archive layer: for benchmarks that need
//! hours of history without waiting hours. Events are 192-byte log-like NDJSON lines with a host (50 of them,
//! 2% each) and a level (`error` for 1%, `warn` for 4%, else `info`); each member gets its summary, as the
//! sealer gives it.
//!
//! ```sh
//! cargo run --release --example seed -- --data /tmp/hg --series big --hours 8 --per-chunk 2000
//! ```

use std::path::PathBuf;

use clap::Parser;
use hourglass::archive::SeriesArchive;
use hourglass::archive::deflate::Deflater;
use hourglass::archive::member::{self, MemberMeta};
use hourglass::archive::summary::{self, Bloom};
use hourglass::store::Settings;
use hourglass::time::{self, ChunkStart, ChunkWidth, HOUR};
use rand::SeedableRng;

#[path = "../benches/support/events.rs"]
mod events;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "big")]
    series: String,
    /// First hour, RFC 3339.
    #[arg(long, default_value = "2014-09-29T00:00:00Z")]
    start: String,
    #[arg(long, default_value_t = 8)]
    hours: i64,
    #[arg(long, default_value_t = 2000)]
    per_chunk: usize,
    #[arg(long, default_value_t = 10)]
    chunk_seconds: u32,
    #[arg(long, default_value_t = 5000)]
    per_part: usize,
    /// How members are deflated: what the server writes by default.
    #[arg(long, default_value_t = Deflater::default())]
    level: Deflater,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let width = ChunkWidth::from_secs(args.chunk_seconds)?;
    let start = time::parse_rfc3339(&args.start).ok_or("--start is not RFC 3339")?;
    let end = start + args.hours * HOUR;
    let dir = args.data.join(&args.series);
    std::fs::create_dir_all(&dir)?;
    Settings::new(width, end, start).store(&dir)?;
    let (archive, _) = SeriesArchive::open_alone(&dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut events, mut bytes) = (0u64, 0u64);
    let mut chunk = start;
    // A whole hour's members at a time: one write and one fsync an hour.
    let mut hour_members = Vec::new();
    while chunk < end {
        let mut raw = Vec::with_capacity(args.per_chunk * 192);
        let mut ts = Vec::with_capacity(args.per_chunk);
        for i in 0..args.per_chunk {
            let t = chunk + (i as i64 * width.millis()) / args.per_chunk as i64;
            let level = match events % 100 {
                37 => "error",
                0..4 => "warn",
                _ => "info",
            };
            let head = format!(
                "{{\"ts\":{t},\"host\":\"web-{:03}\",\"level\":\"{level}\",\"seq\":{events},\"msg\":\"",
                i % 50
            );
            raw.extend_from_slice(head.as_bytes());
            raw.extend_from_slice(&events::message(&mut rng, 192 - 3 - head.len()));
            raw.extend_from_slice(b"\"}\n");
            ts.push(t);
            events += 1;
        }
        bytes += raw.len() as u64;
        let lines: Vec<&[u8]> = raw.split_inclusive(|&b| b == b'\n').collect();
        let parts: Vec<_> = lines.chunks(args.per_part).collect();
        let mut offset = 0;
        let members: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(p, part)| {
                let body = part.concat();
                let meta = MemberMeta {
                    chunk_start: ChunkStart::from_stored(chunk),
                    width_secs: width.secs(),
                    part: p as u32,
                    last_part: p + 1 == parts.len(),
                    entries: part.len() as u32,
                    sealed_at: chunk + width.millis(),
                    first_ts: ts[offset],
                    last_ts: ts[offset + part.len() - 1],
                    raw_len: 0,
                    member_len: 0,
                };
                offset += part.len();
                (
                    member::encode(meta, &body, args.level),
                    Some(Bloom::of_lines(&body)),
                )
            })
            .collect();
        hour_members.extend(members);
        chunk += width.millis();
        if chunk % HOUR == 0 || chunk >= end {
            let (members, summaries) = summary::split(std::mem::take(&mut hour_members));
            archive.append_chunk(&members)?;
            archive.add_summaries(&summaries);
        }
    }
    println!(
        "{events} events, {bytes} bytes of NDJSON, {} hours",
        args.hours
    );
    Ok(())
}
