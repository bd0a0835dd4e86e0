"""The oracle must be able to fail: corrupt one kept index in a pruned model and see it caught."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune.bench import random_inputs, run_model
from graphprune.pipeline import Options, prune
from graphprune.verify import masked_dense, verify


def _corrupt(dense, pruned, plan, role, j=0, skip=0):
    """Replace one kept slice of a `role` member with a removed slice of the dense tensor."""
    dense_t = {t.name: t for t in dense.graph.initializer}
    pruned_t = {t.name: t for t in pruned.graph.initializer}
    # members near the output first: early layers may be saturated by random BN statistics
    for g in reversed(plan["groups"]):
        for m in g["members"]:
            if m["role"] != role or m.get("groups", 1) > 1 or "positions" in m or m["tensor"] not in dense_t:
                continue
            D = numpy_helper.to_array(dense_t[m["tensor"]])
            axis = m["axis"]
            removed = sorted(set(range(D.shape[axis])) - set(m["kept"]))
            if not removed or len(m["kept"]) <= j:
                continue
            if skip:
                skip -= 1
                continue
            P = numpy_helper.to_array(pruned_t[m["tensor"]]).copy()
            # kept indices of every axis of this tensor, from all members that name it
            keep = [np.arange(n) for n in D.shape]
            for g2 in plan["groups"]:
                for m2 in g2["members"]:
                    if m2["tensor"] == m["tensor"] and m2["role"] != "shape" and m2["axis"] != axis:
                        if "positions" in m2 or m2.get("groups", 1) > 1:
                            keep = None
                            break
                        keep[m2["axis"]] = np.array(sorted(m2["kept"]))
                if keep is None:
                    break
            if keep is None:
                continue
            keep[axis] = np.array([removed[0]])
            src = D[np.ix_(*keep)]
            idx = [slice(None)] * P.ndim
            idx[axis] = slice(j, j + 1)
            P[tuple(idx)] = src
            pruned_t[m["tensor"]].CopyFrom(numpy_helper.from_array(P, m["tensor"]))
            return m["tensor"]
    raise AssertionError("no member to corrupt")


@pytest.mark.parametrize("role", ["out", "in"])
@pytest.mark.parametrize("name", ["resnet_basic", "densenet", "mobilenetv2", "vgg"])
def test_corrupted_kept_index_is_caught(exported, name, role):
    dense = onnx.load(exported(name, "legacy"))
    res = prune(dense, Options(ratio=0.5, bench=False))
    plan = res.report
    assert res.report["verify"]["passed"]
    feed = random_inputs(dense, seed=0)
    good_out = run_model(res.model, feed)
    changed = 0
    for j, skip in [(j, k) for k in range(6) for j in range(2)]:
        bad = onnx.ModelProto()
        bad.CopyFrom(res.model)
        _corrupt(dense, bad, plan, role, j, skip)
        bad_out = run_model(bad, feed)
        differs = any(not np.allclose(good_out[k], bad_out[k], rtol=1e-4, atol=1e-5) for k in good_out)
        v = verify(dense, bad, plan, feeds=[feed])
        # whenever the corruption changes what the model computes, the oracle must say so
        assert v["passed"] == (not differs), (j, v)
        changed += differs
    assert changed >= 1  # and the mutations did change the model


def test_wrong_plan_is_caught(exported):
    """A pruned model checked against a plan it was not made from fails."""
    dense = onnx.load(exported("resnet_basic", "legacy"))
    a = prune(dense, Options(ratio=0.5, bench=False, criterion="l2"))
    b = prune(dense, Options(ratio=0.5, bench=False, criterion="random", seed=7))
    assert not verify(dense, a.model, b.report)["passed"]


def test_masked_dense_zeroes_only_removed_inputs(exported):
    dense = onnx.load(exported("resnext", "legacy"))
    res = prune(dense, Options(ratio=0.5, bench=False))
    oracle = masked_dense(dense, res.report)
    d = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    o = {t.name: numpy_helper.to_array(t) for t in oracle.graph.initializer}
    changed = {k for k in d if not np.array_equal(d[k], o[k])}
    in_members = {m["tensor"] for g in res.report["groups"] for m in g["members"] if m["role"] == "in"
                  and len(m["kept"]) < len(m.get("positions", [])) + (0 if "positions" in m else 10**9)}
    assert changed and changed <= in_members
