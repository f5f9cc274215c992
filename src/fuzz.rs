//! Property tests over hostile input (proptest): everything that reads bytes from outside — bodies, URL times,
//! RFC 3339, filters, conditional, `Prefer` and `Accept-Encoding` headers, histogram parameters, archive members, log
//! segments (one damaged record loses only itself), whole archive folders — answers
//! arbitrary input with a value or an error, never a panic, and what it accepts is what it claims. The case
//! counts are set per property; `PROPTEST_CASES` raises them all for a long run.

use std::io::Write;

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use crate::api::conditional::Validators;
use crate::api::export::histogram_step;
use crate::api::pages::{Repr, accepts_gzip, prefer_wait};
use crate::archive::SeriesArchive;
use crate::archive::member::{self, MemberMeta};
use crate::ingest::parse::{self, Format, event_time};
use crate::ingest::wal::{Entry, Wal};
use crate::time::{self, ChunkStart};

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n),
    )
}

/// Bytes that look like NDJSON often enough to get past the first character.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "[{}\\[\\]\",:0-9a-z tse.\\-TZ\n\\\\]{0,300}".prop_map(String::into_bytes),
        proptest::collection::vec(
            (
                prop_oneof![4 => time::MIN_TIME..time::MAX_TIME, 1 => any::<i64>()],
                "[a-z]{0,5}",
                0..3u8,
            )
                .prop_map(|(ts, k, form)| match form {
                    0 => format!("{{\"ts\":\"{}\",\"{k}\":1}}", time::format_rfc3339(ts)),
                    1 => format!("{{\"{k}\":[1,{{\"ts\":2}}],\"ts\":{ts}}}"),
                    _ => format!("{{\"{k}\":\"no time\"}}"),
                }),
            0..20,
        )
        .prop_map(|lines| lines.join("\n").into_bytes()),
    ]
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hourglass-fuzz-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn valid_member(raw: &[u8]) -> Vec<u8> {
    let meta = MemberMeta {
        chunk_start: ChunkStart::from_stored(1_411_952_340_000),
        width_secs: 10,
        part: 0,
        last_part: true,
        entries: 1,
        sealed_at: 1_411_952_400_000,
        first_ts: 1_411_952_340_000,
        last_ts: 1_411_952_349_999,
        raw_len: 0,
        member_len: 0,
    };
    member::encode(meta, raw, Default::default()).1
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn batches_parse_or_are_refused_and_stored_lines_carry_their_time(body in body(), array in any::<bool>()) {
        let format = if array { Format::JsonArray } else { Format::Ndjson };
        if let Ok(parsed) = parse::parse(&body, format, 1_411_952_350_000) {
            for (ts, line) in parsed.batch.iter() {
                prop_assert_eq!(event_time(line), Some(ts));
                prop_assert!(!line.contains(&b'\n'));
            }
        }
    }

    #[test]
    fn url_times_and_rfc3339_parse_or_are_refused(s in "\\PC{0,40}", t in time::MIN_TIME..time::MAX_TIME) {
        let _ = time::parse_stamp(&s);
        let _ = time::parse_rfc3339(&s);
        prop_assert_eq!(time::parse_stamp(&time::format_stamp(t)), Some(t - t % 1000));
        prop_assert_eq!(time::parse_rfc3339(&time::format_rfc3339(t)), Some(t));
    }

    #[test]
    fn request_headers_never_panic(
        inm in proptest::collection::vec(any::<u8>(), 0..80),
        ims in "\\PC{0,40}",
        prefer in "[ -~]{0,40}",
        accept in "[ -~]{0,60}",
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in [("if-none-match", &inm[..]), ("if-modified-since", ims.as_bytes()),
                              ("prefer", prefer.as_bytes()), ("accept", accept.as_bytes()),
                              ("accept-encoding", accept.as_bytes())] {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                h.insert(name, v);
            }
        }
        let _ = Validators::from_headers(&h).not_modified("\"hg1.x.1.2.last.json\"", Some(1_411_952_350_000));
        prop_assert!(prefer_wait(&h).is_none_or(|w| w.as_secs() <= 60));
        let _ = Repr::negotiate(&h);
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    /// Any `where=` and `q=` values parse or are refused; what parses has a canonical spelling that reads back
    /// as itself, and matching any line never panics.
    #[test]
    fn filters_parse_or_are_refused_and_canonical_spellings_are_fixed_points(
        wheres in proptest::collection::vec("[a-z.\\\\]{0,4}[:=!<>?]{0,2}(\"[ -~]{0,6}\"|[ -~]{0,8}|-?[0-9]{1,3}(\\.[0-9])?|2024-0[1-9]-01T00:00:00Z)", 0..4),
        qs in proptest::collection::vec("\\PC{0,6}", 0..2),
        line in "\\{(\"[a-z.]{1,3}\":(\"[ -~]{0,6}\"|-?[0-9]{1,3}|true|null|\\{\"[a-z]\":[0-9]\\}|\\[1,\"a\"\\]),?){0,4}\\}",
    ) {
        let Ok(Some(f)) = crate::filter::Filter::parse(wheres.iter().map(String::as_str), qs.iter().map(String::as_str)) else {
            return Ok(());
        };
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(f.canonical()).unwrap();
        let again = crate::filter::Filter::parse(
            pairs.iter().filter(|(k, _)| k == "where").map(|(_, v)| v.as_str()),
            pairs.iter().filter(|(k, _)| k == "q").map(|(_, v)| v.as_str()),
        );
        prop_assert_eq!(again.ok().flatten().map(|g| g.canonical().to_string()), Some(f.canonical().to_string()));
        let _ = f.matches(line.as_bytes());
    }
}

/// One coding of an `Accept-Encoding` list, with its quality (`None`: none given; a bad one counts as 1).
fn coding() -> impl Strategy<Value = (&'static str, Option<&'static str>)> {
    (
        prop::sample::select(vec![
            "gzip", "x-gzip", "GZIP", "*", "br", "deflate", "identity", "zstd",
        ]),
        prop::option::of(prop::sample::select(vec![
            "0", "0.0", "0.5", "1", "1.0", "0.001", "x",
        ])),
    )
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn histogram_parameters_are_bounded_whatever_their_size(
        from in 0i64..4_000_000_000,
        span in 1i64..4_000_000_000,
        digits in "[0-9]{1,22}",
        unit in prop::sample::select(vec!["", "s", "m", "h", "d", "x", "ms"]),
        width in prop::sample::select(vec![1u32, 10, 60, 3600]),
    ) {
        let width = time::ChunkWidth::from_secs(width).unwrap();
        let (from, to) = (width.align_down(from * 1000), width.align_down((from + span) * 1000) + width.millis());
        match histogram_step(from, to, &format!("{digits}{unit}"), width) {
            Ok(step) => {
                prop_assert!(step > 0 && step % width.millis() == 0 && step <= to - from);
                prop_assert!(time::buckets(from, to, step) <= 100_000);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
        let _ = time::buckets(from, to, i64::MAX);
    }

    #[test]
    fn accept_encoding_is_read_by_rfc_9110_in_any_order(
        codings in proptest::collection::vec(coding(), 0..6),
        shuffle in any::<prop::sample::Index>(),
    ) {
        let spell = |list: &[(&str, Option<&str>)]| {
            list.iter()
                .map(|(c, q)| q.map_or(c.to_string(), |q| format!("{c};q={q}")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // What RFC 9110 §12.5.3 says: gzip's own quality when it is named, else that of `*`.
        let q = |q: &Option<&str>| q.map_or(1.0, |q| q.parse::<f32>().unwrap_or(1.0));
        let best = |names: &[&str]| {
            codings
                .iter()
                .filter(|(c, _)| names.iter().any(|n| n.eq_ignore_ascii_case(c)))
                .map(|(_, v)| q(v))
                .reduce(f32::max)
        };
        let want = best(&["gzip", "x-gzip"]).or_else(|| best(&["*"])).is_some_and(|q| q > 0.0);
        prop_assert_eq!(accepts_gzip(&spell(&codings)), want, "{}", spell(&codings));
        let mut turned = codings.clone();
        let len = turned.len();
        turned.rotate_left(shuffle.index(len.max(1)).min(len));
        turned.reverse();
        prop_assert_eq!(accepts_gzip(&spell(&turned)), want, "{}", spell(&turned));
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn damaged_members_are_refused_or_read_back_exactly(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let raw = b"{\"ts\":1411952340000,\"a\":\"some text to compress\"}\n";
        let mut bytes = valid_member(raw);
        for (at, mask) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = member::parse_header(&bytes);
        if let Ok((_, lines)) = member::decode(&bytes) {
            prop_assert_eq!(&lines[..], &raw[..]);
        }
        // What is sent as it is must pass the same test: verify passes only what decodes to the lines.
        let meta = member::parse_header(&valid_member(raw)).unwrap();
        if member::verify(&bytes, &meta).is_ok() {
            prop_assert_eq!(member::decode(&bytes).map(|(_, l)| l), Ok(raw.to_vec()));
        }
    }
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn one_damaged_log_record_loses_only_itself(
        sizes in proptest::collection::vec(0usize..300, 2..8),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            starts.push(bytes.len());
            let mut b = crate::ingest::parse::Batch::default();
            b.push(i as i64, format!("{{\"ts\":{i},\"p\":\"{}\"}}", "y".repeat(*size)).as_bytes());
            crate::ingest::wal::encode("s", None, &b, &mut bytes);
        }
        let flip = at.index(bytes.len());
        bytes[flip] ^= mask;
        let hit = starts.iter().rposition(|&s| s <= flip).unwrap_or(0) as i64;
        let dir = temp_dir("wal-flip");
        std::fs::write(dir.join(format!("{:016}.log", 1)), &bytes).unwrap();
        let mut seen = Vec::new();
        let (_, repairs) = Wal::open(&dir, |e| {
            if let Entry::Batch(r) = e {
                seen.push(r.events[0].ts)
            }
        }).unwrap();
        let want: Vec<i64> = (0..sizes.len() as i64).filter(|&i| i != hit).collect();
        prop_assert_eq!(seen, want);
        prop_assert_eq!(repairs.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn damaged_archives_and_logs_open_or_are_refused(
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
        keep in any::<prop::sample::Index>(),
    ) {
        // An hour archive: a whole member, then a torn or foreign tail; and a sidecar of noise.
        let dir = temp_dir("archive");
        let mut archive = valid_member(b"{\"ts\":1411952340000}\n");
        archive.extend_from_slice(&garbage[..keep.index(garbage.len() + 1)]);
        std::fs::write(dir.join("2014092901.json.gz"), &archive).unwrap();
        std::fs::write(dir.join("2014092901.idx"), &garbage).unwrap();
        if let Ok((a, _)) = SeriesArchive::open_alone(&dir) {
            prop_assert!(a.summary().events <= 1);
        }
        // A log segment of noise.
        let wal = temp_dir("wal");
        let mut f = std::fs::File::create(wal.join(format!("{:016}.log", 1))).unwrap();
        f.write_all(&garbage).unwrap();
        let _ = Wal::open(&wal, |_| {});
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&wal);
    }
}
