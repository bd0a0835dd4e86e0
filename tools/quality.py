"""Pruning quality, side by side in one run: graphprune's criteria x repair modes against
Torch-Pruning's magnitude (and, on the CNN, Taylor) pruning at equal MACs reduction.

    python tools/quality.py [--models digits minilm] [--factors 1.5 2 3] [--out results.json]

digits: the CNN of refmodels/digits.py (trained here, seed 0), test accuracy of the pruned model
  without and with a short fine-tune (1 epoch, Adam, lr 1e-4, the same for both tools; graphprune's pruned ONNX graph is run and
  fine-tuned in torch by a small interpreter of its ops, Torch-Pruning's pruned module directly).
  Calibration: 256 training images.
minilm: all-MiniLM-L6-v2 (refmodels/minilm.py), English sentences split from the docstrings of
  Python's standard library; 512 calibration sentences (batched by token count, no padding),
  256 disjoint evaluation sentences.
  Mean cosine similarity of the sentence embeddings to the dense ones and Spearman correlation
  of the pairwise-similarity matrix (upper triangle) with the dense one. No fine-tuning.
  graphprune prunes attention heads and MLP widths (the residual width is left alone);
  Torch-Pruning prunes the same (heads via num_heads, intermediate widths) with
  MagnitudeImportance.

MACs: graphprune's count (bench.count_macs_params, batch 1; MiniLM at sequence 64); the
Torch-Pruning models are brought to the same target by bisection on their pruning ratio,
counted the same way (the CNN exported to ONNX; MiniLM from its layer shapes, a formula checked
against the ONNX count of the dense model).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from graphprune import bench  # noqa: E402
from graphprune.calib import Calibration  # noqa: E402
from graphprune.cost import CostModel  # noqa: E402
from graphprune.pipeline import Analyzed, Options, calibrate, count_feed  # noqa: E402
from graphprune.plan import global_plan, uniform_for_target  # noqa: E402
from graphprune.repair import repair  # noqa: E402
from graphprune.rewrite import rewrite  # noqa: E402
from graphprune.score import CRITERIA, score  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- graphprune side


class GP:
    """One analysed model; scores per criterion cached; a pruned (and repaired) model per
    (criterion, target, repair)."""

    def __init__(self, model: onnx.ModelProto, calib: Calibration, seq_len: int = 64, threads: int = 2):
        self.model = model
        self.calib = calib.check(model)
        self.an = Analyzed(model)
        self.cost = CostModel(self.an.model, self.an.analysis, self.an.root, count_feed(self.an.model, seq_len))
        self.feed = count_feed(model, seq_len)
        self.threads = threads
        self.scores: Dict[str, dict] = {}
        self.calib_s: Dict[str, float] = {}

    def score(self, criterion: str, normalize: str) -> dict:
        key = f"{criterion}/{normalize}"
        if key not in self.scores:
            t = time.perf_counter()
            opts = Options(criterion=criterion, calib=self.calib, normalize=normalize, threads=self.threads)
            kw = {}
            need = getattr(CRITERIA[criterion], "needs", None)
            if need in ("calib", "gram", "synthetic"):
                kw["calib"] = calibrate(self.an, opts, self.calib)
            if need == "samples":
                kw.update(calib=self.calib, model=self.an.model, samples=self.calib.first(opts.taylor_samples),
                          threads=self.threads)
            self.scores[key] = score(self.an.groups, self.an.graph, criterion, normalize=normalize, **kw)
            self.calib_s[key] = time.perf_counter() - t
        return self.scores[key]

    def prune(self, criterion: str, target: float, repair_mode: str, scope: str = "global",
              normalize: str = "mean"):
        s = self.score(criterion, normalize)
        if scope == "global":
            plan = global_plan(self.an.groups, s, normalize=normalize, target=("macs", target), cost=self.cost)
        else:
            plan = uniform_for_target(self.an.groups, s, ("macs", target), self.cost)
        removed = plan.removed_units()
        pruned = rewrite(self.an.model, self.an.analysis, self.an.root, removed)
        if repair_mode != "none":
            pruned, _ = repair(self.an.model, pruned, self.an, plan.to_json(), list(self.calib), repair_mode,
                               threads=self.threads)
        macs = bench.count_macs_params(pruned, self.feed)[0] / bench.count_macs_params(self.model, self.feed)[0]
        return pruned, macs


# ----------------------------------------------------------------------------- ONNX -> torch


def onnx_to_torch(model: onnx.ModelProto):
    """A torch module that runs (and can train) a one-output graph: graphprune's interpreter
    (graphprune.torch), returning the output tensor itself (for a supervised loop)."""
    import torch

    from graphprune.torch import onnx_to_torch as convert

    class Single(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = convert(model)

        def forward(self, x):
            return next(iter(self.net(x).values()))

    return Single()


def tp_at_macs(make, macs_fraction, target: float, steps: int = 12, tol: float = 0.01):
    """Torch-Pruning at a MACs target: bisection on its pruning ratio (in [0, 0.95], every try from torch
    seed 0) for the model whose MACs fraction ``macs_fraction(model)`` is the largest at most ``target``
    (stopping within ``tol`` of it); ``make(ratio)`` prunes a fresh copy. Returns (model, fraction)."""
    import torch
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        torch.manual_seed(0)
        m = make(mid)
        fr = macs_fraction(m)
        if fr <= target:
            best, hi = (m, fr), mid
        else:
            lo = mid
        if best is not None and target - best[1] < tol:
            break
    return best


def distil(pruned: onnx.ModelProto, dense: onnx.ModelProto, feeds, seconds: float, lr: float, threads: int,
           batch: int = 16, steps: int = 100000, eval_every: int = 50, match=(), match_weight: float = 1.0,
           pooled_weight: float = 0.0) -> (onnx.ModelProto, dict):
    """graphprune.finetune on unlabeled feeds within a time budget (the CLI's `finetune`).
    ``pooled_weight``: also 1 - cosine of the mean-pooled sentence embeddings (what the MiniLM
    metric reads), through FinetuneOptions.extra_loss."""
    from graphprune.finetune import FinetuneOptions, finetune

    extra = None
    if pooled_weight:
        import torch

        def extra(student, teacher, feed):
            m = torch.from_numpy(np.asarray(feed["attention_mask"])).to(torch.float32)[..., None]
            s, t = next(iter(student.values())), next(iter(teacher.values()))
            es, et = (s * m).sum(1) / m.sum(1).clamp_min(1e-9), (t * m).sum(1) / m.sum(1).clamp_min(1e-9)
            return pooled_weight * (1 - torch.nn.functional.cosine_similarity(es, et, dim=-1)).mean()

    t = time.time()
    last = [0.0]

    def progress(ev):
        if time.time() - last[0] > 30:
            last[0] = time.time()
            log(f"  distil step {ev['step']} loss {ev['loss_avg']:.4g} val {ev.get('best_val')} {ev['elapsed_s']:.0f}s")

    tuned, info = finetune(pruned, dense, feeds, FinetuneOptions(
        steps=steps, lr=lr, batch=batch, max_seconds=seconds, clock="cpu", threads=threads, val_fraction=0.05,
        eval_every=eval_every, patience=1000, match=tuple(match), match_weight=match_weight,
        extra_loss=extra), progress)
    info["wall_s"] = time.time() - t
    return tuned, info


# ----------------------------------------------------------------------------- digits


def run_digits(factors, criteria, repairs, threads, finetune_epochs=1, tp_compare=True, distil_s=0.0,
               distil_lr=1e-3, distil_loss="kl", configs=None, seed=0):
    import torch

    from refmodels import digits

    torch.set_num_threads(threads)
    t = time.time()
    net, acc_torch = digits.train(seed=seed, log=log)
    log(f"digits trained in {time.time() - t:.0f}s")
    xtr, ytr, xte, yte = digits.data()
    tmp = tempfile.mkdtemp()
    path = digits.export(net, os.path.join(tmp, "digits.onnx"))
    model = onnx.load(path)

    def acc_onnx(m):
        out = bench.run_model(m, {"image": xte})
        return float((next(iter(out.values())).argmax(1) == yte).mean())

    def finetune_onnx(m):
        mod = onnx_to_torch(m)
        digits.fit(mod, xtr, ytr, epochs=finetune_epochs, lr=1e-4, seed=1, adam=True)
        return digits.accuracy(mod, xte, yte)

    def shifted(x):          # unlabeled distillation inputs: the training images and their 1-pixel shifts
        return np.concatenate([np.roll(x, (dy, dx), axis=(2, 3)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])

    def distil_digits(m):
        from graphprune.finetune import FinetuneOptions, finetune
        cal = Calibration.from_arrays({"image": shifted(xtr)}, batch=64)
        tuned, info = finetune(m, model, cal, FinetuneOptions(
            epochs=1000, lr=distil_lr, batch=64, max_seconds=distil_s, clock="cpu", threads=threads, loss=distil_loss,
            val_fraction=0.05, eval_every=100, patience=1000))
        return acc_onnx(tuned), info

    dense = acc_onnx(model)
    log(f"dense accuracy {dense:.4f}")
    calib = Calibration.from_arrays({"image": xtr[:256]}, batch=64)
    gp = GP(model, calib, threads=threads)
    rows = []
    for f in factors:
        target = 1.0 / f
        for crit, rep in (configs or [(c, r) for c in criteria for r in repairs]):
            t = time.time()
            pruned, macs = gp.prune(crit, target, rep, "uniform", "mean")
            acc = acc_onnx(pruned)
            ft = finetune_onnx(pruned)
            rows.append({"model": "digits", "factor": f, "tool": "graphprune", "criterion": crit, "repair": rep,
                         "macs": macs, "acc": acc, "acc_ft": ft, "s": time.time() - t})
            if distil_s:
                acc_d, info = distil_digits(pruned)
                rows[-1].update({"acc_distil": acc_d, "ft_steps": info["steps"], "ft_s": info["seconds"],
                                 "ft_cpu_s": info["train_cpu_s"],
                                 "ft_loss": distil_loss, "ft_lr": distil_lr, "ft_load": os.getloadavg()[0]})
            log(rows[-1])
        if not tp_compare:
            continue
        import torch_pruning as tp
        # Torch-Pruning
        example = torch.from_numpy(xtr[:1])
        dense_macs = bench.count_macs_params(model)[0]
        for imp_name in ("magnitude", "taylor", "random"):
            def make(ratio):
                m = copy.deepcopy(net).eval()
                imp = {"magnitude": tp.importance.MagnitudeImportance(p=2),
                       "taylor": tp.importance.TaylorImportance(),
                       "random": tp.importance.RandomImportance()}[imp_name]
                pr = tp.pruner.MetaPruner(m, example, importance=imp, pruning_ratio=ratio, global_pruning=False,
                                          ignored_layers=[m.fc])
                if imp_name == "taylor":
                    m.zero_grad()
                    loss = torch.nn.functional.cross_entropy(m(torch.from_numpy(xtr[:256])),
                                                             torch.from_numpy(ytr[:256]))
                    loss.backward()
                pr.step()
                m.eval()
                return m

            def macs_of(m):
                p = os.path.join(tmp, "tp.onnx")
                digits.export(m, p)
                return bench.count_macs_params(onnx.load(p))[0] / dense_macs

            m, fr = tp_at_macs(make, macs_of, target)
            acc = digits.accuracy(m, xte, yte)
            digits.fit(m, xtr, ytr, epochs=finetune_epochs, lr=1e-4, seed=1, adam=True)
            ft = digits.accuracy(m, xte, yte)
            rows.append({"model": "digits", "factor": f, "tool": "torch-pruning", "criterion": imp_name,
                         "repair": "none", "macs": fr, "acc": acc, "acc_ft": ft})
            log(rows[-1])
    return {"dense": dense, "rows": rows}


# ----------------------------------------------------------------------------- MiniLM


STDLIB_DOC_MODULES = [
    "json", "os", "re", "collections", "itertools", "functools", "string", "textwrap", "argparse",
    "logging", "email", "http.client", "urllib.request", "unittest", "pathlib", "subprocess", "threading",
    "asyncio", "decimal", "fractions", "statistics", "random", "datetime", "calendar", "csv", "sqlite3",
    "zipfile", "tarfile", "shutil", "tempfile", "glob", "fnmatch", "inspect", "typing", "dataclasses",
    "enum", "abc", "contextlib", "heapq", "bisect", "struct", "codecs", "locale", "gettext", "pprint",
    "difflib", "html", "configparser", "hashlib", "hmac", "secrets", "socket", "ssl", "selectors", "queue",
    "sched", "weakref", "copy", "pickle", "gzip", "bz2", "lzma", "traceback", "warnings", "pdb", "timeit",
    "tracemalloc", "operator", "numbers", "imaplib", "smtplib", "ftplib", "mailbox", "optparse",
    "getopt", "shlex", "cmd", "wave", "colorsys", "uuid", "ipaddress", "xml.dom.minidom", "zoneinfo"]

# packages whose submodules' docstrings extend the calibration pool (--calib-pool large)
EXTRA_DOC_PACKAGES = ["email", "xml", "http", "urllib", "json", "logging", "unittest", "asyncio", "concurrent",
                      "multiprocessing", "importlib", "sqlite3", "ctypes", "wsgiref", "xmlrpc", "numpy", "click",
                      "onnx"]
_SKIP_SUBMODULES = ("test", "_C", "cuda", "distributed", "f2py", "__main__", "distutils", "_pyinstaller")


def _docstrings(modules) -> List[str]:
    import inspect

    docs = []
    for mod in modules:
        docs.append(mod.__doc__ or "")
        for _, obj in sorted(vars(mod).items(), key=lambda kv: kv[0]):
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == mod.__name__:
                docs.append(obj.__doc__ or "")
                if inspect.isclass(obj):
                    for _, meth in sorted(vars(obj).items(), key=lambda kv: kv[0]):
                        if inspect.isfunction(meth):
                            docs.append(meth.__doc__ or "")
    return docs


def _split_sentences(docs) -> List[str]:
    out, seen = [], set()
    for d in docs:
        if not isinstance(d, str):
            continue
        text = " ".join(d.split())
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            words = s.split()
            if not (8 <= len(words) <= 40) or not s.endswith("."):
                continue
            alpha = sum(c.isalpha() or c.isspace() for c in s) / len(s)
            if alpha < 0.9 or ">>>" in s or "::" in s or s in seen:
                continue
            seen.add(s)
            out.append(s)
    return out


def _import_quietly(name: str):
    import contextlib
    import importlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:
            return None


def sentences(n_calib=128, n_eval=256, seed=0, pool: str = "base") -> (List[str], List[str]):
    """English sentences from the docstrings of Python's standard library. The evaluation set
    is the same whatever ``n_calib`` and ``pool``: the last ``n_eval`` of the shuffled base pool.
    ``pool="large"`` draws calibration sentences also from the submodules of
    ``EXTRA_DOC_PACKAGES`` (more of the standard library, numpy, click, onnx), never one of the
    evaluation sentences."""
    import pkgutil

    mods = [m for m in (_import_quietly(n) for n in STDLIB_DOC_MODULES) if m is not None]
    out = _split_sentences(_docstrings(mods))
    rng = np.random.default_rng(seed)
    rng.shuffle(out)
    ev = out[len(out) - n_eval:] if n_eval else []
    cal = out[:len(out) - n_eval]
    if pool == "large":
        extra_mods = []
        for name in EXTRA_DOC_PACKAGES:
            mod = _import_quietly(name)
            if mod is None:
                continue
            extra_mods.append(mod)
            for info in sorted(pkgutil.walk_packages(getattr(mod, "__path__", []), name + ".",
                                                     onerror=lambda n: None), key=lambda i: i.name):
                if not any(x in info.name for x in _SKIP_SUBMODULES):
                    sub = _import_quietly(info.name)
                    if sub is not None:
                        extra_mods.append(sub)
        have = set(cal) | set(ev)
        extra = [x for x in _split_sentences(_docstrings(extra_mods)) if x not in have]
        extra.sort()
        np.random.default_rng(seed + 1).shuffle(extra)
        cal = cal + extra
    assert len(cal) >= n_calib, (len(cal), n_calib)
    return cal[:n_calib], ev


def bert_macs(bert, seq=64) -> int:
    """MACs of the encoder at batch 1, sequence ``seq``: every Linear of the encoder, plus
    Q·Kᵀ and attention·V (2 · seq² · all_head_size per layer)."""
    import torch

    total = 0
    for layer in bert.encoder.layer:
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                total += seq * m.in_features * m.out_features
        total += 2 * seq * seq * layer.attention.self.query.out_features
    return total


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    iu = np.triu_indices(a.shape[0], 1)
    return float(spearmanr(a[iu], b[iu]).correlation)


def run_minilm(factors, configs, threads, n_calib=512, n_eval=256, tp_compare=True, pool="base",
               distil_s: float = 0.0, distil_sentences: int = 4096, distil_lr: float = 1e-4, distil_kw=None,
               distil_max_length: int = 64):
    import torch

    from refmodels import minilm

    torch.set_num_threads(threads)
    tok, bert = minilm.load()
    cal_s, eval_s = sentences(n_calib, n_eval, pool=pool)
    tmp = tempfile.mkdtemp()
    path = minilm.export(os.path.join(tmp, "minilm.onnx"), "legacy")
    model = onnx.load(path)
    cal = minilm.tokenize(tok, cal_s[:2])           # Torch-Pruning's example inputs
    ev = minilm.tokenize(tok, eval_s)
    calib = Calibration(minilm.tokenize_unpadded(tok, cal_s), "calibration sentences")

    def emb_onnx(m):
        h = bench.run_model(m, ev, threads=threads)
        return minilm.embed(next(iter(h.values())), ev["attention_mask"])

    def metrics(e, e0):
        return {"cos": float((e * e0).sum(1).mean()), "spearman": spearman(e @ e.T, e0 @ e0.T)}

    e0 = emb_onnx(model)
    dense_macs = bench.count_macs_params(model, count_feed(model, 64))[0]
    formula = bert_macs(bert)
    log(f"MiniLM MACs at seq 64: onnx {dense_macs}, formula {formula}")
    t = time.time()
    gp = GP(model, calib, threads=threads)
    log(f"analyzed in {time.time() - t:.1f}s")
    rows = []
    distil_feeds = None
    for f in factors:
        target = 1.0 / f
        for crit, rep, scope, norm in configs:
            t = time.time()
            pruned, macs = gp.prune(crit, target, rep, scope, norm)
            rows.append({"model": "minilm", "factor": f, "tool": "graphprune", "criterion": crit, "repair": rep,
                         "scope": scope, "normalize": norm, "macs": macs, **metrics(emb_onnx(pruned), e0),
                         "s": time.time() - t})
            if distil_s:
                if distil_feeds is None:
                    ds, _ = sentences(distil_sentences, n_eval, pool="large")
                    distil_feeds = minilm.tokenize_unpadded(tok, ds, max_batch=(distil_kw or {}).get("batch", 16),
                                                           max_length=distil_max_length)
                tuned, info = distil(pruned, model, distil_feeds, distil_s, distil_lr, threads, **(distil_kw or {}))
                after = metrics(emb_onnx(tuned), e0)
                rows[-1].update({"ft_cos": after["cos"], "ft_spearman": after["spearman"], "ft_steps": info["steps"],
                                 "ft_s": info["seconds"], "ft_cpu_s": info["train_cpu_s"], "ft_sentences": sum(int(x["input_ids"].shape[0]) for x in distil_feeds), "ft_lr": distil_lr,
                                 "ft_load": os.getloadavg()[0], "ft_matched": len(info["matched_tensors"]),
                                 "ft_val": [info["val_loss_before"], info["val_loss_best"]], **{
                                     "ft_" + k: v for k, v in (distil_kw or {}).items()}})
            log(rows[-1])
        if not tp_compare:
            continue
        import torch_pruning as tp
        ids = torch.from_numpy(cal["input_ids"][:2])
        mask = torch.from_numpy(cal["attention_mask"][:2])

        for imp_name in ("magnitude", "random"):
            def make(ratio):
                from minilm_baseline import torch_pruning_hf
                imp = tp.importance.MagnitudeImportance(p=2) if imp_name == "magnitude" \
                    else tp.importance.RandomImportance()
                return torch_pruning_hf(bert, ids, mask, ratio, imp)[0]

            m, fr = tp_at_macs(make, lambda m: bert_macs(m) / formula, target)
            with torch.no_grad():
                h = m(input_ids=torch.from_numpy(ev["input_ids"]),
                      attention_mask=torch.from_numpy(ev["attention_mask"])).last_hidden_state.numpy()
            rows.append({"model": "minilm", "factor": f, "tool": "torch-pruning", "criterion": imp_name,
                         "repair": "none", "macs": fr, **metrics(minilm.embed(h, ev["attention_mask"]), e0)})
            log(rows[-1])
    return {"dense_macs": dense_macs, "formula_macs": formula, "rows": rows, "calib_s": gp.calib_s,
            "n_calib": n_calib, "n_eval": n_eval, "pool": pool}


def measure_calibration(n_calib=128, threads=2) -> dict:
    """Calibration of MiniLM on 128 sentences, in a fresh process: wall time and peak RSS."""
    import subprocess

    code = r'''
import os, sys, time, json, resource, numpy as np, onnx
sys.path.insert(0, %r)
from graphprune.calib import Calibration
from graphprune.pipeline import Analyzed, Options, calibrate
path, npz = sys.argv[1], sys.argv[2]
model = onnx.load(path)
cal = Calibration.from_npz(npz, batch=32).check(model)
an = Analyzed(model)
def status_kb(key="VmHWM"):
    # VmHWM: this process's peak RSS; ru_maxrss would carry the forking parent's peak over exec
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hwm_kb = status_kb
base = hwm_kb()
rss0 = status_kb("VmRSS")
out = {}
for crit in ("activation", "obs"):
    t = time.perf_counter()
    st = calibrate(an, Options(criterion=crit, calib=cal, threads=%d), cal)
    out[crit + "_s"] = time.perf_counter() - t
    out[crit + "_stats_mb"] = sum(s.sum.nbytes * 2 + (s.gram.nbytes if s.gram is not None else 0)
                                  for s in st.values()) / 2**20
    del st
out["peak_rss_mb"] = hwm_kb() / 1024
out["hwm_before_calib_mb"] = base / 1024          # the analysis' own peak
out["rss_before_calib_mb"] = rss0 / 1024          # what calibration starts from
print(json.dumps(out))
''' % (ROOT, threads)
    from refmodels import minilm

    tok, bert = minilm.load()
    cal_s, _ = sentences(n_calib, 0)
    tmp = tempfile.mkdtemp()
    path = minilm.export(os.path.join(tmp, "minilm.onnx"), "legacy")
    enc = minilm.tokenize(tok, cal_s)
    np.savez(os.path.join(tmp, "cal.npz"), **enc)
    r = subprocess.run([sys.executable, "-c", code, path, os.path.join(tmp, "cal.npz")], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["model_mb"] = os.path.getsize(path) / 2**20
    # one batch (32 sentences) of every activation the statistics read, float32
    seq = enc["input_ids"].shape[1]
    out["batch_activations_mb"] = 32 * seq * 6 * (384 + 1536) * 4 / 2**20
    out["seq"] = int(seq)
    return out


def table(res: dict) -> str:
    lines = []
    if "digits" in res:
        d = res["digits"]
        lines += [f"digits CNN (dense test accuracy {d['dense'] * 100:.1f} %; 360 test images; graphprune: --scope uniform, bisection on the ratio to the MACs target)", "",
                  "| MACs | tool | criterion | repair | MACs kept | accuracy | after 1-epoch fine-tune | "
                  "after distillation (graphprune finetune) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            dd = (f" {r['acc_distil'] * 100:.1f} ({r['ft_steps']} steps, {r['ft_cpu_s']:.0f} CPU s) |"
                  if "acc_distil" in r else " - |")
            lines.append(f"| {r['factor']}x | {r['tool']} | {r['criterion']} | {r['repair']} | {r['macs']:.3f} | "
                         f"{r['acc'] * 100:.1f} | {r['acc_ft'] * 100:.1f} |" + dd)
        lines.append("")
    if "minilm" in res:
        d = res["minilm"]
        lines += [f"all-MiniLM-L6-v2 ({d['n_calib']} calibration / {d['n_eval']} evaluation sentences; "
                  f"MACs at sequence 64: {d['dense_macs'] / 1e6:.0f} M dense)", "",
                  "| MACs | tool | criterion | repair | scope / normalize | MACs kept | embedding cosine | "
                  "Spearman (pairwise sim.) | after distillation: cosine / Spearman |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            sc = f"{r.get('scope', '-')} / {r.get('normalize', '-')}" if r["tool"] == "graphprune" else "-"
            ft = (f" {r['ft_cos']:.4f} / {r['ft_spearman']:.4f} ({r['ft_steps']} steps, {r['ft_cpu_s']:.0f} CPU s) |"
                  if "ft_spearman" in r else " - |")
            lines.append(f"| {r['factor']}x | {r['tool']} | {r['criterion']} | {r['repair']} | {sc} | "
                         f"{r['macs']:.3f} | {r['cos']:.4f} | {r['spearman']:.4f} |" + ft)
        lines.append("")
    if "calibration" in res:
        c = res["calibration"]
        own = c["peak_rss_mb"] - c["rss_before_calib_mb"]
        budget = 2 * c["model_mb"] + c["batch_activations_mb"]
        lines += ["MiniLM calibration, 128 sentences (sequence %d), fresh process: activation statistics %.1f s, "
                  "with Gram matrices (obs) %.1f s; process peak RSS %.0f MB (analysis peak %.0f MB, %.0f MB resident "
                  "when calibration starts); calibration's own peak %.0f MB vs budget %.0f MB (2 x model file "
                  "%.0f MB + one batch of the activations read %.0f MB); statistics kept %.0f MB" % (
                      c["seq"], c["activation_s"], c["obs_s"], c["peak_rss_mb"], c.get("hwm_before_calib_mb", 0),
                      c["rss_before_calib_mb"], own, budget, c["model_mb"], c["batch_activations_mb"],
                      c["obs_stats_mb"]), ""]
    return "\n".join(lines)


def rows_from_log(path: str) -> list:
    """The row dicts a run logged (one per line), e.g. to tabulate a run that was stopped."""
    import ast
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith("{'model'"):
                out.append(ast.literal_eval(line.strip()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["digits", "minilm"],
                    help="digits, minilm (includes the calibration measurement), calibration (only that)")
    ap.add_argument("--factors", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--minilm-calib", type=int, default=512, help="MiniLM calibration sentences (default 512)")
    ap.add_argument("--calib-pool", choices=("base", "large"), default="base",
                    help="large: MiniLM calibration sentences also from more packages' docstrings (see sentences)")
    ap.add_argument("--minilm-configs", nargs="+", default=None, metavar="CRIT/REPAIR/SCOPE/NORM",
                    help="graphprune configurations for MiniLM (default: the five of the published table)")
    ap.add_argument("--distil-seconds", type=float, default=0.0,
                    help="digits and MiniLM: also distil every graphprune row for this long (graphprune.finetune, CPU) on "
                         "unlabeled sentences, and measure again")
    ap.add_argument("--distil-sentences", type=int, default=4096)
    ap.add_argument("--distil-lr", type=float, default=1e-4)
    ap.add_argument("--distil-match", nargs="+", default=[], metavar="NAME|GLOB|auto",
                    help="MiniLM: also match these intermediate tensors (FinetuneOptions.match; auto: the layers' "
                         "LayerNorm outputs)")
    ap.add_argument("--distil-match-weight", type=float, default=1.0)
    ap.add_argument("--distil-pooled-weight", type=float, default=0.0,
                    help="MiniLM: add this weight x (1 - cosine of the mean-pooled sentence embeddings) to the loss")
    ap.add_argument("--distil-max-length", type=int, default=64,
                    help="MiniLM: distillation sentences truncated to this many tokens (the evaluation keeps 64)")
    ap.add_argument("--distil-batch", type=int, default=16, help="MiniLM: sentences per distillation step")
    ap.add_argument("--distil-eval-every", type=int, default=50,
                    help="MiniLM: steps between validations on the held-out 5 %% (they count in the budget)")
    ap.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning rows")
    ap.add_argument("--digits-configs", nargs="+", default=None, metavar="CRIT/REPAIR",
                    help="graphprune configurations for digits (default: every criterion x repair)")
    ap.add_argument("--digits-distil-lr", type=float, default=1e-3)
    ap.add_argument("--digits-distil-loss", default="kl", choices=("mse", "cosine", "kl"))
    ap.add_argument("--digits-seed", type=int, default=0,
                    help="seed of the dense digits CNN's training (its test accuracy varies by a few of 360 images)")
    a = ap.parse_args()
    res = {}
    t0 = time.time()
    if "digits" in a.models:
        crits = ["l2", "fpgm", "activation", "fluctuation", "obs", "taylor", "random"]
        configs = [tuple(c.split("/")) for c in a.digits_configs] if a.digits_configs else None
        res["digits"] = run_digits(a.factors, crits, ["none", "bias", "lstsq"], a.threads, tp_compare=not a.no_tp,
                                   distil_s=a.distil_seconds, distil_lr=a.digits_distil_lr,
                                   distil_loss=a.digits_distil_loss, configs=configs, seed=a.digits_seed)
    if "minilm" in a.models:
        configs = [("l2", "none", "global", "mean"), ("fluctuation", "lstsq", "global", "none"),
                   ("obs", "none", "global", "none"), ("obs", "lstsq", "global", "none"),
                   ("random", "lstsq", "global", "mean")]
        if a.minilm_configs:
            configs = [tuple(c.split("/")) for c in a.minilm_configs]
        res["minilm"] = run_minilm(a.factors, configs, a.threads, n_calib=a.minilm_calib, pool=a.calib_pool,
                                   tp_compare=not a.no_tp, distil_s=a.distil_seconds,
                                   distil_sentences=a.distil_sentences, distil_lr=a.distil_lr,
                                   distil_kw=dict(match=a.distil_match, match_weight=a.distil_match_weight,
                                                  batch=a.distil_batch, eval_every=a.distil_eval_every,
                                                  pooled_weight=a.distil_pooled_weight),
                                   distil_max_length=a.distil_max_length)
    if ("minilm" in a.models and not a.distil_seconds) or "calibration" in a.models:
        res["calibration"] = measure_calibration(threads=a.threads)
    res["seconds"] = time.time() - t0
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    print(table(res))


if __name__ == "__main__":
    main()
