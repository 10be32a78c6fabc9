#!/usr/bin/env bash
# The FIPS build against the default build, in one run: both binaries are
# built, then for P-256 and RSA-2048 (CSR and CA alike) each serves the demo
# CA in turn while `castellan bench` (of the same build) loads it. The
# figures go to BENCHMARKS.md ("The FIPS build").
#
#   scripts/bench-fips.sh [seconds]     (default 10 s per scenario; needs cmake, go, perl)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cargo build --release --locked -q --bin castellan
fips_target=${FIPS_TARGET_DIR:-target/fips}
CARGO_TARGET_DIR=$fips_target cargo build --release --locked -q --features fips --bin castellan
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

for key in ec-p256 rsa-2048; do
    for build in default fips; do
        case $build in
            default) bin=target/release/castellan ;;
            fips) bin=$fips_target/release/castellan ;;
        esac
        dir="$work/$build-$key"
        "$bin" demo --dir "$dir" --listen 127.0.0.1:15012 --metrics-listen 127.0.0.1:15014 \
            --ca-key-type "$key" 2>"$work/demo-$build-$key.log" &
        pid=$!
        until curl -sf -o /dev/null http://127.0.0.1:15014/readyz; do sleep 0.005; done
        echo "=== $build build, $key: $(curl -s http://127.0.0.1:15014/metrics | grep '^castellan_crypto_module_info')"
        "$bin" bench --addr https://localhost:15012 --root "$dir/root-cert.pem" \
            --token-key "$dir/token-signing-key.pem" --key-type "$key" --ca-key-type "$key" \
            --seconds "$seconds" --server-pid "$pid" --ca-dir "$dir/ca"
        kill -TERM "$pid"; wait "$pid" || true
        echo
    done
done
