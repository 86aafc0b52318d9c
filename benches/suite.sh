#!/usr/bin/env bash
# The whole benchmark suite of benches/README.md in one go (under 15 minutes on the 2-core
# machine there once the release build is warm): micro-benchmarks, the 5 M-message replay, the
# side-by-side peer job against DuckDB, the live MQTT throughput and latency runs, and the
# memory harness. Each part's full output goes to target/bench-suite/<part>.txt; the figures
# are printed at the end, one line each, with the machine and the date.
#
# Usage: benches/suite.sh [PART...]
#        parts: micro replay peers latency memory (the default), live (benches/live.sh,
#        which latency's maximum-rate phase supersedes) and instructions
#        (benches/instructions.sh at -w 1 and -w 2: counts, not times, for A/B on a noisy VM)
#
# Run it on an idle machine: the figures are wall-clock and CPU times.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench-suite
mkdir -p "$OUT"
PARTS=("$@")
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(micro replay peers latency memory)
# Criterion's shorter settings: enough for a median on a quiet machine, not for small deltas.
QUICK=(--warm-up-time 1 --measurement-time 3)

part() { echo "== $1 ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; }

started=$(date +%s)
cargo build --release --locked -p pipeline --quiet
cargo bench -p benches --no-run --quiet 2>/dev/null
for p in "${PARTS[@]}"; do
    case "$p" in
    micro)
        part micro
        {
            cargo bench -p benches --bench stages -- "${QUICK[@]}"
            cargo bench -p benches --bench detectors -- "${QUICK[@]}" 'position/|vehicle/|kinds/(stationary_long|location_jump|geofence_exit|tow_suspected)/quiet|alert/|features/day_close'
            cargo bench -p benches --bench history -- "${QUICK[@]}"
            cargo bench -p benches --bench checkpoint -- "${QUICK[@]}"
            cargo bench -p benches --bench archive -- 'worker_cpu|process_cpu'
        } >"$OUT/micro.txt" 2>&1
        ;;
    replay) part replay; benches/replay.sh 2000 10 >"$OUT/replay.txt" 2>&1 ;;
    instructions)
        part instructions
        { benches/instructions.sh 100000 1; benches/instructions.sh 100000 2; } >"$OUT/instructions.txt" 2>&1
        ;;
    # The 1 M-line fleet: the exact DuckDB job alone takes ~30 CPU-s on the 5 M one.
    peers) part peers; benches/peers.sh 400 10 >"$OUT/peers.txt" 2>&1 ;;
    live)
        part live
        { benches/live.sh 100 7 1 1; benches/live.sh 100 7 0 1; } >"$OUT/live.txt" 2>&1
        ;;
    latency)
        part latency
        {
            DURATION=30 benches/latency.sh 1 1
            DURATION=30 benches/latency.sh 0 10
            # Event time = wall time, as live: the window (10 s here, so the probe device's
            # first reading is released within the run) delays only what is out of sequence.
            WALL_CLOCK=true REORDER_S=10 DURATION=30 benches/latency.sh 1 1
        } >"$OUT/latency.txt" 2>&1
        ;;
    memory)
        part memory
        {
            cargo run --release --locked -q -p benches --example vehicles_rss -- 100000
            cargo run --release --locked -q -p benches --example vehicles_rss -- 1000000 --days 10
        } >"$OUT/memory.txt" 2>&1
        ;;
    *) echo "unknown part $p" >&2; exit 2 ;;
    esac
done

echo
echo "== results: $(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(( ($(date +%s) - started) / 60 )) min"
show() { [[ -f "$OUT/$1.txt" ]] && grep -E "$2" "$OUT/$1.txt" | sed "s/^/[$1] /" || true; }
# Criterion's medians of the benchmarks run now, per iteration and per element.
python3 - "$started" <<'PY'
import glob, json, os, sys
def fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"
for path in sorted(glob.glob("target/criterion/**/new/estimates.json", recursive=True)):
    if os.path.getmtime(path) < float(sys.argv[1]):
        continue
    new = os.path.dirname(path)
    bench = json.load(open(os.path.join(new, "benchmark.json")))
    median = json.load(open(path))["median"]["point_estimate"]
    elements = (bench.get("throughput") or {}).get("Elements") or 1
    per = f", {fmt(median / elements)} per element ({elements})" if elements > 1 else ""
    print(f"[micro] {bench['full_id']}: median {fmt(median)}{per}")
PY
show micro 'zstd level'
show replay '^input:|^-w [12]:'
show instructions '^-w [12]:'
show peers '^(engine|duckdb|peer_job|replay|  (peer_job|replay)|ratios|[0-9]+ records|check|mismatch)'
show live 'messages, QoS|bare subscriber|lienwatch run'
show latency '^QoS|phase|bare subscriber|lienwatch run|without'
show memory 'RESULT|VmRSS|per vehicle'
