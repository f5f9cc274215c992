//! Read replicas (`--replica`): a server with no log and no folder that serves what the object store holds,
//! with the writer's bytes, ETags and links, and sends the rest to its `--upstream`. Against both real stores.

use std::time::{Duration, Instant};

use crate::objects::{HOUR, SERIES, finals, seed, wait_uploaded, walk, writer};
use crate::stores::{self, Store};
use crate::support::{Response, Server, TempDir, now_ms, request};

/// A replica of `store`'s `prefix`, sending what the store cannot answer to `upstream` (if any).
fn replica(
    work: &std::path::Path,
    name: &str,
    store: &Store,
    prefix: &str,
    upstream: Option<&Server>,
    extra: &[&str],
) -> Server {
    let url = store.url(prefix);
    let up = upstream.map(|s| format!("http://{}", s.addr));
    let mut args = vec!["--replica", "--archive", &url, "--refresh-ms", "100"];
    if let Some(up) = &up {
        args.extend(["--upstream", up.as_str()]);
    }
    args.extend(extra);
    let data = work.join(format!("{name}-data"));
    Server::start_env(
        &data,
        &args,
        &store.env(),
        &work.join(format!("{name}-log")),
    )
}

/// What a cache would keep of an answer: status, validators, links, caching, body.
fn seen(r: &Response) -> (u16, String, String, String, Vec<u8>) {
    let h = |name| r.header(name).unwrap_or_default().to_string();
    (
        r.status,
        h("etag"),
        h("link"),
        h("cache-control"),
        r.body.clone(),
    )
}

fn ranges(from: i64, to: i64) -> [String; 3] {
    let (from, to) = (from / 1000, to / 1000);
    [
        format!("/api/series/{SERIES}/export?from={from}&to={to}"),
        format!("/api/series/{SERIES}/export?from={from}&to={to}&format=csv&fields=ts,i"),
        format!("/api/series/{SERIES}/histogram?from={from}&to={to}&step=10m"),
    ]
}

#[test]
fn a_replica_walks_back_through_its_upstream_and_the_store_and_shows_what_the_writer_shows() {
    for store in stores::each("a_replica_walks_back") {
        let kind = store.kind;
        let work = TempDir::new("replica-walk");
        let data = work.path().join("data");
        let seeded = seed(&data, 3, 30);
        let last = *seeded.hours.last().unwrap();
        let w = writer(&data, &store, "p", &work.path().join("log"), &[]);
        wait_uploaded(&w, last + HOUR);
        // Events of this hour: the head and the newest pages are the writer's alone. Every event the test
        // sends from here on is in this hour (a regression: one sent just past the hour made it complete,
        // uploaded, and final at the replica without an upstream too).
        crate::support::clear_of_an_hour_boundary(std::time::Duration::from_secs(90));
        let t = now_ms();
        let fresh = format!("{{\"ts\":{t},\"i\":0}}\n");
        let r = w.post_ndjson(&format!("/api/series/{SERIES}/events"), &fresh);
        assert_eq!(r.status, 202, "{kind:?}: {}", r.text());
        w.wait_sealed(SERIES, t + 1);

        let rep = replica(work.path(), "replica", &store, "p", Some(&w), &[]);
        let (from_replica, from_writer) = (walk(&rep), walk(&w));
        let urls = |p: &[(String, Response)]| p.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>();
        assert_eq!(urls(&from_replica), urls(&from_writer), "{kind:?}");
        for ((u, a), (_, b)) in from_replica.iter().zip(&from_writer) {
            assert!(
                seen(a) == seen(b),
                "{kind:?} {u}: {:?} against {:?}",
                a.headers,
                b.headers
            );
        }
        let finals_here = finals(&from_replica);
        assert!(
            finals_here.len() >= 3 * 30,
            "{kind:?}: {} final pages",
            finals_here.len()
        );
        let (from, to) = (seeded.hours[0], last + HOUR);
        let answers: Vec<_> = ranges(from, to)
            .iter()
            .map(|u| (u.clone(), seen(&rep.get(u))))
            .collect();
        for (u, answer) in &answers {
            assert!(answer.3.contains("immutable"), "{kind:?} {u}: {}", answer.3);
            assert!(
                *answer == seen(&w.get(u)),
                "{kind:?} {u}: not the writer's answer"
            );
        }
        // Filters skip members on the replica too: the writer uploads each hour's member summaries with it.
        assert!(
            store.list().iter().any(|name| name.ends_with(".sum")),
            "{kind:?}: no summaries on the store"
        );
        let none = format!(
            "/api/series/{SERIES}/export?from={}&to={}&where=level:error",
            from / 1000,
            to / 1000
        );
        let filtered = rep.get(&none);
        assert!(
            seen(&filtered) == seen(&w.get(&none)) && filtered.body.is_empty(),
            "{kind:?}: {:?}",
            filtered.headers
        );
        assert!(
            filtered
                .header("cache-control")
                .unwrap()
                .contains("immutable")
        );
        let skipped = crate::filters::counter(&rep, "hourglass_members_skipped_total");
        assert!(skipped >= 3 * 30, "{kind:?}: {skipped} members skipped");

        // A POST through the replica lands at the writer.
        let r = rep.post_ndjson(
            &format!("/api/series/{SERIES}/events"),
            &format!("{{\"ts\":{},\"i\":-1}}\n", now_ms()),
        );
        assert_eq!(r.status, 202, "{kind:?}: {}", r.text());
        let info = w.get(&format!("/api/series/{SERIES}")).json();
        assert_eq!(info["events"], seeded.events as u64 + 2, "{kind:?}: {info}");

        // A replica with no upstream: the final pages of the uploaded hours are the same; the newest page it
        // knows is not final there, since what follows it is not on the store yet; writes are refused.
        let alone = replica(work.path(), "alone", &store, "p", None, &[]);
        let pages = walk(&alone);
        assert!(
            pages[0].1.header("cache-control") == Some("no-cache"),
            "{kind:?}: {:?}",
            pages[0].1.headers
        );
        assert!(
            finals(&pages) == finals_here[1..],
            "{kind:?}: other final pages without an upstream"
        );
        let r = alone.post_ndjson(&format!("/api/series/{SERIES}/events"), &fresh);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (405, "read_only_replica"),
            "{kind:?}"
        );
        assert_eq!(r.header("allow"), Some("GET, HEAD"));

        // Final answers are the replica's own: with the writer gone they come as before, from the store (but
        // for the newest, final at the writer because what follows it is sealed there, not uploaded yet).
        w.stop();
        for (u, etag, link, body) in &finals_here[1..] {
            let r = rep.get(u);
            assert!(
                r.status == 200
                    && r.header("etag") == Some(etag)
                    && r.header("link") == Some(link)
                    && &r.body == body,
                "{kind:?} {u}: {} {:?}",
                r.status,
                r.headers
            );
            let again = request(rep.addr, "GET", u, &[("If-None-Match", etag)], b"").unwrap();
            assert_eq!(again.status, 304, "{kind:?} {u}");
        }
        for (u, answer) in &answers {
            assert!(
                *answer == seen(&rep.get(u)),
                "{kind:?} {u}: not the same without the writer"
            );
        }
        // What only the writer knows is a 502 now, never kept.
        let head = rep.get(&format!("/api/series/{SERIES}/data"));
        assert_eq!(
            (head.status, head.error_code().as_str()),
            (502, "upstream_unavailable"),
            "{kind:?}"
        );
        assert_eq!(head.header("cache-control"), Some("no-store"));
        // The replica wrote nothing.
        assert!(
            !work.path().join("replica-data").exists(),
            "{kind:?}: the replica made a folder"
        );
        rep.stop();
        alone.stop();
    }
}

#[test]
fn a_replica_with_the_store_down_answers_503_and_nothing_else_as_final() {
    for mut store in stores::each("a_replica_with_the_store_down") {
        let kind = store.kind;
        let work = TempDir::new("replica-down");
        let data = work.path().join("data");
        let seeded = seed(&data, 2, 20);
        let last = *seeded.hours.last().unwrap();
        let w = writer(&data, &store, "d", &work.path().join("log"), &[]);
        wait_uploaded(&w, last + HOUR);
        w.stop();
        // Nothing kept in memory: every answer reads the store.
        let rep = replica(
            work.path(),
            "replica",
            &store,
            "d",
            None,
            &["--index-cache-bytes", "0", "--page-cache-bytes", "0"],
        );
        let before = walk(&rep);
        let finals_before = finals(&before);
        assert!(finals_before.len() >= 2 * 20 - 1, "{kind:?}");
        // The head, pages of both hours, the ranges (each refused call to a stopped store takes its retries).
        let urls: Vec<String> = before
            .iter()
            .map(|(u, _)| u.clone())
            .step_by(8)
            .chain(ranges(seeded.hours[0], last + HOUR))
            .collect();
        let pages = urls.len() - 3;
        let answers: Vec<_> = urls.iter().map(|u| seen(&rep.get(u))).collect();
        // A replica with a disk cache, and nothing in memory, that has read them all once.
        let cache = work.path().join("cache");
        let cached = replica(
            work.path(),
            "cached",
            &store,
            "d",
            None,
            &[
                "--index-cache-bytes",
                "0",
                "--page-cache-bytes",
                "0",
                "--cache-dir",
                cache.to_str().unwrap(),
            ],
        );
        for (u, was) in urls.iter().zip(&answers) {
            assert!(
                seen(&cached.get(u)) == *was,
                "{kind:?} {u}: another answer with a disk cache"
            );
        }

        store.halt();
        // What the disk cache holds is answered as before.
        for (u, was) in urls.iter().zip(&answers) {
            assert!(
                seen(&cached.get(u)) == *was,
                "{kind:?} {u}: not from the disk cache"
            );
        }
        cached.stop();
        let mut refused = 0;
        for (u, was) in urls.iter().zip(&answers) {
            let r = rep.get(u);
            if r.status == 503 {
                assert_eq!(r.error_code(), "store_unavailable", "{kind:?} {u}");
                assert_eq!(r.header("cache-control"), Some("no-store"), "{kind:?} {u}");
                assert!(r.header("retry-after").is_some(), "{kind:?} {u}");
                refused += 1;
            } else {
                // Whatever is answered without the store (a histogram from the hour summaries) is what it was.
                assert!(
                    seen(&r) == *was,
                    "{kind:?} {u}: {} {:?} while the store is down",
                    r.status,
                    r.headers
                );
            }
        }
        assert!(refused >= pages, "{kind:?}: {refused} refused");

        store.resume();
        let deadline = Instant::now() + Duration::from_secs(30);
        for (u, was) in urls.iter().zip(&answers) {
            loop {
                let r = rep.get(u);
                if r.status != 503 {
                    assert!(
                        seen(&r) == *was,
                        "{kind:?} {u}: another answer once the store is back"
                    );
                    break;
                }
                assert!(Instant::now() < deadline, "{kind:?} {u}: still 503");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        rep.stop();
    }
}
