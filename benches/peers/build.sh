#!/bin/bash
# Build the peer microbenchmarks that weft is compared against:
#   tokio_micro  from benches/peers/rust (our reconstruction)
#   gomicro      from $SHARED_PEERS/go/cmd/gomicro
# into $PEERS_OUT/bin. Idempotent: an unchanged tree is a no-op (a few seconds).
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
PKGS=(librust-tokio-dev librust-tokio-macros-dev golang-go time)
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

# ---- tokio_micro (offline, Debian-vendored crates) -------------------------------
# Built from a private copy so cargo may rewrite Cargo.lock without touching the
# repo. Timestamps are preserved, so an unchanged tree is a cargo no-op. The
# "-weft" suffixes keep clear of the dirs the shared peers' build.sh uses.
RS=$OUT/rust-src-weft
rm -rf "$RS" && mkdir -p "$RS"
cp -R --preserve=timestamps "$HERE/rust/Cargo.toml" "$HERE/rust/Cargo.lock" \
    "$HERE/rust/src" "$HERE/rust/.cargo" "$RS/"
(cd "$RS" && CARGO_TARGET_DIR="$OUT/cargo-target-weft" cargo build --release --offline -q)
cp -p "$OUT/cargo-target-weft/release/tokio_micro" "$OUT/bin/"

# ---- gomicro (Go's own build cache makes rebuilds cheap; skip if unchanged) ------
GO_SRC=$SHARED_PEERS/go
if [ ! -x "$OUT/bin/gomicro" ] ||
    [ -n "$(find "$GO_SRC/cmd/gomicro" "$GO_SRC/go.mod" -newer "$OUT/bin/gomicro" -print -quit)" ]; then
    (cd "$GO_SRC" && go build -buildvcs=false -o "$OUT/bin/gomicro" ./cmd/gomicro)
fi
echo "built in $OUT/bin: tokio_micro gomicro"
