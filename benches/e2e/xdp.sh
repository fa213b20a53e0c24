#!/usr/bin/env bash
# XDP versus socket mode, side by side in one run: the server in one network namespace on one
# end of a veth pair (one worker, pinned to core 0), updraft-loadgen in another on the other end
# (pinned to core 1), running SCENARIO:
#   ingest   PUBLISHERS streams in, no viewers: the server mostly receives (media in, acks out)
#   fanout   one stream to SUBSCRIBERS: the server mostly sends
# For each message size, the same offered load runs against the server in --mode socket and in
# --mode xdp, alternating, REPEAT times each. Prints one Markdown row per run: what the loadgen
# received and its end-to-end latency percentiles, the server's packets per second (received +
# sent, from its /stats), the share that went through the AF_XDP rings, the server process's
# CPU, how busy each core was, and packets per core-0 CPU-second: the server's whole cost, its
# receive path included (see below). The loadgen polls without sleeping, so core 1 reads busy
# throughout.
#
# Left alone, veth runs the receive-side kernel work of a frame (XDP, the AF_XDP copy, or the
# UDP stack up to the socket queue) in softirq on the sending CPU (shared/docs/xdp-notes.md):
# the server would pay for the loadgen's receive path and the loadgen for the server's, and
# not by the same amount in both modes. So both ends get NAPI (GRO on, TSO off so that every
# frame qualifies), threaded, and each NAPI thread is pinned with its host: the server's
# receive path (XDP and the AF_XDP copy, or the UDP stack) runs on core 0, as it would on the
# server's own NIC, and the loadgen's on core 1. Core 0 is then the server's whole cost.
#
# usage: sudo benches/e2e/xdp.sh [SIZE...]        (default sizes: 100 1100)
# environment:
#   SCENARIO=ingest   ingest or fanout
#   PUBLISHERS=100    ingest streams
#   SUBSCRIBERS=200   fanout subscribers
#   RATE=500          media messages per second per stream (ingest: PUBLISHERS x RATE
#                     datagrams/s into the server; fanout: SUBSCRIBERS x RATE out of it)
#   DURATION=10       seconds of streaming per run (the window measured is DURATION - 3)
#   REPEAT=3          runs per mode and size
#   SOCKETS=          the loadgen's UDP sockets (--sockets; its default when empty); "session"
#                     for one socket, so one address, per session, as real subscribers have
#   LOADGEN_XDP=0     1: the loadgen sends and receives through AF_XDP too (--xdp, one socket)
#   MODES="socket xdp"  the server modes to alternate: socket, xdp, and xdp-busy (XDP mode with
#                     xdpBusyPoll = 50 and the server veth's napi_defer_hard_irqs = 2,
#                     gro_flush_timeout = GRO_FLUSH_TIMEOUT; the other modes run with both at 0)
#   GRO_FLUSH_TIMEOUT=1000000  nanoseconds, for xdp-busy
# Needs: root, a release build (cargo build --release --workspace --bins), ip, ethtool,
# taskset, python3, 2 cores.
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
SCENARIO=${SCENARIO:-ingest}
PUBLISHERS=${PUBLISHERS:-100}
SUBSCRIBERS=${SUBSCRIBERS:-200}
RATE=${RATE:-500}
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-3}
LOADGEN_XDP=${LOADGEN_XDP:-0}
SOCKETS=${SOCKETS:-}
MODES=${MODES:-socket xdp}
SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(100 1100)
[ "$(id -u)" = 0 ] || { echo "xdp.sh: needs root (namespaces, XDP)" >&2; exit 1; }
for need in ip:iproute2 ethtool:ethtool taskset:util-linux python3:python3; do
    command -v "${need%%:*}" > /dev/null ||
        { echo "xdp.sh: needs ${need%%:*} (Debian package ${need#*:})" >&2; exit 1; }
done

TICK=$(getconf CLK_TCK)
ID=$$
SNS=updraft-bs$ID
CNS=updraft-bc$ID
SIF=ubs$ID
CIF=ubc$ID
SERVER_IP=10.202.0.1
CLIENT_IP=10.202.0.2
PORT=1935
METRICS=$SERVER_IP:9935
WORK=$(mktemp -d)
chmod 755 "$WORK" # the control process reads www/ as nobody
cleanup() {
    [ -n "${SERVER:-}" ] && kill -KILL "$SERVER" 2>/dev/null || true
    ip netns del "$SNS" 2>/dev/null || true
    ip netns del "$CNS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/www/live"
touch "$WORK/www/main.lua" "$WORK/www/live/main.lua"
printf 'handshakeRate = 100000\n' > "$WORK/updraft.ini"
printf 'handshakeRate = 100000\nxdpBusyPoll = 50\n' > "$WORK/busy.ini"

ip netns add "$SNS"
ip netns add "$CNS"
ip link add "$SIF" netns "$SNS" type veth peer name "$CIF" netns "$CNS"
ip -n "$SNS" addr add "$SERVER_IP/24" dev "$SIF"
ip -n "$CNS" addr add "$CLIENT_IP/24" dev "$CIF"
for ns in "$SNS" "$CNS"; do ip -n "$ns" link set lo up; done
ip -n "$SNS" link set "$SIF" up
ip -n "$CNS" link set "$CIF" up
for end in "$SNS $SIF" "$CNS $CIF"; do
    set -- $end
    ip netns exec "$1" ethtool -K "$2" gro on tso off > /dev/null
    ip netns exec "$1" sh -c "echo 1 > /sys/class/net/$2/threaded"
done

# Pins each end's NAPI threads to its host's core (attaching XDP may make new ones).
pin_napi() {
    local pid comm
    while read -r pid comm; do
        case $comm in
            "napi/$SIF"*) taskset -pc 0 "$pid" > /dev/null ;;
            "napi/$CIF"*) taskset -pc 1 "$pid" > /dev/null ;;
        esac
    done < <(ps -eo pid=,comm=)
}

# CPU time of process $1 in nanoseconds, every thread, from the scheduler's own clock
# (/proc/PID/task/*/schedstat). The tick-sampled utime/stime of /proc/PID/stat miss a worker
# that wakes and sleeps between two ticks (HZ 250, no IRQ time accounting here) and showed a
# fraction of the real figure.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d\n", s}'; }
# Idle ticks (idle + iowait, in USER_HZ) of core 0 and of core 1; idle time is measured
# exactly (nohz), so busy = window - idle.
idle() { awk '/^cpu0 / {a = $5 + $6} /^cpu1 / {b = $5 + $6} END {print a, b}' /proc/stat; }
# The server's received + sent datagrams, and those that went through the AF_XDP rings.
packets() {
    ip netns exec "$SNS" python3 - "$METRICS" <<'EOF'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/stats", timeout=5))
w = s["workers"]
total = sum(x["rx_packets"] + x["tx_packets"] for x in w)
rings = sum(x["xdp_rx"] + x["xdp_tx"] for x in w)
print(total, rings, s["mode"])
EOF
}

# run MODE SIZE
run() {
    local mode=$1 size=$2
    local bitrate=$((RATE * size * 8 / 1000))
    local server_mode=$mode config=$WORK/updraft.ini defer=0 timeout=0
    if [ "$mode" = xdp-busy ]; then
        # Preferred busy polling, with the NAPI deferral docs/operations.md advises.
        server_mode=xdp config=$WORK/busy.ini defer=2 timeout=${GRO_FLUSH_TIMEOUT:-1000000}
    fi
    ip netns exec "$SNS" sh -c "echo $defer > /sys/class/net/$SIF/napi_defer_hard_irqs; echo $timeout > /sys/class/net/$SIF/gro_flush_timeout"
    taskset -c 0 ip netns exec "$SNS" "$BIN/updraft" --config "$config" \
        --mode "$server_mode" --interface "$SIF" --bind "$SERVER_IP" --port "$PORT" \
        --metrics "$METRICS" --workers 1 --www "$WORK/www" --log 3 > "$WORK/server.log" 2>&1 &
    SERVER=$!
    local waited=0
    until grep -q "server peer ID" "$WORK/server.log" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
        if ! kill -0 "$SERVER" 2>/dev/null || [ $waited -gt 100 ]; then
            echo "| $mode | $size | server did not start: $(tail -1 "$WORK/server.log") | | |"
            return
        fi
    done
    local load
    if [ "$SCENARIO" = fanout ]; then
        load=(fanout --subscribers "$SUBSCRIBERS" --stream bench)
    else
        load=(publish --publishers "$PUBLISHERS" --viewers 0 --stream bench)
    fi
    case $SOCKETS in
        session)
            local n=$PUBLISHERS
            [ "$SCENARIO" = fanout ] && n=$SUBSCRIBERS
            load+=(--sockets $((n + 1)))
            ;;
        ?*) load+=(--sockets "$SOCKETS") ;;
    esac
    [ "$LOADGEN_XDP" = 1 ] && load+=(--xdp "$CIF" --sockets 1)
    pin_napi
    taskset -c 1 ip netns exec "$CNS" "$BIN/updraft-loadgen" "${load[@]}" \
        --server "$SERVER_IP:$PORT" --bitrate "$bitrate" --size "$size" \
        --duration "$DURATION" --app live --threads 1 --cores 1 --json "$WORK/report.json" \
        > "$WORK/loadgen.out" 2> "$WORK/loadgen.err" &
    local loadgen=$!
    waited=0
    until grep -q "streaming for" "$WORK/loadgen.err" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
        if ! kill -0 "$loadgen" 2>/dev/null || [ $waited -gt 1200 ]; then break; fi
    done
    # The loadgen's own XDP attachment (LOADGEN_XDP) may have made new NAPI threads.
    pin_napi
    local window=$((DURATION - 3)) row="n/a | | | | |"
    if kill -0 "$loadgen" 2>/dev/null; then
        sleep 1
        local t0 i0 p0 t1 i1 p1
        t0=$(cpu_ns "$SERVER")
        i0=$(idle)
        p0=$(packets)
        sleep "$window"
        t1=$(cpu_ns "$SERVER")
        i1=$(idle)
        p1=$(packets)
        row=$(python3 - "$t0" "$t1" "$i0" "$i1" "$p0" "$p1" "$TICK" "$window" <<'EOF'
import sys
t0, t1 = int(sys.argv[1]), int(sys.argv[2])
a0, b0 = map(int, sys.argv[3].split())
a1, b1 = map(int, sys.argv[4].split())
p0, r0, _ = sys.argv[5].split()
p1, r1, mode = sys.argv[6].split()
hz, w = int(sys.argv[7]), int(sys.argv[8])
pps = (int(p1) - int(p0)) / w
rings = (int(r1) - int(r0)) / w
server = (t1 - t0) / 1e9 / w
core0 = max(0.0, 1 - (a1 - a0) / hz / w)
core1 = max(0.0, 1 - (b1 - b0) / hz / w)
per = lambda cpu: f"{pps / cpu:,.0f}" if cpu > 0 else "n/a"
print(f"{pps:,.0f} | {rings / pps * 100 if pps else 0:.0f}% | {server:.2f} | "
      f"{core0:.2f} | {core1:.2f} | {per(core0)}")
EOF
)
    fi
    wait "$loadgen" || true
    kill -TERM "$SERVER" 2>/dev/null || true
    sleep 0.5
    kill -KILL "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=
    local got="failed: $(tail -1 "$WORK/loadgen.err") | |"
    if [ -s "$WORK/report.json" ]; then
        got=$(python3 - "$WORK/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("latency_ms", {})
print(f"{r['delivered']:,} of {r['expected']:,} | {lat.get('p50', 0):.1f} | {lat.get('p99', 0):.1f}")
EOF
)
    fi
    echo "| $mode | $size | $got | $row |"
    rm -f "$WORK/report.json"
    # An AF_XDP bind right after the last socket closed meets EBUSY for about a second.
    sleep 1.5
}

what="$PUBLISHERS streams in"
[ "$SCENARIO" = fanout ] && what="one stream to $SUBSCRIBERS subscribers"
[ "$LOADGEN_XDP" = 1 ] && what="$what, loadgen on AF_XDP"
echo "xdp vs socket: $SCENARIO, $what, $RATE messages/s per stream, $DURATION s runs, $(uname -r), $(date -u +%FT%TZ)"
echo "| mode | size B | loadgen delivered | p50 ms | p99 ms | server packets/s | via rings | server process CPUs | core 0 busy | core 1 busy | packets per core-0 CPU-s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for size in "${SIZES[@]}"; do
    for _ in $(seq "$REPEAT"); do
        for mode in $MODES; do
            run "$mode" "$size"
        done
    done
done
