#!/usr/bin/env python3
"""Damage runs: what survives flipped bits, on the release binary, loopback only.

1. The log: six acknowledged 14,000-event batches, kill -9, one byte flipped in the middle of a segment that is
   not the newest (and, separately, at offset 100 of the newest), restart: how many events come back, what is
   set aside, how long recovery takes.
2. The log again, a flipped bit at a random place each trial.
3. The archive: 360 sealed chunks of 300 events in one hour; each trial flips one random bit of the archive
   in a copy of the data folder, starts the server on it and reads every page (JSON, and NDJSON+gzip, which
   is the stored member itself) and the gzip export of the hour: how often the damage is refused (500), how
   often a flip changes nothing (padding bits), and how often anything other than the stored bytes is served
   as whole (the figure that must be 0).

    python3 benches/damage.py [TRIALS]      (default 30; HOURGLASS_BIN=path runs another build)
"""
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# HOURGLASS_BIN: another build to compare (an older commit's, say); the seed example is always this one's.
BIN = os.environ.get("HOURGLASS_BIN", os.path.join(ROOT, "target", "release", "hourglass"))


def start(data, *args):
    p = subprocess.Popen(
        [BIN, "serve", "--data", data, "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "HOURGLASS_LOG": "error"},
    )
    began = time.time()
    line = p.stdout.readline().decode()
    host, port = line.strip().removeprefix("listening on ").rsplit(":", 1)
    return p, (host, int(port)), time.time() - began


def call(addr, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(*addr, timeout=30)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        try:
            data = r.read()
            whole = True
        except (http.client.IncompleteRead, ConnectionError) as e:
            data = getattr(e, "partial", b"")
            whole = False
        return r.status, dict(r.getheaders()), data, whole
    except (ConnectionError, http.client.HTTPException):
        return 0, {}, b"", False
    finally:
        c.close()


def stop(p, kill=False):
    p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    p.wait()


def six_batches(data, restart_between):
    args = ("--chunk-seconds", "1", "--lateness", "3600")
    p, addr, _ = start(data, *args)
    t = int(time.time() * 1000)
    for b in range(6):
        body = "".join(f'{{"ts":{t - 1000 + i % 1000},"b":{b},"i":{i}}}\n' for i in range(14_000))
        status, _, _, _ = call(addr, "POST", "/api/series/w/events", body, {"Content-Type": "application/x-ndjson"})
        assert status == 202, status
    stop(p, kill=True)
    if restart_between:
        p, _, _ = start(data, *args)
        stop(p, kill=True)
    return os.path.join(data, "_wal", f"{1:016}.log")


def recover(data):
    p, addr, took = start(data, "--chunk-seconds", "1", "--lateness", "3600")
    events = json.loads(call(addr, "GET", "/api/series/w")[2])["events"]
    metrics = call(addr, "GET", "/metrics")[2].decode()
    stop(p)
    aside = sum(
        int(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
        if l.startswith("hourglass_log_repaired_bytes_total{")
    )
    return events, aside, took


def log_runs(trials, work):
    print("## log: six acknowledged batches of 14,000 events, one flip, restart")
    for name, restart_between, where in [
        ("middle of an older segment", True, lambda n: n // 2),
        ("offset 100 of the newest segment", False, lambda n: 100),
    ]:
        data = tempfile.mkdtemp(dir=work)
        seg = six_batches(data, restart_between)
        b = bytearray(open(seg, "rb").read())
        b[where(len(b))] ^= 0x20
        open(seg, "wb").write(b)
        events, aside, took = recover(data)
        print(f"- {name}: {events:,} of 84,000 events back; {aside:,} bytes set aside; up in {took:.2f} s")
        shutil.rmtree(data)
    data = tempfile.mkdtemp(dir=work)
    seg = six_batches(data, True)
    pristine = data + ".pristine"
    shutil.copytree(data, pristine)
    counts = {}
    for _ in range(trials):
        shutil.rmtree(data)
        shutil.copytree(pristine, data)
        b = bytearray(open(seg, "rb").read())
        at = random.randrange(len(b))
        b[at] ^= 1 << random.randrange(8)
        open(seg, "wb").write(b)
        events, _, _ = recover(data)
        counts[events] = counts.get(events, 0) + 1
    shown = ", ".join(f"{n:,} events back in {k} trials" for n, k in sorted(counts.items()))
    print(f"- a random bit of an older segment, {trials} trials: {shown}")


def archive_runs(trials, work):
    data = tempfile.mkdtemp(dir=work)
    seed = os.path.join(ROOT, "target", "release", "examples", "seed")
    subprocess.run([seed, "--data", data, "--series", "a", "--hours", "1", "--per-chunk", "300",
                    "--start", "2014-09-29T00:00:00Z"], check=True, stdout=subprocess.DEVNULL)
    hour_start = 1_411_948_800_000
    series = os.path.join(data, "a")
    archive = [os.path.join(series, f) for f in os.listdir(series) if f.endswith(".json.gz")][0]
    original = open(archive, "rb").read()
    stamp = lambda t: time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(t / 1000))
    pages = [f"/api/series/a/data/before/{stamp(hour_start + k * 10_000 + 10_000)}" for k in range(360)]
    export = f"/api/series/a/export?from={hour_start // 1000}&to={hour_start // 1000 + 3600}"
    # What every answer must be when it is whole: the same as before any damage.
    p, addr, _ = start(data)
    good = {(u, enc): call(addr, "GET", u, headers=hdr)[2]
            for u in pages + [export]
            for enc, hdr in [("json", {}), ("gz", {"Accept": "application/x-ndjson", "Accept-Encoding": "gzip"})]}
    stop(p)
    pristine = data + ".pristine"
    shutil.copytree(data, pristine)
    refused = unchanged = wrong = broken = 0
    for _ in range(trials):
        shutil.rmtree(data)
        shutil.copytree(pristine, data)
        b = bytearray(original)
        b[random.randrange(len(b))] ^= 1 << random.randrange(8)
        open(archive, "wb").write(b)
        p, addr, _ = start(data)
        seen_500 = export_broken = False
        for (u, enc), want in good.items():
            hdr = {} if enc == "json" else {"Accept": "application/x-ndjson", "Accept-Encoding": "gzip"}
            status, _, body, whole = call(addr, "GET", u, headers=hdr)
            if status == 500 or (status == 200 and not whole) or status == 0:
                seen_500 = seen_500 or status == 500
                export_broken = export_broken or u == export
                continue
            if status != 200 or body != want:
                wrong += 1
        stop(p)
        broken += export_broken
        if seen_500:
            refused += 1
        else:
            unchanged += 1
    print(f"## archive: one random bit of a 360-chunk hour archive ({len(original):,} bytes), {trials} trials")
    print(f"- the damaged page refused with 500 damaged_data: {refused} trials; the flip changed nothing served"
          f" (padding bits): {unchanged}")
    print(f"- the hour's export (identity and gzip) refused or broken off, never sent as complete: {broken} trials")
    print(f"- answers served as whole that differ from the undamaged ones: {wrong} (must be 0)")


def main():
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "hourglass", "--example", "seed"], cwd=ROOT,
                   check=True)
    work = tempfile.mkdtemp()
    try:
        log_runs(trials, work)
        archive_runs(trials, work)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
