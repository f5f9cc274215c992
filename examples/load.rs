//! Ingest load generator: several clients, each on its own keep-alive connection, POST batches of fixed-size
//! JSON events as fast as the server acknowledges them, for a fixed time. Prints events/s and batch latency.
//!
//! ```sh
//! cargo run --release --example load -- --url 127.0.0.1:8080 --clients 8 --seconds 20
//! cargo run --release --example load -- --target influx --url 127.0.0.1:8086 --clients 8 --seconds 20
//! ```
//!
//! Bodies are built once; each request only rewrites the timestamps in place, so the generator spends its CPU
//! on the wire, not on formatting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use rand::SeedableRng;

#[path = "../benches/support/events.rs"]
mod events;
use events::message;

#[derive(Parser)]
struct Args {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value_t = Target::Hourglass)]
    target: Target,
    /// Series (hourglass) or measurement (InfluxDB).
    #[arg(long, default_value = "bench")]
    series: String,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Bytes per event, newline included.
    #[arg(long, default_value_t = 192)]
    event_bytes: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Offered load in events/s over all clients; 0 sends as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Target {
    Hourglass,
    Influx,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request whose timestamp digits sit at known offsets, so they can be rewritten in place.
struct Body {
    head: Vec<u8>,
    body: Vec<u8>,
    ts_at: Vec<usize>,
    /// InfluxDB overwrites points with the same series and time, so its times are nanoseconds made unique
    /// with a counter; hourglass keeps every event, so its times are plain milliseconds.
    unique_ns: bool,
    sent: u64,
}

fn build(args: &Args, client: usize) -> Body {
    let ts = format!("{:013}", now_ms());
    let mut body = Vec::with_capacity(args.batch * args.event_bytes);
    let mut ts_at = Vec::with_capacity(args.batch);
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64);
    for i in 0..args.batch {
        let start = body.len();
        let line = match args.target {
            Target::Hourglass => format!(
                "{{\"ts\":{ts},\"host\":\"web-{:03}\",\"metric\":\"cpu\",\"value\":0.{:04},\"seq\":{i},\"msg\":\"",
                client % 1000,
                i % 10_000
            ),
            Target::Influx => format!(
                "{},host=web-{:03},metric=cpu value=0.{:04},seq={i}i,msg=\"",
                args.series,
                client % 1000,
                i % 10_000
            ),
        };
        let ts_offset = match args.target {
            Target::Hourglass => start + 6,
            Target::Influx => 0, // set below: the timestamp ends the line
        };
        body.extend_from_slice(line.as_bytes());
        let tail = match args.target {
            Target::Hourglass => "\"}\n".to_string(),
            Target::Influx => format!("\" {ts}000000\n"),
        };
        let pad = args.event_bytes.saturating_sub(line.len() + tail.len());
        body.extend_from_slice(&message(&mut rng, pad));
        body.extend_from_slice(tail.as_bytes());
        ts_at.push(match args.target {
            Target::Hourglass => ts_offset,
            Target::Influx => body.len() - 20,
        });
    }
    let path = match args.target {
        Target::Hourglass => format!("/api/series/{}/events", args.series),
        Target::Influx => "/write?db=bench&precision=ns".to_string(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        args.url,
        body.len()
    )
    .into_bytes();
    Body {
        head,
        body,
        ts_at,
        unique_ns: args.target == Target::Influx,
        sent: 0,
    }
}

fn stamp(b: &mut Body) {
    let ts = format!("{:013}", now_ms());
    for (i, &at) in b.ts_at.iter().enumerate() {
        b.body[at..at + 13].copy_from_slice(ts.as_bytes());
        if b.unique_ns {
            let n = (b.sent * b.ts_at.len() as u64 + i as u64) % 1_000_000;
            b.body[at + 13..at + 19].copy_from_slice(format!("{n:06}").as_bytes());
        }
    }
    b.sent += 1;
}

/// Reads one response; returns its status.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)?;
    // The first few refusals are worth reading; the rest are counted.
    static SHOWN: AtomicU64 = AtomicU64::new(0);
    if !(200..300).contains(&status) && SHOWN.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("status {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(status)
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let mut body = build(&args, c);
            let (stop, events, refused) = (stop.clone(), events.clone(), refused.clone());
            let (url, batch) = (args.url.clone(), args.batch as u64);
            // Each client sends one batch per `interval`, on a fixed schedule, when a rate is set.
            let interval = (args.rate > 0).then(|| {
                Duration::from_secs_f64(args.clients as f64 * args.batch as f64 / args.rate as f64)
            });
            std::thread::spawn(move || -> std::io::Result<Vec<Duration>> {
                let stream = TcpStream::connect(&url)?;
                stream.set_nodelay(true)?;
                let mut writer = stream.try_clone()?;
                let mut reader = BufReader::new(stream);
                let mut latencies = Vec::new();
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(interval) = interval {
                        next += interval;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    stamp(&mut body);
                    let t = Instant::now();
                    writer.write_all(&body.head)?;
                    writer.write_all(&body.body)?;
                    let status = read_response(&mut reader)?;
                    latencies.push(t.elapsed());
                    if (200..300).contains(&status) {
                        events.fetch_add(batch, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut last = 0;
    for s in 1..=args.seconds {
        std::thread::sleep(Duration::from_secs(1));
        let now = events.load(Ordering::Relaxed);
        eprintln!("{s:>4} s  {:>10} events/s", now - last);
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    for c in clients {
        match c.join() {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => eprintln!("client failed: {e}"),
            Err(_) => eprintln!("client panicked"),
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let total = events.load(Ordering::Relaxed);
    println!(
        "target={} clients={} batch={} event_bytes={} rate={} seconds={:.1} events={} events_per_s={:.0} MB_per_s={:.1} batch_ms_p50={:.2} batch_ms_p99={:.2} refused_batches={}",
        match args.target {
            Target::Hourglass => "hourglass",
            Target::Influx => "influxdb",
        },
        args.clients,
        args.batch,
        args.event_bytes,
        args.rate,
        elapsed,
        total,
        total as f64 / elapsed,
        total as f64 * args.event_bytes as f64 / elapsed / 1e6,
        pct(0.5),
        pct(0.99),
        refused.load(Ordering::Relaxed)
    );
    Ok(())
}
