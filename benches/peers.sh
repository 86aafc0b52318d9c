#!/usr/bin/env bash
# The peer job of ../shared/notes/perf.md §2 (per device: readings with a fix, haversine km
# between consecutive fixes ordered by ts, max speed), side by side on one generated fleet file
# in lienwatch's wire format:
#   - DuckDB (benches/peer_duckdb.py, .venv from scripts/python-env), 2 threads and 1 thread,
#     each line parsed on its own (duckdb-Nt: the exact job) and through DuckDB's own
#     newline-delimited JSON reader (duckdb-rj-Nt: its fastest path, which loses the reading
#     after each truncated line, so its rows differ on a few devices; see peer_duckdb.py);
#   - lienwatch's engine on the same simple job (benches/examples/peer_job.rs: schemas'
#     decoder + timely, exchange by device), -w 1 and -w 2;
#   - the full `lienwatch replay` (all rules, alerts and the Parquet archive on, as
#     benches/replay.sh runs it), -w 1 and -w 2.
# Every run is under /usr/bin/time -f "%e %U %S %M"; the machine load (1-min loadavg) is noted
# before each. DuckDB's and peer_job's per-device rows are checked to agree (count exact,
# distance within 1e-6 relative, max speed exact at the decoder's f32 precision), then one
# table is printed: wall s, CPU s (user + sys), peak RSS, records/s, records per CPU-s, and
# the ratios of records per CPU-s against DuckDB. Records = lines of the input file, for every
# engine. The rule both simple jobs apply (skipped lines, no de-duplication, tie order) is in
# the header of benches/examples/peer_job.rs.
#
# Usage: benches/peers.sh [VEHICLES] [DAYS] [REPS]
#   defaults 2000 x 10 = 5.2 M lines (1.8 GB, the file benches/replay.sh 2000 10 makes), 1 rep;
#   e.g. benches/peers.sh 400 10 for ~1 M lines. ONLY=regex runs a subset of
#   duckdb-2t duckdb-1t duckdb-rj-2t duckdb-rj-1t peer_job-w1 peer_job-w2 replay-w1 replay-w2
#   (the other engines' rows of the previous run are kept in the table).
#   On the 5.2 M file one rep took 9-10 min on the shared 2-vCPU machine at load 8-12, over
#   half of it DuckDB's two exact runs (31-36 CPU-s, 56-87 s wall each); without them
#   (ONLY='duckdb-rj|peer_job|replay') 5 min. 400 x 10 (~1 M lines) takes a fifth of that.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
VEHICLES=${1:-2000}
DAYS=${2:-10}
REPS=${3:-1}
ONLY=${ONLY:-.}
WORK=${BENCH_DIR:-target/bench-replay}
OUT="$WORK/peers-$VEHICLES-$DAYS"
mkdir -p "$WORK" "$OUT"

scripts/python-env
PY=.venv/bin/python
cargo build --release --locked -p pipeline --quiet
cargo build --release --locked -p benches --example peer_job --quiet
BIN=target/release/lienwatch
PEER=target/release/examples/peer_job
FLEET=$(fleet_file "$BIN" "$WORK" "$VEHICLES" "$DAYS")
LINES=$(wc -l < "$FLEET")
echo "input: $FLEET ($LINES lines, $(du -h "$FLEET" | cut -f1)); results in $OUT"
echo "git: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo ' (with local changes)')"
RESULTS="$OUT/results.tsv"
if [[ "$ONLY" == "." || ! -f "$RESULTS" ]]; then
    : > "$RESULTS"
else # a subset: replace its rows, keep the other engines' rows of the last full run
    awk -F'\t' -v re="$ONLY" '$1 !~ re' "$RESULTS" > "$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
fi

run() { # name rep command...
    local name=$1 rep=$2
    shift 2
    [[ "$name" =~ $ONLY ]] || return 0
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    if ! /usr/bin/time -f "%e %U %S %M" -o "$OUT/$name.$rep.time" "$@" \
        > "$OUT/$name.$rep.log" 2>&1; then
        echo "$name failed, see $OUT/$name.$rep.log" >&2
        tail -5 "$OUT/$name.$rep.log" >&2
        exit 1
    fi
    local wall user sys rss
    read -r wall user sys rss < <(tail -1 "$OUT/$name.$rep.time")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$load" "$wall" "$user" "$sys" "$rss" \
        >> "$RESULTS"
    awk -v n="$name" -v r="$rep" -v l="$load" -v w="$wall" -v u="$user" -v s="$sys" \
        'BEGIN { printf "  %-12s rep %d  load %5s  wall %7.2f s  cpu %7.2f s\n", n, r, l, w, u + s }'
}

replay_args() { # workers
    rm -rf "$OUT/archive-w$1" "$OUT/alerts-w$1.jsonl"
    REPLAY=(replay --input "$FLEET" --vehicles "${FLEET%.jsonl}.vehicles.csv"
        --fences "${FLEET%.jsonl}.fences.geojson" --alerts-out "$OUT/alerts-w$1.jsonl"
        --archive "$OUT/archive-w$1" -w "$1" --summary-out "$OUT/summary-w$1.json")
}

for rep in $(seq 1 "$REPS"); do
    run duckdb-2t "$rep" "$PY" benches/peer_duckdb.py "$FLEET" "$OUT/duckdb-2t.csv" 2
    run duckdb-1t "$rep" "$PY" benches/peer_duckdb.py "$FLEET" "$OUT/duckdb-1t.csv" 1
    run duckdb-rj-2t "$rep" "$PY" benches/peer_duckdb.py "$FLEET" "$OUT/duckdb-rj-2t.csv" 2 read_json
    run duckdb-rj-1t "$rep" "$PY" benches/peer_duckdb.py "$FLEET" "$OUT/duckdb-rj-1t.csv" 1 read_json
    run peer_job-w1 "$rep" "$PEER" "$FLEET" "$OUT/peer_job-w1.csv" -w 1
    run peer_job-w2 "$rep" "$PEER" "$FLEET" "$OUT/peer_job-w2.csv" -w 2
    replay_args 1
    run replay-w1 "$rep" "$BIN" "${REPLAY[@]}"
    replay_args 2
    run replay-w2 "$rep" "$BIN" "${REPLAY[@]}"
done
for f in "$OUT"/peer_job-w1.1.log "$OUT"/duckdb-2t.1.log; do
    [[ -f "$f" ]] && sed 's/^/  /' "$f"
done

"$PY" - "$OUT" "$LINES" <<'EOF'
import csv, os, struct, sys
from collections import defaultdict

out, lines = sys.argv[1], int(sys.argv[2])

def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]

def load(name):
    path = os.path.join(out, name + ".csv")
    if not os.path.exists(path):
        return None
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            speed = f32(float(r["max_speed"])) if r["max_speed"] else None
            rows[r["device_id"]] = (int(r["n"]), float(r["dist_km"]), speed)
    return rows

ref = load("duckdb-2t")
if ref is not None:
    print(f"\ncheck against duckdb-2t ({len(ref)} devices, {sum(v[0] for v in ref.values())} fixes):")
    failed = False
    for other in ["duckdb-1t", "duckdb-rj-2t", "duckdb-rj-1t", "peer_job-w1", "peer_job-w2"]:
        o = load(other)
        if o is None:
            continue
        bad = [k for k in ref.keys() | o.keys()
               if k not in ref or k not in o or ref[k][0] != o[k][0]
               or abs(ref[k][1] - o[k][1]) > 1e-6 * max(1.0, ref[k][1]) or ref[k][2] != o[k][2]]
        failed |= bool(bad) and "-rj-" not in other
        example = f"; e.g. {bad[0]}: {ref.get(bad[0])} vs {o.get(bad[0])}" if bad else ""
        print(f"  {other}: {len(o)} devices, {len(bad)} mismatches{example}")
    if failed:
        print("MISMATCH: the engines disagree", file=sys.stderr)

runs = defaultdict(list)
with open(os.path.join(out, "results.tsv")) as f:
    for line in f:
        name, rep, load_avg, wall, user, sys_, rss = line.split("\t")
        runs[name].append((int(rep), float(load_avg), float(wall), float(user) + float(sys_), int(rss)))

print(f"\n{lines} records (input lines) per run; CPU = user + sys; load = 1-min loadavg before the run")
hdr = f"{'engine':<13} {'rep':>3} {'load':>5} {'wall s':>7} {'CPU s':>7} {'peak RSS':>9} {'rec/s':>9} {'rec/CPU-s':>10}"
print(hdr)
print("-" * len(hdr))
best = {}
for name, rs in runs.items():
    for rep, load_avg, wall, cpu, rss in rs:
        print(f"{name:<13} {rep:>3} {load_avg:>5.2f} {wall:>7.2f} {cpu:>7.2f} {rss / 1024:>5.0f} MiB"
              f" {lines / wall / 1e3:>7.0f} k {lines / cpu / 1e3:>8.0f} k")
    best[name] = max(lines / cpu for _, _, _, cpu, _ in rs)

print("\nratios of records per CPU-second (best run of each)")
duck = {k: v for k, v in best.items() if k.startswith("duckdb")}
if duck:
    duck_best_name = max(duck, key=duck.get)
    for name in ["peer_job-w1", "peer_job-w2", "replay-w1", "replay-w2"]:
        if name not in best:
            continue
        parts = []
        for same in ["duckdb-%st" % name[-1], "duckdb-rj-%st" % name[-1]]:
            if same in best:
                parts.append(f"/ {same} = {best[name] / best[same]:.2f}")
        parts.append(f"/ best DuckDB ({duck_best_name}) = {best[name] / duck[duck_best_name]:.2f}")
        print(f"  {name:<12} " + "   ".join(parts))
EOF
