#!/usr/bin/env bash
# A mesh restart against castellan's demo CA (P-256, release build): 500,
# 2,000 and 8,000 clients, each opening its own TLS connection for one
# certificate, all at once — beside the same number of requests over 8
# reused connections, in one run; then the TokenReview storm against the
# in-process API server (cargo bench --bench tokenreview). Writes one JSON
# line per storm to docs/bench/storm.jsonl and docs/bench/storm.png.
#
#   scripts/bench-storm.sh            SIZES="500 2000 8000" by default
#
# Issued: castellan's own /metrics (h2load does not read gRPC trailers);
# turned away: the rest. Each client's time to its certificate is counted
# from the storm's start (h2load's per-request start + elapsed, against the
# moment h2load was launched); server CPU from /proc/<pid>/stat; the floor
# from `castellan bench --ceiling-only`: one TLS handshake's server-side
# public-key crypto (X25519 + ECDSA P-256) plus one issuance's (CSR
# verification + signature), on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${SIZES:-"500 2000 8000"}
command -v h2load >/dev/null || apt-get install -y -qq --no-install-recommends nghttp2-client
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib
# 8,000 connections on each side.
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -q --bin castellan
bin=target/release/castellan
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
out=docs/bench/storm.jsonl
mkdir -p docs/bench
: > "$out"
clk=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -s http://127.0.0.1:15014/metrics | awk -v m="$1" '$1 == m {print $2}'; }
now_us() { echo $(( $(date +%s%N) / 1000 )); }

"$bin" demo --dir "$work/demo" --listen 127.0.0.1:15012 --metrics-listen 127.0.0.1:15014 \
    2>"$work/demo.log" &
pid=$!
until curl -sf -o /dev/null http://127.0.0.1:15014/readyz; do sleep 0.01; done
floors=$("$bin" bench --addr https://localhost:15012 --root "$work/demo/root-cert.pem" \
    --token-key "$work/demo/token-signing-key.pem" --key-type ec-p256 --ca-key-type ec-p256 --ceiling-only)
issue_floor=$(sed -n 's/^floor_us_per_cert=//p' <<<"$floors")
handshake_floor=$(sed -n 's/^handshake_floor_us=//p' <<<"$floors")
token=$("$bin" token --dir "$work/demo" --namespace bench --service-account w --ttl-secs 7200)
# An istio-agent-shaped CSR (empty subject), framed as a gRPC message:
# IstioCertificateRequest{csr = 1, validity_duration = 2}.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null -subj "/O=" \
    -addext "subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/w" 2>/dev/null > "$work/csr.pem"
python3 - "$work/csr.pem" "$work/body" <<'PY'
import sys
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
csr = open(sys.argv[1], "rb").read()
msg = b"\x0a" + varint(len(csr)) + csr + b"\x10" + varint(3600)
open(sys.argv[2], "wb").write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
PY
url=https://127.0.0.1:15012/istio.v1.auth.IstioCertificateService/CreateCertificate
headers=(-d "$work/body" -H "content-type: application/grpc" -H "te: trailers"
    -H "authorization: Bearer $token" -H "clusterid: Kubernetes")

# One storm: $1 clients, $2 = "storm" (a connection each) or "reused" (8
# connections carrying them all).
run() {
    local n=$1 shape=$2 args
    case $shape in
        storm) args=(-c "$n" -n "$n" -m 1) ;;
        reused) args=(-c 8 -n "$n" -m 32) ;;
    esac
    rm -f "$work/log"
    local before_ok before_cpu started
    before_ok=$(metric citadel_server_success_cert_issuance_count)
    before_cpu=$(cpu_ticks "$pid")
    started=$(now_us)
    h2load "${args[@]}" --log-file "$work/log" "${headers[@]}" "$url" > "$work/h2load.txt" 2>&1 || true
    local ok cpu
    ok=$(( $(metric citadel_server_success_cert_issuance_count) - before_ok ))
    cpu=$(( $(cpu_ticks "$pid") - before_cpu ))
    python3 - "$work/log" "$n" "$shape" "$ok" "$cpu" "$clk" "$started" "$issue_floor" "$handshake_floor" \
        >> "$out" <<'PY'
import json, sys
log, n, shape, ok, cpu, clk, started, issue, handshake = sys.argv[1:]
n, ok, started = int(n), int(ok), int(started)
# Each request: start (µs since the epoch), status, elapsed (µs).
done = sorted((int(l.split()[0]) + int(l.split()[2]) - started) / 1000
              for l in open(log) if l.split()[1] == "200")
def p(q): return round(done[min(len(done) - 1, int(q * (len(done) - 1)))], 1) if done else None
floor = float(issue) + (float(handshake) if shape == "storm" else 0.0)
cpu_us = int(cpu) / int(clk) / ok * 1e6 if ok else None
print(json.dumps({"clients": n, "shape": shape, "issued": ok, "turned_away": n - ok,
    "p50_ms": p(.5), "p99_ms": p(.99), "last_ms": p(1.0),
    "cpu_us_per_cert": round(cpu_us) if cpu_us else None, "floor_us_per_cert": round(floor, 1),
    "cpu_over_floor": round(cpu_us / floor, 2) if cpu_us else None}))
PY
    tail -1 "$out"
}

for n in $sizes; do
    run "$n" storm
    run "$n" reused
done
kill -TERM "$pid"; wait "$pid" || true

python3 - "$out" docs/bench/storm.png <<'PY'
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [json.loads(l) for l in open(sys.argv[1])]
sizes = sorted({r["clients"] for r in rows})
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
w = 0.38
for i, shape in enumerate(["storm", "reused"]):
    rs = {r["clients"]: r for r in rows if r["shape"] == shape}
    xs = [k + (i - 0.5) * w for k in range(len(sizes))]
    a.bar(xs, [rs[s]["last_ms"] / 1000 for s in sizes], w,
          label="a new connection each" if shape == "storm" else "8 reused connections")
    b.bar(xs, [rs[s]["cpu_us_per_cert"] for s in sizes], w)
    b.plot(xs, [rs[s]["floor_us_per_cert"] for s in sizes], "k_", markersize=18,
           label="crypto floor" if i == 0 else None)
for ax in (a, b):
    ax.set_xticks(range(len(sizes)), [f"{s:,}" for s in sizes])
    ax.set_xlabel("clients at once")
a.set_ylabel("time to the last certificate (s)")
b.set_ylabel("server CPU per certificate (µs)")
a.legend()
b.legend()
fig.suptitle("castellan under a storm (demo CA, P-256, 2 cores shared with h2load)")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
PY

# TokenReview: 2,000 new tokens, each on a new connection, against the
# in-process API server answering each review in 5 ms; castellan's bound on
# reviews in progress (32) and a loose one (512).
BENCH_ONLY=storm cargo bench --locked -q --bench tokenreview 2>/dev/null | grep '^storm'
