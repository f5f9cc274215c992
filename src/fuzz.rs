//! Property tests over hostile input (proptest): everything that reads bytes from outside — bodies, URL times,
//! RFC 3339, conditional and `Prefer` headers, archive members, log segments, whole archive folders — answers
//! arbitrary input with a value or an error, never a panic, and what it accepts is what it claims. The case
//! counts are set per property; `PROPTEST_CASES` raises them all for a long run.

use std::io::Write;

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use crate::api::conditional::Validators;
use crate::api::pages::{Repr, prefer_wait};
use crate::archive::SeriesArchive;
use crate::archive::member::{self, MemberMeta};
use crate::ingest::parse::{self, Format, event_time};
use crate::ingest::wal::Wal;
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
    member::encode(meta, raw, 3).1
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
        if let Ok((a, _)) = SeriesArchive::open(&dir, crate::archive::Expect::ALL_SEALED) {
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
