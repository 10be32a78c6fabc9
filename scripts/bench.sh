#!/usr/bin/env bash
# Benchmarks castellan on this machine: starts `castellan demo` as its own
# process, times start-to-ready, then runs `castellan bench` against it for
# P-256/P-256 and RSA-2048/RSA-2048 and prints the figures BENCHMARKS.md holds.
#
#   scripts/bench.sh [seconds]        (default 10 s per scenario)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cargo build --release --locked -q
bin=target/release/castellan
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

for scenario in "ec-p256 ec-p256" "rsa-2048 rsa-2048"; do
    set -- $scenario
    csr=$1 ca=$2
    dir="$work/$ca"
    start=$(date +%s%N)
    "$bin" demo --dir "$dir" --listen 127.0.0.1:15012 --metrics-listen 127.0.0.1:15014 \
        --ca-key-type "$ca" 2>"$work/demo-$ca.log" &
    pid=$!
    until curl -sf -o /dev/null http://127.0.0.1:15014/readyz; do sleep 0.005; done
    ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    echo "=== CSR $csr, CA $ca: ready ${ready_ms} ms after start (includes generating the demo PKI)"
    "$bin" bench --addr https://localhost:15012 --root "$dir/root-cert.pem" \
        --token-key "$dir/token-signing-key.pem" --key-type "$csr" --ca-key-type "$ca" \
        --seconds "$seconds" --server-pid "$pid" --ca-dir "$dir/ca"
    kill -TERM "$pid"; wait "$pid" || true
    # Start-to-ready of `serve` alone: load and judge the CA, issue the
    # serving certificate, bind.
    start=$(date +%s%N)
    "$bin" serve --config "$dir/castellan.toml" 2>"$work/serve-$ca.log" &
    pid=$!
    until curl -sf -o /dev/null http://127.0.0.1:15014/readyz; do sleep 0.002; done
    echo "serve: ready $(( ($(date +%s%N) - start) / 1000000 )) ms after start"
    kill -TERM "$pid"; wait "$pid" || true
    echo
done
