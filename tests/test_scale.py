"""The large-model path on a small model: lazily loaded external data (read on demand, never
held whole), pruned, streamed to a new external-data file, and checked against the oracle."""

import hashlib
import os
import sys

import onnx

from graphprune.io import is_lazy, load_model, save_model
from graphprune.pipeline import Analyzed, Options, prune
from graphprune.verify import verify

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import scale  # noqa: E402


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_lazy_external_prune_roundtrip(tmp_path):
    src = scale.llama(str(tmp_path / "src"), layers=2, d=128, heads=4, kv_heads=2, mlp=256, vocab=300)
    before = {p: _sha(os.path.join(tmp_path / "src", p)) for p in os.listdir(tmp_path / "src")}
    lazy = load_model(src, lazy=True)
    assert all(is_lazy(t) for t in lazy.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    res = prune(lazy, Options(ratio=0.5, bench=False, verify=False))
    # unpruned tensors (embedding, norms, LM head) still point at the input file
    assert any(is_lazy(t) for t in res.model.graph.initializer)
    out = str(tmp_path / "out" / "pruned.onnx")
    os.makedirs(os.path.dirname(out))
    save_model(res.model, out, external_data=True)
    assert os.path.exists(out + ".data")
    dense = load_model(src, lazy=False)
    pruned = load_model(out, lazy=False)
    onnx.checker.check_model(pruned, full_check=True)
    v = verify(dense, pruned, res.report, dims={"sequence": 7})
    assert v["passed"], v
    # heads (GQA: kv heads with their query heads) and SwiGLU widths were found and pruned
    kinds = {g["kind"] for g in res.report["groups"] if g["channels_after"] < g["channels_before"]}
    assert kinds == {"heads", "channels"}
    # the input and its external data are untouched
    assert before == {p: _sha(os.path.join(tmp_path / "src", p)) for p in os.listdir(tmp_path / "src")}


def test_deep_graph_analyzes(tmp_path):
    m = scale.deep_cnn(2000)
    an = Analyzed(m)
    # one residual stream plus one group per block's inner width
    assert len(an.groups) == 1 + (len(m.graph.node) - 4) // 4 + 1
    assert sum(g.prunable for g in an.groups) == len(an.groups) - 1
