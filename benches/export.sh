#!/usr/bin/env bash
# Export benchmark: a sealed multi-hour range exported over HTTP, against zcat and cat of the same archives in
# the same run; and the server's peak RSS while it streams. Loopback only. Then the command line: the same range
# by `hourglass export` straight from the data folder, and `hourglass import` of the archives themselves (they
# are a {partition}/{YYYYMMDDHH}.json.gz tree) into a new data folder, exported back and compared.
#
#   bash benches/export.sh [HOURS]      (8 hours = 5.76 M events, 1.1 GB of NDJSON)
set -euo pipefail
cd "$(dirname "$0")/.."
hours=${1:-8}
cargo build --release --bins --examples -q
work=$(mktemp -d)
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT
./target/release/examples/seed --data "$work/data" --series big --hours "$hours" --per-chunk 2000
./target/release/hourglass --data "$work/data" --listen 127.0.0.1:18097 >/dev/null 2>"$work/hg.log" &
pid=$!
for _ in $(seq 50); do curl -s 127.0.0.1:18097/healthz >/dev/null && kill -0 $pid && break; sleep 0.1; done
from=2014-09-29T00:00:00Z
to=$(date -u -d "2014-09-29 +${hours} hours" +%Y-%m-%dT%H:%M:%SZ)
url="127.0.0.1:18097/api/series/big/export?from=$from&to=$to"
archives=("$work"/data/big/*.json.gz)
raw=$(zcat "${archives[@]}" | wc -c)
gz=$(cat "${archives[@]}" | wc -c)
echo "range: $hours hours, $raw bytes of NDJSON in $gz bytes of gzip"

seconds() { local s; s=$(date +%s.%N); "$@" >/dev/null; python3 -c "import time; print(round(time.time() - $s, 3))"; }
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
run3() { local r=(); for _ in 1 2 3; do r+=("$(seconds "$@")"); done; median "${r[@]}"; }
mbps() { python3 -c "print(round($1 / $2 / 1e6))"; }

rss0=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
t_export=$(run3 curl -sf "$url" -o /dev/null)
t_zcat=$(run3 zcat "${archives[@]}")
t_pass=$(run3 curl -sf -H 'Accept-Encoding: gzip' "$url" -o /dev/null)
t_cat=$(run3 cat "${archives[@]}")
t_csv=$(run3 curl -sf "$url&format=csv&fields=ts,host,seq" -o /dev/null)
rss1=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
echo "NDJSON export: $t_export s, $(mbps "$raw" "$t_export") MB/s; zcat: $t_zcat s, $(mbps "$raw" "$t_zcat") MB/s; ratio $(python3 -c "print(round($t_zcat / $t_export, 2))")"
echo "gzip pass-through export: $t_pass s, $(mbps "$gz" "$t_pass") MB/s of gzip; cat: $t_cat s; ratio $(python3 -c "print(round($t_cat / $t_pass, 2))")"
echo "CSV export (3 fields): $t_csv s, $(mbps "$raw" "$t_csv") MB/s of NDJSON read"
echo "server peak RSS: $((rss0 / 1024)) MB before, $((rss1 / 1024)) MB after 9 full exports"
# Identical bytes: the export is the archives' lines.
cmp <(curl -sf "$url") <(zcat "${archives[@]}") && echo "export == zcat of the archives: identical"
kill $pid; wait $pid || true

hg=./target/release/hourglass
range=(--series big --from "$from" --to "$to")
t_cli=$(run3 "$hg" export --data "$work/data" "${range[@]}")
rss_cli=$( { /usr/bin/time -f %M "$hg" export --data "$work/data" "${range[@]}" >/dev/null; } 2>&1 | tail -1)
echo "hourglass export --data: $t_cli s, $(mbps "$raw" "$t_cli") MB/s; ratio to zcat $(python3 -c "print(round($t_zcat / $t_cli, 2))"); peak RSS $((rss_cli / 1024)) MB"
t_import=$(seconds "$hg" import "$work/data/big" --series copy --data "$work/copy")
echo "hourglass import of the $gz bytes of archives: $t_import s, $(mbps "$raw" "$t_import") MB/s of NDJSON"
cmp <("$hg" export --data "$work/copy" --series copy --from "$from" --to "$to") <(zcat "${archives[@]}") \
  && echo "import then export == zcat of the archives: identical"
