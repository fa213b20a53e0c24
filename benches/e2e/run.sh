#!/usr/bin/env bash
# The standard end-to-end set, server pinned to core 0 and updraft-loadgen to core 1 on
# loopback: handshake rate, RPC rate, and fanout to 500, 1,000 and 2,000 subscribers with one
# socket (address) per subscriber, then (as root) socket versus XDP mode on a veth pair
# (benches/e2e/xdp.sh). Prints a dated Markdown section; with --write, also appends it to
# docs/performance.md.
#
# usage: benches/e2e/run.sh [--write]
# Needs: cargo build --release --bins -p updraft -p updraft-loadgen; taskset; 2 or more cores.
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
WRITE=${1:-}
OUT=$(mktemp)
WORK=$(mktemp -d)
chmod 755 "$WORK" # the control process reads www/ as nobody when started as root
trap 'rm -rf "$WORK" "$OUT"' EXIT
mkdir -p "$WORK/www/live"
touch "$WORK/www/main.lua" "$WORK/www/live/main.lua"
# One loadgen address: lift the per-address handshake limit.
printf 'handshakeRate = 100000\n' > "$WORK/updraft.ini"

# start_server PORT: the server on core 0, one worker; echoes its pid.
start_server() {
    taskset -c 0 "$BIN/updraft" --config "$WORK/updraft.ini" --port "$1" --workers 1 \
        --www "$WORK/www" --log 3 > "$WORK/server.log" 2>&1 &
    echo $!
    sleep 1
}

stop_server() {
    kill -TERM "$1" 2>/dev/null || true
    sleep 0.5
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# row LABEL UNIT COUNT_KEY SCENARIO ARGS...: runs one loadgen scenario against a fresh server
# and prints a table row: COUNT_KEY per second (from its JSON report) and the p99 latency.
row() {
    local label=$1 unit=$2 key=$3
    shift 3
    local port=$((20000 + RANDOM % 20000))
    local server
    server=$(start_server "$port")
    rm -f "$WORK/report.json"
    taskset -c 1 "$BIN/updraft-loadgen" "$1" --server "127.0.0.1:$port" "${@:2}" \
        --json "$WORK/report.json" > /dev/null 2>&1 || true
    stop_server "$server"
    if [ -s "$WORK/report.json" ]; then
        python3 - "$label" "$unit" "$key" "$WORK/report.json" <<'PY'
import json, sys
label, unit, key, path = sys.argv[1:5]
r = json.load(open(path))
rate = r[key] / r["elapsed_s"]
print(f"| {label} | {r[key]:,} in {r['elapsed_s']:.2f} s: {rate:,.0f} {unit}/s; p99 {r['latency_ms']['p99']} ms |")
PY
    else
        echo "| $label | failed |"
    fi
}

{
    echo "## $(date -u +%F): standard end-to-end set (\`benches/e2e/run.sh\`)"
    echo
    echo "Commit \`$(git rev-parse --short HEAD)\`, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(date -u +%TZ). Server on core 0 (one worker), loadgen on core 1."
    echo
    echo "| scenario | result |"
    echo "| --- | --- |"

    row "connect, 2,000 sessions at once, DH group 2" handshakes sessions_ok \
        connect --sessions 2000 --groups 2
    row "rpc, 100 sessions, one call in flight each, 5 s" calls delivered \
        rpc --sessions 100 --duration 5
    echo
    echo "Fanout, one 2 Mbit/s publisher of 8000-byte video messages, one socket per session:"
    echo
    SOCKETS=session benches/e2e/fanout.sh 500 1000 2000 | tail -n +2
    echo
    if [ "$(id -u)" = 0 ]; then
        echo "Socket versus XDP mode on a veth pair (\`benches/e2e/xdp.sh\`, ingest, one run each):"
        echo
        REPEAT=1 benches/e2e/xdp.sh 100 1100 | tail -n +2
    else
        echo "Socket versus XDP mode: not measured (\`benches/e2e/xdp.sh\` needs root)."
    fi
} | tee "$OUT"

if [ "$WRITE" = "--write" ]; then
    { echo; cat "$OUT"; } >> docs/performance.md
    echo "appended to docs/performance.md"
fi
