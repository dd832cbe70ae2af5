#!/usr/bin/env bash
# The main job: starts the local cloud (moto seeded with an EKS setting, and
# the Kubernetes emulator), builds the provider, runs `terraform apply` of
# examples/local against them through dev_overrides, shows that a second
# plan is empty, then destroys and stops everything.
# `./scripts/demo.sh --keep` leaves the stack and the local cloud running
# (state in $TRELLIS_DEMO_DIR, default ~/.cache/trellis-demo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/target-dir.sh"
source "$root/scripts/local-provider.sh"
work=${TRELLIS_DEMO_DIR:-$HOME/.cache/trellis-demo}
keep=false
[ "${1:-}" = --keep ] && keep=true
for tool in cargo terraform python3; do
  command -v "$tool" >/dev/null || { echo "demo.sh: $tool must be on PATH" >&2; exit 1; }
done

# The dev profile: the demo waits on the local cloud, not on the provider's code, and a cold
# release build took 11.5 minutes here (2 cores) against 6 for this one; the test command reuses
# what it compiles.
cargo build --locked -p terraform-provider-kube -p trellis-acceptance --bin terraform-provider-kube --bin local-cloud \
  --manifest-path "$root/Cargo.toml"
rm -rf "$work" && mkdir -p "$work"
use_built_provider debug "$work"
cp "$root"/examples/local/*.tf "$work/"

$keep || trap stop_local_cloud EXIT
start_local_cloud debug "$work/local-cloud.env"

export TF_VAR_aws_endpoint=$AWS_ENDPOINT_URL TF_VAR_region=$AWS_REGION TF_VAR_kubeconfig=$KUBECONFIG
cd "$work"
terraform apply -auto-approve
echo "== second plan (must be empty)"
terraform plan -detailed-exitcode
if $keep; then
  echo "== left running: local-cloud pid $cloud, env in $work/local-cloud.env; stop with: kill $cloud"
else
  terraform destroy -auto-approve
fi
