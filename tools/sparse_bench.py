"""Per-op benchmark of graphprune's sparse custom ops against onnxruntime's dense MatMul, against
onnxruntime's com.microsoft SparseToDenseMatMul (a CSR sparse tensor input) and against the bytes-moved
limit of this machine.

    PYTHONPATH=$PWD python tools/sparse_bench.py                      # the full table (minutes)
    PYTHONPATH=$PWD python tools/sparse_bench.py --shapes 768x3072 --rows 1 --patterns u90,u95,2:4

How it times: every model holds R *different* layers of the same shape (so the weights stream from
memory as in a real network rather than staying in cache; by default the caches are also flushed
before every timed run, --cache warm skips that), all applied to the same input, each with
its own output; with 1 thread the clock is the calling thread's CPU time (onnxruntime runs every op on
that thread, so time this shared machine gives to other jobs is not counted), wall time otherwise;
inputs and outputs are bound once (run_with_iobinding / run_with_ort_values), so one run
costs R ops plus one call overhead (tens of microseconds). The dense, sparse and SparseToDenseMatMul
runs are interleaved (D S T D S T ...) and speedups are medians of the per-round ratios; per-op times
are the median run time / R. The bytes-moved limit is the weight bytes (plus activations) divided by
the bandwidth of a large numpy copy measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphprune import kernels

PATTERNS = {
    "u50": dict(kind="u", density=0.50), "u75": dict(kind="u", density=0.25),
    "u90": dict(kind="u", density=0.10), "u95": dict(kind="u", density=0.05),
    "2:4": dict(kind="nm", n=2, m=4),
    "1x4": dict(kind="b", bk=1, bn=4, density=0.10), "1x8": dict(kind="b", bk=1, bn=8, density=0.10),
    "4x1": dict(kind="b", bk=4, bn=1, density=0.10),
}


def make_mask(rng, K, N, spec):
    """[N, K] keep-mask (one row per output)."""
    if spec["kind"] == "u":
        return rng.random((N, K)) < spec["density"]
    if spec["kind"] == "nm":
        n, m = spec["n"], spec["m"]
        keep = np.argsort(rng.random((N, K // m, m)), axis=2)[:, :, :n]
        mask = np.zeros((N, K // m, m), bool)
        np.put_along_axis(mask, keep, True, axis=2)
        return mask.reshape(N, K)
    bk, bn = spec["bk"], spec["bn"]
    grid = rng.random((K // bk, N // bn)) < spec["density"]
    return np.kron(grid, np.ones((bk, bn), bool)).T


def attrs_of(spec):
    if spec["kind"] == "nm":
        return dict(pattern=1, pattern_n=spec["n"], pattern_m=spec["m"])
    if spec["kind"] == "b":
        return dict(pattern=2, block_k=spec["bk"], block_n=spec["bn"])
    return {}


def packed_bytes(spec, nnz, K, N):
    """Bytes the kernel's packed layout reads per call (sliced ELL: 4 B value + 2 B index per nonzero,
    slices padded; 2:4: 4 B per kept value + 2 bits per kept value; blocks: 4 B per value + 2 B per block)."""
    if spec["kind"] == "nm":
        return nnz * 4 + nnz // 4
    if spec["kind"] == "b" and spec["bn"] > 1:
        return nnz * 4 + nnz // spec["bn"] * 2
    return nnz * 6


def dense_model(Ws, bs, M):
    K, N = Ws[0].shape[1], Ws[0].shape[0]
    nodes, inits, outs = [], [], []
    for r, (W, b) in enumerate(zip(Ws, bs)):
        inits += [numpy_helper.from_array(np.ascontiguousarray(W.T), f"W{r}"), numpy_helper.from_array(b, f"b{r}")]
        nodes += [helper.make_node("MatMul", ["X", f"W{r}"], [f"t{r}"]), helper.make_node("Add", [f"t{r}", f"b{r}"],
                                                                                          [f"Y{r}"])]
        outs.append(helper.make_tensor_value_info(f"Y{r}", TensorProto.FLOAT, [M, N]))
    g = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [M, K])], outs,
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def sparse_model(Ws, bs, M, attrs):
    K, N = Ws[0].shape[1], Ws[0].shape[0]
    nodes, inits, outs = [], [], []
    for r, (W, b) in enumerate(zip(Ws, bs)):
        v, i, p = kernels.pack_csr(W)
        names = [f"v{r}", f"i{r}", f"p{r}", f"b{r}"]
        inits += [numpy_helper.from_array(a, n) for a, n in zip((v, i, p, b), names)]
        nodes.append(helper.make_node("SparseMatMul", ["X", *names], [f"Y{r}"], domain=kernels.DOMAIN, K=K, N=N,
                                      **attrs))
        outs.append(helper.make_tensor_value_info(f"Y{r}", TensorProto.FLOAT, [M, N]))
    g = helper.make_graph(nodes, "sparse", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [M, K])], outs,
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid(kernels.DOMAIN, 1)], ir_version=8)


def conv_models(Ws, bs, HW, attrs):
    """Pointwise Conv (dense, onnxruntime) and SparseConv on X [1, K, HW, HW]."""
    K, N = Ws[0].shape[1], Ws[0].shape[0]
    xs, ys = [1, K, HW, HW], [1, N, HW, HW]
    d_nodes, d_inits, s_nodes, s_inits, outs = [], [], [], [], []
    for r, (W, b) in enumerate(zip(Ws, bs)):
        d_inits += [numpy_helper.from_array(W.reshape(N, K, 1, 1), f"W{r}"), numpy_helper.from_array(b, f"b{r}")]
        d_nodes.append(helper.make_node("Conv", ["X", f"W{r}", f"b{r}"], [f"Y{r}"]))
        v, i, p = kernels.pack_csr(W)
        names = [f"v{r}", f"i{r}", f"p{r}", f"b{r}"]
        s_inits += [numpy_helper.from_array(a, n) for a, n in zip((v, i, p, b), names)]
        s_nodes.append(helper.make_node("SparseConv", ["X", *names], [f"Y{r}"], domain=kernels.DOMAIN, K=K, N=N,
                                        **attrs))
        outs.append(helper.make_tensor_value_info(f"Y{r}", TensorProto.FLOAT, ys))
    x = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xs)]
    dm = helper.make_model(helper.make_graph(d_nodes, "dense", x, outs, initializer=d_inits),
                           opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sm = helper.make_model(helper.make_graph(s_nodes, "sparse", x, outs, initializer=s_inits),
                           opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(kernels.DOMAIN, 1)],
                           ir_version=8)
    return dm, sm


def s2d_model(R, K, N, M):
    """com.microsoft SparseToDenseMatMul: Yt[N, M] = A[N, K] (CSR sparse input) @ Xt[K, M] (transposes of X
    and Y are left out, in its favour)."""
    nodes = [helper.make_node("SparseToDenseMatMul", [f"A{r}", "Xt"], [f"Yt{r}"], domain="com.microsoft")
             for r in range(R)]
    ins = [helper.make_sparse_tensor_value_info(f"A{r}", TensorProto.FLOAT, [N, K]) for r in range(R)]
    ins.append(helper.make_tensor_value_info("Xt", TensorProto.FLOAT, [K, M]))
    outs = [helper.make_tensor_value_info(f"Yt{r}", TensorProto.FLOAT, [N, M]) for r in range(R)]
    g = helper.make_graph(nodes, "s2d", ins, outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8)


class Flusher:
    """Evicts the caches before a timed run (cold: weights come from memory, as for a network whose layers
    do not all fit in cache) by writing a buffer of 2x the last-level cache; warm: does nothing."""

    def __init__(self, cold, mb=64):
        self.buf = np.zeros(mb * 2 ** 20 // 4, np.float32) if cold else None

    def __call__(self):
        if self.buf is not None:
            self.buf += 1.0


CLOCK = time.perf_counter  # set by main(): thread CPU time for 1 thread, wall time otherwise


def bound_runner(sess, feeds, out_shapes):
    io = sess.io_binding()
    keep = []
    for name, arr in feeds.items():
        ov = ort.OrtValue.ortvalue_from_numpy(arr)
        keep.append(ov)
        io.bind_ortvalue_input(name, ov)
    for name, shape in out_shapes.items():
        ov = ort.OrtValue.ortvalue_from_numpy(np.empty(shape, np.float32))
        keep.append(ov)
        io.bind_ortvalue_output(name, ov)

    def run():
        t = CLOCK()
        sess.run_with_iobinding(io)
        return CLOCK() - t
    run.keep = keep
    return run


def s2d_runner(sess, Ws, X):
    dev = ort.OrtDevice.make("cpu", 0)
    feeds = {}
    keep = []
    for r, W in enumerate(Ws):
        v, i, p = kernels.pack_csr(W)
        i64, p64 = i.astype(np.int64), p.astype(np.int64)
        keep += [v, i64, p64]
        st = ort.SparseTensor.sparse_csr_from_numpy(np.array(W.shape, np.int64), v, i64, p64, dev)
        feeds[f"A{r}"] = ort.OrtValue.ort_value_from_sparse_tensor(st)
    xt = np.ascontiguousarray(X.T)
    keep.append(xt)
    feeds["Xt"] = ort.OrtValue.ortvalue_from_numpy(xt)
    names = [f"Yt{r}" for r in range(len(Ws))]

    def run():
        t = CLOCK()
        sess.run_with_ort_values(names, feeds)
        return CLOCK() - t
    run.keep = keep
    return run


def measure_bandwidth(mb=512, reps=5):
    """Memory bandwidth from a large numpy copy: (read + write bytes) / time, best of `reps`."""
    a = np.ones(mb * 1024 * 1024 // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def bench_one(rng, K, N, M, pname, threads, pairs, budget, with_s2d, bw, flush, layout="auto", op="matmul"):
    spec = PATTERNS[pname]
    layer = K * N * 4
    R = int(max(1, min(8, budget // layer)))
    Ws, bs = [], []
    for _ in range(R):
        mask = make_mask(rng, K, N, spec)
        Ws.append((rng.standard_normal((N, K)) * mask).astype(np.float32))
        bs.append(rng.standard_normal(N).astype(np.float32))
    # conv: M is the feature map side, X [1, K, M, M]; the rows of the MatMul view are its M*M positions
    X = rng.standard_normal((M, K) if op == "matmul" else (1, K, M, M)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if op == "conv":
        dm, sm = conv_models(Ws, bs, M, attrs_of(spec))
        with_s2d = False
    else:
        dm, sm = dense_model(Ws, bs, M), sparse_model(Ws, bs, M, attrs_of(spec))
    dense = ort.InferenceSession(dm.SerializeToString(), so)
    if layout == "auto":
        os.environ.pop("GRAPHPRUNE_KERNELS_LAYOUT", None)
    else:
        os.environ["GRAPHPRUNE_KERNELS_LAYOUT"] = layout  # read when the session creates its kernels
    sparse = ort.InferenceSession(sm.SerializeToString(), kernels.session_options(threads))
    os.environ.pop("GRAPHPRUNE_KERNELS_LAYOUT", None)
    outs = {f"Y{r}": (M, N) if op == "matmul" else (1, N, M, M) for r in range(R)}
    run_d = bound_runner(dense, {"X": X}, outs)
    run_s = bound_runner(sparse, {"X": X}, outs)
    # correctness of what we time
    yd = dense.run(["Y0"], {"X": X})[0]
    ys = sparse.run(["Y0"], {"X": X})[0]
    err = float(np.abs(yd - ys).max() / max(1.0, np.abs(yd).max()))
    run_t = None
    if with_s2d:
        s2d = ort.InferenceSession(s2d_model(R, K, N, M).SerializeToString(), so)
        run_t = s2d_runner(s2d, Ws, X)
    for _ in range(3):  # warm up
        run_d(), run_s()
    slow_t = run_t() > 0.5 if run_t else False  # SparseToDenseMatMul can take seconds a run: then 1 round
    td, ts, tt = [], [], []
    for i in range(pairs):
        flush()
        td.append(run_d())
        flush()
        ts.append(run_s())
        if run_t and (i < 1 or not slow_t):
            flush()
            tt.append(run_t())
    nnz = int(sum(np.count_nonzero(W) for W in Ws) / R)
    rows_ = M if op == "matmul" else M * M
    act = (rows_ * K + rows_ * N) * 4
    dense_bytes, sparse_bytes = layer + act, packed_bytes(spec, nnz, K, N) + act
    row = dict(op=op, K=K, N=N, M=M, pattern=pname, layout=layout, threads=threads, R=R, density=nnz / (K * N),
               dense_us=statistics.median(td) / R * 1e6, sparse_us=statistics.median(ts) / R * 1e6,
               speedup=statistics.median(a / b for a, b in zip(td, ts)),
               bytes_limit=dense_bytes / sparse_bytes,
               sparse_floor_us=sparse_bytes / bw * 1e6, dense_floor_us=dense_bytes / bw * 1e6, rel_err=err)
    if run_t:
        row["s2d_us"] = statistics.median(tt) / R * 1e6
        row["vs_s2d"] = statistics.median(c / b for c, b in zip(tt, ts[:len(tt)]))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", choices=("matmul", "conv"), default="matmul",
                    help="conv: pointwise Conv vs SparseConv on [1, K, M, M] (--rows are feature-map sides)")
    ap.add_argument("--shapes", default="768x3072,3072x768,4096x4096", help="KxN list")
    ap.add_argument("--rows", default="1,8,64", help="M list (batch rows)")
    ap.add_argument("--patterns", default=",".join(PATTERNS), help=f"from {', '.join(PATTERNS)}")
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}")
    ap.add_argument("--pairs", type=int, default=15, help="interleaved rounds per configuration")
    ap.add_argument("--budget-mb", type=float, default=96, help="dense weight bytes per model (sets R)")
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold",
                    help="cold: evict the caches before every timed run (default); warm: weights may stay cached")
    ap.add_argument("--no-s2d", action="store_true", help="skip com.microsoft SparseToDenseMatMul")
    ap.add_argument("--s2d-max-rows", type=int, default=8,
                    help="time SparseToDenseMatMul only up to this many rows (it takes seconds per op beyond)")
    ap.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                    help="cpu: CPU time of the calling thread (with 1 thread onnxruntime runs every op on it, so time "
                         "the machine spends on other jobs is not counted); auto: cpu for 1 thread, wall otherwise")
    ap.add_argument("--layouts", default="auto", help="auto (the kernel's choice) and/or csr, sell, nm24, blkn "
                    "(forced; the batch-1 kernels only)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    kernels.library_path()
    bw = measure_bandwidth()
    print(f"# onnxruntime {ort.__version__}, kernels {kernels.library_info()}, cpus {os.cpu_count()}, "
          f"numpy-copy bandwidth {bw / 1e9:.1f} GB/s", flush=True)
    hdr = (f"{'thr':>3} {'K':>5} {'N':>5} {'M':>3} {'pattern':>7} {'layout':>6} {'R':>2} {'dense us':>9} {'sparse us':>9} "
           f"{'speedup':>7} {'bytes lim':>9} {'floor us':>8} {'s2d us':>9} {'vs s2d':>7}")
    print(hdr, flush=True)
    rng = np.random.default_rng(0)
    flush = Flusher(a.cache == "cold")
    print(f"# op: {a.op}; cache: {a.cache}, {a.pairs} interleaved rounds per row", flush=True)
    rows = []
    global CLOCK
    for threads in [int(t) for t in a.threads.split(",")]:
        cpu = a.clock == "cpu" or (a.clock == "auto" and threads == 1)
        CLOCK = time.thread_time if cpu else time.perf_counter
        print(f"# {threads} thread(s): {'thread CPU' if cpu else 'wall'} time", flush=True)
        for shape in a.shapes.split(","):
            K, N = (int(v) for v in shape.lower().split("x"))
            for pname in a.patterns.split(","):
                for layout in a.layouts.split(","):
                    for M in [int(m) for m in a.rows.split(",")]:
                        r = bench_one(rng, K, N, M, pname, threads, a.pairs, a.budget_mb * 2 ** 20,
                                      not a.no_s2d and M <= a.s2d_max_rows, bw,
                                      flush, layout, a.op)
                        rows.append(r)
                        print(f"{threads:>3} {K:>5} {N:>5} {M:>3} {pname:>7} {layout:>6} {r['R']:>2} {r['dense_us']:>9.1f} "
                              f"{r['sparse_us']:>9.1f} {r['speedup']:>6.2f}x {r['bytes_limit']:>8.2f}x "
                              f"{r['sparse_floor_us']:>8.1f} {r.get('s2d_us', float('nan')):>9.1f} "
                              f"{r.get('vs_s2d', float('nan')):>6.2f}x", flush=True)
                        if r["rel_err"] > 1e-4:
                            print(f"    WARNING: sparse differs from dense by {r['rel_err']:.2e} (relative)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(bandwidth=bw, onnxruntime=ort.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
