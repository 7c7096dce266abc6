#!/usr/bin/env bash
# CI: cross-build `signrt` for aarch64 and run it under qemu on the bundled default model.
#
# To keep .ci/run within its time limit this builds only the runtime crate's `signrt` binary in the
# debug profile (the workspace's dev profile: dependencies at opt-level 3, our crates at 1), still
# linked for glibc 2.31 and with V4L2. The scripts' default, for users, is the release profile.
# Nothing is skipped: any failure (toolchain install, build, missing default model, a gloss that
# differs from the x86-64 run) fails CI with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

export SIGNRT_CROSS_PROFILE=${SIGNRT_CROSS_PROFILE:-debug}
start=$SECONDS
step() {
  local name=$1; shift
  local t0=$SECONDS
  echo "--- cross: $name"
  if ! "$@"; then
    echo "cross CI FAILED at: $name (after $((SECONDS - t0)) s)" >&2
    exit 1
  fi
  echo "--- cross: $name took $((SECONDS - t0)) s"
}

step "build signrt for aarch64 ($SIGNRT_CROSS_PROFILE, glibc <= 2.31)" cross/build-aarch64.sh
step "run it under qemu and compare with x86-64" cross/run-aarch64.sh "$@"
echo "cross CI passed in $((SECONDS - start)) s"
