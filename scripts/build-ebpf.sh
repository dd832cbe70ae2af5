#!/usr/bin/env bash
# Builds the eBPF programs (ebpf/programs, aya-ebpf) for bpfel-unknown-none with Debian's rustc,
# which ships a prebuilt `core` for that target (libstd-rust-web-dev-bpf), so no nightly toolchain
# or rust-src download is needed; RUSTC_BOOTSTRAP=1 lets aya-ebpf use its unstable features on it.
# The linker is bpf-linker built against the LLVM major that Debian's rustc uses (scripts/test.sh
# installs all of it). Prints the object's path on stdout; the node agent's tests find it through
# TRELLIS_EBPF_OBJECT or at that default path.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/target-dir.sh
target_dir=$(realpath -m "$CARGO_TARGET_DIR")
tools=${TRELLIS_TOOLS:-$HOME/.cache/trellis-tools}
fail() { echo "build-ebpf.sh: $*" >&2; exit 1; }

[ -x /usr/bin/rustc ] || fail "Debian's rustc is missing: apt-get install rustc-web libstd-rust-web-dev-bpf (or run scripts/test.sh)"
[ -d /usr/lib/rustlib/bpfel-unknown-none ] || fail "core for bpfel-unknown-none is missing: apt-get install libstd-rust-web-dev-bpf (or run scripts/test.sh)"
[ -x "$tools/bin/bpf-linker" ] || fail "bpf-linker is missing in $tools/bin: run scripts/test.sh, which installs it"

# Run from the crate: cargo reads its .cargo/config.toml (target, BTF) from the working directory.
# A separate target directory: these artefacts come from another compiler than the workspace's,
# and sharing the directory would make each side rebuild the other's host build scripts.
export CARGO_TARGET_DIR="$target_dir/ebpf"
cd ebpf/programs
PATH="$tools/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
  cargo build --quiet --release --locked >&2
object="$CARGO_TARGET_DIR/bpfel-unknown-none/release/trellis-ebpf-programs"
[ -f "$object" ] || fail "the build finished but $object is not there"
echo "$object"
