#!/usr/bin/env bash
# Installs the dependencies, builds weft, and runs the demo: the runtime
# microbenchmarks (spawn, yield, ping-pong, chained spawn) on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
build/benches/weft-rt-bench 2 3
