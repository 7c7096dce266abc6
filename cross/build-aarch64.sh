#!/usr/bin/env bash
# Build `signrt` for aarch64-unknown-linux-gnu (Jetson, Raspberry Pi, other ARM boards).
#
# Uses only Debian 12's own packages for the Rust cross toolchain (rustup cannot download targets on
# these machines) and zig (PyPI `ziglang`, driven by `cargo-zigbuild`) as the linker, so that the
# binary needs at most glibc 2.31 (JetPack 5 / Ubuntu 20.04). Installs what it needs, idempotently.
#
# Environment (all optional):
#   SIGNRT_CROSS_PROFILE     release (default) or debug
#   SIGNRT_CROSS_GLIBC       oldest glibc to support (default 2.31); `host` links with plain
#                            aarch64-linux-gnu-gcc against Debian 12's glibc 2.36 instead;
#                            `static` (experimental, not verified) links glibc statically: any aarch64
#                            Linux, needs no glibc at all (default target dir target/aarch64-cross-static)
#   SIGNRT_CROSS_FEATURES    cargo features of signrt-runtime (default: its defaults, with `v4l2`);
#                            `none` builds with --no-default-features (no V4L2 camera)
#   SIGNRT_CROSS_DEPS_OPT    opt-level for the dependencies (default: the workspace's, 3); CI uses 0 or 1
#                            with the debug profile to build in a few minutes (slower binary)
#   SIGNRT_CROSS_TARGET_DIR  cargo target dir (default target/aarch64-cross, apart from host builds)
#   SIGNRT_CROSS_TOOLS       where the zig venv lives (default ${XDG_CACHE_HOME:-~/.cache}/signrt-cross)
#   SIGNRT_CROSS_NO_INSTALL  1: never install anything, fail if something is missing
#
# Prints the binary's path at the end; cross/run-aarch64.sh runs it under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TARGET=aarch64-unknown-linux-gnu
PROFILE=${SIGNRT_CROSS_PROFILE:-release}
GLIBC=${SIGNRT_CROSS_GLIBC:-2.31}
FEATURES=${SIGNRT_CROSS_FEATURES:-default}
case $GLIBC in
  static) default_dir=$ROOT/target/aarch64-cross-static ;;
  host|2.[0-9]*) default_dir=$ROOT/target/aarch64-cross ;;
  *) die "SIGNRT_CROSS_GLIBC=$GLIBC: expected a version like 2.31, host or static" ;;
esac
export CARGO_TARGET_DIR=${SIGNRT_CROSS_TARGET_DIR:-$default_dir}
TOOLS=${SIGNRT_CROSS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/signrt-cross}
# Known-good versions (Rust 1.96 from Debian's security archive, tract 0.23).
ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.14.1

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

case $PROFILE in
  release) profile_dir=release; profile_flag=(--release) ;;
  debug) profile_dir=debug; profile_flag=() ;;
  *) die "SIGNRT_CROSS_PROFILE=$PROFILE: expected release or debug" ;;
esac

# ---------------------------------------------------------------------------------------------------
# 1. Debian packages: Rust 1.96 (rustc-web/cargo-web) with the arm64 std, the aarch64 gcc + libc for
#    the arm64 std's link dependencies (the V4L2 bindings are pre-generated: no libclang),
#    qemu for running the result, file/binutils for the checks below.
# ---------------------------------------------------------------------------------------------------
PKGS=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      binutils-aarch64-linux-gnu qemu-user-static file
      python3-venv)

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $*"; fi
}

install_packages() {
  local need=() p
  for p in "${PKGS[@]}"; do installed "$p" || need+=("$p"); done
  local arch_missing=0
  dpkg --print-foreign-architectures | grep -qx arm64 || arch_missing=1
  if [ ${#need[@]} -eq 0 ] && [ $arch_missing -eq 0 ]; then
    say "Debian packages: all present"
    return
  fi
  [ "${SIGNRT_CROSS_NO_INSTALL:-0}" = 1 ] && die "SIGNRT_CROSS_NO_INSTALL=1 but missing: ${need[*]}"
  command -v apt-get >/dev/null || die "apt-get not found: this script expects Debian 12 (bookworm)"
  if [ $arch_missing -eq 1 ]; then
    say "dpkg --add-architecture arm64"
    as_root dpkg --add-architecture arm64
  fi
  say "installing: ${need[*]}"
  local t0=$SECONDS
  as_root apt-get update -qq
  # The image's dpkg hook deletes /var/cache/apt/archives/*.deb after every dpkg run, which can break
  # a multi-run install ("cannot access archive"): keep the archives in a directory of our own.
  local cache=/var/cache/apt/signrt-cross-archives
  as_root mkdir -p "$cache/partial"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dir::Cache::Archives="$cache" "${need[@]}"
  as_root rm -rf "$cache"
  for p in "${PKGS[@]}"; do installed "$p" || die "package $p is still not installed"; done
  say "Debian packages installed in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------------
# 2. zig + cargo-zigbuild from PyPI, in a venv of their own (Debian's python refuses system-wide pip).
# ---------------------------------------------------------------------------------------------------
install_zig() {
  local venv=$TOOLS/venv
  if [ -x "$venv/bin/cargo-zigbuild" ] && "$venv/bin/python3" -m ziglang version >/dev/null 2>&1 &&
     [ "$("$venv/bin/python3" -m ziglang version)" = "$ZIGLANG_VERSION" ] &&
     "$venv/bin/cargo-zigbuild" --version 2>/dev/null | grep -qF "$ZIGBUILD_VERSION"; then
    say "zig $ZIGLANG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION: present in $venv"
  else
    [ "${SIGNRT_CROSS_NO_INSTALL:-0}" = 1 ] && die "SIGNRT_CROSS_NO_INSTALL=1 but zig/cargo-zigbuild are missing in $venv"
    say "installing ziglang==$ZIGLANG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION into $venv"
    local t0=$SECONDS
    mkdir -p "$TOOLS"
    [ -x "$venv/bin/python3" ] || /usr/bin/env python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install -q --disable-pip-version-check \
      "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
    say "zig installed in $((SECONDS - t0)) s"
  fi
  # cargo-zigbuild finds zig as `python3 -m ziglang`: put the venv first on PATH.
  export PATH=$venv/bin:$PATH
}

install_packages
case $GLIBC in host|static) ;; *) install_zig ;; esac

# ---------------------------------------------------------------------------------------------------
# 3. The build: Debian's cargo/rustc (1.96, with the arm64 std), never rustup's (no aarch64 std).
# ---------------------------------------------------------------------------------------------------
CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
for t in "$CARGO" "$RUSTC"; do [ -x "$t" ] || die "$t missing (Debian packages cargo-web / rustc-web)"; done
sysroot=$("$RUSTC" --print sysroot)
[ -d "$sysroot/lib/rustlib/$TARGET/lib" ] ||
  die "$RUSTC has no $TARGET standard library in $sysroot/lib/rustlib (package libstd-rust-web-dev:arm64)"
# A rustup toolchain file or RUSTUP_TOOLCHAIN must not redirect our explicit tools.
unset RUSTUP_TOOLCHAIN CARGO_BUILD_TARGET || true

feature_args=()
case $FEATURES in
  default) ;;
  none) feature_args=(--no-default-features) ;;
  *) feature_args=(--no-default-features --features "$FEATURES") ;;
esac

config_args=()
if [ -n "${SIGNRT_CROSS_DEPS_OPT:-}" ]; then
  case $SIGNRT_CROSS_DEPS_OPT in 0|1|2|3) ;; *) die "SIGNRT_CROSS_DEPS_OPT=$SIGNRT_CROSS_DEPS_OPT: expected 0, 1, 2 or 3" ;; esac
  cargo_profile=release
  [ "$PROFILE" = debug ] && cargo_profile=dev
  # Cargo's --config profile settings take precedence over the workspace's Cargo.toml.
  config_args=(--config "profile.$cargo_profile.package.\"*\".opt-level=$SIGNRT_CROSS_DEPS_OPT")
fi

say "$("$RUSTC" --version) / $("$CARGO" --version)"
t0=$SECONDS
if [ "$GLIBC" = host ] || [ "$GLIBC" = static ]; then
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  # Static (NOT verified to the end, see cross/README.md): glibc's libc.a from libc6-dev-arm64-cross;
  # non-PIE, because a static-pie link overflows the small GOT glibc's libm.a is built for.
  [ "$GLIBC" = static ] && export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static"
  cmd=("$CARGO" "${config_args[@]}" build --locked -p signrt-runtime --bin signrt --target "$TARGET" "${profile_flag[@]}" "${feature_args[@]}")
else
  # cargo-zigbuild runs `cargo` from CARGO or PATH: make it Debian's.
  export CARGO
  cmd=(cargo-zigbuild build "${config_args[@]}" --locked -p signrt-runtime --bin signrt --target "$TARGET.$GLIBC" "${profile_flag[@]}" "${feature_args[@]}")
fi
say "CARGO_TARGET_DIR=$CARGO_TARGET_DIR ${cmd[*]}"
"${cmd[@]}"
# The C ABI's libraries (libsignrt.a, libsignrt.so), from the same build of the runtime. Not for a
# static binary: a cdylib cannot link glibc statically.
if [ "$GLIBC" = host ]; then
  lib_cmd=("$CARGO" "${config_args[@]}" build --locked -p signrt-capi --lib --target "$TARGET" "${profile_flag[@]}")
elif [ "$GLIBC" != static ]; then
  lib_cmd=(cargo-zigbuild build "${config_args[@]}" --locked -p signrt-capi --lib --target "$TARGET.$GLIBC" "${profile_flag[@]}")
fi
if [ -n "${lib_cmd+x}" ]; then
  say "${lib_cmd[*]}"
  "${lib_cmd[@]}"
  for f in libsignrt.a libsignrt.so; do
    [ -f "$CARGO_TARGET_DIR/$TARGET/$profile_dir/$f" ] || die "the C ABI build finished but $f is missing"
  done
fi
say "build took $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------------
# 4. Report: where, what, which glibc.
# ---------------------------------------------------------------------------------------------------
bin=$CARGO_TARGET_DIR/$TARGET/$profile_dir/signrt
[ -x "$bin" ] || die "build finished but $bin is missing"
file_out=$(file -b "$bin")
case $file_out in *"ARM aarch64"*) ;; *) die "$bin is not an aarch64 ELF: $file_out" ;; esac
max_glibc=$(aarch64-linux-gnu-objdump -T "$bin" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sort -u -V | tail -n1 || true)
if [ "$GLIBC" = static ]; then
  case $file_out in *"statically linked"*|*"static-pie linked"*) ;; *) die "$bin is not statically linked: $file_out" ;; esac
  [ -z "$max_glibc" ] || die "$bin is meant to be static but needs $max_glibc"
  max_glibc="none (statically linked)"
else
  [ -n "$max_glibc" ] || die "no GLIBC symbol versions found in $bin"
fi
case $GLIBC in
  host|static) ;;
  *)
    newest=$(printf '%s\n%s\n' "GLIBC_$GLIBC" "$max_glibc" | sort -V | tail -n1)
    [ "$newest" = "GLIBC_$GLIBC" ] || die "$bin needs $max_glibc, newer than the requested glibc $GLIBC" ;;
esac
v4l2=no
case " ${feature_args[*]} " in
  *" --no-default-features "*) case $FEATURES in *v4l2*) v4l2=yes ;; esac ;;
  *) v4l2=yes ;;
esac
echo "binary:       $bin"
echo "file:         $file_out"
echo "needs glibc:  $max_glibc (highest GLIBC_ symbol version, objdump -T)"
echo "profile:      $PROFILE; V4L2 camera support: $v4l2"
