#!/usr/bin/env bash
# The PKCS#11 benchmark against SoftHSM2: installs it if missing, gives it a
# token directory of its own, and runs `cargo bench --bench pkcs11`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v softhsm2-util >/dev/null || ! command -v pkcs11-tool >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends softhsm2 opensc >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq --no-install-recommends softhsm2 opensc
    }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
    "$work/tokens" > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
module=$(dpkg -L libsofthsm2 2>/dev/null | grep 'libsofthsm2.so$' | head -1)
export CASTELLAN_TEST_PKCS11_MODULE="${module:-/usr/lib/softhsm/libsofthsm2.so}"
cargo bench --locked --bench pkcs11
