#!/usr/bin/env bash
# Durable ingest benchmark: hourglass with its defaults, then InfluxDB 1.x on the same events as line protocol.
#
#   bash benches/ingest.sh [SECONDS] [RATE ...]   (needs: apt-get install -y influxdb, for the comparison)
#
# RATE is events/s offered by the 8 clients together, 0 for as fast as acknowledged; default 0 1000000.
# For each run it prints the load generator's line (events/s, batch ack p50/p99, refusals), the seal lag at the
# end and the server's peak RSS. Everything listens on loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(0 1000000)
cargo build --release --bins --examples -q
work=$(mktemp -d)
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT

peak_rss() { awk '/VmHWM/ {print $2/1024 " MB"}' "/proc/$1/status"; }

hourglass_run() { # RATE (0: as fast as acknowledged)
  rm -rf "$work/hg"
  ./target/release/hourglass --data "$work/hg" --listen 127.0.0.1:18080 >/dev/null 2>"$work/hg.log" &
  local pid=$!
  sleep 0.5
  ./target/release/examples/load --url 127.0.0.1:18080 --clients 8 --seconds "$secs" --rate "$1" 2>/dev/null
  curl -s 127.0.0.1:18080/api/series/bench | python3 -c '
import json, sys, datetime
d = json.load(sys.stdin)
s = datetime.datetime.fromisoformat(d["sealed_watermark"].replace("Z", "+00:00"))
lag = (datetime.datetime.now(datetime.timezone.utc) - s).total_seconds()
print("  seal lag at end %.1f s, unsealed events %d" % (lag, d["unsealed_events"]))'
  echo "  peak RSS $(peak_rss $pid)"
  kill $pid; wait $pid || true
}

for rate in "${rates[@]}"; do
  if [ "$rate" = 0 ]; then echo "== hourglass, as fast as acknowledged"; else echo "== hourglass, offered $rate events/s"; fi
  hourglass_run "$rate"
done

if command -v influxd >/dev/null; then
  mkdir -p "$work/influx"
  cat > "$work/influx/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:18088"
[meta]
  dir = "$work/influx/meta"
[data]
  dir = "$work/influx/data"
  wal-dir = "$work/influx/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:18086"
  log-enabled = false
[logging]
  level = "warn"
CONF
  influxd -config "$work/influx/influxdb.conf" >"$work/influx.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do curl -s 127.0.0.1:18086/ping >/dev/null && break; sleep 0.2; done
  curl -s -XPOST 127.0.0.1:18086/query --data-urlencode 'q=CREATE DATABASE bench' >/dev/null
  echo "== $(influxd version), as fast as acknowledged (wal-fsync-delay 0s)"
  ./target/release/examples/load --target influx --url 127.0.0.1:18086 --clients 8 --seconds "$secs" 2>/dev/null
  echo "  points stored: $(curl -s '127.0.0.1:18086/query?db=bench' --data-urlencode 'q=SELECT count(value) FROM bench' | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["series"][0]["values"][0][1])')"
  echo "  peak RSS $(peak_rss $pid)"
  kill $pid; wait $pid || true
else
  echo "== influxd not installed: apt-get install -y influxdb for the comparison"
fi
