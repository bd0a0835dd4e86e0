"""Memory of distillation (graphprune.finetune) against the size of the data set: the same pruned
CNN fine-tuned for the same number of steps on N unlabeled samples, N = 256 ... 4096, each in a
fresh process; peak RSS (VmHWM) growth during ``finetune`` beside the bytes of the input arrays.
Teacher outputs are computed batch by batch, so the growth should not follow N beyond the inputs
themselves (held twice: the caller's array and the shuffled copy).

    python tools/finetune_memory.py [--model resnet_basic] [--sizes 256 1024 4096] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import json, sys, numpy as np, onnx
sys.path.insert(0, %(root)r)
from graphprune.calib import Calibration
from graphprune.finetune import FinetuneOptions, finetune
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
dense, pruned = onnx.load(sys.argv[1]), onnx.load(sys.argv[2])
n, batch = int(sys.argv[3]), int(sys.argv[4])
inp = dense.graph.input[0]
shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim][1:]
x = np.random.default_rng(0).standard_normal([n] + shape).astype(np.float32)
cal = Calibration.from_arrays({inp.name: x}, batch=batch)
import torch; torch.ones(1)                     # torch's own import outside the measurement
base = hwm()
out, info = finetune(pruned, dense, cal, FinetuneOptions(steps=20, batch=batch, lr=1e-3, val_fraction=0.05))
print(json.dumps({"n": n, "data_mb": x.nbytes / 2**20, "base_mb": base, "peak_mb": hwm(),
                  "growth_mb": hwm() - base, "steps": info["steps"]}))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet_basic")
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 1024, 4096])
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    sys.path.insert(0, ROOT)
    import onnx

    from graphprune.pipeline import Options, prune
    from refmodels.export import export_named

    tmp = tempfile.mkdtemp()
    dense = os.path.join(tmp, "dense.onnx")
    export_named(a.model, dense, "legacy", dynamic_batch=True)
    res = prune(onnx.load(dense), Options(ratio=0.5, bench=False))
    pruned = os.path.join(tmp, "pruned.onnx")
    onnx.save(res.model, pruned)
    rows = []
    for n in a.sizes:
        r = subprocess.run([sys.executable, "-c", CHILD % {"root": ROOT}, dense, pruned, str(n), str(a.batch)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| samples | input arrays MB | peak RSS growth during finetune MB | growth - 2 x inputs MB |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['data_mb']:.1f} | {r['growth_mb']:.1f} | {r['growth_mb'] - 2 * r['data_mb']:.1f} |")


if __name__ == "__main__":
    main()
