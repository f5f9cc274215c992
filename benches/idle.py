#!/usr/bin/env python3
"""Idle series: what many series that receive nothing cost, on the release binary with all defaults.

Creates N series with one event each (8 client threads), noting the worst seal lag /metrics shows meanwhile,
waits until every event is sealed, then lets the server idle for SECONDS: its CPU time from /proc, and the
fsyncs and renames it makes, counted by `strace -c` over the idle stretch.

    python3 benches/idle.py [N] [SECONDS]      (default 5000 series, 30 s; HOURGLASS_BIN=path runs another build)
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("HOURGLASS_BIN", os.path.join(ROOT, "target", "release", "hourglass"))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    idle = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    if "HOURGLASS_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "hourglass"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp()
    p = subprocess.Popen([BIN, "serve", "--data", os.path.join(work, "data"), "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    base = "http://" + p.stdout.readline().decode().strip().removeprefix("listening on ")
    get = lambda path: urllib.request.urlopen(base + path, timeout=60).read()
    lag = lambda: float(re.search(rb"^hourglass_seal_lag_seconds (\S+)$", get("/metrics"), re.M).group(1))
    try:
        worst = [0.0]
        done = threading.Event()

        def watch():
            while not done.is_set():
                worst[0] = max(worst[0], lag())
                time.sleep(0.5)

        def post(ks):
            for k in ks:
                body = json.dumps({"ts": int(time.time() * 1000), "k": k}).encode()
                req = urllib.request.Request(f"{base}/api/series/s{k}/events", body,
                                             {"Content-Type": "application/x-ndjson"})
                urllib.request.urlopen(req, timeout=60).read()

        watcher = threading.Thread(target=watch)
        watcher.start()
        began = time.time()
        threads = [threading.Thread(target=post, args=(range(i, n, 8),)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created = time.time() - began
        # Every event sealed: the sealer has caught up (the lag is at least the 30 s of lateness).
        unsealed = lambda: sum(s["unsealed_events"] for s in json.loads(get("/api/series"))["series"])
        while unsealed() or lag() > 45:
            time.sleep(1)
        time.sleep(2)
        done.set()
        watcher.join()
        print(f"{n} series with one event each created in {created:.1f} s ({n / created:.0f}/s); "
              f"worst seal lag meanwhile {worst[0]:.1f} s")
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = lambda: sum(int(x) for x in open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
        c0 = cpu()
        trace = subprocess.run(["timeout", "-s", "INT", str(idle), "strace", "-c", "-f",
                                "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-p", str(p.pid)],
                               capture_output=True, text=True, timeout=idle + 30)
        c1 = cpu()
        calls = {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s*\S+\s+\S+\s+\S+\s+(\d+)\s+(?:\d+\s+)?(\w+)$",
                                                                     trace.stderr, re.M)}
        calls.pop("total", None)
        total = sum(calls.values())
        print(f"idle for {idle} s: CPU {100 * (c1 - c0) / ticks / idle:.1f}% of one core; "
              f"fsync/fdatasync/rename calls: {total} ({total / idle:.1f}/s) {calls or ''}; "
              f"seal lag {lag():.1f} s")
    finally:
        p.terminate()
        p.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
