#!/usr/bin/env bash
# End-to-end fanout benchmark: one publisher at BITRATE kbit/s to N subscribers, server pinned to
# core 0 (one worker), updraft-loadgen pinned to core 1, on loopback. Prints one Markdown table
# row per run: delivery, loss, end-to-end latency percentiles (from the publisher's send to the
# kernel's receive timestamp of the subscriber's datagram, so the loadgen's own queueing is left
# out) and the server's and the loadgen's CPU use while the stream runs (from /proc/PID/stat, all
# threads), and how busy core 0 was (from /proc/stat: the server's whole cost, softirq work
# included, and whatever else ran there). The loadgen sleeps when it has nothing to do, so a
# loadgen near 1.00 is the bottleneck, not the server.
#
# usage: benches/e2e/fanout.sh [N...]            (default N: 500 1000 2000)
# environment:
#   SIZE=8000       bytes per media message (8000 at 2 Mbit/s is a 31 fps video frame, sent as
#                   seven datagrams; 1100 makes one datagram per message)
#   BITRATE=2000    kbit/s
#   DURATION=8      seconds of streaming
#   KEYFRAME=2      seconds between key frames (a subscriber the server cut back to whole groups
#                   of pictures resumes at the next one)
#   SOCKETS=8       loadgen UDP sockets; "session" for one socket per session (N + 1), which
#                   servers keeping one session per address (rtmfp-cpp) need
#   DH_GROUPS=2        Diffie-Hellman groups the loadgen offers (rtmfp-cpp wants 14)
#   TCSERVER=path   also run rtmfp-cpp's tcserver (built by you, outside this repository) on
#                   the same scenario, right after Updraft, with -H -S (no HMAC or session
#                   sequence numbers required, as with Flash Player)
#   CUMULUS=path    also run OpenRTMFP Cumulus's CumulusServer binary (built by you, outside
#                   this repository), from a directory of its own holding CumulusServer.ini
#                   (the port) and www/live/main.lua; it binds 0.0.0.0, traffic stays on
#                   127.0.0.1. It takes Diffie-Hellman group 2 only.
# Needs: a release build (cargo build --release --workspace --bins), taskset, 2 or more cores.
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
SIZE=${SIZE:-8000}
BITRATE=${BITRATE:-2000}
DURATION=${DURATION:-8}
KEYFRAME=${KEYFRAME:-2}
SOCKETS=${SOCKETS:-8}
DH_GROUPS=${DH_GROUPS:-2}
RUNS=("$@")
[ ${#RUNS[@]} -eq 0 ] && RUNS=(500 1000 2000)
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d)
chmod 755 "$WORK" # the control process reads www/ as nobody when started as root
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/www/live"
touch "$WORK/www/main.lua" "$WORK/www/live/main.lua"
printf 'handshakeRate = 100000\n' > "$WORK/updraft.ini"

# CPU ticks (user + system, every thread) of process $1.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Idle ticks (idle + iowait) of core 0, whose busy share counts the server's whole cost, its
# softirq work included, which its process's own time may miss.
idle0() { awk '/^cpu0 / {print $5 + $6}' /proc/stat; }

# run NAME N PORT server-command...
run() {
    local name=$1 n=$2 port=$3
    shift 3
    taskset -c 0 "$@" > "$WORK/server.log" 2>&1 &
    local server=$!
    sleep 1
    local sockets=$SOCKETS
    [ "$sockets" = session ] && sockets=$((n + 1))
    taskset -c 1 "$BIN/updraft-loadgen" fanout --server "127.0.0.1:$port" --subscribers "$n" \
        --sockets "$sockets" --groups "$DH_GROUPS" --bitrate "$BITRATE" --size "$SIZE" \
        --duration "$DURATION" --keyframe "$KEYFRAME" --app live --stream "bench$n" --json "$WORK/report.json" \
        > "$WORK/loadgen.out" 2> "$WORK/loadgen.err" &
    local loadgen=$!
    # Measure the server from one second after the stream starts to one second before it ends.
    local waited=0
    until grep -q "streaming for" "$WORK/loadgen.err" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
        if ! kill -0 "$loadgen" 2>/dev/null || [ $waited -gt 1200 ]; then break; fi
    done
    local window=$((DURATION - 2)) cpu="n/a" lcpu="n/a" busy0="n/a"
    if [ $window -gt 0 ] && kill -0 "$loadgen" 2>/dev/null; then
        sleep 1
        local t0 t1 l0 l1
        t0=$(ticks "$server")
        l0=$(ticks "$loadgen")
        i0=$(idle0)
        sleep "$window"
        t1=$(ticks "$server")
        l1=$(ticks "$loadgen")
        i1=$(idle0)
        cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$TICK" -v w="$window" 'BEGIN { printf "%.2f", (b - a) / hz / w }')
        lcpu=$(awk -v a="$l0" -v b="$l1" -v hz="$TICK" -v w="$window" 'BEGIN { printf "%.2f", (b - a) / hz / w }')
        busy0=$(awk -v a="$i0" -v b="$i1" -v hz="$TICK" -v w="$window" 'BEGIN { printf "%.2f", 1 - (b - a) / hz / w }')
    fi
    wait "$loadgen" || true
    kill -TERM "$server" 2>/dev/null || true
    sleep 0.5
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    if [ -s "$WORK/report.json" ]; then
        python3 - "$name" "$n" "$cpu" "$busy0" "$lcpu" "$WORK/report.json" <<'EOF'
import json, sys
name, n, cpu, busy0, lcpu, path = sys.argv[1:7]
r = json.load(open(path))
lat = r.get("latency_ms", {})
lost = r["lost"] / r["expected"] * 100 if r["expected"] else 0
print(f"| {name} | {n} | {r['delivered']:,} of {r['expected']:,} | {lost:.2f}% | "
      f"{lat.get('p50', 0):.1f} | {lat.get('p99', 0):.1f} | {lat.get('p99.9', 0):.1f} | "
      f"{r['packets_in_per_s']:,.0f} | {cpu} | {busy0} | {lcpu} |")
EOF
    else
        echo "| $name | $n | failed: $(tail -1 "$WORK/loadgen.err") | | | | | | $cpu | $busy0 | $lcpu |"
    fi
    rm -f "$WORK/report.json"
}

echo "fanout: size $SIZE B, $BITRATE kbit/s, $DURATION s, key frame every $KEYFRAME s, sockets $SOCKETS, DH groups $DH_GROUPS, $(date -u +%FT%TZ)"
echo "| server | subscribers | delivered | lost | p50 ms | p99 ms | p99.9 ms | loadgen packets in/s | server CPUs | core 0 busy | loadgen CPUs |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for n in "${RUNS[@]}"; do
    port=$((20000 + RANDOM % 20000))
    run updraft "$n" "$port" "$BIN/updraft" --config "$WORK/updraft.ini" --port "$port" \
        --workers 1 --www "$WORK/www" --log 3
    if [ -n "${TCSERVER:-}" ]; then
        port=$((20000 + RANDOM % 20000))
        run tcserver "$n" "$port" "$TCSERVER" -B "127.0.0.1:$port" -H -S
    fi
    if [ -n "${CUMULUS:-}" ]; then
        port=$((20000 + RANDOM % 20000))
        # Cumulus reads CumulusServer.ini and www/ beside the path it was started as.
        rm -rf "$WORK/cumulus"
        mkdir -p "$WORK/cumulus/www/live"
        touch "$WORK/cumulus/www/main.lua" "$WORK/cumulus/www/live/main.lua"
        printf 'port = %s\n' "$port" > "$WORK/cumulus/CumulusServer.ini"
        ln -s "$(realpath "$CUMULUS")" "$WORK/cumulus/CumulusServer"
        run cumulus "$n" "$port" "$WORK/cumulus/CumulusServer"
    fi
done
