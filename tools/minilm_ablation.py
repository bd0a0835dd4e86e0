"""MiniLM at a MACs target, one graphprune configuration per run: the ablation behind the
quality section of BENCHMARKS.md (what calibration size, padding, residual-aware targets,
downstream refits, sequential OBS, the ridge strength and pruning in steps each contribute).

    python tools/minilm_ablation.py --calib 512 --target 0.5                 # the defaults
    python tools/minilm_ablation.py --calib 512 --no-residual --no-downstream --one-shot
    python tools/minilm_ablation.py --calib 512 --steps 3     # prune, repair, re-score three times
    python tools/minilm_ablation.py --calib 512 --allocation measured  # per-group curves + DP

Same model, sentences and metrics as tools/quality.py (mean embedding cosine and Spearman of the
pairwise-similarity matrix vs dense, 256 evaluation sentences); criterion obs, global scope,
no per-layer normalisation, lstsq repair. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import quality as Q  # noqa: E402
import graphprune.score as score_mod  # noqa: E402
from graphprune import bench  # noqa: E402
from graphprune.calib import Calibration  # noqa: E402
from graphprune.plan import Plan, eligible, global_plan, select_units  # noqa: E402
from graphprune.repair import repair  # noqa: E402
from graphprune.rewrite import rewrite  # noqa: E402
from refmodels import minilm  # noqa: E402


def _sentence_embeddings(m, feeds) -> np.ndarray:
    return np.concatenate([minilm.embed(next(iter(bench.run_model(m, f, threads=2).values())), f["attention_mask"])
                           for f in feeds])


def measured_plan(gp, s, target: float, a) -> Plan:
    """Per-group error curves and a dynamic-programming allocation (SPDY-style): each eligible
    group is pruned alone to every level of ``a.levels`` (its OBS order), its consumers refit
    (lstsq, residual-aware), and the mean embedding cosine loss on the first ``a.sens``
    calibration sentences recorded; then one level per group is chosen so that the summed loss
    is least while the MACs saved add up to the target (errors and savings taken as additive)."""
    feeds = list(gp.calib)
    few, n_s = [], 0
    for f in feeds:
        if n_s >= a.sens:
            break
        few.append(f)
        n_s += f["input_ids"].shape[0]
    ref = _sentence_embeddings(gp.an.model, few)
    elig = [g for g in gp.an.groups if eligible(g, s, (), False)]
    full = {g.id: np.ones(len(g.units), bool) for g in gp.an.groups}
    options: Dict[int, List[Tuple[float, float, Optional[np.ndarray]]]] = {}
    for g in elig:
        n, opts = len(g.units), [(0.0, 0.0, None)]
        for r in sorted({min(float(x), a.max_ratio) for x in a.levels.split(",")}):
            mask = select_units(g, np.asarray(s[g.id], float), max(1, n - int(np.floor(n * r + 1e-9))), 1)
            if mask is None:
                continue
            plan = Plan(gp.an.groups, {**full, g.id: mask}, {})
            pruned = rewrite(gp.an.model, gp.an.analysis, gp.an.root, plan.removed_units())
            pruned, _ = repair(gp.an.model, pruned, gp.an, plan.to_json(), few, "lstsq", ridge=a.ridge, threads=2,
                               residual=not a.no_residual, downstream=False, prior=a.prior)
            loss = float(1.0 - (_sentence_embeddings(pruned, few) * ref).sum(1).mean())
            opts.append((1.0 - gp.cost.fraction(plan.removed_units(), "macs"), loss, mask))
        options[g.id] = opts
        print(f"group {g.id} {g.kind} {n}: " + " ".join(f"{int(m.sum()) if m is not None else n}:{l:.5f}"
                                                         for _, l, m in opts), file=sys.stderr, flush=True)
    need, scale = 1.0 - target, 4000                      # MACs to save, in 1/scale of the dense MACs
    best: Dict[int, Tuple[float, List[int]]] = {0: (0.0, [])}
    for g in elig:
        nxt: Dict[int, Tuple[float, List[int]]] = {}
        for c, (loss, picks) in best.items():
            for j, (saved, l, _) in enumerate(options[g.id]):
                c2 = min(int(round(need * scale)), c + int(round(saved * scale)))
                if c2 not in nxt or nxt[c2][0] > loss + l:
                    nxt[c2] = (loss + l, picks + [j])
        best = nxt
    _, picks = best[max(best)]                            # the target, or the most that can be saved
    keep = dict(full)
    for g, j in zip(elig, picks):
        if options[g.id][j][2] is not None:
            keep[g.id] = options[g.id][j][2]
    return Plan(gp.an.groups, keep, {"scope": "measured", "levels": a.levels})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=int, default=512, help="calibration sentences (default 512)")
    ap.add_argument("--calib-pool", choices=("base", "large"), default="base",
                    help="large: calibration sentences also from more packages' docstrings (quality.sentences)")
    ap.add_argument("--padded", action="store_true", help="calibrate on padded batches of 32")
    ap.add_argument("--no-residual", action="store_true", help="plain per-layer lstsq targets")
    ap.add_argument("--no-downstream", action="store_true", help="refit only the layers that lost inputs")
    ap.add_argument("--one-shot", action="store_true", help="one-shot OBS errors instead of sequential OBS")
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--prior", choices=("zero", "weights"), default="zero",
                    help="what the lstsq ridge pulls toward (default zero)")
    ap.add_argument("--damp", type=float, default=None, help="OBS Hessian damping (default score.DAMP)")
    ap.add_argument("--max-ratio", type=float, default=0.9)
    ap.add_argument("--target", type=float, default=0.5, help="fraction of the dense MACs (default 0.5)")
    ap.add_argument("--steps", type=int, default=1,
                    help="prune in this many steps (geometric MACs targets), re-analysing, re-scoring and "
                         "repairing the previous step's model each time (default 1)")
    ap.add_argument("--allocation", choices=("global", "measured"), default="global",
                    help="global: one OBS threshold over all groups (default); measured: prune each group "
                         "alone at --levels, repair it, measure the embedding error on --sens calibration "
                         "sentences, then pick one level per group by dynamic programming (least summed error "
                         "reaching the MACs target)")
    ap.add_argument("--levels", default="0.2,0.35,0.5,0.65,0.8,0.9", help="--allocation measured: fractions removed")
    ap.add_argument("--sens", type=int, default=128, help="--allocation measured: sentences for the curves")
    a = ap.parse_args()
    if a.one_shot:
        score_mod.GREEDY_FLOPS = -1
    if a.damp is not None:
        score_mod.DAMP = a.damp
    tok, _ = minilm.load()
    cal_s, eval_s = Q.sentences(a.calib, 256, pool=a.calib_pool)
    model = onnx.load(minilm.export(os.path.join(tempfile.mkdtemp(), "minilm.onnx"), "legacy"))
    ev = minilm.tokenize(tok, eval_s)
    calib = Calibration.from_arrays(minilm.tokenize(tok, cal_s), batch=32) if a.padded \
        else Calibration(minilm.tokenize_unpadded(tok, cal_s))

    def emb(m):
        return _sentence_embeddings(m, [ev])
    e0 = emb(model)
    t = time.time()
    dense_macs = bench.count_macs_params(model, Q.count_feed(model, 64))[0]
    cur, plan, n_rep = model, None, 0
    for step in range(1, a.steps + 1):
        gp = Q.GP(cur, calib, threads=2)
        want = a.target ** (step / a.steps)                    # of the dense MACs
        have = bench.count_macs_params(cur, gp.feed)[0] / dense_macs
        s = gp.score("obs", "none")
        if a.allocation == "measured":
            plan = measured_plan(gp, s, min(1.0, want / have), a)
        else:
            plan = global_plan(gp.an.groups, s, normalize="none", target=("macs", min(1.0, want / have)),
                               cost=gp.cost, max_ratio=a.max_ratio)
        pruned = rewrite(gp.an.model, gp.an.analysis, gp.an.root, plan.removed_units())
        pruned, info = repair(gp.an.model, pruned, gp.an, plan.to_json(), list(gp.calib), "lstsq", ridge=a.ridge,
                              threads=2, residual=not a.no_residual, downstream=not a.no_downstream,
                              prior=a.prior)
        n_rep += len(info["repaired"])
        cur = pruned
    e = emb(pruned)
    macs = bench.count_macs_params(pruned, gp.feed)[0] / bench.count_macs_params(model, gp.feed)[0]
    kept = " ".join(f"{g['kind'][0]}{g['channels_after']}/{g['channels_before']}"
                    for g in plan.to_json()["groups"] if g["channels_after"] < g["channels_before"])
    print(json.dumps({**{k: v for k, v in vars(a).items()}, "macs": round(macs, 4),
                      "cos": round(float((e * e0).sum(1).mean()), 4),
                      "spearman": round(Q.spearman(e @ e.T, e0 @ e0.T), 4), "kept": kept,
                      "repaired": n_rep, "s": round(time.time() - t, 1)}))


if __name__ == "__main__":
    main()
