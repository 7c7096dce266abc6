#!/usr/bin/env python3
"""Independent check of a bundle's ONNX files (not part of the product; needs a
scratch venv with `pip install onnx onnxruntime numpy`):
onnx.checker (full), default domain only, and onnxruntime against tract (via the
`run_onnx` example) on random inputs.
Usage: ort_vs_tract.py BUNDLE_DIR RUN_ONNX_EXE"""
import json, subprocess, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import checker

d, exe = sys.argv[1], sys.argv[2]
m = json.load(open(f"{d}/manifest.json"))
s, c, g = m["input"]["height"], m["model"]["feature_dim"], m["model"]["grid"]
hs = m["model"]["scorer_hidden"]
rng = np.random.default_rng(1)
worst = 0.0
graphs = [(m["encoder"], [(1, 3, s, s)]), (m["scorer"], [(1, 12, c, g, g), (1, hs, g, g)]), (m["temporal"], [(1, 8, c * g * g)])]
for f, shapes in graphs:
    model = onnx.load(f"{d}/{f}")
    checker.check_model(model, full_check=True)
    domains = {o.domain for o in model.opset_import} - {"", "ai.onnx"}
    assert not domains, f"{f}: custom domains {domains}"
    xs = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    sess = ort.InferenceSession(f"{d}/{f}", providers=["CPUExecutionProvider"])
    ref = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})[0]
    args = [exe, f"{d}/{f}"]
    for k, (x, shape) in enumerate(zip(xs, shapes)):
        x.astype("<f4").tofile(f"/tmp/signrt_in{k}.f32")
        args += [f"/tmp/signrt_in{k}.f32", ",".join(map(str, shape))]
    subprocess.run(args + ["/tmp/signrt_out.f32"], check=True, capture_output=True)
    ours = np.fromfile("/tmp/signrt_out.f32", dtype="<f4").reshape(ref.shape)
    diff = float(np.abs(ours - ref).max())
    worst = max(worst, diff)
    print(f"{f}: checker ok, opset {[o.version for o in model.opset_import]}, onnxruntime vs tract max abs diff {diff:.2e}")
sys.exit(0 if worst <= 1e-4 else 1)
