#!/usr/bin/env bash
# Regenerates src/bindings/{x86_64,aarch64}.rs from <linux/videodev2.h> with bindgen 0.65.1, the
# version and defaults of upstream's build.rs. Needs libclang (apt-get install libclang-dev) and, for
# aarch64, Debian's libc6-dev-arm64-cross and linux-libc-dev-arm64-cross. Only needed when the
# kernel headers we build against change; signrt's own build never runs it.
set -euo pipefail
cd "$(dirname "$0")"
cargo build -q --manifest-path regen/Cargo.toml --target-dir "${TMPDIR:-/tmp}/v4l2-regen"
gen="${TMPDIR:-/tmp}/v4l2-regen/debug/v4l2-regen"
"$gen" x86_64-unknown-linux-gnu src/bindings/x86_64.rs
"$gen" aarch64-unknown-linux-gnu src/bindings/aarch64.rs
echo "regenerated src/bindings/x86_64.rs and src/bindings/aarch64.rs"
