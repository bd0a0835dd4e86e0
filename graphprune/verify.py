"""The verify step: prove the pruned model right with the masked-dense oracle (docs/design.md §2).

Take the dense model; in every ``in`` member of an exact group zero the removed input slices.
The pruned model must give the same outputs. It needs nothing but the plan's members, so it
catches wrong offsets, axes, group layouts and stale shape constants whatever produced them.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from .inputs import at_free_sizes, explain_run_error, free_dims, free_sizes, random_inputs
from .runtime import Runner
from .errors import InputError


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]

RTOL = 1e-4
ATOL = 1e-5


def _mask_array(W: np.ndarray, md: dict) -> np.ndarray:
    axis = int(md["axis"])
    n_axis = W.shape[axis] * int(md.get("groups", 1))
    positions = md.get("positions")
    covered = np.arange(n_axis) if positions is None else np.asarray(positions, dtype=np.int64)
    dead = np.setdiff1d(covered, np.asarray(md.get("kept", []), dtype=np.int64))
    if dead.size == 0:
        return W
    W = np.array(W, copy=True)
    g = int(md.get("groups", 1))
    if g > 1:
        cin_g = W.shape[1]
        rows_g = W.shape[0] // g
        for q in dead.tolist():
            grp, col = divmod(q, cin_g)
            W[grp * rows_g:(grp + 1) * rows_g, col] = 0
        return W
    idx = [slice(None)] * W.ndim
    idx[axis] = dead
    W[tuple(idx)] = 0
    return W


def masked_dense(model: onnx.ModelProto, plan_json: dict) -> onnx.ModelProto:
    from .fold import fold_weight_subgraphs, untie_constants  # plans name these constants (same outputs)

    m = untie_constants(fold_weight_subgraphs(model))
    m = copy.deepcopy(m) if m is model else m
    inits = {t.name: t for t in m.graph.initializer}
    consts = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant" and n.output}
    for grp in plan_json.get("groups", []):
        if not grp.get("exact", True):
            continue
        for md in grp.get("members", []):
            if md.get("role") != "in":
                continue
            name = md["tensor"]
            if name in inits:
                W = numpy_helper.to_array(inits[name])
                inits[name].CopyFrom(numpy_helper.from_array(_mask_array(W, md), name))
            elif name in consts:
                node = consts[name]
                for a in node.attribute:
                    if a.name == "value":
                        W = numpy_helper.to_array(a.t)
                        a.t.CopyFrom(numpy_helper.from_array(_mask_array(W, md), a.t.name))
    return m


def comparable(v) -> Optional[np.ndarray]:
    """An output as a numeric array: tensors as they are, a sequence of maps with the same keys
    (scikit-learn classifiers' ZipMap) as [items, keys] in key order, a sequence of tensors of one
    shape stacked; None for anything else (compared exactly)."""
    if isinstance(v, np.ndarray):
        return v if v.dtype.kind in "biufc" else None
    if isinstance(v, (list, tuple)):
        if not v:
            return np.zeros((0,))
        if all(isinstance(x, dict) for x in v):
            keys = sorted(v[0], key=repr)
            if all(sorted(x, key=repr) == keys for x in v):
                try:
                    return np.asarray([[x[k] for k in keys] for x in v], dtype=np.float64)
                except (TypeError, ValueError):
                    return None
            return None
        if all(isinstance(x, np.ndarray) for x in v) and len({x.shape for x in v}) == 1:
            return comparable(np.stack(v))
    if isinstance(v, dict):
        return comparable([v])
    return None


def _same(x, y) -> bool:
    """Exact equality of two non-tensor outputs (maps, sequences, strings)."""
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == y.shape \
            and bool(np.all(x == y))
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    if isinstance(x, dict):
        return isinstance(y, dict) and set(x) == set(y) and all(_same(x[k], y[k]) for k in x)
    return x == y


def compare(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> Dict[str, float]:
    worst_abs = 0.0
    worst_rel = 0.0
    for k, x0 in a.items():
        y0 = b[k]
        x, y = comparable(x0), comparable(y0)
        if x is None or y is None:
            if not _same(x0, y0):
                return {"max_abs_diff": float("inf"), "max_rel_diff": float("inf"), "mismatch": k}
            continue
        if x.shape != y.shape:
            return {"max_abs_diff": float("inf"), "max_rel_diff": float("inf"), "shape_mismatch": k}
        if x.size == 0:
            continue
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        d = float(np.max(np.abs(x64 - y64)))
        scale = float(np.max(np.abs(x64)))
        worst_abs = max(worst_abs, d)
        worst_rel = max(worst_rel, d / max(scale, 1e-12) if d > 0 else 0.0)
    return {"max_abs_diff": worst_abs, "max_rel_diff": worst_rel}


def _size(v) -> int:
    a = comparable(v)
    return int(a.size) if a is not None else 1


def verify(dense: onnx.ModelProto, pruned: onnx.ModelProto, plan_json: dict, seeds=(0, 1),
           feeds: Optional[List[Dict[str, np.ndarray]]] = None, dims=None, ranges=None) -> dict:
    """Masked-dense oracle on random inputs valid for the model (inputs.random_inputs; ``ranges``
    overrides integer inputs' ranges) or on ``feeds``. Returns {max_abs_diff, max_rel_diff,
    passed, ...}. Outputs that are not tensors (sequences of maps) are compared as arrays where
    they convert to one, exactly otherwise."""
    oracle = masked_dense(dense, plan_json)
    worst = {"max_abs_diff": 0.0, "max_rel_diff": 0.0}
    compared = 0
    # one session per model for every feed, and one model in onnxruntime at a time
    run_oracle = Runner(oracle)
    given = feeds

    def references(size, run=run_oracle):
        fs = given if given is not None else [random_inputs(dense, seed=s, dims=dims, other=size, ranges=ranges)
                                            for s in seeds]
        return fs, [run(feed) for feed in fs]
    try:
        if given is not None:
            feeds, refs = references(None)
        else:   # free symbolic dims (image height/width, sequence) start at 8; a model that cannot
            # run there (an FPN needing multiples of 32) is tried at the next of inputs.free_sizes (implied sizes, then FREE_SIZES)
            _, (feeds, refs) = at_free_sizes(dense, references)
    except Exception as e:  # onnxruntime cannot run the input model itself
        why = _first_line(e)
        probe = given[0] if given else None
        if probe is None:
            try:
                probe = random_inputs(dense, seed=seeds[0], dims=dims, ranges=ranges)
            except Exception:
                probe = None
        first = e
        if probe is not None:       # the failure at the first size (the last one tried may differ)
            try:
                Runner(dense)(probe)
            except Exception as e0:
                first = e0
        hint = explain_run_error(dense, probe, first)
        if hint:
            raise InputError(f"onnxruntime cannot run the input model on {'the given' if given else 'random'} "
                             f"inputs: {hint}")
        if any(n.domain not in ("", "ai.onnx", "com.microsoft") for n in dense.graph.node):
            return {"skipped": f"onnxruntime cannot run the model (custom ops): {why}"}
        tried = (f" (free dims tried at {', '.join(map(str, free_sizes(dense)))})"
                 if given is None and free_dims(dense) else "")
        raise InputError(f"onnxruntime cannot run the input model{tried}: {why}")
    del run_oracle, oracle, references     # the oracle session goes before the pruned one comes
    run_pruned = Runner(pruned)
    for feed, ref in zip(feeds, refs):
        try:
            got = run_pruned(feed)
        except Exception as e:
            return {"max_abs_diff": None, "max_rel_diff": None, "passed": False,
                    "reason": f"the pruned model does not run: {_first_line(e)}"}
        compared += sum(_size(v) for v in ref.values())
        c = compare(ref, got)
        if "shape_mismatch" in c:
            return {"max_abs_diff": None, "max_rel_diff": None, "passed": False,
                    "reason": f"output {c['shape_mismatch']} changed shape"}
        if "mismatch" in c:
            return {"max_abs_diff": None, "max_rel_diff": None, "passed": False,
                    "reason": f"output {c['mismatch']} (not a tensor) differs"}
        for k in worst:
            worst[k] = max(worst[k], c[k])
    inexact = [g["id"] for g in plan_json.get("groups", [])
               if not g.get("exact", True) and g.get("channels_after") != g.get("channels_before")]
    if compared == 0:
        return {"skipped": "the model's outputs are empty for these inputs: nothing to compare"}
    passed = worst["max_rel_diff"] <= RTOL or worst["max_abs_diff"] <= ATOL
    out = {"max_abs_diff": worst["max_abs_diff"], "max_rel_diff": worst["max_rel_diff"], "passed": bool(passed)}
    if inexact:
        out["inexact_groups"] = inexact
    return out


def agreement(dense: onnx.ModelProto, model: onnx.ModelProto, feeds: List[Dict[str, np.ndarray]]) -> dict:
    """How close ``model``'s outputs are to the dense model's on ``feeds``: the mean cosine
    similarity of every sample's float outputs (flattened), the relative error
    ||y - y_dense|| / ||y_dense|| over everything, and the largest absolute difference."""
    cos, num, den, worst = [], 0.0, 0.0, 0.0
    run_dense = Runner(dense)
    refs = [run_dense(feed) for feed in feeds]
    del run_dense
    run = Runner(model)
    for feed, ref in zip(feeds, refs):
        got = run(feed)
        keys = [k for k, v in sorted(ref.items()) if comparable(v) is not None and comparable(v).dtype.kind == "f"]
        r = [comparable(ref[k]).astype(np.float64) for k in keys]
        o = [comparable(got[k]).astype(np.float64) for k in keys]
        if not r:
            continue
        b = r[0].shape[0] if r[0].ndim else 1
        rr = np.concatenate([x.reshape(b, -1) for x in r], axis=1)
        oo = np.concatenate([x.reshape(b, -1) for x in o], axis=1)
        nr, no = np.linalg.norm(rr, axis=1), np.linalg.norm(oo, axis=1)
        cos.extend(((rr * oo).sum(1) / np.maximum(nr * no, 1e-30)).tolist())
        num += float(((rr - oo) ** 2).sum())
        den += float((rr ** 2).sum())
        worst = max(worst, float(np.abs(rr - oo).max()))
    return {"cosine": float(np.mean(cos)) if cos else None,
            "rel_err": float(np.sqrt(num / den)) if den > 0 else None,
            "max_abs_diff": worst}
