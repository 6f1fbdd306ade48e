#!/bin/bash
# Scheduler microbenchmarks: weft vs Tokio vs Go, same machine, same run.
# usage: benches/micro_compare.sh [RUNS=3] [WORKERS=2] [REPS=7]
#   BUILD           weft build dir, relative to the repo (default build-release)
#   WEFT_BENCH_BIN  weft bench binary (default $BUILD/benches/weft-rt-bench)
#   PEERS_OUT       peers' bin/ and results/ (default ~/.cache/weft-peers)
#   RESULTS         raw output dir (default $PEERS_OUT/results/micro-<timestamp>)
# Programs run interleaved (weft tokio go, weft tokio go, ...) so machine drift
# hits all alike; each runs under /usr/bin/time for its peak RSS. Prints a
# Markdown table (benches/micro_table.py) and saves it as RESULTS/table.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RUNS=${1:-3} WORKERS=${2:-2} REPS=${3:-7}
OUT=${PEERS_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers}
export PEERS_OUT=$OUT
WEFT=${WEFT_BENCH_BIN:-$REPO/${BUILD:-build-release}/benches/weft-rt-bench}
R=${RESULTS:-$OUT/results/micro-$(date -u +%Y%m%d-%H%M%S)}

"$HERE/peers/build.sh" >&2 # no-op when up to date; also installs `time`
mkdir -p "$R"
progs=(weft tokio_micro gomicro)
declare -A cmd=([weft]="$WEFT" [tokio_micro]="$OUT/bin/tokio_micro" [gomicro]="$OUT/bin/gomicro")
if [ ! -x "$WEFT" ]; then # still compare the peers, but say loudly that weft is missing
    echo "WARNING: weft bench $WEFT not found (build it, or set WEFT_BENCH_BIN); skipping weft" >&2
    progs=(tokio_micro gomicro)
fi
printf 'date: %s\ncommand: benches/micro_compare.sh %s %s %s\nruns: %s\nworkers: %s\nreps: %s\nweft: %s\n' \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$RUNS" "$WORKERS" "$REPS" "$RUNS" "$WORKERS" "$REPS" "$WEFT" > "$R/meta.txt"

for r in $(seq 1 "$RUNS"); do
    for p in "${progs[@]}"; do
        echo "[run $r/$RUNS] $p" >&2
        # time's MAXRSS_KB line goes to stderr, i.e. into the same file, after the
        # program's own output; a failure is noted but does not stop the others.
        /usr/bin/time -f 'MAXRSS_KB %M' timeout 600 "${cmd[$p]}" "$WORKERS" "$REPS" \
            < /dev/null > "$R/$p.$r.txt" 2>&1 || echo "  $p failed (rc=$?), see $R/$p.$r.txt" >&2
    done
done
python3 "$HERE/micro_table.py" "$R" | tee "$R/table.md"
echo "raw outputs: $R" >&2
