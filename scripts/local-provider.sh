# Sourced by the scripts that run terraform against this checkout's build (after target-dir.sh).

# use_built_provider PROFILE WORK: terraform in this shell uses the provider built in PROFILE
# (debug or release), copied to WORK/bin, through a dev_overrides CLI config (no init needed), and
# runs non-interactively.
use_built_provider() {
  mkdir -p "$2/bin"
  cp "$CARGO_TARGET_DIR/$1/terraform-provider-kube" "$2/bin/"
  cat > "$2/dev.tfrc" <<TFRC
provider_installation {
  dev_overrides { "trellis/kube" = "$2/bin" }
  direct {}
}
TFRC
  export TF_CLI_CONFIG_FILE=$2/dev.tfrc CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
}

# start_local_cloud PROFILE ENV_FILE [ARGS...]: starts local-cloud built in PROFILE in the
# background (its pid in $cloud), waits until it has written ENV_FILE and sources it; gives up
# after $LOCAL_CLOUD_PATIENCE seconds (default 120), or at once if local-cloud exits.
start_local_cloud() {
  local profile=$1 env_file=$2
  shift 2
  "$CARGO_TARGET_DIR/$profile/local-cloud" up --env-file "$env_file" "$@" &
  cloud=$!
  for _ in $(seq 1 $((${LOCAL_CLOUD_PATIENCE:-120} * 5))); do
    [ -f "$env_file" ] && break
    kill -0 "$cloud" 2>/dev/null || { echo "local-cloud exited before it was ready" >&2; exit 1; }
    sleep 0.2
  done
  [ -f "$env_file" ] || { echo "local-cloud did not become ready" >&2; exit 1; }
  # shellcheck disable=SC1090
  . "$env_file"
}

# stop_local_cloud: SIGTERM to the local cloud started here, if any, and waits for it (it removes
# its env file and kubeconfig).
cloud=
stop_local_cloud() {
  [ -n "$cloud" ] && kill -TERM "$cloud" 2>/dev/null && wait "$cloud" 2>/dev/null || true
  cloud=
}
