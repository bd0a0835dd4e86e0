"""Check and time graphprune's CUDA kernels on a machine with an NVIDIA GPU and onnxruntime-gpu.

    PYTHONPATH=$PWD python tools/gpu_check.py            # build, check every op x pattern, time
    PYTHONPATH=$PWD python tools/gpu_check.py --no-time  # correctness only

Builds the CUDA library (graphprune.kernels.build_cuda: nvcc + the C compiler), runs SparseMatMul and
SparseConv on CUDAExecutionProvider for every sparsity pattern and several shapes against numpy on the
densified weight (1e-4 relative), checks the nodes really ran on the GPU (onnxruntime's profile), then
times the dense model (MatMul / Conv, cuBLAS / cuDNN) against the sparse one with inputs and outputs
bound on the device (interleaved, median of per-round ratios). Exit status 0 = all correct, 1 = a
mismatch, 2 = no GPU / no CUDA provider / no nvcc (the message says which).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sparse_bench as sb  # noqa: E402  (model builders and masks)

from graphprune import kernels  # noqa: E402

CHECK_SHAPES = [("matmul", 1, 37, 19), ("matmul", 5, 768, 3072), ("matmul", 64, 3072, 768), ("matmul", 1, 4096, 4096),
                ("conv", 7, 40, 33), ("conv", 28, 256, 256), ("conv", 1, 512, 1000)]
TIME_SHAPES = [("matmul", M, K, N) for M in (1, 8, 64, 512) for K, N in ((768, 3072), (3072, 768), (4096, 4096))]
TIME_SHAPES += [("conv", hw, K, N) for hw in (14, 56) for K, N in ((256, 256), (512, 2048))]


def fail(msg, code=2):
    print(f"gpu_check: {msg}", file=sys.stderr)
    sys.exit(code)


def models(op, rng, K, N, M, pname, R=1):
    spec = sb.PATTERNS[pname]
    Ws = [(rng.standard_normal((N, K)) * sb.make_mask(rng, K, N, spec)).astype(np.float32) for _ in range(R)]
    bs = [rng.standard_normal(N).astype(np.float32) for _ in range(R)]
    if op == "conv":
        dm, sm = sb.conv_models(Ws, bs, M, sb.attrs_of(spec))
        X = rng.standard_normal((1, K, M, M)).astype(np.float32)
        ref = np.einsum("nk,bkhw->bnhw", Ws[0].astype(np.float64), X.astype(np.float64)) + bs[0][None, :, None, None]
    else:
        dm, sm = sb.dense_model(Ws, bs, M), sb.sparse_model(Ws, bs, M, sb.attrs_of(spec))
        X = rng.standard_normal((M, K)).astype(np.float32)
        ref = X.astype(np.float64) @ Ws[0].T.astype(np.float64) + bs[0]
    return dm, sm, X, ref


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--patterns", default="u50,u90,u95,2:4,1x8,4x1")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run this script's checks and timing on the CPU library and CPUExecutionProvider "
                         "(tests the script on a machine without a GPU)")
    a = ap.parse_args(argv)
    import onnxruntime as ort
    ep = "CPUExecutionProvider" if a.cpu_dry_run else "CUDAExecutionProvider"
    if ep not in ort.get_available_providers():
        fail(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu on a machine "
             f"with an NVIDIA GPU); providers: {ort.get_available_providers()}")
    try:
        lib = kernels.library_path() if a.cpu_dry_run else str(kernels.build_cuda())
    except kernels.KernelsError as e:
        fail(e.message)
    print(f"# onnxruntime {ort.__version__}, {kernels.library_info(lib)}, library {lib}, provider {ep}", flush=True)
    providers = [ep, "CPUExecutionProvider"] if ep != "CPUExecutionProvider" else [ep]
    device = "cpu" if a.cpu_dry_run else "cuda"
    rng = np.random.default_rng(0)
    bad = 0
    for op, M, K, N in CHECK_SHAPES:
        for pname in a.patterns.split(","):
            if pname == "2:4" and K % 4 or pname.startswith("1x") and N % int(pname[2:]) or pname == "4x1" and K % 4:
                continue
            _, sm, X, ref = models(op, rng, K, N, M, pname)
            so = kernels.register(ort.SessionOptions(), lib)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "gp_gpu_check")
            sess = ort.InferenceSession(sm.SerializeToString(), so, providers=providers)
            y = sess.run(["Y0"], {"X": X})[0]
            prof = sess.end_profiling()
            with open(prof) as f:
                events = json.load(f)
            os.unlink(prof)
            eps = {e.get("args", {}).get("provider") for e in events if e.get("cat") == "Node"
                   and "Sparse" in e.get("args", {}).get("op_name", "")}
            err = float(np.abs(y - ref).max() / max(1.0, np.abs(ref).max()))
            ok = err <= 1e-4 and eps == {ep}
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {op:6s} M={M:<4d} K={K:<5d} N={N:<5d} {pname:4s} rel.err {err:.1e} "
                  f"ran on {sorted(e for e in eps if e)}", flush=True)
    if bad:
        fail(f"{bad} checks failed", 1)
    if a.no_time:
        return 0
    rows = []
    print(f"{'op':6s} {'M':>4s} {'K':>5s} {'N':>5s} {'pattern':>7s} {'dense us':>9s} {'sparse us':>9s} {'speedup':>7s}")
    for op, M, K, N in TIME_SHAPES:
        for pname in a.patterns.split(","):
            dm, sm, X, _ = models(op, rng, K, N, M, pname)
            dense = ort.InferenceSession(dm.SerializeToString(), providers=providers)
            sparse = ort.InferenceSession(sm.SerializeToString(), kernels.register(ort.SessionOptions(), lib),
                                          providers=providers)
            runs = []
            for sess in (dense, sparse):
                io = sess.io_binding()
                io.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(X, device, 0))
                io.bind_output("Y0", device)

                def run(sess=sess, io=io):
                    io.synchronize_inputs()
                    t = time.perf_counter()
                    sess.run_with_iobinding(io)
                    io.synchronize_outputs()
                    return time.perf_counter() - t
                for _ in range(5):
                    run()
                runs.append(run)
            td, ts = [], []
            for _ in range(a.pairs):
                td.append(runs[0]())
                ts.append(runs[1]())
            r = dict(op=op, M=M, K=K, N=N, pattern=pname, dense_us=statistics.median(td) * 1e6,
                     sparse_us=statistics.median(ts) * 1e6, speedup=statistics.median(d / s for d, s in zip(td, ts)))
            rows.append(r)
            print(f"{op:6s} {M:>4d} {K:>5d} {N:>5d} {pname:>7s} {r['dense_us']:>9.1f} {r['sparse_us']:>9.1f} "
                  f"{r['speedup']:>6.2f}x", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
