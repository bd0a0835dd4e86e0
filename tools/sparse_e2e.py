"""Sparse layers end to end: latency vs quality against dense and structured-only pruning.

    python tools/sparse_e2e.py [--models minilm digits llama] [--threads 1] [--out sparse_e2e.json]

Every configuration goes through graphprune's pipeline (``pipeline.prune``: structured plan,
repair, then the sparse step with per-layer kernel choice); the model it writes is then timed
against the dense model in this process, interleaved (A B A B ..., median of per-pair ratios,
``bench.measure_latency``), 1 thread, batch 1, and its quality measured:

minilm: all-MiniLM-L6-v2 (refmodels/minilm.py); 128 calibration sentences, 256 evaluation sentences
  (tools/quality.py's fixed split); Spearman of the pairwise-similarity matrix of the sentence
  embeddings against the dense model's, and their mean cosine (as tools/quality.py). Latency at
  sequence 64.
digits: the CNN of refmodels/digits.py (trained here, seed 0): test accuracy; latency at batch 1.
llama: one LLaMA-style decoder layer (RMSNorm, rotary, GQA, SwiGLU; refmodels/transformers.py's
  Llama at dim 1024, hidden 2816, 16 heads, 4 KV heads; random weights): cosine and relative
  error of its outputs against the dense layer on held-out random tokens. Latency at sequence 64
  and at sequence 1 (one decoding step without a cache); layers are chosen at sequence 64 (the
  pipeline's ``seq_len``) or, in the rows with ``seq_len: 1``, at the decoding shape.

The machine's load average is recorded with every run: latency ratios on a shared machine are
noisy; quality figures are not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import List

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from graphprune import bench  # noqa: E402
from graphprune.calib import Calibration  # noqa: E402
from graphprune.pipeline import Options, prune  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load() -> float:
    return os.getloadavg()[0]


def run_config(model, cfg: dict, calib, threads: int, lat_feeds: dict, quality, seq_len: int) -> dict:
    """Prune with ``cfg`` (Options fields), time against dense at every feed, measure quality."""
    t = time.time()
    opts = Options(**{"bench": False, "threads": threads, "calib": calib, "seq_len": seq_len, **cfg})
    res = prune(model, opts)
    row = {"config": cfg, "prune_s": round(time.time() - t, 1)}
    sp = res.report.get("sparse")
    if sp:
        row["sparse"] = {"masked": sp.get("masked"), "converted": sp.get("converted"),
                         "verify": {k: (v.get("passed"), v.get("max_rel_diff")) for k, v in sp.get("verify", {}).items()
                                    if isinstance(v, dict)},
                         "layer_speedups": [e.get("speedup") for e in sp["layers"]]}
    v = res.report.get("verify")
    if v:
        row["verify_structured"] = v.get("passed")
    for name, feed in lat_feeds.items():
        lat = bench.measure_latency(model, res.model, feed, threads=threads, repeats=40)
        row[f"latency_{name}"] = {"dense_ms": round(lat["before_ms"], 4), "ms": round(lat["after_ms"], 4),
                                  "speedup": round(lat["speedup"], 3)}
    row.update(quality(res.model))
    row["load"] = round(load(), 2)
    log(json.dumps(row))
    return row


# ----------------------------------------------------------------------------- MiniLM


def minilm_configs() -> List[dict]:
    cf = []
    for s in (0.3, 0.5, 0.7, 0.9):
        cf.append(dict(ratio=0.0, sparsity=s, pattern="unstructured", sparse_criterion="sparsegpt"))
    for c in ("wanda", "magnitude"):
        cf.append(dict(ratio=0.0, sparsity=0.5, pattern="unstructured", sparse_criterion=c))
    cf.append(dict(ratio=0.0, pattern="2:4", sparse_criterion="sparsegpt"))
    # sparse + structured heads
    cf.append(dict(ratio=0.0, head_ratio=0.25, mlp_ratio=0.0, criterion="activation", repair="lstsq",
                   sparsity=0.5, pattern="unstructured", sparse_criterion="sparsegpt"))
    # structured only, at several MACs targets
    for tm in (0.8, 0.67, 0.5):
        cf.append(dict(target_macs=tm, criterion="activation", scope="global", repair="lstsq"))
    return cf


def run_minilm(threads: int, configs=None) -> dict:
    from refmodels import minilm
    from quality import sentences, spearman

    tok, _ = minilm.load()
    cal_s, eval_s = sentences(128, 256)
    tmp = tempfile.mkdtemp()
    path = minilm.export(os.path.join(tmp, "minilm.onnx"), "legacy")
    model = onnx.load(path)
    ev = minilm.tokenize(tok, eval_s)
    calib = Calibration(minilm.tokenize_unpadded(tok, cal_s), "calibration sentences")
    long = minilm.tokenize(tok, [" ".join(eval_s[:8])])           # one real 64-token input
    lat_feeds = {"b1_s64": {k: v[:, :64] for k, v in long.items()}}

    def emb(m):
        h = bench.run_model(m, ev, threads=threads)
        return minilm.embed(next(iter(h.values())), ev["attention_mask"])

    e0 = emb(model)

    def quality(m):
        e = emb(m)
        return {"cos": round(float((e * e0).sum(1).mean()), 4), "spearman": round(spearman(e @ e.T, e0 @ e0.T), 4)}

    rows = [run_config(model, c, calib, threads, lat_feeds, quality, 64) for c in (configs or minilm_configs())]
    return {"rows": rows, "n_calib": 128, "n_eval": 256}


# ----------------------------------------------------------------------------- digits


def run_digits(threads: int) -> dict:
    import torch
    from refmodels import digits

    torch.set_num_threads(threads)
    net, acc0 = digits.train(seed=0, log=log)
    tmp = tempfile.mkdtemp()
    model = onnx.load(digits.export(net, os.path.join(tmp, "digits.onnx")))
    xtr, ytr, xte, yte = digits.data()
    calib = Calibration([{"image": xtr[i:i + 64]} for i in range(0, 256, 64)], "digits")
    lat_feeds = {"b1": {"image": xte[:1]}, "b32": {"image": xte[:32]}}

    def quality(m):
        out = bench.run_model(m, {"image": xte}, threads=threads)
        return {"accuracy": round(float((next(iter(out.values())).argmax(1) == yte).mean()), 4)}

    cfgs = [dict(ratio=0.0, sparsity=s, pattern="unstructured", sparse_criterion=c)
            for s in (0.5, 0.7, 0.9) for c in ("magnitude", "sparsegpt")]
    cfgs.append(dict(ratio=0.0, pattern="2:4", sparse_criterion="sparsegpt"))
    cfgs += [dict(target_macs=t, criterion="activation", scope="global", repair="lstsq") for t in (0.8, 0.5)]
    rows = [run_config(model, c, calib, threads, lat_feeds, quality, 64) for c in cfgs]
    return {"dense_accuracy": acc0, "rows": rows}


# ----------------------------------------------------------------------------- LLaMA-style layer


def run_llama(threads: int, configs=None) -> dict:
    import torch
    from refmodels.transformers import Llama, _randomise, export_model

    torch.manual_seed(0)
    net = Llama(vocab=1000, dim=1024, depth=1, heads=16, kv_heads=4, hidden=2816, ctx=128)
    _randomise(net)
    net.eval()
    tmp = tempfile.mkdtemp()
    ids = torch.randint(0, 1000, (1, 16))
    path = export_model(net, (ids,), ["input_ids"], {"input_ids": {0: "batch", 1: "sequence"},
                                                      "output": {0: "batch", 1: "sequence"}},
                        os.path.join(tmp, "llama.onnx"))
    model = onnx.load(path)
    rng = np.random.default_rng(0)
    calib = Calibration([{"input_ids": rng.integers(0, 1000, (4, 64)).astype(np.int64)} for _ in range(4)], "tokens")
    ev = {"input_ids": np.random.default_rng(1).integers(0, 1000, (8, 64)).astype(np.int64)}
    ref = next(iter(bench.run_model(model, ev, threads=threads).values())).reshape(8, -1).astype(np.float64)
    lat_feeds = {"b1_s64": {"input_ids": ev["input_ids"][:1]}, "b1_s1": {"input_ids": ev["input_ids"][:1, :1]}}

    def quality(m):
        y = next(iter(bench.run_model(m, ev, threads=threads).values())).reshape(8, -1).astype(np.float64)
        cos = (y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
        return {"cos": round(float(cos.mean()), 4),
                "rel_err": round(float(np.linalg.norm(y - ref) / np.linalg.norm(ref)), 4)}

    cfgs = [dict(ratio=0.0, sparsity=s, pattern="unstructured", sparse_criterion="sparsegpt") for s in (0.5, 0.7, 0.9)]
    cfgs.append(dict(ratio=0.0, pattern="2:4", sparse_criterion="sparsegpt"))
    # layers chosen at the decoding shape (sequence 1)
    cfgs += [dict(ratio=0.0, sparsity=s, pattern="unstructured", sparse_criterion="sparsegpt", seq_len=1)
             for s in (0.5, 0.7)]
    cfgs += [dict(target_macs=t, criterion="activation", scope="global", repair="lstsq") for t in (0.67, 0.5)]
    rows = [run_config(model, c, calib, threads, lat_feeds, quality, 64) for c in (configs or cfgs)]
    return {"rows": rows}


def run_minilm_layers(threads: int, sparsities=(0.5, 0.7, 0.8, 0.9), rows: int = 64) -> dict:
    """Per-layer dense vs kernel at MiniLM's six layer kinds of block 0 (magnitude masks,
    unstructured and 2:4), at ``rows`` tokens: the figures the pipeline's per-layer choice sees."""
    from refmodels import minilm

    from graphprune import sparsify as sp

    tmp = tempfile.mkdtemp()
    model = onnx.load(minilm.export(os.path.join(tmp, "minilm.onnx"), "legacy"))
    layers = sp.find_layers(model)[0][:6]
    x = {lay.K: np.random.default_rng(0).standard_normal((1, rows, lay.K)).astype(np.float32) for lay in layers}
    out = []
    for pat, s in [("unstructured", s) for s in sparsities] + [("2:4", 0.5)]:
        p = sp.Pattern.parse(pat)
        items = [(lay, np.where(sp.mask_from_scores(np.abs(lay.Wr), p, s), lay.Wr, 0).astype(np.float32), x[lay.K])
                 for lay in layers]
        for lay, r in zip(layers, sp.time_layers(items, p, threads=threads)):
            out.append({"pattern": pat, "sparsity": s, "layer": lay.name.split("/")[-2] + "/" +
                        lay.name.split("/")[-3], "K": lay.K, "N": lay.N, **{k: round(v, 4) for k, v in r.items()}})
            log(json.dumps(out[-1]))
    return {"rows": out, "tokens": rows, "load": load()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["minilm", "digits", "llama"],
                    help="minilm, digits, llama, minilm-layers (per-layer kernel timing only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minilm-sparsity", type=float, nargs="+", default=None, metavar="S",
                    help="MiniLM: only SparseGPT unstructured rows at these sparsities")
    ap.add_argument("--out", default="sparse_e2e.json")
    a = ap.parse_args()
    res = {"load_start": load()}
    for name in a.models:
        t = time.time()
        if name == "minilm" and a.minilm_sparsity:
            res[name] = run_minilm(a.threads, [dict(ratio=0.0, sparsity=s, pattern="unstructured",
                                                    sparse_criterion="sparsegpt") for s in a.minilm_sparsity])
        else:
            res[name] = {"minilm": run_minilm, "digits": run_digits, "llama": run_llama,
                         "minilm-layers": run_minilm_layers}[name](a.threads)
        res[name]["s"] = round(time.time() - t, 1)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
