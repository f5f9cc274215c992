#!/usr/bin/env bash
# Page serving benchmark: hourglass final pages against nginx serving the same bytes from a static file, in the
# same run, with wrk (Debian's wrk and nginx). Loopback only.
#
#   bash benches/pages.sh [SECONDS] [ROUNDS]
#
# 1. hot final page (about 20 KB of JSON, from the server's page cache) vs nginx static, requests/s;
# 2. 304 answers to If-None-Match, both servers, requests/s.
#    Each of ROUNDS rounds (default 7) runs wrk SECONDS (default 5) against hourglass, then nginx, then nginx
#    without sendfile, back to back: the ratio of a round compares runs a few seconds apart, and the median of
#    the rounds' ratios is the figure (this machine's speed drifts by a third from minute to minute).
#    Twice: with both servers as they come (threads per core, nothing pinned, wrk sharing both cores), then with
#    one core each: the server pinned to CPU 0 with one thread (hourglass --threads 1, nginx worker_processes 1)
#    and wrk pinned to CPU 1, so that neither server competes with the load generator;
# 3. cold final page: a 5,000-event chunk, server page cache off, one connection: latency p50/p99.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-7}
cargo build --release --bins -q
work=$(mktemp -d)
trap 'pkill -P $$ || true; for p in "$work"/nginx-*/nginx.pid; do [ -f "$p" ] && kill "$(cat "$p")"; done; rm -rf "$work"' EXIT
pin=() # a command prefix for the servers, and one for wrk
load=()

start() { # PORT EXTRA-FLAGS...; sets $pid
  local port=$1; shift
  "${pin[@]}" ./target/release/hourglass --data "$work/data" --listen "127.0.0.1:$port" --chunk-seconds 1 \
    --lateness 1 "$@" >/dev/null 2>>"$work/hg.log" &
  pid=$!
  for _ in $(seq 50); do
    # Ours, not a stray on the same port: it must still be alive once the port answers.
    curl -s "127.0.0.1:$port/healthz" >/dev/null && kill -0 "$pid" 2>/dev/null && return
    sleep 0.1
  done
  echo "hourglass did not start:"; cat "$work/hg.log"; exit 1
}

events() { # SERIES COUNT TS PAD
  python3 - "$@" <<'PY'
import sys, json
series, count, ts, pad = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(count):
    print(json.dumps({"ts": ts + i * 999 // count, "host": "web-%03d" % (i % 50), "i": i, "msg": "x" * pad}))
PY
}

start 18090
t=$(( ($(date +%s) + 1) * 1000 ))
events small 100 $t 120 | curl -sf -XPOST -H 'Content-Type: application/x-ndjson' --data-binary @- 127.0.0.1:18090/api/series/small/events >/dev/null
events big 5000 $t 120 | curl -sf -XPOST -H 'Content-Type: application/x-ndjson' --data-binary @- 127.0.0.1:18090/api/series/big/events >/dev/null
for s in small big; do
  events $s 1 $((t + 1000)) 10 | curl -sf -XPOST -H 'Content-Type: application/x-ndjson' --data-binary @- 127.0.0.1:18090/api/series/$s/events >/dev/null
done
sleep 4
stamp=$(date -u -d "@$(( t / 1000 + 1 ))" +%Y_%m_%d_%H_%M_%S)
page=/api/series/small/data/before/$stamp
cold=/api/series/big/data/before/$stamp
mkdir -p "$work/static"
curl -sf -D "$work/h" "127.0.0.1:18090$page" -o "$work/static/page.json"
grep -qi 'immutable' "$work/h" || { echo "page is not final"; cat "$work/h"; exit 1; }
etag=$(grep -i '^etag:' "$work/h" | cut -d' ' -f2 | tr -d '\r')
echo "final page: $page, $(wc -c < "$work/static/page.json") bytes, ETag $etag"

nginx() { # NAME WORKERS PORT PORT-WITHOUT-SENDFILE: serves $work/static
  local dir=$work/nginx-$1
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<CONF
user root;
worker_processes $2;
pid $dir/nginx.pid;
error_log $dir/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fcgi;
  uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  sendfile on; tcp_nopush on; keepalive_requests 1000000;
  server { listen 127.0.0.1:$3; root $work/static; default_type application/json; }
  server { listen 127.0.0.1:$4; root $work/static; default_type application/json; sendfile off; }
}
CONF
  "${pin[@]}" /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf"
  sleep 0.5
}

rate() { "${load[@]}" wrk -t1 -c32 -d"${secs}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
compare() { # LABEL HOURGLASS-PORT NGINX-PORT NGINX-PORT-WITHOUT-SENDFILE [ETAG-HOURGLASS ETAG-NGINX]
  local rows="" hg=${5:+If-None-Match: $5} ng=${6:+If-None-Match: $6}
  for _ in $(seq "$rounds"); do
    rows+="$(rate ${hg:+-H "$hg"} "http://127.0.0.1:$2$page") "
    rows+="$(rate ${ng:+-H "$ng"} "http://127.0.0.1:$3/page.json") "
    rows+="$(rate ${ng:+-H "$ng"} "http://127.0.0.1:$4/page.json")"$'\n'
  done
  echo "== $1 ($rounds rounds of ${secs}s per server, 32 connections)"
  python3 - "$rows" <<'PY'
import statistics as st, sys
rows = [[float(x) for x in line.split()] for line in sys.argv[1].splitlines() if line.strip()]
hg, ng, nf = zip(*rows)
def ratios(other):
    r = sorted(h / o for h, o in zip(hg, other))
    return f"ratio median {st.median(r):.2f} (rounds {r[0]:.2f}..{r[-1]:.2f})"
print(f"hourglass    median {st.median(hg):8.0f} req/s  rounds: {' '.join(f'{x:.0f}' for x in hg)}")
print(f"nginx static median {st.median(ng):8.0f} req/s  rounds: {' '.join(f'{x:.0f}' for x in ng)}  {ratios(ng)}")
print(f"  sendfile off median {st.median(nf):8.0f} req/s  rounds: {' '.join(f'{x:.0f}' for x in nf)}  {ratios(nf)}")
PY
}

echo "# As they come: threads per core, nothing pinned"
nginx auto auto 18091 18093
nginx_etag=$(curl -sI 127.0.0.1:18091/page.json | grep -i '^etag:' | cut -d' ' -f2 | tr -d '\r')
compare "hot final page" 18090 18091 18093
compare "304 to If-None-Match" 18090 18091 18093 "$etag" "$nginx_etag"

echo "# One core each: servers on CPU 0 with one thread, wrk on CPU 1"
kill "$pid"; wait "$pid" || true
pin=(taskset -c 0); load=(taskset -c 1)
start 18094 --threads 1
nginx one 1 18095 18096
compare "hot final page" 18094 18095 18096
compare "304 to If-None-Match" 18094 18095 18096 "$etag" "$nginx_etag"
pin=(); load=()

kill "$pid"; wait "$pid" || true
start 18092 --page-cache-bytes 0
echo "== cold final page: 5,000-event chunk ($(curl -s "127.0.0.1:18092$cold" | wc -c) bytes of JSON), server page cache off, 1 connection"
wrk -t1 -c1 -d"${secs}s" --latency "http://127.0.0.1:18092$cold" | grep -E '^ +(50|99)%|Requests/sec'
echo "== the same as gzip'd NDJSON (the stored member, sent as is)"
wrk -t1 -c1 -d"${secs}s" --latency -H 'Accept: application/x-ndjson' -H 'Accept-Encoding: gzip' \
  "http://127.0.0.1:18092$cold" | grep -E '^ +(50|99)%|Requests/sec'
