#!/usr/bin/env bash
# kube_cilium_like against the local cloud with 3 and with 100 nodes: the time of the apply that
# creates it (wait = false: until every object is applied and the ENIs are pre-allocated), then
# `terraform plan` with the stack in state beside a plan of one built-in terraform_data resource in
# state (Terraform's floor), side by side with hyperfine. Prints the figures and their ratios.
# NODES="3 100" and RUNS=10 by default.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/target-dir.sh"
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
command -v terraform >/dev/null || { echo "bench-cilium-like.sh: terraform must be on PATH" >&2; exit 1; }
runs=${RUNS:-10}

cargo build --release --locked -q -p terraform-provider-kube -p trellis-acceptance \
  --bin terraform-provider-kube --bin local-cloud --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
cloud=
stop_cloud() { [ -n "$cloud" ] && kill -TERM "$cloud" 2>/dev/null && wait "$cloud" 2>/dev/null || true; cloud=; }
trap 'stop_cloud; rm -rf "$work"' EXIT
mkdir -p "$work/bin"
cp "$CARGO_TARGET_DIR/release/terraform-provider-kube" "$work/bin/"
cat > "$work/dev.tfrc" <<TFRC
provider_installation {
  dev_overrides { "trellis/kube" = "$work/bin" }
  direct {}
}
TFRC
export TF_CLI_CONFIG_FILE=$work/dev.tfrc CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0

for nodes in ${NODES:-3 100}; do
  dir=$work/$nodes
  mkdir -p "$dir/kube" "$dir/data"
  "$CARGO_TARGET_DIR/release/local-cloud" up --nodes "$nodes" --env-file "$dir/cloud.env" >"$dir/cloud.log" 2>&1 &
  cloud=$!
  for _ in $(seq 1 1800); do [ -f "$dir/cloud.env" ] && break; sleep 0.2; done
  [ -f "$dir/cloud.env" ] || { echo "local-cloud did not come up:" >&2; cat "$dir/cloud.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$dir/cloud.env"
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
  stop_cloud
done
