#!/usr/bin/env bash
# kube_cilium_like against the local cloud with 3 and with 100 nodes: the time of the apply that
# creates it (wait = false: until every object is applied and the ENIs are pre-allocated), then
# `terraform plan` with the stack in state beside a plan of one built-in terraform_data resource in
# state (Terraform's floor), side by side with hyperfine. Prints the figures and their ratios.
# NODES="3 100" and RUNS=10 by default.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/target-dir.sh"
source "$root/scripts/local-provider.sh"
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
command -v terraform >/dev/null || { echo "bench-cilium-like.sh: terraform must be on PATH" >&2; exit 1; }
runs=${RUNS:-10}

cargo build --release --locked -q -p terraform-provider-kube -p trellis-acceptance \
  --bin terraform-provider-kube --bin local-cloud --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
trap 'stop_local_cloud; rm -rf "$work"' EXIT
use_built_provider release "$work"

for nodes in ${NODES:-3 100}; do
  dir=$work/$nodes
  mkdir -p "$dir/kube" "$dir/data"
  # Seeding 100 instances takes moto a while.
  LOCAL_CLOUD_PATIENCE=360 start_local_cloud release "$dir/cloud.env" --nodes "$nodes"
  # As examples/local: single addresses, since moto keeps no /28 prefixes.
  cat > "$dir/kube/main.tf" <<'HCL'
terraform {
  required_providers {
    kube = { source = "trellis/kube" }
  }
}
provider "kube" {}
resource "kube_cilium_like" "net" {
  cluster_name = "trellis-local"
  wait         = false
  ipam {
    prefix_delegation     = false
    first_interface_index = 1
    pod_subnets           = { "us-east-1a" = "100.64.192.0/20", "us-east-1b" = "100.64.208.0/20", "us-east-1c" = "100.64.224.0/20" }
  }
}
HCL
  printf 'resource "terraform_data" "floor" {\n  input = { cluster = "trellis-local", nodes = %d }\n}\n' "$nodes" > "$dir/data/main.tf"
  (cd "$dir/data" && terraform init -input=false >/dev/null && terraform apply -auto-approve -input=false >/dev/null)
  start=$(date +%s%N)
  (cd "$dir/kube" && terraform apply -auto-approve -input=false >/dev/null)
  apply=$(( ($(date +%s%N) - start) / 1000000 ))
  hyperfine -N --warmup 1 --runs "$runs" --export-json "$dir/plan.json" \
    --command-name kube_cilium_like "terraform -chdir=$dir/kube plan -input=false -no-color -detailed-exitcode" \
    --command-name terraform_data "terraform -chdir=$dir/data plan -input=false -no-color -detailed-exitcode" >/dev/null
  python3 - "$dir/plan.json" "$nodes" "$apply" <<'PY'
import json, statistics, sys
results = {x["command"]: x["times"] for x in json.load(open(sys.argv[1]))["results"]}
med = {k: statistics.median(v) * 1000 for k, v in results.items()}
spread = {k: (min(v) * 1000, max(v) * 1000) for k, v in results.items()}
k, d = med["kube_cilium_like"], med["terraform_data"]
print(f"{sys.argv[2]:>3} nodes: apply (wait off) {int(sys.argv[3]) / 1000:6.1f} s; plan with the stack in state: "
      f"kube_cilium_like {k:7.1f} ms (min {spread['kube_cilium_like'][0]:.1f}, max {spread['kube_cilium_like'][1]:.1f}), "
      f"terraform_data {d:6.1f} ms (min {spread['terraform_data'][0]:.1f}, max {spread['terraform_data'][1]:.1f}), ratio {k / d:.2f}")
PY
  (cd "$dir/kube" && terraform destroy -auto-approve -input=false >/dev/null)
  stop_local_cloud
done
