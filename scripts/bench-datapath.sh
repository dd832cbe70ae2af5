#!/usr/bin/env bash
# The node agent's datapath beside kube-proxy's, side by side in one run
# (agents/node-agent/benches/datapath.rs): connect latency to a ClusterIP with
# 10, 1,000 and 10,000 Services (Trellis's socket load balancer, iptables-legacy,
# iptables-nft), pod-to-pod iperf3 throughput with and without the policy
# programs, and the time to program 10,000 Services. Everything runs in network
# namespaces, cgroups and a bpffs of its own, as root. Prints markdown tables.
#
# Usage: scripts/bench-datapath.sh [rounds] [connects per cell] [iperf seconds]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/target-dir.sh"
export TRELLIS_BENCH_ROUNDS=${1:-${TRELLIS_BENCH_ROUNDS:-3}}
export TRELLIS_BENCH_CONNECTS=${2:-${TRELLIS_BENCH_CONNECTS:-3000}}
export TRELLIS_BENCH_IPERF_SECONDS=${3:-${TRELLIS_BENCH_IPERF_SECONDS:-5}}

[ "$(id -u)" = 0 ] || { echo "bench-datapath.sh: needs root (namespaces, cgroups, eBPF, iptables)" >&2; exit 1; }
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
command -v iptables-legacy-restore >/dev/null 2>&1 || missing+=(iptables)
command -v iptables-nft-restore >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

"$root/scripts/install-ebpf-toolchain.sh"
TRELLIS_EBPF_OBJECT=$("$root/scripts/build-ebpf.sh")
export TRELLIS_EBPF_OBJECT

echo "Linux $(uname -r), $(nproc) CPUs, $(iperf3 --version | head -1 | cut -d' ' -f1-2), $(iptables-legacy --version), $(iptables-nft --version)"
echo "rounds $TRELLIS_BENCH_ROUNDS, $TRELLIS_BENCH_CONNECTS connects per cell, iperf3 $TRELLIS_BENCH_IPERF_SECONDS s"
cargo bench --locked -q -p trellis-agent --bench datapath --manifest-path "$root/Cargo.toml"
