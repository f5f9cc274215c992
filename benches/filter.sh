#!/usr/bin/env bash
# Filter benchmark: one day of the seed data (24 sealed hours, 17.3 M events, 3.3 GB of NDJSON), in the same
# run, against the tools people use on such archives. Loopback only; each figure the median of ROUNDS runs
# (default 3), with the range.
#
#   bash benches/filter.sh [HOURS] [ROUNDS]
#
# 1. an equality filter matching 1% (level:error): the filtered export vs `zcat | jq -c 'select(...)'` and
#    DuckDB's read_json over the same .json.gz files (COPY of the matching rows to a file);
# 2. a substring (q=): the filtered export vs `zcat | grep -F` and DuckDB (contains() on the field);
# 3. filters that match nothing (level:fatal, q= of an absent word) through the member summaries: time to answer;
# 4. filtered final pages, hot (page cache) and 304s, against unfiltered final pages, requests/s with wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
hours=${1:-24}
rounds=${2:-3}
cargo build --release --bins --examples -q
work=$(mktemp -d)
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT
./target/release/examples/seed --data "$work/data" --series day --hours "$hours" --per-chunk 2000
port=18098
./target/release/hourglass --data "$work/data" --listen 127.0.0.1:$port >/dev/null 2>"$work/hg.log" &
pid=$!
for _ in $(seq 100); do curl -s 127.0.0.1:$port/healthz >/dev/null && kill -0 $pid && break; sleep 0.1; done
from=2014-09-29T00:00:00Z
to=$(date -u -d "2014-09-29 +${hours} hours" +%Y-%m-%dT%H:%M:%SZ)
base="127.0.0.1:$port/api/series/day/export?from=$from&to=$to"
archives=("$work"/data/day/*.json.gz)
raw=$(zcat "${archives[@]}" | wc -c)
gz=$(cat "${archives[@]}" | wc -c)
sums=$(cat "$work"/data/day/*.sum | wc -c)
echo "range: $hours hours, $raw bytes of NDJSON in $gz bytes of gzip; member summaries $sums bytes ($(python3 -c "print(round(100 * $sums / $gz, 1))")% of the gzip)"

seconds() { local s; s=$(date +%s.%N); "$@" >/dev/null; python3 -c "import time; print(round(time.time() - $s, 3))"; }
# The median and range of ROUNDS runs of a command, as "median (min-max) s".
rounds() {
  local r=()
  for _ in $(seq "$rounds"); do r+=("$(seconds "$@")"); done
  echo "$(printf '%s\n' "${r[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') ($(printf '%s\n' "${r[@]}" | sort -g | head -1)-$(printf '%s\n' "${r[@]}" | sort -g | tail -1)) s"
}
mbps() { python3 -c "print(round($raw / $1 / 1e6))"; }
ratio() { python3 -c "print(round($1 / $2, 2))"; }

jq_all() { zcat "${archives[@]}" | jq -c 'select(.level == "error")'; }
grep_all() { zcat "${archives[@]}" | grep -F 'timeout retry'; }
duck() { # WHERE-CLAUSE
  python3 - "$work/data/day" "$1" "$work/duck.json" <<'PY'
import sys, duckdb
folder, where, out = sys.argv[1:]
duckdb.sql(f"COPY (SELECT * FROM read_json('{folder}/*.json.gz', format='newline_delimited') WHERE {where}) TO '{out}' (FORMAT json)")
PY
}
duck_eq() { duck "level = 'error'"; }
duck_sub() { duck "contains(msg, 'timeout retry')"; }

# The answers agree before anything is timed.
n_hg=$(curl -sf "$base&where=level:error" | wc -l)
n_jq=$(jq_all | wc -l)
duck_eq; n_duck=$(wc -l < "$work/duck.json")
echo "level:error matches: hourglass $n_hg, jq $n_jq, DuckDB $n_duck"
[ "$n_hg" = "$n_jq" ] && [ "$n_hg" = "$n_duck" ] || { echo "the answers differ"; exit 1; }
q_hg=$(curl -sf "$base&q=timeout%20retry" | wc -l)
q_grep=$(grep_all | wc -l)
echo "q=\"timeout retry\" matches: hourglass $q_hg, grep $q_grep"
[ "$q_hg" = "$q_grep" ] || { echo "the answers differ"; exit 1; }

echo "equality, 1% (level:error):"
r=$(rounds curl -sf "$base&where=level:error" -o /dev/null); t_hg=${r%% *}; echo "  hourglass export: $r"
r=$(rounds jq_all); t_jq=${r%% *}; echo "  zcat | jq:        $r"
r=$(rounds duck_eq); t_duck=${r%% *}; echo "  DuckDB read_json: $r"
echo "  => $(mbps "$t_hg") MB/s of NDJSON; $(ratio "$t_jq" "$t_hg")x jq, $(ratio "$t_duck" "$t_hg")x DuckDB"
echo "substring (q=\"timeout retry\", $(python3 -c "print(round(100 * $q_hg / ($raw / 192), 2))")% of events):"
r=$(rounds curl -sf "$base&q=timeout%20retry" -o /dev/null); t_hq=${r%% *}; echo "  hourglass export: $r"
r=$(rounds grep_all); t_grep=${r%% *}; echo "  zcat | grep -F:   $r"
r=$(rounds duck_sub); t_dsub=${r%% *}; echo "  DuckDB contains:  $r"
echo "  => $(mbps "$t_hq") MB/s of NDJSON; $(ratio "$t_grep" "$t_hq")x zcat|grep, $(ratio "$t_dsub" "$t_hq")x DuckDB"

scanned() { curl -sf 127.0.0.1:$port/metrics | awk '/^hourglass_members_(scanned|skipped)_total/ {printf "%s=%s ", $1, $2}'; }
echo "matching nothing, through the member summaries (curl's time_total, median of $rounds):"
for q in "where=level:fatal" "q=%22nothingatall%22"; do
  before=$(scanned)
  ts=()
  for _ in $(seq "$rounds"); do ts+=("$(curl -sf -o /dev/null -w '%{time_total}' "$base&$q")"); done
  printf '  %s: %s s (all: %s); %s -> %s\n' "$q" "$(printf '%s\n' "${ts[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "${ts[*]}" "$before" "$(scanned)"
done

# Final pages: an unfiltered one (one 2,000-event chunk) against a filtered one of about the same size (2,000
# matches of level:error, read back across some 100 chunks), both hot in the page cache; then their 304s.
page="/api/series/day/data/before/2014_09_29_01_00_00"
fpage="$page?where=level:error&limit=2000"
etag=$(curl -sfI "127.0.0.1:$port$page" | awk 'tolower($1)=="etag:" {print $2}' | tr -d '\r')
fetag=$(curl -sfI "127.0.0.1:$port$fpage" | awk 'tolower($1)=="etag:" {print $2}' | tr -d '\r')
echo "pages: unfiltered $(curl -sf "127.0.0.1:$port$page" | wc -c) bytes, filtered $(curl -sf "127.0.0.1:$port$fpage" | wc -c) bytes ($(curl -sf "127.0.0.1:$port$fpage" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["count"], "matches, final:", d["final"])'))"
rps() { wrk -t2 -c16 -d5s "$@" | awk '/Requests\/sec/ {print int($2)}'; }
for kind in hot 304; do
  r_u=(); r_f=()
  for _ in $(seq "$rounds"); do
    if [ $kind = hot ]; then
      r_u+=("$(rps "http://127.0.0.1:$port$page")"); r_f+=("$(rps "http://127.0.0.1:$port$fpage")")
    else
      r_u+=("$(rps -H "If-None-Match: $etag" "http://127.0.0.1:$port$page")")
      r_f+=("$(rps -H "If-None-Match: $fetag" "http://127.0.0.1:$port$fpage")")
    fi
  done
  mu=$(printf '%s\n' "${r_u[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  mf=$(printf '%s\n' "${r_f[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "  $kind final pages: unfiltered $mu req/s (${r_u[*]}), filtered $mf req/s (${r_f[*]}): $(ratio "$mf" "$mu")x"
done
kill $pid; wait $pid 2>/dev/null || true
