#!/usr/bin/env bash
# terraform plan of 200 kube_trust_anchor resources beside 200 built-in
# terraform_data resources (Terraform's in-process floor), measured side by
# side with hyperfine: on empty state, and with all 200 in state (refresh
# on and off). Prints the medians and their ratios.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/target-dir.sh"
source "$root/scripts/local-provider.sh"
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
command -v terraform >/dev/null || { echo "bench-plan.sh: terraform must be on PATH" >&2; exit 1; }
runs=${RUNS:-10}

cargo build --release --locked -q -p terraform-provider-kube --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/kube" "$work/data"
use_built_provider release "$work"
printf 'terraform {\n  required_providers {\n    kube = { source = "trellis/kube" }\n  }\n}\n' > "$work/kube/main.tf"
for i in $(seq -w 1 200); do
  printf 'resource "kube_trust_anchor" "r%s" {\n  trust_domain = "mesh-%s.local"\n}\n' "$i" "$i" >> "$work/kube/main.tf"
  printf 'resource "terraform_data" "r%s" {\n  input = { index = %d, name = "res-%s" }\n}\n' "$i" "$((10#$i))" "$i" >> "$work/data/main.tf"
done
(cd "$work/data" && terraform init -input=false >/dev/null)

plan='terraform plan -input=false -no-color'
bench() { # name, extra plan flags
  hyperfine -N --warmup 1 --runs "$runs" --export-json "$work/$1.json" \
    --command-name kube "terraform -chdir=$work/kube ${plan#terraform } $2" \
    --command-name terraform_data "terraform -chdir=$work/data ${plan#terraform } $2" >/dev/null
  python3 - "$work/$1.json" "$1" <<'PY'
import json, statistics, sys
r = {x["command"]: statistics.median(x["times"]) * 1000 for x in json.load(open(sys.argv[1]))["results"]}
print(f"{sys.argv[2]:<28} kube {r['kube']:7.1f} ms   terraform_data {r['terraform_data']:7.1f} ms   ratio {r['kube'] / r['terraform_data']:.2f}")
PY
}
echo "terraform $(terraform version -json | python3 -c 'import json,sys; print(json.load(sys.stdin)["terraform_version"])'), 200 resources, median of $runs runs"
bench "plan, empty state" ""
(cd "$work/kube" && terraform apply -auto-approve -input=false >/dev/null)
(cd "$work/data" && terraform apply -auto-approve -input=false >/dev/null)
bench "plan, 200 in state" ""
bench "plan, 200 in state, no refresh" "-refresh=false"
