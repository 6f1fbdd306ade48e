#!/usr/bin/env bash
# Regenerates docs/performance.md: builds weft (release), runs the runtime
# microbenchmarks beside Tokio's and Go's, interleaved, and fills the template
# benches/performance.md.in with the table.
# usage: benches/update_performance.sh [RUNS=5] [WORKERS=2] [REPS=7]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5} WORKERS=${2:-2} REPS=${3:-7}
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DWEFT_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" >/dev/null
OUT=${PEERS_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers}
export RESULTS=${RESULTS:-$OUT/results/micro-$(date -u +%Y%m%d-%H%M%S)}
BUILD=build-release benches/micro_compare.sh "$RUNS" "$WORKERS" "$REPS" > /dev/null
python3 - "$RESULTS/table.md" benches/performance.md.in docs/performance.md <<'PY'
import sys
table, template, out = sys.argv[1:]
text = open(template).read().replace("@MICRO_TABLE@", open(table).read().strip())
open(out, "w").write(text)
PY
echo "docs/performance.md updated from $RESULTS" >&2
