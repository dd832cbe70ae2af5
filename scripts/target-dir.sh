# Sourced by the scripts: where Cargo builds. Outside the clone, so repeated runs (and CI on a
# clean clone) start warm, but one directory per checkout path: what a crate compiles in embeds
# its checkout's paths (env!("CARGO_MANIFEST_DIR") in tests and in the acceptance harness), and
# Cargo would reuse such a build unchanged from another checkout, which then runs that other
# checkout's fixtures and sources.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
  CARGO_TARGET_DIR=$HOME/.cache/trellis-target/$(printf '%s' "$checkout" | sha256sum | cut -c1-12)
fi
export CARGO_TARGET_DIR
