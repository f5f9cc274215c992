#!/usr/bin/env bash
# Ingest through the shippers' protocols against native NDJSON, same events, same run, same machine.
#
#   bash benches/shippers.sh [SECONDS] [ROUNDS]        (TARGETS="hourglass elastic" for some protocols only)
#
# Each round starts a fresh server (all defaults: fsync'd acks, 10 s chunks, 30 s lateness) for each protocol
# in turn and drives it with examples/load (8 clients, 1,000-event batches of the 192-byte benchmark events)
# for SECONDS. Prints, per protocol, events/s as the median of the rounds with their spread (min..max), and the
# median of its per-round ratio to native. Everything listens on loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
cargo build --release --bins --examples -q
work=$(mktemp -d)
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT
read -r -a targets <<< "${TARGETS:-hourglass elastic loki-json loki-protobuf otlp-json otlp-protobuf}"
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    rm -rf "$work/hg"
    ./target/release/hourglass --data "$work/hg" --listen 127.0.0.1:18080 >/dev/null 2>"$work/hg.log" &
    pid=$!
    for _ in $(seq 50); do curl -s 127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
    line=$(./target/release/examples/load --url 127.0.0.1:18080 --target "$t" --series bench \
      --clients 8 --seconds "$secs" 2>/dev/null)
    echo "round $r $line" | tee -a "$work/results"
    kill $pid; wait $pid || true
  done
done
python3 - "$work/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = int(line.split()[1])
    f = dict(re.findall(r"(\w+)=([\w.-]+)", line))
    runs.setdefault(f["target"], {})[r] = (float(f["events_per_s"]), float(f["batch_ms_p99"]), int(f["refused_batches"]))
native = runs["hourglass"]
print("\n%-14s %12s %22s %10s %10s %8s" % ("protocol", "events/s", "spread", "vs native", "p99 ms", "refused"))
for t, by_round in runs.items():
    rates = [v[0] for v in by_round.values()]
    ratios = [by_round[r][0] / native[r][0] for r in by_round if r in native]
    print("%-14s %12.0f %10.0f..%-10.0f %9.2fx %10.1f %8d" % (
        t, statistics.median(rates), min(rates), max(rates), statistics.median(ratios),
        statistics.median(v[1] for v in by_round.values()), sum(v[2] for v in by_round.values())))
PY
