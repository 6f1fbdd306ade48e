#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds (release, with debug
# info) into build/, runs every Criterion test file and stress program.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
cd build && ctest --output-on-failure -j2 "$@"
