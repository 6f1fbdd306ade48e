#!/bin/bash
# I/O benchmarks: weft's servers and timers beside Tokio and the hand-written
# io_uring server, in one run of the shared peers' run.sh (interleaved).
# usage: benches/io_compare.sh [RUNS=3] [DUR=5] [SECTIONS="http echo echo_open idle micro"]
#   BUILD         weft build dir, relative to the repo (default build-release)
#   SERVERS       peer servers beside weft (default "tokio io_uring")
#   PEERS_OUT     peers' bin/ and results/ (default ~/.cache/weft-peers)
#   SHARED_PEERS  the shared peers checkout (default <repo>/../shared/peers)
# Prints run.sh's summary (Markdown) and saves it as RESULTS/summary.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RUNS=${1:-3} DUR=${2:-5} SECTIONS=${3:-"http echo echo_open idle micro"}
OUT=${PEERS_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers}
SHARED_PEERS=${SHARED_PEERS:-$REPO/../shared/peers}
B=$REPO/${BUILD:-build-release}
export PEERS_OUT=$OUT
export PEERS_RESULTS=${RESULTS:-$OUT/results/io-$(date -u +%Y%m%d-%H%M%S)}
"$HERE/peers/build.sh" >&2
for bin in examples/weft-http examples/weft-echo benches/weft-timer-bench; do
    [ -x "$B/$bin" ] || { echo "missing $B/$bin: build weft first (Release)" >&2; exit 1; }
done
export EXTRA_HTTP="weft|$B/examples/weft-http --port @PORT@ --workers 2"
export EXTRA_ECHO="weft|$B/examples/weft-echo --port @PORT@ --workers 2"
export EXTRA_MICRO="weft_timers|$B/benches/weft-timer-bench 2 1"
SERVERS="${SERVERS:-tokio io_uring} weft" MICROS="tokio_timers weft_timers" \
    RUNS=$RUNS DUR=$DUR ONLY="$SECTIONS" "$SHARED_PEERS/run.sh" >&2
cat "$PEERS_RESULTS/summary.md"
echo "raw outputs: $PEERS_RESULTS" >&2
