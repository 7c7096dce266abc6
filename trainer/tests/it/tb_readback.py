"""Reads a run's TensorBoard events back with the tensorboard package and checks they hold the
scalars of its metrics.jsonl: the same tags (flattened here independently of the writer), steps
and values (as float32). Usage: tb_readback.py RUN_DIR. Exit status 3: tensorboard is missing."""
import json
import struct
import sys

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:
    sys.exit(3)

LOSSES = ["align", "gru", "cls", "ctc"]


def flatten(tag, key, v, out):
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float)):
        out[tag] = v
    elif isinstance(v, list):
        for i, x in enumerate(v):
            name = LOSSES[i] if key == "weights" and len(v) == 4 else str(i)
            flatten(f"{tag}/{name}", "", x, out)
    elif isinstance(v, dict):
        for k, x in v.items():
            flatten(f"{tag}/{k}", k, x, out)


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


run = sys.argv[1]
want = {}
for line in open(f"{run}/metrics.jsonl"):
    rec = json.loads(line)
    scalars = {}
    for k, v in rec.items():
        if k not in ("kind", "step", "epoch"):
            flatten(f"{rec['kind']}/{k}", k, v, scalars)
    for tag, v in scalars.items():
        want.setdefault(tag, []).append((rec["step"], f32(v)))

acc = EventAccumulator(f"{run}/tb", size_guidance={"scalars": 0})
acc.Reload()
got = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
if got != want:
    for t in sorted(set(got) | set(want)):
        if got.get(t) != want.get(t):
            print(f"{t}: tensorboard {got.get(t)} metrics.jsonl {want.get(t)}", file=sys.stderr)
    sys.exit(1)
steps = sum(len(v) for v in got.values())
print(f"{len(got)} tags, {steps} scalars agree")
