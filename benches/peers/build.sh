#!/bin/bash
# Build the peers that weft is compared against into $PEERS_OUT/bin, for
# $SHARED_PEERS/run.sh (same PEERS_OUT) sections http, echo, echo_open, idle, stall,
# micro, and for benches/stall_compare.sh:
#   tokio_micro tokio_srv tokio_timers   from benches/peers/rust (our rebuilds; the
#   tokio_stall                          shared peers' Rust sources are missing)
#   loadgen epoll_srv uring_srv uv_srv   from $SHARED_PEERS/c (same flags as its build.sh)
#   gomicro                              from $SHARED_PEERS/go/cmd/gomicro
# Idempotent: an unchanged tree is a no-op (a few seconds).
#   PEERS_OUT     output dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers)
#   SHARED_PEERS  shared peers checkout (default <repo>/../shared/peers)
# Nothing is written into the repo or into SHARED_PEERS (which may be read-only).
# Missing Debian packages are installed with apt-get (as root, or via sudo).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SHARED_PEERS=${SHARED_PEERS:-$REPO/../shared/peers}
OUT=${PEERS_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers}
export PATH=$HOME/.cargo/bin:$PATH # prefer rustup's cargo when present
mkdir -p "$OUT/bin"
OUT=$(cd "$OUT" && pwd)

# ---- Debian dependencies ---------------------------------------------------------
# C peers: gcc, liburing-dev, libuv1-dev; run.sh needs wrk, bc, ss (iproute2), python3.
PKGS=(gcc libc6-dev liburing-dev libuv1-dev wrk bc iproute2
      librust-tokio-dev librust-tokio-macros-dev librust-rayon-dev golang-go time)
command -v cargo >/dev/null || PKGS+=(cargo) # Debian's cargo/rustc as a fallback
command -v python3 >/dev/null || PKGS+=(python3)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    # Try without a (slow) index update first; update only if that fails.
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" ||
        { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
fi

# ---- C peers (flags as in $SHARED_PEERS/build.sh) --------------------------------
CFLAGS="-O2 -g -Wall -Wextra"
C_BINS="epoll_srv uring_srv uv_srv loadgen"
cc_bin() { # cc_bin NAME LIBS...: rebuild only when $SHARED_PEERS/c/NAME.c or common.h is newer
    local name=$1 src=$SHARED_PEERS/c/$1.c; shift
    if [ ! -x "$OUT/bin/$name" ] || [ "$src" -nt "$OUT/bin/$name" ] ||
        [ "$SHARED_PEERS/c/common.h" -nt "$OUT/bin/$name" ]; then
        gcc $CFLAGS -o "$OUT/bin/$name" "$src" "$@"
    fi
}
cc_bin epoll_srv -lpthread
cc_bin uring_srv -luring -lpthread
cc_bin uv_srv -luv -lpthread
cc_bin loadgen -lpthread

# ---- Rust peers (offline, Debian-vendored crates) --------------------------------
# Built from a private copy so cargo may rewrite Cargo.lock without touching the
# repo. Timestamps are preserved, so an unchanged tree is a cargo no-op. The
# "-weft" suffixes keep clear of the dirs the shared peers' build.sh uses.
RS=$OUT/rust-src-weft
rm -rf "$RS" && mkdir -p "$RS"
cp -R --preserve=timestamps "$HERE/rust/Cargo.toml" "$HERE/rust/Cargo.lock" \
    "$HERE/rust/src" "$HERE/rust/.cargo" "$RS/"
RUST_BINS="tokio_micro tokio_srv tokio_timers tokio_stall"
(cd "$RS" && CARGO_TARGET_DIR="$OUT/cargo-target-weft" cargo build --release --offline -q)
for b in $RUST_BINS; do cp -p "$OUT/cargo-target-weft/release/$b" "$OUT/bin/"; done

# ---- gomicro (Go's own build cache makes rebuilds cheap; skip if unchanged) ------
GO_SRC=$SHARED_PEERS/go
if [ ! -x "$OUT/bin/gomicro" ] ||
    [ -n "$(find "$GO_SRC/cmd/gomicro" "$GO_SRC/go.mod" -newer "$OUT/bin/gomicro" -print -quit)" ]; then
    (cd "$GO_SRC" && go build -buildvcs=false -o "$OUT/bin/gomicro" ./cmd/gomicro)
fi
echo "built in $OUT/bin: $RUST_BINS $C_BINS gomicro"
