#!/usr/bin/env bash
# Live throughput and publish->alert latency through Mosquitto (issue 6, deliverable 4):
# `lienwatch run` (release, 2 workers, all rules, alerts to Kafka, archive to S3) beside a bare
# subscriber (mosquitto_sub) on the same broker, in the same run, driven by
# benches/examples/latency.rs:
#   0. warm-up (WARMUP_S > 0): WARMUP_RATE msg/s, paced, so that every device has been seen
#      before the measured phases (a device's first reading waits out the reorder window);
#   1. max phase: the fleet published as fast as the broker takes it for MAX_S seconds;
#      messages/s and readings/s of the publisher, the bare subscriber and lienwatch;
#   2. latency phase: DURATION seconds at half the rate lienwatch reached in phase 1 (or RATE
#      msg/s), paced; PROBES tamper readings a second, each raising one `device_tamper`
#      alert; (alert read from Kafka - probe published) in an HDR histogram: p50/p99/p99.9/max
#      (printed for phase 1 too, i.e. at the maximum rate).
# Every probe's publish time and latency go to $WORK/probes.tsv (when were the slow ones?).
# One process of each for the whole run (~MAX_S + DURATION + 30 s, plus the fleet's simulation
# the first time).
#
# The broker is a Mosquitto of its own on 127.0.0.1:18831 with unbounded queues, so a slower
# subscriber is measured rather than dropped from. Needs scripts/services (Kafka, S3).
#
# Usage: [WARMUP_S=0] [WARMUP_RATE=5000] [MAX_S=20] [DURATION=60] [RATE=0] [PROBES=50]
#        [EPOCH_MS=100] [REORDER_S=120] [LINGER_MS=5] [DURABLE=true] [CHECKPOINT_S=30]
#        [WALL_CLOCK=false] benches/latency.sh [QOS] [BATCH] [VEHICLES] [DAYS]
#        (defaults: QoS 1, 1 reading per message, a fleet of 1000 vehicles x 7 days; BATCH N
#        sends N readings of one device per message; EPOCH_MS, REORDER_S and LINGER_MS set
#        pipeline.epoch_ms, rules.reorder_window_s and the producer's linger.ms, the settings
#        that bound the latency; WALL_CLOCK=true moves every ts to the wall clock of its
#        publish, as a live fleet sends them (a reading that follows its device's last one
#        in `seq` is processed at once; others wait out the reorder window);
#        NO_BUILD=1 uses the binaries as built; CPU_SAMPLE=1 also writes the CPU use of every
#        process and of each lienwatch thread every 250 ms to $WORK/cpu.tsv, whose second column
#        is the epoch time in seconds (probes.tsv's publish times are in ms): see
#        benches/cpu_sample.py)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
QOS=${1:-1}
BATCH=${2:-1}
VEHICLES=${3:-1000}
DAYS=${4:-7}
# Batches gather a device's next BATCH readings of the file (10 readings span 5 min driving,
# 100 min parked); with the 120-s reorder window most of them would arrive late and every
# parked device would go `offline` between its batches (an alert flood the SPEC's batches, a
# blind-zone upload now and then, do not cause), so batches run with a 2-h window.
if [[ "$BATCH" -gt 1 ]]; then REORDER_S=${REORDER_S:-7200}; fi
WORK=${BENCH_DIR:-target/bench-latency}
PORT=18831
HTTP=127.0.0.1:19471
mkdir -p "$WORK"
scripts/services start >/dev/null
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --locked -p pipeline --quiet
    cargo build --release --locked -p benches --example latency --quiet
fi
BIN=target/release/lienwatch
FLEET=$(fleet_file "$BIN" "$WORK" "$VEHICLES" "$DAYS")

start_broker "$PORT" "$WORK"

ID=latency-$$
TOPIC="lienwatch.bench.$ID"
start_service "$BIN" "$WORK" "$ID" "$PORT" "$HTTP" "$QOS"

if [[ -n "${CPU_SAMPLE:-}" ]]; then
    benches/cpu_sample.py "$WORK/cpu.tsv" 0.25 lienwatch & SAMPLER=$!
fi
echo "QoS $QOS, batch $BATCH, epoch_ms ${EPOCH_MS:-100}, reorder_window_s ${REORDER_S:-120}, linger.ms ${LINGER_MS:-5}, durability ${DURABLE:-true}, wall clock ${WALL_CLOCK:-false}; $(uptime)"
target/release/examples/latency --fleet "$FLEET" --mqtt "127.0.0.1:$PORT" --prefix bench \
    --qos "$QOS" --batch "$BATCH" --metrics "$HTTP" --alerts-topic "$TOPIC" \
    --warmup-s "${WARMUP_S:-0}" --warmup-rate "${WARMUP_RATE:-5000}" --max-s "${MAX_S:-20}" \
    --duration "${DURATION:-60}" --rate "${RATE:-0}" --probes "${PROBES:-50}" \
    --wall-clock "${WALL_CLOCK:-false}" --trace "$WORK/probes.tsv"
echo "after: $(uptime)"
if [[ -n "${SAMPLER:-}" ]]; then kill "$SAMPLER"; fi
kill -TERM "$RUN"; wait "$RUN" || true; RUN=""
tail -6 "$WORK/run.out"
rm -rf "$WORK/journal-$ID"
