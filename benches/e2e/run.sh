#!/usr/bin/env bash
# The standard end-to-end set, server pinned to core 0 and updraft-loadgen to core 1 on
# loopback: handshake rate, RPC rate, and fanout to 500, 1,000 and 2,000 subscribers with one
# socket (address) per subscriber. Prints a dated Markdown section; with --write, also appends
# it to docs/performance.md. Socket mode only: the AF_XDP data plane (issue 5) does not exist
# yet, so the socket-versus-XDP rows say so.
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

# field FILE KEY: a number from a loadgen JSON report.
field() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

{
    echo "## $(date -u +%F): standard end-to-end set (\`benches/e2e/run.sh\`)"
    echo
    echo "Commit \`$(git rev-parse --short HEAD)\`, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(date -u +%TZ). Server on core 0 (one worker), loadgen on core 1."
    echo
    echo "| scenario | result |"
    echo "| --- | --- |"

    port=$((20000 + RANDOM % 20000))
    server=$(start_server "$port")
    taskset -c 1 "$BIN/updraft-loadgen" connect --server "127.0.0.1:$port" --sessions 2000 \
        --groups 2 --json "$WORK/connect.json" > /dev/null 2>&1 || true
    stop_server "$server"
    if [ -s "$WORK/connect.json" ]; then
        ok=$(field "$WORK/connect.json" sessions_ok)
        secs=$(field "$WORK/connect.json" elapsed_s)
        p99=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["latency_ms"]["p99"])' "$WORK/connect.json")
        echo "| connect, 2,000 sessions at once, DH group 2 | $ok opened in $(printf %.2f "$secs") s: $(python3 -c "print(f'{$ok / $secs:,.0f}')") handshakes/s; p99 $p99 ms |"
    else
        echo "| connect | failed |"
    fi

    port=$((20000 + RANDOM % 20000))
    server=$(start_server "$port")
    taskset -c 1 "$BIN/updraft-loadgen" rpc --server "127.0.0.1:$port" --sessions 100 \
        --duration 5 --json "$WORK/rpc.json" > /dev/null 2>&1 || true
    stop_server "$server"
    if [ -s "$WORK/rpc.json" ]; then
        calls=$(field "$WORK/rpc.json" delivered)
        secs=$(field "$WORK/rpc.json" elapsed_s)
        p99=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["latency_ms"]["p99"])' "$WORK/rpc.json")
        echo "| rpc, 100 sessions, one call in flight each, 5 s | $(python3 -c "print(f'{$calls / $secs:,.0f}')") calls/s; round trip p99 $p99 ms |"
    else
        echo "| rpc | failed |"
    fi
    echo "| socket versus XDP mode | not measured: the AF_XDP data plane is issue 5 |"
    echo
    echo "Fanout, one 2 Mbit/s publisher of 8000-byte video messages, one socket per session:"
    echo
    SOCKETS=session benches/e2e/fanout.sh 500 1000 2000 | tail -n +2
} | tee "$OUT"

if [ "$WRITE" = "--write" ]; then
    { echo; cat "$OUT"; } >> docs/performance.md
    echo "appended to docs/performance.md"
fi
