#!/usr/bin/env bash
# Live throughput through Mosquitto: `lienwatch run` (release, 2 workers, all rules, alerts to
# Kafka, archive to S3) beside a bare subscriber (mosquitto_sub) on the same broker, in the
# same run. A publisher sends a simulated fleet at full speed, QoS 1, one message per line on
# bench/<device_id>; both subscribers get every message (QoS 1). Prints messages/s of the
# publisher, the bare subscriber and lienwatch (first publish to last message taken in).
#
# The broker is a Mosquitto of its own on 127.0.0.1:18830 with unbounded queues, so a slower
# subscriber is measured rather than dropped from. Needs scripts/services (Kafka, S3).
#
# Usage: [DURABLE=false] benches/live.sh [VEHICLES] [DAYS] [QOS] [PUBLISHERS]
#        (defaults: 100 vehicles x 7 days, QoS 1, 1 publisher; with several publishers the file
#        is split round-robin by line and the parts are published in parallel; DURABLE=false
#        turns the journal and checkpoints off, for comparison)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
VEHICLES=${1:-100}
DAYS=${2:-7}
QOS=${3:-1}
PUBLISHERS=${4:-1}
WORK=${BENCH_DIR:-target/bench-live}
PORT=18830
HTTP=127.0.0.1:19470
mkdir -p "$WORK"
scripts/services start >/dev/null
cargo build --release --locked -p pipeline --quiet
BIN=target/release/lienwatch
FLEET=$(fleet_file "$BIN" "$WORK" "$VEHICLES" "$DAYS")
N=$(grep -ac . "$FLEET")

start_broker "$PORT" "$WORK"

ID=bench-$$
start_service "$BIN" "$WORK" "$ID" "$PORT" "$HTTP" "$QOS"
mosquitto_sub -h 127.0.0.1 -p $PORT -q "$QOS" -C "$N" -t 'bench/+' >/dev/null & BARE=$!
sleep 0.3

taken() { curl -sf "$HTTP/metrics" | awk '$1 == "lienwatch_messages_total" { print $2 }'; }
for ((i = 0; i < PUBLISHERS; i++)); do
    awk -v p="$PUBLISHERS" -v i="$i" 'NF && ++n % p == i' "$FLEET" >"$WORK/part-$i.jsonl"
done
START=$(date +%s.%N)
PIDS=()
for ((i = 0; i < PUBLISHERS; i++)); do
    "$BIN" simulate --mqtt "mqtt://127.0.0.1:$PORT" --from "$WORK/part-$i.jsonl" --rate 0 \
        --qos "$QOS" --topic-prefix bench >"$WORK/publish-$i.out" & PIDS+=($!)
done
wait "${PIDS[@]}"
PUBLISHED=$(date +%s.%N)
wait "$BARE"
BARE_DONE=$(date +%s.%N)
until [[ "$(taken)" == "$N" ]]; do sleep 0.01; done
RUN_DONE=$(date +%s.%N)
kill -TERM "$RUN"; wait "$RUN" || true; RUN=""
awk -v n="$N" -v pubs="$PUBLISHERS" -v s="$START" -v p="$PUBLISHED" -v b="$BARE_DONE" -v r="$RUN_DONE" -v q="$QOS" 'BEGIN {
    printf "%d messages, QoS %d, %d publisher(s)\n", n, q, pubs
    printf "publisher        %6.2f s  %8.0f msg/s\n", p - s, n / (p - s)
    printf "bare subscriber  %6.2f s  %8.0f msg/s\n", b - s, n / (b - s)
    printf "lienwatch run    %6.2f s  %8.0f msg/s  (%.0f%% of the bare subscriber)\n", r - s, n / (r - s), 100 * (b - s) / (r - s)
}'
tail -6 "$WORK/run.out"
rm -rf "$WORK/journal-$ID"
