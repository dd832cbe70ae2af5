#!/usr/bin/env bash
# Runs every test tier: unit and property tests, the plugin handshake
# tests, the Kubernetes emulator against the kube crate and kubectl, the
# local cloud (moto in a project venv, installed on first use), the docs
# check, and the acceptance tests that drive the real terraform binary. It
# installs what it needs; a tier that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trellis-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "test.sh: $1 is required but not on PATH: $2" >&2; exit 1; }
}
need cargo "install Rust (rustup) first"
need terraform "the acceptance tier drives the real terraform binary (1.8 or newer, for provider functions)"
need kubectl "the Kubernetes emulator is tested against the real kubectl"
need python3 "moto, the AWS emulator, is installed from PyPI into a project venv (.venv)"
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi

# The privileged tier (network namespaces, the proxy's redirect rules) runs as root and needs
# iproute2 and iptables; install what is missing rather than skip those tests.
[ "$(id -u)" = 0 ] || { echo "test.sh: the privileged tests need root (network namespaces, iptables)" >&2; exit 1; }
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables-nft-restore >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The eBPF toolchain (node agent): Debian's rustc builds the programs for bpfel-unknown-none, and
# bpf-linker must be built against the same LLVM major as that rustc. Installed once, checked fast.
ebpf_apt=()
[ -x /usr/bin/rustc ] || ebpf_apt+=(rustc-web)
[ -d /usr/lib/rustlib/bpfel-unknown-none ] || ebpf_apt+=(libstd-rust-web-dev-bpf)
if [ ${#ebpf_apt[@]} -gt 0 ]; then
  echo "== installing ${ebpf_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${ebpf_apt[@]}" >/dev/null
fi
llvm_major=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || { echo "test.sh: cannot read the LLVM version of /usr/bin/rustc" >&2; exit 1; }
if [ ! -x "/usr/lib/llvm-$llvm_major/bin/llvm-config" ]; then
  echo "== installing llvm-$llvm_major-dev"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$llvm_major-dev" >/dev/null
fi
tools=$HOME/.cache/trellis-tools
# Captured first: `grep -q` closing a pipe early would fail the check under pipefail.
linker_version=$("$tools/bin/bpf-linker" --version 2>/dev/null || true)
linker_libs=$(ldd "$tools/bin/bpf-linker" 2>/dev/null || true)
if [[ "$linker_version" != *"0.13.0"* || "$linker_libs" != *"libLLVM.so.$llvm_major"* ]]; then
  echo "== installing bpf-linker 0.13.0 for LLVM $llvm_major"
  env -u CARGO_TARGET_DIR PATH="/usr/lib/llvm-$llvm_major/bin:$PATH" cargo install --quiet --force bpf-linker \
    --version 0.13.0 --no-default-features --features "llvm-$llvm_major" --locked --root "$tools"
fi

echo "== format and lints"
cargo fmt --all --check
cargo fmt --manifest-path ebpf/programs/Cargo.toml --check  # its own workspace, outside --all
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== eBPF programs"
TRELLIS_EBPF_OBJECT=$(scripts/build-ebpf.sh)
export TRELLIS_EBPF_OBJECT

echo "== unit, property, handshake, emulator and local-cloud tests; acceptance tests against terraform $(terraform version -json | sed -n 's/.*"terraform_version": *"\([^"]*\)".*/\1/p')"
cargo test --workspace --locked

echo "== docs are current"
cargo run --quiet --locked -p terraform-provider-kube -- docs --check docs
