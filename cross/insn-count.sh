#!/usr/bin/env bash
# Dynamic instruction counts per frame of the aarch64 `signrt` under qemu: a relative ARM cost figure
# that does not depend on the emulator's or the host's speed (docs/BENCHMARKS.md, "ARM").
#
# A small TCG plugin (cross/qemu-plugin/insn_count.c, built here with the host's cc) counts every guest
# instruction executed. `signrt run --threads 1` streams the sample once and three times over; the
# difference of the two counts, divided by the extra frames, is the steady-state cost of one frame
# (preprocessing, encoder, the scorer's and the temporal graph's share, decoding), without the start-up
# (reading and optimising the graphs). The encoder alone is counted the same way, from `signrt bench
# --encoder-only` at two repetition counts. Each precision (--precision f32 / int8) runs on each CPU model.
#
# Usage: cross/insn-count.sh [BUNDLE [SAMPLE.y4m]]     (default: models/demo, the first sample)
# Environment: SIGNRT_CROSS_BIN (default: the release build of cross/build-aarch64.sh),
#              SIGNRT_INSN_CPUS (default "cortex-a76 cortex-a72"), SIGNRT_INSN_PRECISIONS (default "f32 int8"),
#              SIGNRT_INSN_FRAMES (use only the sample's first N frames: large models run slowly under qemu)
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-models/demo}
SAMPLE=${2:-$(find models/samples -maxdepth 1 -name '*.y4m' | LC_ALL=C sort | head -n1)}
ARM_BIN=${SIGNRT_CROSS_BIN:-target/aarch64-cross/aarch64-unknown-linux-gnu/release/signrt}
CPUS=${SIGNRT_INSN_CPUS:-cortex-a76 cortex-a72}
PRECISIONS=${SIGNRT_INSN_PRECISIONS:-f32 int8}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -x "$ARM_BIN" ] || die "$ARM_BIN not found: run cross/build-aarch64.sh first"
[ -f "$SAMPLE" ] || die "sample $SAMPLE not found"
# Debian's dynamically linked qemu-user is built with plugin support (the -static one is not)
if ! command -v qemu-aarch64 >/dev/null; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get install -y -qq qemu-user >/dev/null || die "cannot install qemu-user"
fi
qemu-aarch64 -h | grep -q -- '-plugin' || die "this qemu-aarch64 has no -plugin support"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cc -O2 -shared -fPIC -o "$TMP/libinsn_count.so" cross/qemu-plugin/insn_count.c

# the sample, and the sample three times over: one Y4M header, the frames repeated
python3 - "$SAMPLE" "$TMP" "${SIGNRT_INSN_FRAMES:-0}" <<'EOF'
import sys
data = open(sys.argv[1], 'rb').read()
head, _, body = data.partition(b'\n')
tags = dict((t[:1], t[1:]) for t in head.split()[1:])
w, h, c = int(tags[b'W']), int(tags[b'H']), tags.get(b'C', b'420jpeg')
size = {b'444': 3 * w * h, b'422': 2 * w * h, b'mon': w * h}.get(c[:3], w * h * 3 // 2)
frames, at = [], 0
while at < len(body):
    start = body.index(b'\n', at) + 1  # "FRAME[ params]\n", then the planes
    frames.append(body[at:start + size])
    at = start + size
if int(sys.argv[3]) > 0:
    frames = frames[:int(sys.argv[3])]
body = b''.join(frames)
open(sys.argv[2] + '/x1.y4m', 'wb').write(head + b'\n' + body)
open(sys.argv[2] + '/x3.y4m', 'wb').write(head + b'\n' + body * 3)
print(len(frames), file=open(sys.argv[2] + '/frames', 'w'))
EOF
n1=$(cat "$TMP/frames")

count() { # CPU PRECISION SIGNRT-ARGS... -> instructions
  local cpu=$1 p=$2
  shift 2
  qemu-aarch64 -cpu "$cpu" -plugin "$TMP/libinsn_count.so" -d plugin -D "$TMP/plugin.log" \
    "$ARM_BIN" "$@" --bundle "$BUNDLE" --precision "$p" \
    >"$TMP/out.txt" 2>"$TMP/err.txt" || { cat "$TMP/err.txt" >&2; die "signrt $* failed ($cpu, $p)"; }
  awk '/^insns/ {print $2}' "$TMP/plugin.log"
}

printf '%-12s %-9s %18s %18s %16s %16s\n' cpu precision "insns ($n1 frames)" "insns ($((3 * n1)))" \
  "insns/frame" "encoder/frame"
for cpu in $CPUS; do
  for p in $PRECISIONS; do
    a=$(count "$cpu" "$p" run --source "$TMP/x1.y4m" --threads 1 --format text)
    b=$(count "$cpu" "$p" run --source "$TMP/x3.y4m" --threads 1 --format text)
    ea=$(count "$cpu" "$p" bench --encoder-only --iters "$n1")
    eb=$(count "$cpu" "$p" bench --encoder-only --iters $((3 * n1)))
    printf '%-12s %-9s %18s %18s %16s %16s\n' "$cpu" "$p" "$a" "$b" $(((b - a) / (2 * n1))) \
      $(((eb - ea) / (2 * n1)))
  done
done
