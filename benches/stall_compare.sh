#!/bin/bash
# CPU-stall benchmark: weft's HTTP server beside Tokio's (tokio_stall), the
# experiment of the shared peers' run.sh "stall" section. Per server and mode,
# /light latency from `wrk -t1 -c16 -d$DUR --latency` while a second
# `wrk -t1 -c$HEAVY_CONNS -d$DUR --latency` keeps HEAVY_CONNS /heavy requests
# (HEAVY_MS of CPU each) in flight. Modes:
#   baseline  the inline server, no /heavy load (the /light figures to compare to)
#   inline    /heavy's CPU work runs on the worker that serves the request
#   blocking  /heavy's work goes to the blocking pool (spawn_blocking / weft's own)
#   compute   /heavy's work goes to the runtime's lane for CPU-bound work: weft's
#             weft_spawn_compute, and for Tokio rayon's pool (rayon::spawn and a
#             oneshot channel, as Tokio's documentation advises)
# Runs are interleaved: run 1 of every (mode, server), then run 2, ...
#
# usage: benches/stall_compare.sh [RUNS=3] [DUR=5]
#   BUILD           weft build dir, relative to the repo (default build-release)
#   SERVERS         which servers (default "tokio weft")
#   MODES           which modes (default "baseline inline blocking compute")
#   WEFT_HTTP_ARGS  extra arguments appended to weft-http's command line
#   HEAVY_CONNS     connections doing /heavy (default 2)
#   HEAVY_MS        CPU ms per /heavy request (default 5)
#   RESULTS         raw outputs (default /tmp/weft-stall; its old results are removed)
#   PEERS_OUT       peers' bin/ (default ~/.cache/weft-peers; see benches/peers/build.sh)
#   STALL_PORT      first port tried (default 9300); STARTUP_S (default 10)
# Prints the table of benches/stall_table.py (Markdown) and saves it as
# RESULTS/summary.md. Servers listen on 127.0.0.1 only; every load is bounded
# by DUR; only the processes started here are stopped, by PID.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RUNS=${1:-3} DUR=${2:-5}
OUT=${PEERS_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers}
B=$REPO/${BUILD:-build-release}
RES=${RESULTS:-/tmp/weft-stall}
SERVERS=${SERVERS:-"tokio weft"}
MODES=${MODES:-"baseline inline blocking compute"}
HEAVY_CONNS=${HEAVY_CONNS:-2}
HEAVY_MS=${HEAVY_MS:-5}
STARTUP_S=${STARTUP_S:-10}
read -ra WEFT_EXTRA <<< "${WEFT_HTTP_ARGS:-}"

on() { [[ " $SERVERS " == *" $1 "* ]]; }
if on tokio; then
    export PEERS_OUT=$OUT
    "$HERE/peers/build.sh" >&2
fi
if on weft && [ ! -x "$B/examples/weft-http" ]; then
    echo "missing $B/examples/weft-http: build weft first (Release)" >&2; exit 1
fi

mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
find "$RES" -maxdepth 1 -type f \( -name '*.light.*.txt' -o -name '*.heavy.*.txt' -o -name '*.cpu' \
    -o -name server.log -o -name meta.txt -o -name summary.md \) -delete

# command line of SERVER in MODE (inline|blocking), @PORT@ for the port
server_cmd() {
    case $1 in
        tokio) CMD=("$OUT/bin/tokio_stall" "$2" @PORT@ 2 "$HEAVY_MS") ;;
        weft) CMD=("$B/examples/weft-http" --port @PORT@ --workers 2 --heavy "$2" --heavy-ms "$HEAVY_MS"
                   ${WEFT_EXTRA[@]+"${WEFT_EXTRA[@]}"}) ;;
        *) echo "unknown server $1 (tokio, weft)" >&2; exit 2 ;;
    esac
}
for s in $SERVERS; do server_cmd "$s" inline; done # reject unknown names up front

{
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, Linux $(uname -r), weft $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "RUNS=$RUNS DUR=${DUR}s HEAVY_CONNS=$HEAVY_CONNS HEAVY_MS=$HEAVY_MS"
    for s in $SERVERS; do server_cmd "$s" MODE; echo "$s: ${CMD[*]}"; done
} > "$RES/meta.txt"

PORT=${STALL_PORT:-9300}
SRV_PID="" # the server we launched
FAILED=""  # servers that exited at start
HPID=""    # the background /heavy wrk

cleanup() {
    local p
    for p in $HPID $SRV_PID; do kill "$p" 2>/dev/null || true; done
    if [ -n "$SRV_PID" ]; then # give a graceful stop 5 s, then SIGKILL
        for _ in $(seq 50); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SRV_PID" 2>/dev/null || true
    fi
    for p in $HPID $SRV_PID; do wait "$p" 2>/dev/null || true; done
    SRV_PID=""; HPID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

wait_port() { # wait_port PORT PID: until 127.0.0.1:PORT accepts (STARTUP_S) or PID died
    for _ in $(seq $((STARTUP_S * 10))); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    return 1
}

start() { # start SERVER MODE: launch it on the next free port ($PORT)
    PORT=$((PORT + 1))
    while port_open $PORT; do PORT=$((PORT + 1)); done
    server_cmd "$1" "$2"
    local cmd=("${CMD[@]/@PORT@/$PORT}")
    echo "== ${cmd[*]}" >> "$RES/server.log"
    "${cmd[@]}" < /dev/null >> "$RES/server.log" 2>&1 &
    SRV_PID=$!
    if ! wait_port $PORT $SRV_PID; then
        echo "$1 ($2) did not come up on port $PORT; server.log ends:" >&2
        tail -n 3 "$RES/server.log" | sed 's/^/  /' >&2
        # A server that exited (bad option, say) is skipped from now on.
        kill -0 $SRV_PID 2>/dev/null || { FAILED+=" $1 "; echo "  ($1 exited: skipping it from now on)" >&2; }
        cleanup
        return 1
    fi
}

# Server CPU time (user+sys, all threads) in clock ticks (comm may contain spaces).
ticks() { sed 's/.*) //' "/proc/$SRV_PID/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }

WRK_CAP=$((DUR + 15)) # a hung wrk cannot outlive this
for r in $(seq "$RUNS"); do
    for mode in $MODES; do
        m=$mode; [ $mode = baseline ] && m=inline
        for s in $SERVERS; do
            [[ "$FAILED" == *" $s "* ]] && continue
            echo "[stall run $r/$RUNS] $s $mode" >&2
            start "$s" "$m" || continue
            pre=$RES/$s.$mode
            c0=$(ticks); t0=$(date +%s.%N)
            if [ $mode != baseline ]; then
                timeout $WRK_CAP wrk -t1 -c"$HEAVY_CONNS" -d"${DUR}s" --latency "http://127.0.0.1:$PORT/heavy" \
                    < /dev/null > "$pre.heavy.$r.txt" 2>&1 &
                HPID=$!
            fi
            timeout $WRK_CAP wrk -t1 -c16 -d"${DUR}s" --latency "http://127.0.0.1:$PORT/light" \
                < /dev/null > "$pre.light.$r.txt" 2>&1 || echo "  light wrk failed (see $pre.light.$r.txt)" >&2
            if [ -n "$HPID" ]; then
                wait "$HPID" || echo "  heavy wrk failed (see $pre.heavy.$r.txt)" >&2
                HPID=""
            fi
            c1=$(ticks); t1=$(date +%s.%N)
            echo "cpu_s=$(echo "($c1 - $c0) / $(getconf CLK_TCK)" | bc -l) wall_s=$(echo "$t1 - $t0" | bc -l)" \
                > "$pre.$r.cpu"
            cleanup
        done
    done
done

python3 "$HERE/stall_table.py" "$RES" | tee "$RES/summary.md"
echo "raw outputs: $RES" >&2
