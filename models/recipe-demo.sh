#!/usr/bin/env bash
# Regenerates the bundled default model, models/demo/ (int8), its samples
# (models/samples/) and models/demo/EVAL.md, from nothing but this repository:
#
#   synthesise the corpus -> train CONFIG (default: models/demo/train-config.toml) on the CPU
#   -> evaluate (float, beam 5) -> export -> quantise all three graphs to int8 (calibrated on
#   train videos; the float graphs kept beside them) -> evaluate the float and int8 bundles in
#   the runtime.
#
# Usage: models/recipe-demo.sh [WORK_DIR]     (default: target/recipe-demo)
# Environment: STEPS (training steps, default 2900), or MINUTES (a training time budget instead
# of a step count), THREADS (default: all cores), SKIP_TRAIN=1 (keep WORK_DIR's corpus and run;
# redo evaluation, export, quantisation, install), CONFIG (the training config; default
# models/demo/train-config.toml, the config the shipped model was trained with, so that the
# recipe reproduces it; CONFIG=trainer/configs/cpu-small.toml trains today's small config).
# Training is bounded by a step count so that the recipe is reproducible on any machine: the
# corpus, the initialisation and the batch order are seeded, and dropout and augmentation are
# off, so the same steps give the same weights (docs/experiments.md, "The default model"). The
# training time of the shipped model is in models/demo/EVAL.md.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/recipe-demo}
steps=${STEPS:-2900}
minutes=${MINUTES:-0}
if [ "$minutes" != 0 ]; then
  budget=(--max-minutes "$minutes"); budget_text="a $minutes-minute training budget"
else
  budget=(--max-steps "$steps"); budget_text="a budget of $steps steps"
fi
threads=${THREADS:-0}
config=${CONFIG:-models/demo/train-config.toml}
mkdir -p "$work"
cp "$config" "$work/train-config.toml"   # models/demo is replaced below: keep the config read

echo "== build (dev profile: dependencies at opt-level 3)"
cargo build -q -p signrt-trainer -p signrt-quantize -p signrt-runtime --bins
bin=target/debug

# A 10-gloss corpus: small enough that the CPU budget trains a model that works. 16 signers, so
# that the 12 or so in train vary enough for the model to carry over to unseen ones.
videos=400 glosses=10 signers=16
# L_cls learns from the synthetic corpus's own gloss spans (training.frame_labels = "spans"):
# labels derived from the model's CTC alignment (the only choice on real data) learn far more
# slowly within this CPU budget (docs/BENCHMARKS.md, "Training benchmark"). Without augmentation
# and dropout, for the same reason.
overrides=(--set training.frame_labels=spans
  --set model.dropout=0.0 --set training.augment.crop_min=1.0 --set training.augment.color_jitter=0.0
  --set training.augment.rotation_deg=0.0 --set training.augment.temporal_rescale=0.0)
if [ "${SKIP_TRAIN:-0}" = 1 ]; then
  # redo only what follows training, on the corpus and run already in WORK_DIR
  [ -f "$work/run/best.safetensors" ] || { echo "error: SKIP_TRAIN=1 but $work/run has no checkpoint" >&2; exit 1; }
  echo "== SKIP_TRAIN=1: reusing $work/corpus and $work/run"
  train_secs=$(cat "$work/train-secs" 2>/dev/null || echo "?")
else
  echo "== synthesise the corpus ($videos videos, $glosses glosses, $signers signers; split by signer)"
  "$bin/signrt-train" synth --out "$work/corpus" --videos $videos --glosses $glosses --signers $signers --size 64 --seed 0 --force

  echo "== train ($config, $budget_text, ${overrides[*]})"
  rm -rf "$work/run"
  t0=$SECONDS
  "$bin/signrt-train" train --config "$work/train-config.toml" \
    --data "$work/corpus" --out "$work/run" "${budget[@]}" --threads "$threads" "${overrides[@]}"
  train_secs=$((SECONDS - t0))
  echo "$train_secs" > "$work/train-secs"

fi

echo "== evaluate the checkpoint (test split, unseen signers, beam 5)"
"$bin/signrt-train" eval --checkpoint "$work/run/best.safetensors" --data "$work/corpus" --split test \
  --beam 5 --hyp-out "$work/test-hyps.tsv" | tee "$work/eval-float.txt"

echo "== export, quantise, evaluate both bundles in the runtime"
rm -rf "$work/float" "$work/int8"
"$bin/signrt-train" export --checkpoint "$work/run/best.safetensors" --out "$work/float" --window 64 --stride 16
# all three graphs int8, with the float graphs kept beside them: the runtime runs f32 on CPUs without
# int8 dot products (AVX2-only x86-64, Cortex-A72)
"$bin/signrt-quantize" --bundle "$work/float" --calib "$work/corpus" --samples 96 --method percentile --out "$work/int8" \
  --keep-float --eval "$work/corpus" --split test --beam 5 | tee "$work/quantize-report.txt"

echo "== install into models/"
rm -rf models/demo.new
mkdir -p models/demo.new
cp "$work/int8"/* models/demo.new/
cp "$work/train-config.toml" models/demo.new/train-config.toml
rm -rf models/demo && mv models/demo.new models/demo
# samples: test videos (unseen signers) that the trainer's evaluation got right, kept only if the
# shipped int8 bundle streamed by `signrt run` gets them right too; EVAL.md says how many qualified
cands=$(awk -F'\t' '$2 == $3 && $2 != "" {print $1}' "$work/test-hyps.tsv" | head -12 | paste -sd, -)
[ -n "$cands" ] || { echo "error: the model recognised no test video exactly; train longer (MINUTES)" >&2; exit 1; }
rm -rf "$work/samples" models/samples.new
"$bin/signrt-train" samples --data "$work/corpus" --split test --ids "$cands" --out "$work/samples"
mkdir -p models/samples.new
kept=0
while IFS=$'\t' read -r id ref; do
  [ "$kept" -lt 3 ] || break
  # grep reads to the end: with -q it could exit at the match, and signrt, writing its last line to a
  # closed pipe, would fail the pipeline (pipefail) now and then
  if "$bin/signrt" run --bundle models/demo --beam 5 --source "$work/samples/$id.y4m" --format text 2>/dev/null | grep '^match: yes' >/dev/null; then
    cp "$work/samples/$id.y4m" models/samples.new/
    printf '%s\t%s\n' "$id" "$ref" >> models/samples.new/references.tsv
    kept=$((kept + 1))
  fi
done < "$work/samples/references.tsv"
[ "$kept" -gt 0 ] || { echo "error: no candidate sample is recognised by the int8 bundle" >&2; exit 1; }
rm -rf models/samples && mv models/samples.new models/samples
correct=$(awk -F'\t' '$2 == $3' "$work/test-hyps.tsv" | wc -l)
total=$(wc -l < "$work/test-hyps.tsv")

steps_done=$(grep -c '"kind":"step"' "$work/run/metrics.jsonl" || true)
{
  echo "# models/demo — evaluation"
  echo
  echo "Made by \`models/recipe-demo.sh\` ($(date -u +%Y-%m-%d)). The model knows only the synthetic"
  echo "signer's $glosses-gloss vocabulary: these figures say nothing about real signing."
  echo
  echo "Training: \`$config\` (copied here as \`train-config.toml\`) with"
  echo "\`${overrides[*]}\`, $steps_done steps"
  echo "($budget_text; wall time $train_secs s) on a 2-core CPU, on the train split of \`signrt-train synth --videos $videos --glosses $glosses --signers $signers --size 64 --seed 0\`."
  echo
  echo "## Float checkpoint, trainer evaluation (test split: signers never seen in training, beam 5)"
  echo
  echo '```'
  echo "$bin/signrt-train eval --checkpoint $work/run/best.safetensors --data $work/corpus --split test --beam 5"
  head -1 "$work/eval-float.txt"
  echo '```'
  echo
  echo "Test videos recognised exactly (trainer, beam 5): $correct of $total. The shipped samples in"
  echo "\`models/samples/\` are the first of those that the int8 bundle, streamed by \`signrt run\`, also gets"
  echo "exactly right (\`signrt run --beam 5\`): they show the product working, they are not a random draw."
  echo
  echo "## Float and int8 bundles, runtime evaluation (same split)"
  echo
  echo '```'
  echo "$bin/signrt-quantize --bundle $work/float --calib $work/corpus --samples 96 --method percentile --out $work/int8 --keep-float --eval $work/corpus --split test --beam 5"
  cat "$work/quantize-report.txt"
  echo '```'
} > models/demo/EVAL.md.tmp
mv models/demo/EVAL.md.tmp models/demo/EVAL.md
du -sh models
echo "done: models/demo, models/samples"
