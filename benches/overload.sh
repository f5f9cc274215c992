#!/usr/bin/env bash
# Overload: more ingest than the machine can seal, while readers fetch a final page. Loopback only; needs wrk.
#
#   bash benches/overload.sh [SECONDS]
#
# The server seals at gzip level 9 (about a fifth of the default's speed), so 32 clients posting as fast as they
# are acknowledged outrun the sealer; its backlog is capped at 1 GiB. Printed: the load generator's line
# (acknowledged events/s, 503 refusals), final-page latency p50/p99 from wrk with no load and under the load
# (same run, same page), and the server's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
cargo build --release --bins --examples -q
work=$(mktemp -d)
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT

./target/release/examples/seed --data "$work/data" --series history --hours 1 --per-chunk 100 >/dev/null
./target/release/hourglass --data "$work/data" --listen 127.0.0.1:18070 --gzip-level 9 \
  --max-backlog-bytes $((1 << 30)) >/dev/null 2>"$work/hg.log" &
pid=$!
for _ in $(seq 50); do curl -sf 127.0.0.1:18070/healthz >/dev/null && break; sleep 0.1; done

# A final page: two steps back from the head of the seeded hour.
url=/api/series/history/data
for _ in 1 2; do
  url=$(curl -sf -D - -o /dev/null "127.0.0.1:18070$url" | tr -d '\r' |
    sed -n 's/^[Ll]ink: .*<\([^>]*\)>; rel="prev".*/\1/p')
done
curl -sf -D - -o /dev/null "127.0.0.1:18070$url" | grep -qi immutable || { echo "$url is not final"; exit 1; }
echo "final page $url, $(curl -sf "127.0.0.1:18070$url" | wc -c) bytes"

latency() { # label
  wrk -t1 -c8 -d"$secs"s --latency "http://127.0.0.1:18070$url" >"$work/wrk" 2>&1
  awk -v l="$1" '/Requests\/sec/ {r=$2} / 50%/ {p50=$2} / 99%/ {p99=$2}
    END {printf "  %-12s %8.0f req/s  p50 %s  p99 %s\n", l, r, p50, p99}' "$work/wrk"
}

echo "== final page, no load"; latency idle
echo "== 32 ingest clients as fast as acknowledged, same page meanwhile"
./target/release/examples/load --url 127.0.0.1:18070 --clients 32 --seconds "$secs" 2>/dev/null >"$work/load" &
load=$!
sleep 1
latency "under load"
wait $load
sed 's/^/  /' "$work/load"
curl -s 127.0.0.1:18070/metrics | grep -E '^hourglass_(backlog_bytes|batches_refused_total)' | sed 's/^/  /'
echo "  peak RSS $(awk '/VmHWM/ {print $2/1024 " MB"}' "/proc/$pid/status")"
kill $pid; wait $pid || true
