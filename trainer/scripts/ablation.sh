#!/usr/bin/env bash
# The ablation of issue "Trainer II": six variants of cpu-small.toml, each trained on the same
# corpus for the same time budget, each evaluated on the test split (signers unseen in training)
# with beam search. Prints a markdown table and writes it to WORK_DIR/ablation.md.
#
# Usage: trainer/scripts/ablation.sh [WORK_DIR]        (default: target/ablation)
# Environment: MINUTES (training budget per row, default 30), THREADS (per row, default 1),
#   JOBS (rows trained at once, default 2: one per core of a 2-core machine; one run does not
#   use a second thread fully, so two 1-thread rows side by side train more frames in all than
#   one 2-thread row; docs/experiments.md),
#   VIDEOS (corpus size, default 750 = 600 train / 75 dev / 75 test), SIGNERS (default 40),
#   ROWS (space-separated subset of: full all random no-align gradnorm ctc-only seed-gradient global-clip;
#   default the first six, the issue's table).
#
# Every row uses the corpus's frame labels for L_cls (training.frame_labels = "spans") and no
# augmentation or dropout, as the default model's recipe does (models/recipe-demo.sh says why);
# the row "ctc-only" has no L_cls at all.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-target/ablation}
minutes=${MINUTES:-30}
threads=${THREADS:-1}
jobs=${JOBS:-2}
videos=${VIDEOS:-750}
signers=${SIGNERS:-40}
rows=${ROWS:-full all random no-align gradnorm ctc-only}
mkdir -p "$work"

cargo build -q -p signrt-trainer --bins
bin=target/debug/signrt-train
corpus="$work/corpus-$videos-$signers"
if [ ! -f "$corpus/synth.json" ]; then
  "$bin" synth --out "$corpus" --videos "$videos" --glosses 10 --signers "$signers" --size 64 --seed 0 --force
fi

base=(--set training.frame_labels=spans --set training.eval_every=400
  --set model.dropout=0.0 --set training.augment.crop_min=1.0 --set training.augment.color_jitter=0.0
  --set training.augment.rotation_deg=0.0 --set training.augment.temporal_rescale=0.0)

row_args() {
  case $1 in
    full) ;;
    all) echo "--set model.selection=all" ;;
    random) echo "--set model.selection=random" ;;
    no-align) echo "--set training.loss_weights.cross_modal=0" ;;
    gradnorm) echo "--set training.weighting=gradnorm" ;;
    ctc-only) echo "--set training.loss_weights.cross_modal=0 --set training.loss_weights.keyframe_selection=0 --set training.loss_weights.frame_classification=0 --set training.ctc_warmup_steps=0" ;;
    seed-gradient) echo "--set model.scorer_trains_encoder=true" ;;
    global-clip) echo "--set training.grad_clip_per_module=false" ;;
    *) echo "unknown row $1 (full all random no-align gradnorm ctc-only seed-gradient global-clip)" >&2; exit 2 ;;
  esac
}

describe() {
  case $1 in
    full) echo "full model (learned keyframes, four losses, fixed weights)" ;;
    all) echo "no keyframe selection (all frames)" ;;
    random) echo "random keyframe selection" ;;
    no-align) echo "no alignment loss" ;;
    gradnorm) echo "GradNorm instead of fixed weights" ;;
    ctc-only) echo "CTC loss only" ;;
    seed-gradient) echo "full model, the scorer's gradient reaching the encoder (the seed's)" ;;
    global-clip) echo "full model, one global gradient clip (the seed's)" ;;
  esac
}

train_row() {
  local r=$1 run="$work/$1" extra
  extra=$(row_args "$r")
  if [ ! -f "$run/best.safetensors" ]; then
    rm -rf "$run"
    echo "== $r: training for $minutes min ($threads thread(s))" >&2
    # shellcheck disable=SC2086
    "$bin" train --config trainer/configs/cpu-small.toml --data "$corpus" --out "$run" \
      --max-minutes "$minutes" --threads "$threads" "${base[@]}" $extra > "$work/$r.log" 2>&1
  fi
}

# train, JOBS rows at a time
running=0
for r in $rows; do
  row_args "$r" > /dev/null
  train_row "$r" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

table="$work/ablation.md.tmp"
{
  echo "| row | steps in ${minutes} min | test WER (beam 5) | S / D / I | sentences exact |"
  echo "|---|---|---|---|---|"
} > "$table"
for r in $rows; do
  run="$work/$r"
  "$bin" eval --checkpoint "$run/best.safetensors" --data "$corpus" --split test --beam 5 > "$work/$r.eval" 2>/dev/null
  steps=$(grep -c '"kind":"step"' "$run/metrics.jsonl")
  line=$(grep -m1 '^test: WER' "$work/$r.eval")
  wer=$(echo "$line" | sed -E 's/^test: WER ([0-9.]+%).*/\1/')
  sdi=$(echo "$line" | sed -E 's/.*\(S ([0-9]+) \+ D ([0-9]+) \+ I ([0-9]+)\).*/\1 \/ \2 \/ \3/')
  exact=$(grep -o '"sentences_correct": *[0-9]*' "$work/$r.eval" | head -1 | sed -E 's/.*: *//')
  total=$(grep -o '"sentences": *[0-9]*' "$work/$r.eval" | head -1 | sed -E 's/.*: *//')
  exact="$exact of $total"
  echo "| $(describe "$r") | $steps | $wer | $sdi | $exact |" >> "$table"
done
mv "$table" "$work/ablation.md"
cat "$work/ablation.md"
