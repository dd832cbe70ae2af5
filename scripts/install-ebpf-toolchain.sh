#!/usr/bin/env bash
# The eBPF toolchain that scripts/build-ebpf.sh uses (node agent): Debian's rustc builds the
# programs for bpfel-unknown-none, and bpf-linker must be built against the same LLVM major as
# that rustc. Installed once, checked fast. Needs root for apt; used by test.sh and the benches.
set -euo pipefail

ebpf_apt=()
[ -x /usr/bin/rustc ] || ebpf_apt+=(rustc-web)
[ -d /usr/lib/rustlib/bpfel-unknown-none ] || ebpf_apt+=(libstd-rust-web-dev-bpf)
if [ ${#ebpf_apt[@]} -gt 0 ]; then
  echo "== installing ${ebpf_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${ebpf_apt[@]}" >/dev/null
fi
llvm_major=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || { echo "install-ebpf-toolchain.sh: cannot read the LLVM version of /usr/bin/rustc" >&2; exit 1; }
if [ ! -x "/usr/lib/llvm-$llvm_major/bin/llvm-config" ]; then
  echo "== installing llvm-$llvm_major-dev"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$llvm_major-dev" >/dev/null
fi
tools=${TRELLIS_TOOLS:-$HOME/.cache/trellis-tools}
# Captured first: `grep -q` closing a pipe early would fail the check under pipefail.
linker_version=$("$tools/bin/bpf-linker" --version 2>/dev/null || true)
linker_libs=$(ldd "$tools/bin/bpf-linker" 2>/dev/null || true)
if [[ "$linker_version" != *"0.13.0"* || "$linker_libs" != *"libLLVM.so.$llvm_major"* ]]; then
  echo "== installing bpf-linker 0.13.0 for LLVM $llvm_major"
  env -u CARGO_TARGET_DIR PATH="/usr/lib/llvm-$llvm_major/bin:$PATH" cargo install --quiet --force bpf-linker \
    --version 0.13.0 --no-default-features --features "llvm-$llvm_major" --locked --root "$tools"
fi
