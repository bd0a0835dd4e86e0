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


class ExternalWriter:
    """Writes random fp32 weights straight into one external-data file."""

    def __init__(self, folder: str, name: str, seed: int):
        self.path = os.path.join(folder, name)
        self.name = name
        self.f = open(self.path, "wb")
        self.rng = np.random.default_rng(seed)
        self.inits = []

    def weight(self, name, shape, scale=0.02, value=None):
        off = self.f.tell()
        if off % 4096:
            self.f.write(b"\0" * (4096 - off % 4096))
            off = self.f.tell()
        rows = shape[0]
        per = max(1, (16 << 20) // (4 * int(np.prod(shape[1:], dtype=np.int64)) or 1))
        for r in range(0, rows, per):
            n = min(per, rows - r)
            if value is not None:
                chunk = np.full((n,) + tuple(shape[1:]), value, dtype=np.float32)
            else:
                chunk = self.rng.standard_normal((n,) + tuple(shape[1:]), dtype=np.float32) * scale
            self.f.write(chunk.tobytes())
        t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.name), ("offset", str(off)), ("length", str(4 * int(np.prod(shape))))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)
        return name

    def close(self):
        self.f.close()


def llama(folder: str, layers: int, d: int = 2048, heads: int = 16, kv_heads: int = 4, mlp: int = 5632,
          vocab: int = 32000, seed: int = 0) -> str:
    """LLaMA-style decoder with external fp32 weights; returns the model path."""
    os.makedirs(folder, exist_ok=True)
    wr = ExternalWriter(folder, "model.onnx.data", seed)
    hd = d // heads
    rep = heads // kv_heads
    nodes, consts = [], []

    def const(name, arr):
        consts.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, outs, **kw):
        nodes.append(helper.make_node(op, ins, outs, name=outs[0] + "_node", **kw))
        return outs[0]

    const("axes_last", np.array([-1], dtype=np.int64))
    const("eps", np.array(1e-6, dtype=np.float32))
    const("two", np.array(2.0, dtype=np.float32))
    const("scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))
    const("q_shape", np.array([0, 0, heads, hd], dtype=np.int64))
    const("kv_shape", np.array([0, 0, kv_heads, hd], dtype=np.int64))
    const("rep_shape", np.array([1, 1, rep, 1, 1], dtype=np.int64))
    const("gqa_shape", np.array([0, heads, -1, hd], dtype=np.int64))
    const("merge_shape", np.array([0, 0, heads * hd], dtype=np.int64))
    const("unsq_axis", np.array([2], dtype=np.int64))

    def rms(x, p):
        sq = node("Pow", [x, "two"], [p + ".sq"])
        mean = node("ReduceMean", [sq, "axes_last"], [p + ".mean"], keepdims=1)
        std = node("Sqrt", [node("Add", [mean, "eps"], [p + ".var"])], [p + ".std"])
        y = node("Div", [x, std], [p + ".norm"])
        return node("Mul", [y, wr.weight(p + ".weight", (d,), value=1.0)], [p + ".out"])

    x = node("Gather", [wr.weight("embed.weight", (vocab, d)), "input_ids"], ["embed.out"])
    for i in range(layers):
        p = f"layers.{i}"
        h = rms(x, p + ".attn_norm")
        q = node("MatMul", [h, wr.weight(p + ".q.weight", (d, heads * hd))], [p + ".q"])
        k = node("MatMul", [h, wr.weight(p + ".k.weight", (d, kv_heads * hd))], [p + ".k"])
        v = node("MatMul", [h, wr.weight(p + ".v.weight", (d, kv_heads * hd))], [p + ".v"])
        q = node("Transpose", [node("Reshape", [q, "q_shape"], [p + ".q4"])], [p + ".qt"], perm=[0, 2, 1, 3])
        kv = []
        for nm, t in (("k", k), ("v", v)):
            t = node("Transpose", [node("Reshape", [t, "kv_shape"], [f"{p}.{nm}4"])], [f"{p}.{nm}t"], perm=[0, 2, 1, 3])
            t = node("Unsqueeze", [t, "unsq_axis"], [f"{p}.{nm}u"])
            t = node("Expand", [t, "rep_shape"], [f"{p}.{nm}e"])
            kv.append(node("Reshape", [t, "gqa_shape"], [f"{p}.{nm}r"]))
        kt = node("Transpose", [kv[0]], [p + ".kT"], perm=[0, 1, 3, 2])
        s = node("Div", [node("MatMul", [q, kt], [p + ".qk"]), "scale"], [p + ".scores"])
        a = node("Softmax", [s], [p + ".probs"], axis=-1)
        o = node("MatMul", [a, kv[1]], [p + ".ctx"])
        o = node("Reshape", [node("Transpose", [o], [p + ".ctxT"], perm=[0, 2, 1, 3]), "merge_shape"], [p + ".ctx3"])
        o = node("MatMul", [o, wr.weight(p + ".o.weight", (heads * hd, d))], [p + ".attn"])
        x = node("Add", [x, o], [p + ".res1"])
        h = rms(x, p + ".mlp_norm")
        gate = node("MatMul", [h, wr.weight(p + ".gate.weight", (d, mlp))], [p + ".gate"])
        gate = node("Mul", [gate, node("Sigmoid", [gate], [p + ".sig"])], [p + ".silu"])
        up = node("MatMul", [h, wr.weight(p + ".up.weight", (d, mlp))], [p + ".up"])
        m = node("MatMul", [node("Mul", [gate, up], [p + ".gu"]), wr.weight(p + ".down.weight", (mlp, d))], [p + ".down"])
        x = node("Add", [x, m], [p + ".res2"])
    h = rms(x, "final_norm")
    node("MatMul", [h, wr.weight("lm_head.weight", (d, vocab))], ["logits"])
    wr.close()
    g = helper.make_graph(nodes, "llama",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])],
                          wr.inits + consts)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def cmd_llama(args):
    path = os.path.join(args.out, "model.onnx")
    if not os.path.exists(path) or args.rebuild:
        t = time.perf_counter()
        path = llama(args.out, args.layers, d=args.dim, heads=args.heads, kv_heads=args.kv_heads, mlp=args.mlp,
                     vocab=args.vocab)
        print(f"built {path} in {time.perf_counter() - t:.1f}s", flush=True)
    size = os.path.getsize(os.path.join(args.out, "model.onnx.data"))
    out = os.path.join(args.out, "pruned.onnx")
    cmd = [sys.executable, "-m", "graphprune", "run", path, "-o", out, "--ratio", str(args.ratio)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(r.stdout[-2000:], r.stderr[-2000:], sep="\n")
    res = {"model_bytes": size, "model_gib": round(size / 2**30, 2), "wall_s": round(wall, 1),
           "peak_rss_gib": round(peak / 2**30, 2), "rss_over_model": round(peak / size, 2), "rc": r.returncode}
    print(json.dumps(res))
    return res


def cmd_nodes(args):
    from graphprune.pipeline import Analyzed

    rows = []
    for n in args.sizes:
        m = deep_cnn(n)
        t, c = time.perf_counter(), time.process_time()
        an = Analyzed(m)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        rows.append({"nodes": len(m.graph.node), "analyze_s": round(dt, 3), "cpu_s": round(dc, 3),
                     "groups": len(an.groups), "us_per_node": round(dt / len(m.graph.node) * 1e6, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("nodes")
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    p = sub.add_parser("llama")
    p.add_argument("--out", default="/tmp/graphprune-llama")
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    {"nodes": cmd_nodes, "llama": cmd_llama}[args.cmd](args)
