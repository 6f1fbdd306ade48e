#!/usr/bin/env bash
# Regenerates docs/performance.md: builds weft (release), runs the runtime
# microbenchmarks beside Tokio's and Go's, then the I/O comparison
# (benches/io_compare.sh: servers and timers beside Tokio and the hand-written
# io_uring server), then the CPU-stall demo (benches/stall_compare.sh), each
# interleaved, and fills the template benches/performance.md.in with the
# tables and benches/performance_io_notes.md / performance_stall_notes.md (the
# readings, written by hand: update them when the figures move).
# usage: benches/update_performance.sh [RUNS=5] [WORKERS=2] [REPS=7]
#   IO_RUNS (default 16) runs of the I/O comparison, STALL_RUNS (default 5) of the stall demo
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5} WORKERS=${2:-2} REPS=${3:-7}
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DWEFT_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" >/dev/null
OUT=${PEERS_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers}
export RESULTS=${RESULTS:-$OUT/results/micro-$(date -u +%Y%m%d-%H%M%S)}
BUILD=build-release benches/micro_compare.sh "$RUNS" "$WORKERS" "$REPS" > /dev/null
IO_RESULTS=$OUT/results/io-$(date -u +%Y%m%d-%H%M%S)
RESULTS=$IO_RESULTS BUILD=build-release benches/io_compare.sh "${IO_RUNS:-16}" 5 "http echo echo_open idle micro" > /dev/null
python3 benches/io_table.py "$IO_RESULTS/summary.md" "$IO_RESULTS" > "$IO_RESULTS/table.md"
STALL_RESULTS=$OUT/results/stall-$(date -u +%Y%m%d-%H%M%S)
RESULTS=$STALL_RESULTS BUILD=build-release benches/stall_compare.sh "${STALL_RUNS:-5}" 5 > /dev/null
python3 - "$RESULTS/table.md" "$IO_RESULTS/table.md" "$STALL_RESULTS/summary.md" \
    benches/performance.md.in benches/performance_io_notes.md \
    benches/performance_stall_notes.md docs/performance.md <<'PY'
import sys
micro, io, stall, template, notes, stall_notes, out = sys.argv[1:]
text = open(template).read().replace("@MICRO_TABLE@", open(micro).read().strip())
text = text.replace("@IO_TABLE@", open(io).read().strip())
text = text.replace("@IO_NOTES@", open(notes).read().strip())
text = text.replace("@STALL_TABLE@", open(stall).read().strip())
text = text.replace("@STALL_NOTES@", open(stall_notes).read().strip())
open(out, "w").write(text)
PY
echo "docs/performance.md updated from $RESULTS" >&2
