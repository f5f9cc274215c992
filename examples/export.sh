#!/usr/bin/env bash
# Exports a day of a series with curl and summarises it with jq: events per hour and the ten most frequent
# values of a field. The export is streamed (gzip on the wire, --compressed inflates it), so any range works.
#
#   bash examples/export.sh [BASE] [SERIES] [DAY] [FIELD]
#   bash examples/export.sh http://127.0.0.1:8080 default 2026-11-22 host
set -euo pipefail
base=${1:-http://127.0.0.1:8080}
series=${2:-default}
day=${3:-$(date -u +%F)}
field=${4:-host}
from="${day}T00:00:00Z"
to=$(date -u -d "$day + 1 day" +%FT%TZ)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

curl -sSf --compressed "$base/api/series/$series/export?from=$from&to=$to" -o "$out"
echo "$(wc -l < "$out") events in $series on $day"
echo "-- per hour (UTC)"
jq -r '.ts | if type == "number" then (. / 1000 | floor | todate) else . end | .[11:13]' "$out" | sort | uniq -c
echo "-- most frequent $field"
jq -r --arg f "$field" '.[$f] // "(none)" | tostring' "$out" | sort | uniq -c | sort -rn | head -10
