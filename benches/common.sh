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
