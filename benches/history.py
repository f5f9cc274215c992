#!/usr/bin/env python3
"""Memory and start-up against the length of the history, on release builds, loopback only.

For one series of 1, 30 and 365 days of 10 s chunks (one event each, written by `examples/seed.rs`), and for
1,000 series of one day each: the server's start-up time (exec to `listening on`), its RSS once started and
after reading 5,000 final pages picked at random over the whole history, and the latency of the last 2,000 of
them (one keep-alive connection; the first 3,000 let the caches grow to their bounds, so the pages timed are the
steady state's: mostly indexes read from disk into a full cache), p50 and p99.

    python3 benches/history.py                  (this checkout)
    ROOT=/path/to/checkout DAYS=1,30 SERIES=0 python3 benches/history.py   (another build, seeded by its own
        seed; DAYS and SERIES choose the runs, as an older seed that fsyncs every chunk takes long)
    HG_ARGS="--index-cache-bytes 8388608 --page-cache-bytes 8388608" python3 benches/history.py   (smaller caches)
"""
import http.client
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.environ.get("ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HG = os.path.join(ROOT, "target", "release", "hourglass")
SEED = os.path.join(ROOT, "target", "release", "examples", "seed")
HOUR = 3_600_000


def seed(data, series, hours, end):
    start = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime((end - hours * HOUR) / 1000))
    subprocess.run([SEED, "--data", data, "--series", series, "--hours", str(hours), "--per-chunk", "1",
                    "--start", start], check=True, stdout=subprocess.DEVNULL)


def rss(pid, key="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return 0


def measure(name, data, series, hours, end):
    began = time.time()
    extra = os.environ.get("HG_ARGS", "").split()
    p = subprocess.Popen([HG, "serve", "--data", data, "--listen", "127.0.0.1:0", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    up = time.time() - began
    host, port = line.strip().removeprefix("listening on ").rsplit(":", 1)
    rss_up = rss(p.pid)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    first = end - hours * HOUR

    def pages(seed, n):
        rng = random.Random(seed)
        times = []
        for _ in range(n):
            s = rng.choice(series)
            t = first + rng.randrange(hours * 360 - 2) * 10_000 + 10_000
            path = f"/api/series/{s}/data/before/" + time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(t / 1000))
            t0 = time.perf_counter()
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            times.append(time.perf_counter() - t0)
            assert r.status == 200, (path, r.status)
        return times

    # A first stretch lets the caches grow to their bounds; the pages timed after it are others, still cold.
    pages(7, 3000)
    times = pages(8, 2000)
    times.sort()
    p50, p99 = times[len(times) // 2] * 1000, times[len(times) * 99 // 100] * 1000
    rss_read, hwm = rss(p.pid), rss(p.pid, "VmHWM")
    p.terminate()
    p.wait()
    print(f"| {name} | {up:.2f} s | {rss_up} MB | {rss_read} MB (peak {hwm}) | {p50:.2f} / {p99:.2f} ms |")


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "hourglass", "--example", "seed"], cwd=ROOT,
                   check=True)
    end = (int(time.time() * 1000) // HOUR - 1) * HOUR
    print("| history | start-up | RSS started | RSS after 5,000 random final pages | page p50 / p99 |")
    print("| --- | --- | --- | --- | --- |")
    for days in [int(d) for d in os.environ.get("DAYS", "1,30,365").split(",")]:
        work = tempfile.mkdtemp()
        data = os.path.join(work, "data")
        seed(data, "s", days * 24, end)
        measure(f"1 series, {days} days", data, ["s"], days * 24, end)
        shutil.rmtree(work)
    if os.environ.get("SERIES", "1000") == "0":
        return
    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    names = [f"s{k}" for k in range(int(os.environ.get("SERIES", "1000")))]
    for n in names:
        seed(data, n, 24, end)
    measure(f"{len(names):,} series, 1 day each", data, names, 24, end)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
