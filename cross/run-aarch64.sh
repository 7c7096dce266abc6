#!/usr/bin/env bash
# Run the aarch64 `signrt` (from cross/build-aarch64.sh) under qemu user-mode emulation on a bundle and
# a sample clip, and check that
#   - its recognised glosses are identical to the host (x86-64) `signrt`'s on the same input,
#   - they match the sample's reference glosses (models/samples/references.tsv), when it has one,
#   - the bundle it reports (`signrt info`, run by the aarch64 binary itself) is int8-quantised.
#
# Usage: cross/run-aarch64.sh [BUNDLE [SAMPLE.y4m]]
#   BUNDLE defaults to models/demo (the bundled default model), SAMPLE to the first models/samples/*.y4m.
# Environment (all optional):
#   SIGNRT_CROSS_PROFILE     release (default) or debug: which aarch64 build to run
#   SIGNRT_CROSS_GLIBC, SIGNRT_CROSS_TARGET_DIR  as for build-aarch64.sh (default
#                            target/aarch64-cross; target/aarch64-cross-static with SIGNRT_CROSS_GLIBC=static)
#   SIGNRT_CROSS_BIN         the aarch64 binary to run (overrides the two above)
#   SIGNRT_HOST_BIN          the host signrt to compare with (default: built here, `cargo build -p
#                            signrt-runtime --bin signrt`, the workspace's dev profile, target/debug)
#   SIGNRT_CROSS_BEAM          CTC beam width of the runs (default 5, as the README's command)
#   SIGNRT_QEMU_CPU            qemu CPU model of the recognition run (default cortex-a76: SDOT int8)
#   SIGNRT_CROSS_EXPECT_QUANT  the quantisation mode the bundle must report (default int8; `none` for
#                            a float bundle, e.g. the toy bundle while developing)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TARGET=aarch64-unknown-linux-gnu
PROFILE=${SIGNRT_CROSS_PROFILE:-release}
default_dir=$ROOT/target/aarch64-cross
[ "${SIGNRT_CROSS_GLIBC:-}" = static ] && default_dir=$ROOT/target/aarch64-cross-static
CROSS_DIR=${SIGNRT_CROSS_TARGET_DIR:-$default_dir}
ARM_BIN=${SIGNRT_CROSS_BIN:-$CROSS_DIR/$TARGET/$PROFILE/signrt}
EXPECT_QUANT=${SIGNRT_CROSS_EXPECT_QUANT:-int8}
# CTC beam width of both runs: the README's `signrt run --beam 5`, with which the samples are checked
BEAM=${SIGNRT_CROSS_BEAM:-5}
QEMU=qemu-aarch64-static
# The emulated CPU of the recognition run: a Cortex-A76 (Pi 5, Jetson Orin's A78 alike), so the
# glosses are checked on the int8 path the target boards take (SDOT), not on qemu's default `max`
# (SVE, which those boards lack).
RUN_CPU=${SIGNRT_QEMU_CPU:-cortex-a76}
# Both recognition runs take the same graphs, whatever each CPU would pick by itself (a bundle with
# float and int8 graphs runs f32 on an AVX2-only host): the int8 ones, unless the bundle is float.
PRECISION=int8
grep -q '"quantization": null' "${1:-models/demo}/manifest.json" 2>/dev/null && PRECISION=f32

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

BUNDLE=${1:-models/demo}
[ -f "$BUNDLE/manifest.json" ] ||
  die "no bundle at $BUNDLE ($BUNDLE/manifest.json missing): the default model models/demo is not in this checkout; pass a bundle: cross/run-aarch64.sh BUNDLE SAMPLE.y4m"
if [ $# -ge 2 ]; then
  SAMPLE=$2
else
  SAMPLE=$(find models/samples -maxdepth 1 -name '*.y4m' 2>/dev/null | LC_ALL=C sort | head -n1 || true)
  [ -n "$SAMPLE" ] || die "no sample clip: models/samples/*.y4m does not exist (the bundled default model and its samples are not in this checkout?); pass BUNDLE SAMPLE.y4m explicitly"
fi
[ -f "$SAMPLE" ] || die "sample $SAMPLE does not exist"

# --- prerequisites ----------------------------------------------------------------------------------
[ -x "$ARM_BIN" ] || die "$ARM_BIN not found: run cross/build-aarch64.sh first (SIGNRT_CROSS_PROFILE=$PROFILE)"
command -v "$QEMU" >/dev/null || die "$QEMU not found: run cross/build-aarch64.sh (installs qemu-user-static)"
# No -L: qemu must use the aarch64 loader and glibc of Debian's multiarch libc6:arm64
# (/lib/ld-linux-aarch64.so.1, /lib/aarch64-linux-gnu). `-L /usr/aarch64-linux-gnu` mixes in the
# cross-compiler's glibc build, and the binary then hangs at its first thread spawn.
[ -e /lib/ld-linux-aarch64.so.1 ] || die "/lib/ld-linux-aarch64.so.1 missing: install libc6:arm64 (cross/build-aarch64.sh does)"
case $(file -b "$ARM_BIN") in *"ARM aarch64"*) ;; *) die "$ARM_BIN is not an aarch64 ELF: $(file -b "$ARM_BIN")" ;; esac
command -v python3 >/dev/null || die "python3 is needed to compare the JSON outputs"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# --- the host run -----------------------------------------------------------------------------------
if [ -n "${SIGNRT_HOST_BIN:-}" ]; then
  HOST_BIN=$SIGNRT_HOST_BIN
else
  say "host build: cargo build --locked -p signrt-runtime --bin signrt"
  # rustup's toolchain, the workspace's dev profile: the same build the test suite makes.
  (unset RUSTC RUSTDOC CARGO_TARGET_DIR CARGO_BUILD_TARGET; cargo build -q --locked -p signrt-runtime --bin signrt)
  HOST_BIN=$ROOT/target/debug/signrt
fi
[ -x "$HOST_BIN" ] || die "host signrt $HOST_BIN not found"

export RUST_LOG=${RUST_LOG:-warn}
say "x86-64:  $HOST_BIN run --bundle $BUNDLE --beam $BEAM --source $SAMPLE --format jsonl"
t0=$SECONDS
"$HOST_BIN" run --bundle "$BUNDLE" --precision "$PRECISION" --beam "$BEAM" --source "$SAMPLE" --format jsonl > "$TMP/host.jsonl" ||
  die "the host signrt failed on $BUNDLE / $SAMPLE"
say "  took $((SECONDS - t0)) s"

# --- the aarch64 runs under qemu --------------------------------------------------------------------
say "aarch64: $QEMU $ARM_BIN info --bundle $BUNDLE"
"$QEMU" "$ARM_BIN" info --bundle "$BUNDLE" > "$TMP/info.txt" || { cat "$TMP/info.txt" >&2; die "the aarch64 signrt info failed"; }
sed 's/^/    /' "$TMP/info.txt" >&2
# The int8 kernel tract picks by CPU model (#37): with FEAT_DotProd (Cortex-A76: Pi 5, Jetson Orin)
# it must be the SDOT one, so the build must contain it; without (Cortex-A72: Pi 4) the SMLAL one.
for cpu_want in cortex-a76:_dot cortex-a72:plain; do
  cpu=${cpu_want%%:*} want=${cpu_want#*:}
  kernel=$("$QEMU" -cpu "$cpu" "$ARM_BIN" info --bundle "$BUNDLE" 2>/dev/null | awk '$1 == "int8" && $2 == "mm" {print $3}')
  say "aarch64 -cpu $cpu: tract's int8 matrix kernel: ${kernel:-none}"
  case $want:$kernel in
    _dot:*_dot) ;;
    plain:*_dot|plain:) die "-cpu $cpu has no dot product, yet the int8 kernel is '${kernel:-none}'" ;;
    plain:*) ;;
    *) die "-cpu $cpu has the dot product, but tract picks '${kernel:-none}': the build lacks the SDOT kernel (tract-linalg's sdot probe failed?)" ;;
  esac
  # a bundle with both graph sets runs int8 with the dot product and f32 without (--precision auto)
  if grep -q '"float_graphs"' "$BUNDLE/manifest.json"; then
    picked=$("$QEMU" -cpu "$cpu" "$ARM_BIN" info --bundle "$BUNDLE" 2>/dev/null | awk '$1 == "precision" {print $2}')
    say "aarch64 -cpu $cpu: runs the ${picked:-?} graphs"
    [ "$want:$picked" = _dot:int8 ] || [ "$want:$picked" = plain:f32 ] ||
      die "-cpu $cpu: signrt picked '${picked:-nothing}' graphs (want int8 with the dot product, f32 without)"
  fi
done
say "aarch64: $QEMU -cpu $RUN_CPU $ARM_BIN run --bundle $BUNDLE --beam $BEAM --source $SAMPLE --format jsonl"
t0=$SECONDS
"$QEMU" -cpu "$RUN_CPU" "$ARM_BIN" run --bundle "$BUNDLE" --precision "$PRECISION" --beam "$BEAM" --source "$SAMPLE" --format jsonl > "$TMP/arm.jsonl" ||
  die "the aarch64 signrt failed under qemu on $BUNDLE / $SAMPLE"
say "  took $((SECONDS - t0)) s"

# --- checks -----------------------------------------------------------------------------------------
quant=$(awk '$1 == "quantized" {print $2}' "$TMP/info.txt")
[ -n "$quant" ] || die "the aarch64 signrt info printed no 'quantized' line"
if [ "$EXPECT_QUANT" = none ]; then
  [ "$quant" = no ] || die "expected a float bundle, the aarch64 signrt reports quantized: $quant"
else
  [ "$quant" = "$EXPECT_QUANT" ] ||
    die "the aarch64 signrt reports quantized: $quant for $BUNDLE; expected $EXPECT_QUANT (the int8 path is not used)"
fi

# Beyond the manifest: when this signrt has `info --ops` (the encoder's ops as tract optimises them,
# with their output types), the int8 path must show integer ops on aarch64 too.
if "$QEMU" "$ARM_BIN" info --help 2>/dev/null | grep -q -- '--ops'; then
  say "aarch64: $QEMU $ARM_BIN info --ops --bundle $BUNDLE"
  "$QEMU" "$ARM_BIN" info --ops --bundle "$BUNDLE" > "$TMP/ops.txt" || die "the aarch64 signrt info --ops failed"
  # lines "  OP  DATUM_TYPES  NODE"; count the non-constant ops that output 8-bit integers (e.g. OptMatMul I8)
  int_ops=$(sed -n '/^encoder ops/,$p' "$TMP/ops.txt" | awk '$1 != "Const" && $2 ~ /(^|,)Q?[IU]8/' | wc -l)
  say "  encoder ops computing in 8-bit integers: $int_ops ($(sed -n '/^encoder ops/,$p' "$TMP/ops.txt" | awk '$1 != "Const" && $2 ~ /(^|,)Q?[IU]8/ {print $1}' | sort | uniq -c | awk '{printf "%s%s x%s", s, $2, $1; s=", "}'))"
  if [ "$EXPECT_QUANT" = int8 ] && [ "$int_ops" -eq 0 ]; then
    sed -n '/^encoder ops/,$p' "$TMP/ops.txt" >&2
    die "the bundle says int8 but tract on aarch64 runs no integer ops in the encoder"
  fi
else
  say "this signrt has no 'info --ops': the int8 check relies on the manifest as reported by 'signrt info'"
fi

ref=""
refs=$(dirname "$SAMPLE")/references.tsv
name=$(basename "$SAMPLE" .y4m)
if [ -f "$refs" ]; then
  ref=$(awk -F '\t' -v n="$name" '$1 == n || $1 == n ".y4m" {print $2; exit}' "$refs")
fi

python3 - "$TMP/host.jsonl" "$TMP/arm.jsonl" "$ref" <<'EOF'
import json, sys

def glosses(path):
    events, summary = [], None
    for n, line in enumerate(open(path), 1):
        line = line.strip()
        if not line:
            continue
        try:
            v = json.loads(line)
        except ValueError as e:
            sys.exit(f"error: {path}:{n}: not JSON ({e}): {line[:120]}")
        if v.get("type") == "gloss":
            events.append(v["gloss"])
        elif v.get("type") == "summary":
            summary = v
    if summary is None:
        sys.exit(f"error: {path}: no summary line")
    return events, summary

host, hs = glosses(sys.argv[1])
arm, as_ = glosses(sys.argv[2])
ref = sys.argv[3].split()
print(f"x86-64  glosses: {' '.join(host) or '(none)'}  ({hs['frames_processed']} frames, {hs['fps']:.1f} fps)")
print(f"aarch64 glosses: {' '.join(arm) or '(none)'}  ({as_['frames_processed']} frames, {as_['fps']:.1f} fps under qemu)")
fail = []
if host != arm:
    fail.append("the gloss sequences differ between x86-64 and aarch64")
if hs["glosses"] != as_["glosses"]:
    fail.append(f"the summaries' glosses differ: x86-64 {hs['glosses']!r}, aarch64 {as_['glosses']!r}")
if hs["frames_processed"] != as_["frames_processed"]:
    fail.append(f"frames processed differ: {hs['frames_processed']} vs {as_['frames_processed']}")
if ref:
    print(f"reference:       {' '.join(ref)}")
    if arm != ref:
        fail.append("the aarch64 glosses differ from the sample's reference")
else:
    print("reference:       (none for this sample)")
if not arm:
    fail.append("no glosses recognised at all")
if fail:
    for f in fail:
        print(f"error: {f}", file=sys.stderr)
    sys.exit(1)
EOF

echo "OK: aarch64 signrt under qemu gives the x86-64 glosses on $SAMPLE (bundle $BUNDLE, quantized: $quant)"
