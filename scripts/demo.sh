#!/usr/bin/env bash
# The main job: builds the provider and runs `terraform apply` of
# examples/local against it (no registry, no cloud), then shows that a
# second plan is empty. State is kept in $TRELLIS_DEMO_DIR
# (default ~/.cache/trellis-demo); run with `destroy` to remove it all.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trellis-target}
work=${TRELLIS_DEMO_DIR:-$HOME/.cache/trellis-demo}
command -v terraform >/dev/null || { echo "demo.sh: terraform (1.8 or newer) must be on PATH" >&2; exit 1; }

cargo build --release --locked -p terraform-provider-kube --manifest-path "$root/Cargo.toml"
mkdir -p "$work/bin"
cp "$CARGO_TARGET_DIR/release/terraform-provider-kube" "$work/bin/"
cp "$root"/examples/local/*.tf "$work/"
cat > "$work/dev.tfrc" <<TFRC
provider_installation {
  dev_overrides { "trellis/kube" = "$work/bin" }
  direct {}
}
TFRC
export TF_CLI_CONFIG_FILE=$work/dev.tfrc CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
cd "$work"
if [ "${1:-}" = destroy ]; then
  terraform destroy -auto-approve
  exit
fi
terraform apply -auto-approve
echo "== second plan (must be empty)"
terraform plan -detailed-exitcode
