#!/usr/bin/env python3
"""How often flat-start labels are right, against a synthetic corpus's true gloss spans.

    trainer/scripts/flat-start-agreement.py CORPUS [SPLIT] [CENTRE ...]

For each clip of SPLIT (default train) the glosses of `annotations/SPLIT_gloss_spans.csv` cut the clip's
frames into equal runs, and only the middle CENTRE of each run is labelled, as
`signrt_trainer::model::flat_start_labels` does (over all frames here, not only the keyframes). Prints the
share of frames labelled and the share of those whose label is the true one (frames between spans are
blank in truth, which a flat start never says). Standard library only; an analysis aid, not part of CI.
"""
import csv
import math
import os
import sys


def flat(k, target, centre):
    n = len(target)
    out = [None] * k
    start = lambda i: -(-i * k // n)  # ceil(i*k/n)
    for i, g in enumerate(target):
        s, e = start(i), start(i + 1)
        if e <= s:
            continue
        length = e - s
        keep = min(max(1, math.floor(centre * length + 0.5)), length)
        left = s + (length - keep) // 2
        out[left:left + keep] = [g] * keep
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    split = sys.argv[2] if len(sys.argv) > 2 else "train"
    centres = [float(c) for c in sys.argv[3:]] or [1.0, 0.75, 0.5, 0.3]
    path = os.path.join(root, "annotations", f"{split}_gloss_spans.csv")
    spans = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            spans.setdefault(r["folder_name"], []).append(
                (r["gloss"], int(r["start_frame"]), int(r["end_frame"])))
    for centre in centres:
        total = labelled = right = 0
        for clip, sp in spans.items():
            k = len([x for x in os.listdir(os.path.join(root, split, clip))
                     if x.lower().endswith((".jpg", ".jpeg", ".png"))])
            truth = [None] * k
            for g, a, b in sp:
                truth[a - 1:b] = [g] * (b - a + 1)
            for lab, t in zip(flat(k, [g for g, _, _ in sp], centre), truth):
                total += 1
                if lab is not None:
                    labelled += 1
                    right += lab == t
        print(f"centre {centre}: {labelled / total:.3f} of {total} frames labelled, "
              f"{right / max(labelled, 1):.3f} of them right ({len(spans)} clips of {split})")


if __name__ == "__main__":
    main()
