#!/usr/bin/env bash
# Instructions per message of a replay, counted by valgrind's callgrind. The count is the same
# for the same binary and input whatever else the machine does, so an A/B of two builds on a
# shared VM shows changes of 1 % that wall-clock and CPU time, which vary by ±8 % from run to
# run there, cannot. Mispredicted branches are counted too (callgrind's simple predictor): a
# cost the instructions do not show.
#
# Two runs, of the first LINES and LINES/2 lines of the replay file of `benches/replay.sh`, all
# rules and the archive on: the difference divided by LINES/2 leaves start-up (registry, fences,
# threads) out. Prints the per-message figures and the functions with the most instructions,
# callees included, of the longer run. About a minute for 100 000 lines.
#
# Usage: benches/instructions.sh [LINES] [WORKERS] [BIN]
#        (defaults: 100000, 1, target/release/lienwatch built from this checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
LINES=${1:-100000}
WORKERS=${2:-1}
BIN=${3:-}
WORK=${BENCH_DIR:-target/bench-replay}
mkdir -p "$WORK"
if [[ -z "$BIN" ]]; then
    cargo build --release --locked -p pipeline --quiet
    BIN=target/release/lienwatch
fi
FLEET=$(fleet_file "$BIN" "$WORK" 2000 10)
count() {
    local n=$1
    head -n "$n" "$FLEET" >"$WORK/instructions-input.jsonl"
    rm -rf "$WORK/instructions-archive"
    valgrind --tool=callgrind --branch-sim=yes --callgrind-out-file="$WORK/callgrind-$n.out" \
        "$BIN" replay --input "$WORK/instructions-input.jsonl" \
        --vehicles "${FLEET%.jsonl}.vehicles.csv" --fences "${FLEET%.jsonl}.fences.geojson" \
        --alerts-out "$WORK/instructions-alerts.jsonl" --archive "$WORK/instructions-archive" \
        -w "$WORKERS" >/dev/null 2>"$WORK/callgrind-$n.log"
    # events: Ir Bc Bcm Bi Bim -> instructions, mispredicted conditional + indirect branches
    awk '/^summary:/ { print $2, $4 + $6 }' "$WORK/callgrind-$n.out"
}
HALF=$((LINES / 2))
read -r IR_HALF MISS_HALF < <(count "$HALF")
read -r IR_FULL MISS_FULL < <(count "$LINES")
awk -v a="$IR_HALF" -v b="$IR_FULL" -v ma="$MISS_HALF" -v mb="$MISS_FULL" -v n="$((LINES - HALF))" \
    -v w="$WORKERS" 'BEGIN { printf "-w %d: %.0f instructions and %.1f mispredicted branches per message (%.3g instructions in all for the longer run)\n",
                     w, (b - a) / n, (mb - ma) / n, b }'
callgrind_annotate --inclusive=yes --show=Ir "$WORK/callgrind-$LINES.out" 2>/dev/null |
    grep -E '^ *[0-9,]+ +\( *[0-9.]+%\) +[^ ]' | grep -vE 'PROGRAM TOTALS|\?\?\?|std::rt::|main\b|clone3|start_thread|thread_start|call_once|__rust_begin' |
    sed -n 1,25p # reads to the end: `head` would stop the pipe, which `pipefail` reports
