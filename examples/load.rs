//! Ingest load generator: several clients, each on its own keep-alive connection, POST batches of fixed-size
//! JSON events as fast as the server acknowledges them, for a fixed time. Prints events/s and batch latency.
//!
//! ```sh
//! cargo run --release --example load -- --url 127.0.0.1:8080 --clients 8 --seconds 20
//! cargo run --release --example load -- --target influx --url 127.0.0.1:8086 --clients 8 --seconds 20
//! cargo run --release --example load -- --target otlp-protobuf --url 127.0.0.1:8080 --seconds 20
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
    /// NDJSON to `/api/series/{series}/events`.
    Hourglass,
    /// Line protocol to InfluxDB's `/write`.
    Influx,
    /// Elasticsearch `_bulk` to hourglass (`/{series}/_bulk`, documents with `@timestamp` in ms), asking for
    /// the answer Beats asks for (`filter_path=errors,items.*.error,items.*.status`).
    Elastic,
    /// Loki push in JSON (one stream, `job` = the series).
    LokiJson,
    /// Loki push in snappy-compressed protobuf, compressed again for every request as Promtail does.
    LokiProtobuf,
    /// OTLP/HTTP logs in JSON (`service.name` = the series).
    OtlpJson,
    /// OTLP/HTTP logs in protobuf.
    OtlpProtobuf,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Hourglass => "hourglass",
            Target::Influx => "influxdb",
            Target::Elastic => "elastic-bulk",
            Target::LokiJson => "loki-json",
            Target::LokiProtobuf => "loki-protobuf",
            Target::OtlpJson => "otlp-json",
            Target::OtlpProtobuf => "otlp-protobuf",
        }
    }
}

/// How a body's times are written: where each sits, and in which form.
#[derive(Clone, Copy, PartialEq)]
enum Stamp {
    /// 13 ASCII digits of Unix milliseconds (followed, for nanoseconds, by digits left as they are).
    MillisDigits,
    /// InfluxDB: 13 digits of milliseconds then 6 of a counter that makes each point's time unique.
    UniqueNanos,
    /// Protobuf `fixed64` nanoseconds, little-endian.
    Fixed64Nanos,
    /// Protobuf varint seconds, 5 bytes (every time from 2038 back to 1978 takes five).
    VarintSeconds,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request whose times sit at known offsets, so they can be rewritten in place.
struct Body {
    /// Everything of the head but `Content-Length`, which snappy makes vary.
    head: String,
    body: Vec<u8>,
    ts_at: Vec<usize>,
    /// InfluxDB overwrites points with the same series and time, so its times are nanoseconds made unique
    /// with a counter; hourglass keeps every event, so its times are plain milliseconds.
    stamp: Stamp,
    /// Sent snappy-compressed (Loki's protobuf).
    snappy: bool,
    sent: u64,
}

use hourglass::api::shippers::{loki, otlp};

/// Where the i-th occurrence of `needle` starts in `hay`, for every one.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    (0..hay.len().saturating_sub(needle.len() - 1))
        .filter(|&i| &hay[i..i + needle.len()] == needle)
        .collect()
}

/// The events one client sends in every batch: padded log-like text, `host` and `seq` as fields or labels.
fn build(args: &Args, client: usize) -> Body {
    let ts = format!("{:013}", now_ms());
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64);
    let host = format!("web-{:03}", client % 1000);
    // The message of event i, sized so that a native event is `event_bytes` long.
    let mut text = |i: usize, overhead: usize| {
        String::from_utf8_lossy(&message(
            &mut rng,
            args.event_bytes.saturating_sub(overhead),
        ))
        .into_owned()
            + &format!(" seq={i}")
    };
    let (path, content_type, body, ts_at, stamp, snappy) = match args.target {
        Target::Hourglass
        | Target::Influx
        | Target::Elastic
        | Target::LokiJson
        | Target::OtlpJson => {
            let mut body = Vec::with_capacity(args.batch * args.event_bytes * 2);
            let mut ts_at = Vec::with_capacity(args.batch);
            match args.target {
                Target::LokiJson => body.extend_from_slice(
                    format!("{{\"streams\":[{{\"stream\":{{\"job\":\"{}\",\"host\":\"{host}\"}},\"values\":[", args.series).as_bytes(),
                ),
                Target::OtlpJson => body.extend_from_slice(
                    format!("{{\"resourceLogs\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"service.name\",\"value\":{{\"stringValue\":\"{}\"}}}}]}},\"scopeLogs\":[{{\"logRecords\":[", args.series).as_bytes(),
                ),
                _ => {}
            }
            for i in 0..args.batch {
                let sep = if i > 0 { "," } else { "" };
                let (before, after) = match args.target {
                    Target::Hourglass => (
                        "{\"ts\":".to_string(),
                        format!(
                            ",\"host\":\"{host}\",\"metric\":\"cpu\",\"value\":0.{:04},\"seq\":{i},\"msg\":\"{}\"}}\n",
                            i % 10_000,
                            text(i, 100)
                        ),
                    ),
                    Target::Influx => (
                        format!(
                            "{},host={host},metric=cpu value=0.{:04},seq={i}i,msg=\"{}\" ",
                            args.series,
                            i % 10_000,
                            text(i, 100)
                        ),
                        "000000\n".to_string(),
                    ),
                    Target::Elastic => (
                        "{\"create\":{}}\n{\"@timestamp\":".to_string(),
                        format!(
                            ",\"host\":\"{host}\",\"metric\":\"cpu\",\"value\":0.{:04},\"seq\":{i},\"msg\":\"{}\"}}\n",
                            i % 10_000,
                            text(i, 100)
                        ),
                    ),
                    Target::LokiJson => (
                        format!("{sep}[\""),
                        format!("000000\",\"{}\"]", text(i, 60)),
                    ),
                    _ => (
                        format!("{sep}{{\"timeUnixNano\":\""),
                        format!(
                            "000000\",\"severityText\":\"INFO\",\"body\":{{\"stringValue\":\"{}\"}},\"attributes\":[{{\"key\":\"host\",\"value\":{{\"stringValue\":\"{host}\"}}}}]}}",
                            text(i, 100)
                        ),
                    ),
                };
                body.extend_from_slice(before.as_bytes());
                ts_at.push(body.len());
                body.extend_from_slice(ts.as_bytes());
                body.extend_from_slice(after.as_bytes());
            }
            match args.target {
                Target::LokiJson => body.extend_from_slice(b"]}]}"),
                Target::OtlpJson => body.extend_from_slice(b"]}]}]}"),
                _ => {}
            }
            let (path, content_type, stamp) = match args.target {
                Target::Hourglass => (
                    format!("/api/series/{}/events", args.series),
                    "application/x-ndjson",
                    Stamp::MillisDigits,
                ),
                Target::Influx => (
                    "/write?db=bench&precision=ns".to_string(),
                    "text/plain",
                    Stamp::UniqueNanos,
                ),
                // The answer Beats asks for.
                Target::Elastic => (
                    format!(
                        "/{}/_bulk?filter_path=errors,items.*.error,items.*.status",
                        args.series
                    ),
                    "application/x-ndjson",
                    Stamp::MillisDigits,
                ),
                Target::LokiJson => (
                    "/loki/api/v1/push".to_string(),
                    "application/json",
                    Stamp::MillisDigits,
                ),
                _ => (
                    "/v1/logs".to_string(),
                    "application/json",
                    Stamp::MillisDigits,
                ),
            };
            (path, content_type, body, ts_at, stamp, false)
        }
        Target::LokiProtobuf => {
            use prost::Message;
            // A sentinel second count, five varint bytes like every current time, found again after encoding.
            const MARK: i64 = 0x7_1234_5678;
            let entries = (0..args.batch)
                .map(|i| loki::wire::Entry {
                    timestamp: Some(loki::wire::Timestamp {
                        seconds: MARK,
                        nanos: 0,
                    }),
                    line: text(i, 60),
                    structured_metadata: Vec::new(),
                })
                .collect();
            let request = loki::wire::PushRequest {
                streams: vec![loki::wire::Stream {
                    labels: format!("{{job=\"{}\", host=\"{host}\"}}", args.series),
                    entries,
                }],
            };
            let body = request.encode_to_vec();
            let mark = loki::wire::Timestamp {
                seconds: MARK,
                nanos: 0,
            }
            .encode_to_vec();
            let ts_at = find_all(&body, &mark[1..]);
            (
                "/loki/api/v1/push".to_string(),
                "application/x-protobuf",
                body,
                ts_at,
                Stamp::VarintSeconds,
                true,
            )
        }
        Target::OtlpProtobuf => {
            use prost::Message;
            const MARK: u64 = 0x1122_3344_5566_7788;
            use otlp::wire;
            let string = |s: &str| {
                Some(wire::AnyValue {
                    value: Some(wire::Value::String(s.to_string())),
                })
            };
            let log_records = (0..args.batch)
                .map(|i| wire::LogRecord {
                    time_unix_nano: MARK,
                    severity_text: "INFO".into(),
                    body: string(&text(i, 100)),
                    attributes: vec![wire::KeyValue {
                        key: "host".into(),
                        value: string(&host),
                    }],
                    ..Default::default()
                })
                .collect();
            let request = wire::ExportLogsServiceRequest {
                resource_logs: vec![wire::ResourceLogs {
                    resource: Some(wire::Resource {
                        attributes: vec![wire::KeyValue {
                            key: "service.name".into(),
                            value: string(&args.series),
                        }],
                    }),
                    scope_logs: vec![wire::ScopeLogs {
                        scope: None,
                        log_records,
                    }],
                }],
            };
            let body = request.encode_to_vec();
            let ts_at = find_all(&body, &MARK.to_le_bytes());
            (
                "/v1/logs".to_string(),
                "application/x-protobuf",
                body,
                ts_at,
                Stamp::Fixed64Nanos,
                false,
            )
        }
    };
    assert_eq!(ts_at.len(), args.batch, "every event's time found");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n",
        args.url
    );
    Body {
        head,
        body,
        ts_at,
        stamp,
        snappy,
        sent: 0,
    }
}

fn stamp(b: &mut Body) {
    let ms = now_ms();
    let ts = format!("{ms:013}");
    for (i, &at) in b.ts_at.iter().enumerate() {
        match b.stamp {
            Stamp::MillisDigits => b.body[at..at + 13].copy_from_slice(ts.as_bytes()),
            Stamp::UniqueNanos => {
                b.body[at..at + 13].copy_from_slice(ts.as_bytes());
                let n = (b.sent * b.ts_at.len() as u64 + i as u64) % 1_000_000;
                b.body[at + 13..at + 19].copy_from_slice(format!("{n:06}").as_bytes());
            }
            Stamp::Fixed64Nanos => {
                b.body[at..at + 8].copy_from_slice(&(ms * 1_000_000).to_le_bytes())
            }
            Stamp::VarintSeconds => {
                let mut v = ms / 1000;
                for byte in &mut b.body[at..at + 5] {
                    *byte = (v & 0x7f) as u8 | 0x80;
                    v >>= 7;
                }
                b.body[at + 4] &= 0x7f;
            }
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
                    let compressed;
                    let payload = if body.snappy {
                        compressed = snap::raw::Encoder::new()
                            .compress_vec(&body.body)
                            .map_err(std::io::Error::other)?;
                        &compressed
                    } else {
                        &body.body
                    };
                    let head = format!("{}Content-Length: {}\r\n\r\n", body.head, payload.len());
                    writer.write_all(head.as_bytes())?;
                    writer.write_all(payload)?;
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
        args.target.name(),
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
