# Shared by the benchmark scripts (sourced, from the repository root).

# fleet_file BIN DIR VEHICLES DAYS: prints the path of the simulated fleet (seed 7) in DIR,
# simulating it with BIN the first time.
fleet_file() {
    local fleet="$2/fleet-$3-$4.jsonl"
    if [[ ! -f "$fleet" ]]; then
        "$1" simulate --out "$fleet" --vehicles "$3" --days "$4" --seed 7 >/dev/null
    fi
    echo "$fleet"
}

# start_broker PORT DIR: a Mosquitto of the script's own on 127.0.0.1:PORT with unbounded
# queues (a slow subscriber is measured, not dropped from), in BROKER; it and the service under
# test, whose pid the caller keeps in RUN, are killed when the script exits.
start_broker() {
    cat >"$2/mosquitto.conf" <<CONF
listener $1 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 0
log_dest none
CONF
    mosquitto -c "$2/mosquitto.conf" & BROKER=$!
    RUN=""
    trap 'kill "$BROKER" 2>/dev/null || true; [[ -n "$RUN" ]] && kill -9 "$RUN" 2>/dev/null || true' EXIT
    sleep 0.3
}

# start_service BIN WORK ID PORT HTTP QOS: `lienwatch run` (2 workers, all rules, the registry
# and fences of the caller's FLEET) subscribed to bench/+ on the broker at 127.0.0.1:PORT with
# QoS QOS, alerts to the Kafka topic lienwatch.bench.ID, the archive and checkpoints to S3
# under bench/ID, the journal in WORK/journal-ID, metrics on HTTP; returns once it is
# healthy, its pid in RUN. Settings that
# bound latency come from the environment, with the service's own defaults: EPOCH_MS (100),
# REORDER_S (120), LINGER_MS (5), DURABLE (true), CHECKPOINT_S (30). Needs scripts/services.
start_service() {
    local bin=$1 work=$2 id=$3 port=$4 http=$5 qos=$6
    cat >"$work/run.toml" <<CONF
[pipeline]
workers = 2
epoch_ms = ${EPOCH_MS:-100}
[registry]
vehicles_csv = "$PWD/${FLEET%.jsonl}.vehicles.csv"
fences_geojson = "$PWD/${FLEET%.jsonl}.fences.geojson"
[archive]
url = "s3://lienwatch/bench/$id"
s3_endpoint = "http://127.0.0.1:9000"
[mqtt]
url = "mqtt://127.0.0.1:$port"
client_id = "$id"
topics = ["bench/+"]
qos = $qos
clean_start = true
[kafka]
alerts_topic = "lienwatch.bench.$id"
features_topic = "lienwatch.bench.features.$id"
[kafka.properties]
"linger.ms" = "${LINGER_MS:-5}"
[http]
listen = "$http"
[durability]
enabled = ${DURABLE:-true}
journal_dir = "$PWD/$work/journal-$id"
checkpoint_interval_s = ${CHECKPOINT_S:-30}
[rules]
reorder_window_s = ${REORDER_S:-120}
CONF
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test RUST_LOG=${RUST_LOG:-warn} \
        "$bin" run --config "$work/run.toml" >"$work/run.out" 2>"$work/run.err" & RUN=$!
    until curl -sf "$http/health" >/dev/null; do sleep 0.1; done
}
