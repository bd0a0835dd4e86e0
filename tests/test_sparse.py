"""Sparse layers (graphprune/sparsify.py): patterns and masks, SparseGPT-style OBS, eligible layers,
the sparse step in the pipeline with its oracle, densify, and bad input on the command line."""


import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphprune import sparsify as sp
from graphprune.errors import UsageError
from graphprune.pipeline import Options, prune
from helpers_graphs import GraphBuilder, run_cli_in_process


# --------------------------------------------------------------------------- patterns


def test_pattern_parse():
    assert sp.Pattern.parse("unstructured").kind == "unstructured"
    p = sp.Pattern.parse("2:4")
    assert (p.kind, p.n, p.m, p.label) == ("nm", 2, 4, "2:4")
    b = sp.Pattern.parse("block:4x2")
    assert (b.kind, b.bk, b.bn, b.label) == ("block", 4, 2, "block:4x2")
    assert b.attrs() == {"pattern": 2, "pattern_n": 0, "pattern_m": 0, "block_k": 4, "block_n": 2}
    assert sp.Pattern.parse("2:4").attrs()["block_k"] == 1
    for bad in ("dense", "4:2", "0:4", "block:1x1", "block:4", "2:4:8", ""):
        with pytest.raises(UsageError):
            sp.Pattern.parse(bad)


def test_resolve_sparsity():
    assert sp.resolve_sparsity(sp.Pattern.parse("2:4"), None) == 0.5
    assert sp.resolve_sparsity(sp.Pattern.parse("1:4"), 0.75) == 0.75
    assert sp.resolve_sparsity(sp.Pattern.parse("unstructured"), 0.0) == 0.0
    for pat, s in (("2:4", 0.3), ("unstructured", 1.0), ("unstructured", -0.1), ("unstructured", None),
                   ("block:4x1", float("nan"))):
        with pytest.raises(UsageError):
            sp.resolve_sparsity(sp.Pattern.parse(pat), s)


def test_pattern_fits():
    assert sp.Pattern.parse("2:4").fits(6, 8) is not None
    assert sp.Pattern.parse("2:4").fits(8, 3) is None
    assert sp.Pattern.parse("block:4x2").fits(8, 3) is not None
    assert sp.Pattern.parse("block:4x2").fits(8, 4) is None


# --------------------------------------------------------------------------- masks


def test_mask_unstructured_per_output():
    S = np.random.default_rng(0).random((6, 20))
    keep = sp.mask_from_scores(S, sp.Pattern.parse("unstructured"), 0.7)
    assert (keep.sum(1) == 6).all()                      # round(20 * 0.3) kept in every row
    for r in range(6):                                   # the kept ones are the row's largest
        assert S[r, keep[r]].min() > S[r, ~keep[r]].max()


def test_mask_nm():
    S = np.random.default_rng(1).random((5, 16))
    keep = sp.mask_from_scores(S, sp.Pattern.parse("2:4"), 0.5)
    G, K = keep.reshape(5, 4, 4), S.reshape(5, 4, 4)
    assert (G.sum(2) == 2).all()
    assert (np.where(G, K, np.inf).min(2) > np.where(G, -np.inf, K).max(2)).all()


def test_mask_blocks():
    S = np.random.default_rng(2).random((6, 8))
    keep = sp.mask_from_scores(S, sp.Pattern.parse("block:4x2"), 0.5)
    tiles = keep.reshape(3, 2, 2, 4)
    for i in range(3):
        for j in range(2):
            t = tiles[i, :, j, :]
            assert t.all() or not t.any()               # whole tiles only
    assert keep.mean() == 0.5


def test_sparsegpt_identity_hessian_is_magnitude():
    """With H = I no column informs another: OBS keeps the largest weights and updates nothing."""
    W = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    Wn, keep = sp.sparsegpt(W, np.eye(16), sp.Pattern.parse("2:4"), 0.5)
    ref = sp.mask_from_scores(np.abs(W), sp.Pattern.parse("2:4"), 0.5)
    assert (keep == ref).all()
    np.testing.assert_allclose(Wn, np.where(ref, W, 0), rtol=1e-6)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "block:4x1"])
def test_sparsegpt_beats_magnitude_on_correlated_inputs(pattern):
    rng = np.random.default_rng(4)
    K, N, n = 32, 12, 400
    X = rng.standard_normal((n, K)) @ rng.standard_normal((K, K)) * 0.5 + rng.standard_normal((n, K))
    W = rng.standard_normal((N, K)).astype(np.float32)
    pat = sp.Pattern.parse(pattern)
    Wn, keep = sp.sparsegpt(W, X.T @ X, pat, 0.5, blocksize=8)
    assert (Wn[~keep] == 0).all()
    assert abs(keep.mean() - 0.5) < 1e-9
    Wm = np.where(sp.mask_from_scores(np.abs(W), pat, 0.5), W, 0)
    err = lambda V: np.linalg.norm(X @ (V - W).T)
    assert err(Wn) < 0.95 * err(Wm)


def test_global_sparsities_reach_the_total():
    rng = np.random.default_rng(5)
    lays = [sp.Layer(i, f"l{i}", "MatMul", "x", "w", None, K, N) for i, (K, N) in enumerate([(16, 8), (32, 32)])]
    scores = [rng.random((8, 16)) * 10, rng.random((32, 32))]
    per = sp.global_sparsities(lays, scores, sp.Pattern.parse("unstructured"), 0.6)
    total = (per[0] * 128 + per[1] * 1024) / (128 + 1024)
    assert abs(total - 0.6) < 0.02
    assert sp.global_sparsities(lays, scores, sp.Pattern.parse("2:4"), 0.5) == [0.5, 0.5]


# --------------------------------------------------------------------------- graphs


def small_model(seed=0, k_odd=False):
    """x[2, 8, 12] -> MatMul -> Relu -> MatMul(+bias Add) ; a Gemm head on a 2-D slice."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", [2, 8, 12])
    h = b.node("MatMul", [x, b.const("w1", b.randn(12, 16 if not k_odd else 10))], name="mm1")
    h = b.relu(h)
    h = b.node("MatMul", [h, b.const("w2", b.randn(16 if not k_odd else 10, 8))], name="mm2")
    y = b.node("Add", [h, b.const("b2", b.randn(8))])
    r = b.reshape(y, [16, 8])
    z = b.node("Gemm", [r, b.const("w3", b.randn(6, 8)), b.const("b3", b.randn(6))], name="fc", transB=1)
    return b.model(z)


def conv_model(seed=0):
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 8, 5, 5])
    h = b.conv(x, 8, 16, k=1, name="pw1")
    h = b.relu(h)
    h = b.conv(h, 16, 16, k=3, name="c3")
    h = b.conv(h, 16, 8, k=1, bias=False, name="pw2")
    return b.model(h)


def test_find_layers():
    layers, dense = sp.find_layers(small_model())
    assert [(l.name, l.op, l.K, l.N) for l in layers] == [("mm1", "MatMul", 12, 16), ("mm2", "MatMul", 16, 8),
                                                          ("fc", "Gemm", 8, 6)]
    assert dense == []
    layers, dense = sp.find_layers(conv_model())
    assert [(l.name, l.K, l.N, l.spatial) for l in layers] == [("pw1", 8, 16, 2), ("pw2", 16, 8, 2)]
    assert dense[0]["node"] == "c3" and "pointwise" in dense[0]["why"]
    for lay in layers:        # Wr round-trips to the weight layout
        W = numpy_helper.to_array(next(t for t in conv_model().graph.initializer if t.name == lay.w))
        np.testing.assert_array_equal(lay.weight_layout(lay.Wr), W)


def test_shared_weight_kept_dense():
    b = GraphBuilder()
    x = b.input("x", [2, 4])
    w = b.const("w", b.randn(4, 4))
    y = b.node("MatMul", [b.node("MatMul", [x, w], name="a"), w], name="b")
    layers, dense = sp.find_layers(b.model(y))
    assert layers == [] and {d["node"] for d in dense} == {"a", "b"}
    assert "shared" in dense[0]["why"]


def _sparse_opts(**kw):
    base = dict(ratio=0.0, sparsity=0.5, bench=False, sparse_kernels="never")
    base.update(kw)
    return Options(**base)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.6), ("2:4", None), ("block:2x2", 0.5)])
def test_pipeline_dense_zeros_pass_the_oracle(pattern, sparsity):
    m = small_model()
    res = prune(m, _sparse_opts(pattern=pattern, sparsity=sparsity))
    s = res.report["sparse"]
    assert s["masked"] == 3 and s["converted"] == 0
    assert s["verify"]["passed"] and s["verify"]["densified_vs_oracle"]["passed"]
    for e in s["layers"]:
        assert abs(e["sparsity"] - (sparsity or 0.5)) < 0.1
        assert e["format"] == "dense (zeros)"
    zeros = {t.name: float((numpy_helper.to_array(t) == 0).mean()) for t in res.model.graph.initializer}
    assert zeros["w1"] >= 0.5 and zeros["w2"] >= 0.5


def test_pipeline_with_structured_pruning_and_oracle_can_fail():
    m = small_model()
    res = prune(m, _sparse_opts(ratio=0.5, sparsity=0.5))
    assert res.report["summary"]["pruned_groups"] >= 1
    assert res.report["sparse"]["verify"]["densified_vs_oracle"]["passed"]
    # the oracle catches a mask that is not where the report says: move one zero
    W = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}["w1"]
    lay = next(l for l in sp.find_layers(res.model)[0] if l.w == "w1")
    keep = (W != 0)
    i, j = np.argwhere(keep)[0]
    keep[i, j] = False
    from graphprune.verify import verify
    ref = sp.oracle(m, res.plan.to_json(), {"w1": keep})
    v = verify(ref, res.model, {"groups": []})
    assert not v["passed"]
    assert lay.K == W.shape[0]


def test_protect_and_nm_misfit_kept_dense():
    res = prune(small_model(k_odd=True), _sparse_opts(pattern="2:4", sparsity=None, protect=("fc",)))
    s = res.report["sparse"]
    why = {e["node"]: e["why"] for e in s["kept_dense"]}
    assert why["fc"].startswith("protected")
    assert "divisible by 4" in why["mm2"]          # K = 10
    assert s["masked"] == 1                        # mm1: K = 12


def test_wanda_uses_activations():
    m = small_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 8, 12)).astype(np.float32)
    x[..., 0] *= 100                               # input column 0 dominates: Wanda keeps it
    feeds = [{"x": a} for a in x]
    res = prune(m, _sparse_opts(calib=feeds, sparse_criterion="wanda", sparsity=0.9))
    W1 = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}["w1"]
    assert (W1[0] != 0).all()                      # [K, N]: row 0 = input column 0
    assert res.report["sparse"]["criterion"] == "wanda"


def test_sparsegpt_step_runs_and_checks_the_twin():
    m = small_model()
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 8, 12)).astype(np.float32)} for i in range(4)]
    res = prune(m, _sparse_opts(calib=feeds, criterion="obs"))
    s = res.report["sparse"]
    assert s["criterion"] == "sparsegpt"
    v = s["verify"]["densified_vs_oracle"]
    assert v["passed"] and "before" in v["checked"]


def test_options_bad_sparse_values():
    for kw in (dict(sparsity=1.0), dict(pattern="3:2"), dict(pattern="2:4", sparsity=0.7),
               dict(sparsity=0.5, sparse_kernels="maybe"), dict(sparsity=0.5, sparse_criterion="wanda")):
        with pytest.raises(UsageError):
            Options(**kw).check()
    Options(pattern="2:4").check()


# --------------------------------------------------------------------------- command line


def test_cli_bad_sparse_input(tmp_path, capsys):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), str(p))
    before = p.read_bytes()
    for args in (["--sparsity", "1.0"], ["--pattern", "zigzag"], ["--pattern", "2:4", "--sparsity", "0.3"],
                 ["--sparsity", "0.5", "--seq-len", "0"],
                 ["--pattern", "block:4"], ["--sparse-criterion", "wanda", "--sparsity", "0.5"]):
        code, _, err = run_cli_in_process("run", str(p), "-o", str(tmp_path / "o.onnx"), *args)
        assert code == 2, (args, err)
        assert "Traceback" not in err
        assert len([ln for ln in err.splitlines() if ln.startswith("graphprune: error")]) == 1, err
        assert not (tmp_path / "o.onnx").exists()
    assert p.read_bytes() == before


# --------------------------------------------------------------------------- on the kernels


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.7), ("2:4", None), ("block:4x2", 0.5)])
def test_kernels_match_densified_and_oracle(pattern, sparsity):
    m = small_model()
    res = prune(m, _sparse_opts(pattern=pattern, sparsity=sparsity, sparse_kernels="always"))
    s = res.report["sparse"]
    assert s["converted"] == s["masked"] == 3
    assert sp.uses_kernels(res.model)
    kv = s["verify"]["kernels_vs_densified"]
    assert kv["passed"] and kv["max_rel_diff"] <= 1e-4
    assert s["verify"]["densified_vs_oracle"]["passed"]
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("SparseMatMul") == 3 and "Add" not in ops      # mm2's bias Add fused
    onnx.checker.check_model(res.model)
    assert "needs" in s and "session_options" in s["needs"]


def test_densify_round_trip():
    m = conv_model()
    res = prune(m, _sparse_opts(sparse_kernels="always", sparsity=0.6))
    assert [n.op_type for n in res.model.graph.node].count("SparseConv") == 2
    d = sp.densify(res.model)
    onnx.checker.check_model(d, full_check=True)
    assert not sp.uses_kernels(d) and all(o.domain != sp.DOMAIN for o in d.opset_import)
    W = {t.name: numpy_helper.to_array(t) for t in d.graph.initializer}
    assert W["pw1.weight"].shape == (16, 8, 1, 1) and (W["pw1.weight"] == 0).mean() == pytest.approx(0.625, abs=0.01)
    # densify of a model without custom ops is a copy
    assert sp.densify(m).SerializeToString() == m.SerializeToString()
    # outputs: the sparse model on the kernels vs the densified one
    from graphprune.bench import random_inputs, run_model
    feed = random_inputs(m, seed=3)
    a, b = run_model(res.model, feed), run_model(d, feed)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_counts_effective_macs_and_bytes():
    m = small_model()
    res = prune(m, _sparse_opts(sparse_kernels="always", sparsity=0.75))
    c = res.report["sparse"]["counts"]
    by = {x["node"]: x for x in c["layers"]}
    # mm1: [2, 8, 12] x [12, 16] at 75 % zeros: 3 of 12 weights per output kept, a quarter of the MACs
    assert by["mm1"]["nnz"] == 16 * 3
    assert by["mm1"]["effective_macs"] == by["mm1"]["dense_macs"] // 4
    assert by["mm1"]["stored_bytes"] == 4 * (48 + 48 + 17 + 16)
    assert c["stored_bytes"] < c["dense_bytes"]
    assert res.report["macs"]["after"] < res.report["macs"]["before"]
    total_eff = res.report["macs"]["before"] - sum(x["dense_macs"] - x["effective_macs"] for x in c["layers"])
    assert res.report["macs"]["after"] == total_eff


def test_cli_run_densify_verify(tmp_path, capsys):
    from graphprune.cli import main

    p = tmp_path / "m.onnx"
    onnx.save(small_model(), str(p))
    out = tmp_path / "s.onnx"
    main(["run", str(p), "-o", str(out), "--ratio", "0.25", "--sparsity", "0.6", "--sparse-kernels", "always",
          "--no-bench", "-q"])
    assert sp.uses_kernels(onnx.load(str(out)))
    main(["verify", str(p), str(out), "--plan", str(tmp_path / "s.report.json")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    import json
    v = json.loads(line)["verify"]
    assert v["passed"] and v["kernels_vs_densified"]["passed"] and v["densified_vs_oracle"]["passed"]
    main(["densify", str(out), "-o", str(tmp_path / "d.onnx")])
    assert not sp.uses_kernels(onnx.load(str(tmp_path / "d.onnx")))


def test_verify_catches_a_wrong_kernel_value(tmp_path):
    """The kernels-vs-densified check can fail: a model whose CSR values and densified twin disagree."""
    from graphprune.verify import verify
    res = prune(small_model(), _sparse_opts(sparse_kernels="always"))
    d = sp.densify(res.model)
    t = next(t for t in res.model.graph.initializer if t.name == "w1_sparse_values")
    a = numpy_helper.to_array(t).copy()
    a[0] += 1.0
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    assert not verify(d, res.model, {"groups": []})["passed"]


def test_missing_library_is_one_line(monkeypatch):
    from graphprune import bench, kernels
    from graphprune.errors import InputError

    res = prune(small_model(), _sparse_opts(sparse_kernels="always"))

    def broken(threads=1, so=None):
        raise kernels.KernelsError("no C compiler found")
    monkeypatch.setattr(kernels, "session_options", broken)
    with pytest.raises(InputError, match="densify"):
        bench.make_session(res.model)
    # and the pipeline keeps every layer dense, saying why
    r2 = prune(small_model(), _sparse_opts(sparse_kernels="auto"))
    assert r2.report["sparse"]["converted"] == 0
    assert all("not available" in e["why"] for e in r2.report["sparse"]["layers"])
    assert not sp.uses_kernels(r2.model)


def test_constant_node_weights_kept_dense_with_reason():
    b = GraphBuilder(const_nodes=True)
    x = b.input("x", [2, 8])
    y = b.node("MatMul", [x, b.const("w", b.randn(8, 4))], name="mm")
    res = prune(b.model(y), _sparse_opts())
    assert res.report["sparse"]["kept_dense"] == [{"node": "mm", "op": "MatMul",
                                                   "why": "weight is a Constant node, not an initializer"}]


def test_conv1d_conv3d_pointwise_and_gemm_transb0():
    """Pointwise Conv over 1 and 3 spatial axes and a Gemm with transB = 0 and a [1, N] bias go on
    the kernels; densify rebuilds the Convs at their rank without shape inference (which stops at
    custom ops) from the op's ``spatial`` attribute."""
    from onnx import TensorProto as T
    rng = np.random.default_rng(0)
    arrs = {"W1": rng.standard_normal((8, 4, 1)), "W3": rng.standard_normal((6, 8, 1, 1, 1)),
            "G": rng.standard_normal((12, 5)), "C": rng.standard_normal((1, 5))}
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in arrs.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("ax", [3]), ("ax2", [4]), ("shp", [-1, 12]))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], kernel_shape=[1], name="c1"),
             helper.make_node("Unsqueeze", ["a", "ax"], ["a2"]), helper.make_node("Unsqueeze", ["a2", "ax2"], ["a3"]),
             helper.make_node("Conv", ["a3", "W3"], ["b"], kernel_shape=[1, 1, 1], name="c3"),
             helper.make_node("Reshape", ["b", "shp"], ["r"]), helper.make_node("Gemm", ["r", "G", "C"], ["y"], name="g")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4, 2])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = prune(m, _sparse_opts(sparse_kernels="always"))
    s = res.report["sparse"]
    assert s["converted"] == 3 and s["verify"]["passed"]
    assert s["verify"]["kernels_vs_densified"]["max_rel_diff"] <= 1e-4
    d = sp.densify(res.model)
    ks = [list(a.ints) for n in d.graph.node for a in n.attribute if a.name == "kernel_shape"]
    assert ks == [[1], [1, 1, 1]]


def test_whole_model_check_reverts_when_not_faster(monkeypatch):
    from graphprune import bench

    monkeypatch.setattr(sp, "time_layers", lambda items, *a, **k: [
        {"dense_ms": 2.0, "sparse_ms": 1.0, "speedup": 2.0, "pairs": 7, "copies": 1} for _ in items])
    monkeypatch.setattr(bench, "measure_latency", lambda *a, **k: {"before_ms": 1.0, "after_ms": 1.25,
                                                                    "speedup": 0.8})
    res = prune(small_model(), _sparse_opts(sparse_kernels="auto", bench=True))
    s = res.report["sparse"]
    assert s["converted"] == 0 and not sp.uses_kernels(res.model)
    assert s["model_check"]["speedup"] == 0.8
    assert all("whole model was not faster" in e["why"] for e in s["layers"])
    assert all(e["speedup"] == 2.0 for e in s["layers"])


def test_weight_that_is_a_graph_input_kept_dense():
    m = small_model()
    w = next(t for t in m.graph.initializer if t.name == "w1")
    m.graph.input.append(helper.make_tensor_value_info("w1", w.data_type, list(w.dims)))
    layers, dense = sp.find_layers(m)
    assert "mm1" not in [l.name for l in layers]
    assert any(d["node"] == "mm1" and "graph input" in d["why"] for d in dense)


@pytest.mark.slow
def test_minilm_sparse_layers(tmp_path):
    """The real all-MiniLM-L6-v2 (torch export): 36 projections masked 2:4 by SparseGPT on a few
    calibration sentences and forced onto the kernels; both checks hold, the model runs on the
    kernels, densify gives a standard model with the same outputs, and MACs are counted effective."""
    from refmodels import minilm
    from graphprune.bench import run_model

    path = minilm.export(str(tmp_path / "minilm.onnx"), "legacy")
    m = onnx.load(path)
    tok, _ = minilm.load()
    feeds = minilm.tokenize_unpadded(tok, ["a short sentence to calibrate with", "another one, a bit longer than that",
                                           "sparse layers keep half of every four weights"])
    res = prune(m, Options(ratio=0.0, pattern="2:4", calib=feeds, sparse_criterion="sparsegpt",
                           sparse_kernels="always", bench=False))
    s = res.report["sparse"]
    assert s["masked"] == s["converted"] == 36
    assert s["verify"]["passed"] and s["verify"]["kernels_vs_densified"]["max_rel_diff"] <= 1e-4
    assert "before" in s["verify"]["densified_vs_oracle"]["checked"]
    assert res.report["macs"]["after"] < 0.7 * res.report["macs"]["before"]
    ev = minilm.tokenize(tok, ["what the model says", "and what the densified model says"])
    a, b = run_model(res.model, ev), run_model(sp.densify(res.model), ev)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4)


def test_sequential_obs_stages():
    m = small_model()
    layers, _ = sp.find_layers(m)
    assert sp._stages(m, layers) == [0, 1, 2]          # mm1 -> mm2 -> fc, one chain
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 8, 12)).astype(np.float32)} for i in range(4)]
    seq = prune(m, _sparse_opts(calib=feeds, criterion="obs", sparse_sequential=True))
    one = prune(m, _sparse_opts(calib=feeds, criterion="obs"))
    assert seq.report["sparse"]["obs_stages"] == 3 and one.report["sparse"]["obs_stages"] == 1
    w = lambda r: {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    np.testing.assert_array_equal(w(seq)["w1"], w(one)["w1"])      # the first stage sees the same inputs
    assert not np.array_equal(w(seq)["w2"], w(one)["w2"])          # later ones see the sparse model's
