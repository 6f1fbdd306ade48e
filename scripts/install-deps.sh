#!/usr/bin/env bash
# Installs weft's build and test dependencies from Debian 12's packages.
# Idempotent: does nothing (and needs no network) when all are present.
set -euo pipefail
PKGS=(build-essential cmake pkg-config liburing-dev libcriterion-dev libjemalloc-dev relacy-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# apt-get update only when the package lists are too old to find something.
$SUDO apt-get install -y --no-install-recommends "${missing[@]}" ||
    { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
