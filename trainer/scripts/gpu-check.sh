#!/usr/bin/env bash
# The GPU check, for a machine with one NVIDIA GPU and its driver (sized for ≤ 8 minutes on an
# H100-class GPU). Build the binary first, anywhere: trainer/scripts/build-cuda.sh.
#
#   trainer/scripts/gpu-check.sh [OUT_DIR]
#
# 1. One training step on the CPU and on CUDA from the same weights (initialised on the host from the
#    seed: model/init.rs) and the same batch, with dropout and augmentation off: the losses and the
#    per-module gradient norms before clipping must agree to a relative 2e-3 (f32 on both; the GPU sums
#    in other orders). A per-module norm is the check's unit: metrics.jsonl carries no per-parameter
#    gradients.
# 2. 200 steps (or 2.5 minutes) of trainer/configs/resnet18-phoenix.toml at 224×224 on a synthetic
#    corpus on CUDA, in f32 and in bf16 (hardware.mixed_precision): steps/s (wall), frames/s (the step
#    lines') and the GPU's peak memory (nvidia-smi, sampled every 200 ms).
# 3. CTC's share of a GPU step: 30 f32 steps with SIGNRT_PROFILE_CTC=1, which synchronises the GPU
#    around the CTC loss (copied to the CPU and back), its backward and the forced alignment, and logs
#    their time and the step's (ctc_ms, step_ms); the median of ctc_ms / step_ms after the first five.
# Not yet run on a GPU by this project.
#
# Environment: SIGNRT_TRAIN_CUDA (default target/cuda/bin/signrt-train-sm80), SIGNRT_CUDA_LIB (CUDA's
# libraries, default ~/.cache/signrt-cuda/13.4.92/cuda/lib), SIGNRT_GPU_STEPS (default 200).
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${SIGNRT_TRAIN_CUDA:-target/cuda/bin/signrt-train-sm80}
lib=${SIGNRT_CUDA_LIB:-${XDG_CACHE_HOME:-$HOME/.cache}/signrt-cuda/13.4.92/cuda/lib}
steps=${SIGNRT_GPU_STEPS:-200}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -x "$bin" ] || { echo "error: $bin not found: run trainer/scripts/build-cuda.sh first" >&2; exit 1; }
command -v nvidia-smi >/dev/null || { echo "error: no nvidia-smi: is an NVIDIA driver installed?" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)

"$bin" synth --out "$out/C" --videos 48 --glosses 10 --signers 6 --size 224 --seed 0 >/dev/null
cfg=trainer/configs/resnet18-phoenix.toml
same=(--set model.dropout=0 --set training.augment.crop_min=1 --set training.augment.color_jitter=0
  --set training.augment.rotation_deg=0 --set training.augment.temporal_rescale=0
  --set model.max_frames=32 --set training.batch_size=2)

# 1. CPU against CUDA, one step
for d in cpu cuda; do
  "$bin" train --config $cfg --data "$out/C" --out "$out/one-$d" --max-steps 1 --device $d "${same[@]}" \
    2> "$out/one-$d.log"
done
python3 - "$out/one-cpu/metrics.jsonl" "$out/one-cuda/metrics.jsonl" <<'EOF'
import json, sys
def step1(p):
    return next(r for r in map(json.loads, open(p)) if r.get("kind") == "step")
a, b = step1(sys.argv[1]), step1(sys.argv[2])
rows = [("loss", a["loss"], b["loss"])] + [(f"grad norm {k}", v, b["group_norms"][k]) for k, v in sorted(a["group_norms"].items())]
worst = 0.0
for name, x, y in rows:
    rel = abs(x - y) / max(abs(x), abs(y), 1e-6)  # a module that gets no gradient yet reads 0 on both
    worst = max(worst, rel)
    print(f"  {name:<28} cpu {x:.6g}  cuda {y:.6g}  rel {rel:.2e}")
print(f"CPU against CUDA, one step: worst relative difference {worst:.2e} (tolerance 2e-3)")
sys.exit(0 if worst <= 2e-3 else 1)
EOF

# 2. steps/s and peak memory on CUDA, f32 then bf16
for prec in off bf16; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/mem-$prec.txt" &
  sampler=$!
  trap 'kill $sampler 2>/dev/null || true' EXIT
  t0=$(date +%s.%N)
  "$bin" train --config $cfg --data "$out/C" --out "$out/run-$prec" --max-steps "$steps" --max-minutes 2.5 \
    --device cuda --set training.eval_every=0 --set hardware.mixed_precision=$prec 2> "$out/run-$prec.log"
  t1=$(date +%s.%N)
  kill $sampler 2>/dev/null || true
  python3 - "$out/run-$prec/metrics.jsonl" "$out/mem-$prec.txt" "$t0" "$t1" "$prec" <<'EOF'
import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "step"]
fps = sorted(r["frames_per_s"] for r in rows[5:] or rows)
mem = [int(x) for x in open(sys.argv[2]) if x.strip().isdigit()]
wall = float(sys.argv[4]) - float(sys.argv[3])
print(f"resnet18-phoenix.toml at 224x224, mixed_precision {sys.argv[5]}: {len(rows)} steps on CUDA in {wall:.0f} s: "
      f"{len(rows) / wall:.2f} steps/s (wall, start-up included), median {fps[len(fps)//2]:.1f} frames/s "
      f"(steps after the first five), peak GPU memory {max(mem) if mem else '?'} MiB, last loss {rows[-1]['loss']:.3f}")
EOF
done
# 3. CTC's share of a step
SIGNRT_PROFILE_CTC=1 "$bin" train --config $cfg --data "$out/C" --out "$out/ctc" --max-steps 30 \
  --device cuda --set training.eval_every=0 --set training.ctc_warmup_steps=0 2> "$out/ctc.log"
python3 - "$out/ctc/metrics.jsonl" <<'EOF'
import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "step"]
share = sorted(r["ctc_ms"] / r["step_ms"] for r in rows[5:] or rows)
ms = sorted(r["ctc_ms"] for r in rows[5:] or rows)
print(f"CTC on the CPU (loss with its copies, backward, forced alignment): median {ms[len(ms)//2]:.3f} ms, "
      f"{100 * share[len(share)//2]:.2f} % of a step (f32, {len(rows)} steps, GPU synchronised around it)")
EOF
echo "total $(( $(date +%s) - start )) s; logs and runs in $out"
