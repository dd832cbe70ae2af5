#!/usr/bin/env bash
# Runs every test tier: unit and property tests, the plugin handshake
# tests, the Kubernetes emulator against the kube crate and kubectl, the
# local cloud (moto in a project venv, installed on first use), the docs
# check, and the acceptance tests that drive the real terraform binary. It
# installs what it needs; a tier that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/target-dir.sh
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

# The eBPF toolchain (node agent): Debian's rustc and a matching bpf-linker.
scripts/install-ebpf-toolchain.sh

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
