//! Inner loops of the ingest path, on realistic 192-byte events: parsing a 1,000-event NDJSON batch, and
//! compressing / inflating a 5,000-event chunk member with ISA-L and zlib-rs at several levels. Prints median and p99 per
//! operation and the throughput at the median.
//!
//! ```sh
//! cargo bench --bench codec
//! ```

use std::hint::black_box;
use std::io::Read;
use std::time::{Duration, Instant};

use hourglass::archive::deflate::Deflater;
use hourglass::archive::member::{self, MemberMeta};
use hourglass::archive::summary::Bloom;
use hourglass::filter::Filter;
use hourglass::ingest::parse::{self, Format};
use hourglass::time::ChunkStart;
use rand::{Rng, SeedableRng};

#[path = "support/events.rs"]
mod events;
use events::message;

/// `n` NDJSON events of 192 bytes each (newline included), log-like text in the message.
fn events(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * 192);
    for i in 0..n {
        let head = format!(
            "{{\"ts\":{},\"host\":\"web-{:03}\",\"metric\":\"cpu\",\"value\":0.{:04},\"seq\":{i},\"msg\":\"",
            1_795_334_364_946u64 + i as u64,
            rng.random_range(0..50),
            rng.random_range(0..10_000)
        );
        let msg = message(&mut rng, 192 - 3 - head.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&msg);
        out.extend_from_slice(b"\"}\n");
    }
    out
}

/// Runs `f` repeatedly for about `budget`, returns per-call times sorted.
fn measure(budget: Duration, mut f: impl FnMut()) -> Vec<Duration> {
    f(); // warm up
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || times.len() < 20 {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    times
}

fn report(name: &str, bytes: usize, times: &[Duration], extra: &str) {
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "{name:<28} median {:>9.1} us  p99 {:>9.1} us  {:>7.0} MB/s  n={}  {extra}",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        bytes as f64 / median.as_secs_f64() / 1e6,
        times.len()
    );
}

fn main() {
    let budget = Duration::from_secs(2);
    let batch = events(1000, 1);
    let times = measure(budget, || {
        black_box(parse::parse(black_box(&batch), Format::Ndjson, 0).ok());
    });
    report("parse 1000-event batch", batch.len(), &times, "");

    let chunk = events(5000, 2);
    let meta = MemberMeta {
        chunk_start: ChunkStart::from_stored(1_795_334_360_000),
        width_secs: 10,
        part: 0,
        last_part: true,
        entries: 5000,
        sealed_at: 1_795_334_400_000,
        first_ts: 1_795_334_364_946,
        last_ts: 1_795_334_369_945,
        raw_len: 0,
        member_len: 0,
    };
    for deflater in [
        Deflater::Zlib(1),
        Deflater::Zlib(3),
        Deflater::Zlib(6),
        Deflater::Zlib(9),
        Deflater::Isal(1),
        Deflater::Isal(2),
        Deflater::Isal(3),
    ] {
        let mut size = 0;
        let times = measure(budget, || {
            let (_, bytes) = member::encode(meta, black_box(&chunk), deflater);
            size = bytes.len();
        });
        let ratio = format!("ratio {:.2}x", chunk.len() as f64 / size as f64);
        report(
            &format!("encode 5000 events, {deflater}"),
            chunk.len(),
            &times,
            &ratio,
        );
        let (_, bytes) = member::encode(meta, &chunk, deflater);
        let times = measure(budget, || {
            black_box(member::decode(black_box(&bytes)).ok());
        });
        report(
            &format!("decode (ISA-L), {deflater}"),
            chunk.len(),
            &times,
            "",
        );
        // How members were inflated before ISA-L: zlib-rs.
        let body = &bytes[member::HEADER_LEN..bytes.len() - 8];
        let times = measure(budget, || {
            let mut raw = Vec::with_capacity(chunk.len() + 1);
            let _ = flate2::bufread::DeflateDecoder::new(black_box(body)).read_to_end(&mut raw);
            black_box(raw);
        });
        report(
            &format!("decode (zlib-rs), {deflater}"),
            chunk.len(),
            &times,
            "",
        );
    }

    // A member's summary, made beside its compression at sealing; and a filter's line matching.
    let mut size = 0;
    let times = measure(budget, || {
        size = Bloom::of_lines(black_box(&chunk)).bytes();
    });
    report(
        "summarise 5000 events (Bloom filter)",
        chunk.len(),
        &times,
        &format!(
            "{size} bytes, {:.2}% of the text",
            100.0 * size as f64 / chunk.len() as f64
        ),
    );
    // host:web-007 holds for 2% (most lines lack its value's bytes), metric:cpu for every line (each is
    // walked), the text for about 1%.
    for (wheres, texts) in [
        (&["host:web-007"][..], &[][..]),
        (&["metric:cpu"][..], &[][..]),
        (&[], &["timeout retry"][..]),
    ] {
        let filter = Filter::parse(wheres.iter().copied(), texts.iter().copied())
            .ok()
            .flatten()
            .expect("a filter");
        let mut n = 0;
        let times = measure(budget, || {
            n = chunk
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty() && filter.matches(l))
                .count();
        });
        report(
            &format!("match 5000 events, {}", filter.canonical()),
            chunk.len(),
            &times,
            &format!("{n} matches"),
        );
    }
}
