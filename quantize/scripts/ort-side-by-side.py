#!/usr/bin/env python3
"""The encoder of a float and an int8 signrt bundle, timed in tract and in onnxruntime in one run.

onnxruntime (from PyPI) is an oracle outside the product: it tells us how fast this CPU runs the
same network when int8 is in the form onnxruntime prefers. That form is made here, from the float
bundle's encoder, by onnxruntime's own `quantize_static` (QOperator, u8 activations, s8 per-channel
weights), calibrated on deterministic random frames: the figure it gives is a speed, not an
accuracy.

The four encoders run in rounds: each round times tract float and int8 (`signrt-quantize bench`,
which itself interleaves the two), then onnxruntime float and int8. A machine that is busier
during part of the run slows every engine alike. Everything runs on one thread. Each engine's
figure is the median of its per-round medians; the ratios come from those.

Usage:
  ort-side-by-side.py --float F --int8 Q [--rounds 5] [--iters 20] [--quantize BIN] [--keep DIR]
Needs: python3 with numpy, onnx and onnxruntime (a venv: see ../shared/tools/README.md).
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time
import numpy as np
import onnx, onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)


def encoder_path(bundle, want_float):
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    name = m["encoder"]
    if want_float and m.get("float_graphs"):
        name = m["float_graphs"]["encoder"]
    return os.path.join(bundle, name), m["input"]["height"], m["input"]["width"]


def frames(h, w, n, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, h, w)).astype(np.float32) for _ in range(n)]


class Frames(CalibrationDataReader):
    def __init__(self, name, h, w):
        self.it = iter([{name: f} for f in frames(h, w, 16, 1)])

    def get_next(self):
        return next(self.it, None)


def ort_int8(float_onnx, h, w, out):
    name = onnx.load(float_onnx).graph.input[0].name
    quantize_static(float_onnx, out, Frames(name, h, w), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return out


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_round(s, feed, iters):
    for _ in range(3):
        s.run(None, feed)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        s.run(None, feed)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def tract_round(quantize_bin, fb, qb, iters):
    out = subprocess.run([quantize_bin, "bench", "--float", fb, "--int8", qb, "--iters", str(iters)],
                         check=True, capture_output=True, text=True).stdout
    ms = [float(x) for x in re.findall(r"median\s+([0-9.]+) ms", out)]
    if len(ms) != 2:
        sys.exit(f"unexpected output of signrt-quantize bench:\n{out}")
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--float", required=True, dest="fb")
    ap.add_argument("--int8", required=True, dest="qb")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quantize", default="target/release/signrt-quantize")
    ap.add_argument("--keep", help="write onnxruntime's int8 encoder into this folder")
    a = ap.parse_args()

    f32_path, h, w = encoder_path(a.fb, True)
    work = a.keep or tempfile.mkdtemp(prefix="ort-int8-")
    os.makedirs(work, exist_ok=True)
    q_path = ort_int8(f32_path, h, w, os.path.join(work, "encoder.ort-int8.onnx"))
    sessions = {"onnxruntime f32": session(f32_path), "onnxruntime int8": session(q_path)}
    feed = {sessions["onnxruntime f32"].get_inputs()[0].name: frames(h, w, 1, 7)[0]}

    per_round = {k: [] for k in ["tract f32", "tract int8", *sessions]}
    for r in range(a.rounds):
        tf, tq = tract_round(a.quantize, a.fb, a.qb, a.iters)
        per_round["tract f32"].append(tf)
        per_round["tract int8"].append(tq)
        for k, s in sessions.items():
            per_round[k].append(ort_round(s, feed, a.iters))
        print(f"round {r + 1}/{a.rounds}: " +
              ", ".join(f"{k} {v[-1]:.2f}" for k, v in per_round.items()), file=sys.stderr)

    med = {k: statistics.median(v) for k, v in per_round.items()}
    print(f"encoder {h}x{w}, one thread, {a.rounds} rounds of {a.iters} runs per engine "
          f"(onnxruntime {ort.__version__}); ms per frame, median of the round medians:")
    for k, v in med.items():
        print(f"  {k:<17} {v:8.2f} ms")
    print(f"tract int8 / onnxruntime int8  = {med['tract int8'] / med['onnxruntime int8']:.2f}x the time")
    print(f"tract f32 / tract int8         = {med['tract f32'] / med['tract int8']:.2f}x faster")
    print(f"onnxruntime f32 / int8         = {med['onnxruntime f32'] / med['onnxruntime int8']:.2f}x faster")
    print(f"tract f32 / onnxruntime f32    = {med['tract f32'] / med['onnxruntime f32']:.2f}x the time")


if __name__ == "__main__":
    main()
