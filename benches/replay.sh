#!/usr/bin/env bash
# End-to-end replay throughput: simulates a fleet of about MESSAGES messages (default 1 M) and
# replays it with -w 1 and -w 2, all rules and the Parquet archive on. Prints one line per run
# (wall seconds, CPU seconds, peak RSS, messages/s) and the replay summaries.
#
# Usage: benches/replay.sh [VEHICLES] [DAYS]     (defaults: 400 vehicles x 10 days, about 1 M lines)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
VEHICLES=${1:-400}
DAYS=${2:-10}
WORK=${BENCH_DIR:-target/bench-replay}
mkdir -p "$WORK"
cargo build --release --locked -p pipeline --quiet
BIN=target/release/lienwatch
FLEET=$(fleet_file "$BIN" "$WORK" "$VEHICLES" "$DAYS")
LINES=$(wc -l < "$FLEET")
echo "input: $FLEET ($LINES lines, $(du -h "$FLEET" | cut -f1))"
for W in 1 2; do
    rm -rf "$WORK/archive-w$W" "$WORK/alerts-w$W.jsonl"
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/time-w$W" \
        "$BIN" replay --input "$FLEET" --vehicles "${FLEET%.jsonl}.vehicles.csv" \
        --fences "${FLEET%.jsonl}.fences.geojson" --alerts-out "$WORK/alerts-w$W.jsonl" \
        --archive "$WORK/archive-w$W" -w "$W" --summary-out "$WORK/summary-w$W.json" >/dev/null
    read -r WALL USER SYS RSS_KB < "$WORK/time-w$W"
    awk -v w="$W" -v wall="$WALL" -v user="$USER" -v sys="$SYS" -v rss="$RSS_KB" -v lines="$LINES" \
        'BEGIN { printf "-w %d: wall %.2f s, cpu %.2f s, peak RSS %.0f MiB, %.0f msg/s, %.2f cpu-s per M msg\n",
                 w, wall, user + sys, rss / 1024, lines / wall, (user + sys) / lines * 1e6 }'
done
