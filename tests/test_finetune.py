"""Fine-tuning a pruned graph by distillation (graphprune.finetune), the ONNX -> torch
interpreter it trains (graphprune.torch.interpreter), and apply_plan on PyTorch modules
(graphprune.torch.apply_plan): agreement improves, determinism, the structure and the zeros of
sparse layers are kept, bad input is one line and writes nothing."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from graphprune import bench
from graphprune.calib import Calibration
from graphprune.errors import CalibrationError, UsageError
from graphprune.finetune import FinetuneOptions, finetune, prune_and_finetune, structure
from graphprune.pipeline import Options, prune
from graphprune.torch import apply_plan
from graphprune.torch.interpreter import ConversionError, OnnxModule, trainable_constants
from graphprune.torch.module_prune import check_export, export
from helpers_graphs import GraphBuilder, run_cli_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp(seed=0, const_nodes=False):
    """x[N, 8] -> Gemm 32 -> Relu -> Gemm 32 -> Relu -> Gemm 4 (logits)."""
    b = GraphBuilder(seed=seed, const_nodes=const_nodes)
    x = b.input("x", ["N", 8])
    h = b.relu(b.gemm(x, 8, 32, name="fc1"))
    h = b.relu(b.gemm(h, 32, 32, name="fc2"))
    y = b.gemm(h, 32, 4, name="head")
    return b.model(b.node("Identity", [y], outputs=["logits"]))


def cnn(seed=0):
    """x[N, 3, 8, 8] -> conv-bn-relu -> conv-relu -> maxpool -> gap -> flatten -> gemm."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", ["N", 3, 8, 8])
    h = b.relu(b.bn(b.conv(x, 3, 16, name="c1"), 16))
    h = b.relu(b.conv(h, 16, 16, name="c2"))
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    return b.model(b.node("Identity", [b.gemm(h, 16, 5, name="fc")], outputs=["y"]))


def data(n=96, shape=(8,), seed=1, name="x"):
    x = np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)
    return {name: x}


@pytest.fixture(scope="module")
def pair():
    dense = mlp()
    res = prune(dense, Options(ratio=0.5, bench=False))
    assert res.report["verify"]["passed"]
    return dense, res.model


OPTS = dict(steps=40, lr=1e-2, batch=16, seed=0, threads=1)


def test_distillation_improves_agreement_and_keeps_structure(pair):
    dense, pruned = pair
    before = pruned.SerializeToString()
    out, info = finetune(pruned, dense, Calibration.from_arrays(data()), FinetuneOptions(**OPTS))
    assert pruned.SerializeToString() == before                     # input untouched
    assert structure(out) == structure(pruned)                      # only weight values changed
    assert out.SerializeToString() != before
    a = info["agreement"]
    assert a["after"]["rel_err"] < 0.7 * a["before"]["rel_err"], a
    assert info["val_loss_best"] < info["val_loss_before"]
    assert info["steps"] == 40 and info["stopped"] == "steps"
    # the result runs in onnxruntime and every tensor kept its name and shape
    y = bench.run_model(out, data(4))["logits"]
    assert y.shape == (4, 4)


def test_deterministic_with_seed(pair):
    dense, pruned = pair
    cal = Calibration.from_arrays(data())
    a, _ = finetune(pruned, dense, cal, FinetuneOptions(**{**OPTS, "steps": 10}))
    b, _ = finetune(pruned, dense, cal, FinetuneOptions(**{**OPTS, "steps": 10}))
    c, _ = finetune(pruned, dense, cal, FinetuneOptions(**{**OPTS, "steps": 10, "seed": 1}))
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


def test_zeros_of_sparse_weights_stay_zero(pair):
    dense, pruned = pair
    sparse = onnx.ModelProto()
    sparse.CopyFrom(pruned)
    t = next(t for t in sparse.graph.initializer if t.name == "fc2.weight")
    w = onnx.numpy_helper.to_array(t).copy()
    w[::2] = 0.0                                                     # half the rows zero
    t.CopyFrom(onnx.numpy_helper.from_array(w, t.name))
    out, info = finetune(sparse, dense, Calibration.from_arrays(data()), FinetuneOptions(**OPTS))
    w2 = onnx.numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "fc2.weight"))
    assert info["masked_tensors"] == 1
    assert np.all(w2[w == 0] == 0) and not np.array_equal(w2[w != 0], w[w != 0])


def test_time_budget_between_validations_still_keeps_the_last_steps(pair):
    dense, pruned = pair
    out, info = finetune(pruned, dense, Calibration.from_arrays(data()),
                         FinetuneOptions(**{**OPTS, "steps": 10 ** 6, "eval_every": 10 ** 6, "max_seconds": 0.3,
                                            "clock": "cpu", "lr": 1e-2}))
    assert info["stopped"] == "time budget" and info["steps"] > 1
    assert info["val_loss_best"] < info["val_loss_before"]
    assert info["agreement"]["after"]["rel_err"] < info["agreement"]["before"]["rel_err"]


def test_non_finite_loss_stops_and_keeps_last_good_weights(pair):
    dense, pruned = pair
    out, info = finetune(pruned, dense, Calibration.from_arrays(data()),
                         FinetuneOptions(**{**OPTS, "lr": 1e30, "val_fraction": 0.0}))
    assert info["stopped"] == "non-finite loss"
    for t in out.graph.initializer:
        assert np.all(np.isfinite(onnx.numpy_helper.to_array(t)))
    assert np.all(np.isfinite(bench.run_model(out, data(4))["logits"]))


def test_cnn_with_constant_nodes_and_matched_intermediates():
    dense = cnn()
    res = prune(dense, Options(ratio=0.5, bench=False))
    cal = Calibration.from_arrays(data(64, (3, 8, 8)))
    out, info = finetune(res.model, dense, cal, FinetuneOptions(steps=30, lr=1e-2, batch=16, match=("auto",)))
    assert structure(out) == structure(res.model)
    assert info["agreement"]["after"]["rel_err"] < info["agreement"]["before"]["rel_err"]
    # Paddle-style weights in Constant nodes train and stay Constant nodes
    d2 = mlp(const_nodes=True)
    p2 = prune(d2, Options(ratio=0.5, bench=False)).model
    out2, info2 = finetune(p2, d2, Calibration.from_arrays(data()), FinetuneOptions(**OPTS))
    assert structure(out2) == structure(p2) and info2["trainable_tensors"] == 6
    assert info2["agreement"]["after"]["rel_err"] < info2["agreement"]["before"]["rel_err"]


def residual_mlp_stack(seed=0, d=8, hidden=32, blocks=3):
    """x[N, S, d] -> LayerNorm -> blocks of (MatMul d->hidden, Relu, MatMul hidden->d, residual Add,
    LayerNorm): a transformer's residual stream, whose width pruning keeps."""
    b = GraphBuilder(seed=seed)
    h = b.input("x", ["N", "S", d])
    ln = lambda x, i: b.node("LayerNormalization", [x, b.const(f"ln{i}.g", 1 + 0.1 * b.randn(d).astype(np.float32)),
                                                     b.const(f"ln{i}.b", 0.1 * b.randn(d).astype(np.float32))],
                             name=f"ln{i}", axis=-1, outputs=["y"] if i == blocks else None)
    h = ln(h, 0)
    for i in range(1, blocks + 1):
        u = b.node("MatMul", [h, b.const(f"fc{i}a.w", b.randn(d, hidden, scale=d ** -0.5).astype(np.float32))])
        u = b.relu(b.node("Add", [u, b.const(f"fc{i}a.b", 0.1 * b.randn(hidden).astype(np.float32))]))
        u = b.node("MatMul", [u, b.const(f"fc{i}b.w", b.randn(hidden, d, scale=hidden ** -0.5).astype(np.float32))])
        h = ln(b.node("Add", [u, h]), i)
    return b.model(h)


def test_match_auto_on_a_residual_stream_takes_the_pruned_layers_norm_outputs():
    dense = residual_mlp_stack()
    pruned = prune(dense, Options(ratio=0.5, bench=False)).model
    cal = Calibration.from_arrays(data(64, (5, 8)))
    out, info = finetune(pruned, dense, cal, FinetuneOptions(steps=20, lr=1e-2, batch=16, match=("auto",)))
    # the LayerNorm outputs after pruned layers (not ln0: pruning did not reach it; not the last: an output)
    assert info["matched_tensors"] == ["ln1_out", "ln2_out"]
    assert info["agreement"]["after"]["rel_err"] < info["agreement"]["before"]["rel_err"]
    # a name given with auto is kept even when it already agrees; extra_loss sees outputs and matches
    seen = []

    def extra(student, teacher, feed):
        seen.append((sorted(student), sorted(teacher), sorted(feed)))
        return 0.5 * (1 - torch.nn.functional.cosine_similarity(student["y"].mean(1), teacher["y"].mean(1))).mean()
    _, info2 = finetune(pruned, dense, cal, FinetuneOptions(steps=1, batch=16, match=("auto", "ln0_out"),
                                                            extra_loss=extra))
    assert info2["matched_tensors"] == ["ln0_out", "ln1_out", "ln2_out"]
    assert seen and seen[0] == (["ln0_out", "ln1_out", "ln2_out", "y"],) * 2 + (["x"],)


def test_interpreter_matches_onnxruntime_on_a_tf2onnx_model():
    m = onnx.load(os.path.join(ROOT, "refmodels", "keras_encoder.onnx"))
    feed = bench.random_inputs(m, seed=0, batch=3)
    ref = bench.run_model(m, feed)
    with torch.no_grad():
        got = OnnxModule(m)(feed)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k].numpy(), v, atol=1e-5, rtol=1e-4)
    # shape operands and scalars are not trained; the weights are
    names = trainable_constants(m)
    assert names and all(onnx.numpy_helper.to_array(t).ndim >= 1 for t in m.graph.initializer if t.name in names)


def test_bad_inputs_raise_one_line_errors(pair):
    dense, pruned = pair
    with pytest.raises(CalibrationError):
        finetune(pruned, dense, Calibration.from_arrays(data(name="z")), FinetuneOptions(**OPTS))
    other = onnx.ModelProto()
    other.CopyFrom(dense)
    other.graph.output[0].name = "probs"
    other.graph.node[-1].output[0] = "probs"
    with pytest.raises(UsageError, match="outputs"):
        finetune(pruned, other, Calibration.from_arrays(data()), FinetuneOptions(**OPTS))
    with pytest.raises(UsageError, match="lr"):
        finetune(pruned, dense, Calibration.from_arrays(data()), FinetuneOptions(lr=-1))
    odd = onnx.ModelProto()
    odd.CopyFrom(pruned)
    odd.graph.node.append(helper.make_node("NonMaxSuppression", ["logits", "logits"], ["nms"]))
    with pytest.raises(ConversionError, match="NonMaxSuppression"):
        OnnxModule(odd)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_cli_finetune_and_bad_input(tmp_path, capsys, pair):
    dense, pruned = pair
    d, p, npz = tmp_path / "d.onnx", tmp_path / "p.onnx", tmp_path / "x.npz"
    onnx.save(dense, str(d))
    onnx.save(pruned, str(p))
    np.savez(npz, **data())
    out = tmp_path / "o.onnx"
    code, so, se = run_cli_in_process("finetune", str(p), "--teacher", str(d), "--data", str(npz), "-o", str(out),
                           "--steps", "20", "--lr", "1e-2", "--report", str(tmp_path / "r.json"))
    assert code == 0, se
    assert "agreement" in so and "finetune [" in se
    rep = json.loads((tmp_path / "r.json").read_text())["finetune"]
    assert rep["agreement"]["after"]["rel_err"] < rep["agreement"]["before"]["rel_err"]
    assert structure(onnx.load(str(out))) == structure(pruned)
    h = sha(p)
    bad = tmp_path / "bad.npz"
    np.savez(bad, z=data()["x"])
    for args, exit_code in [(["--data", str(bad)], 6), (["--data", str(tmp_path / "missing.npz")], 6),
                            (["--data", str(npz), "--steps", "0"], 2), (["--data", str(npz), "--loss", "huber"], 2)]:
        o2 = tmp_path / "o2.onnx"
        code, so, se = run_cli_in_process("finetune", str(p), "--teacher", str(d), "-o", str(o2), *args)
        assert code == exit_code, (args, se)
        assert len([ln for ln in se.splitlines() if ln.startswith("graphprune: error")]) == 1 and "Traceback" not in se
        assert not o2.exists() and sha(p) == h


def test_run_with_finetune_data_and_prune_steps(tmp_path, capsys):
    dense = mlp()
    d, npz, out = tmp_path / "d.onnx", tmp_path / "x.npz", tmp_path / "o.onnx"
    onnx.save(dense, str(d))
    np.savez(npz, **data())
    code, so, se = run_cli_in_process("run", str(d), "-o", str(out), "--no-bench", "--target-macs", "0.3",
                           "--finetune-data", str(npz), "--finetune-steps", "10", "--finetune-lr", "1e-2",
                           "--prune-steps", "2")
    assert code == 0, se
    rep = json.loads((tmp_path / "o.report.json").read_text())
    assert len(rep["steps"]) == 2 and all(s["verify"]["passed"] for s in rep["steps"])
    assert rep["macs"]["after"] <= 0.3 * rep["macs"]["before"]
    assert rep["steps"][0]["macs"]["after"] > rep["macs"]["after"]
    assert rep["finetune"]["agreement"]["after"]["rel_err"] < rep["finetune"]["agreement"]["before"]["rel_err"]
    code, so, se = run_cli_in_process("run", str(d), "-o", str(out), "--prune-steps", "2")
    assert code == 2 and "--finetune-data" in se


# ----------------------------------------------------------------------------- apply_plan


class Attention(torch.nn.Module):
    """Hugging Face style: num_attention_heads, attention_head_size, all_head_size."""

    def __init__(self, d=16, h=4):
        super().__init__()
        self.num_attention_heads, self.attention_head_size, self.all_head_size = h, d // h, d
        self.query, self.key, self.value = (torch.nn.Linear(d, d) for _ in range(3))
        self.out = torch.nn.Linear(d, d)

    def forward(self, x):
        B, T, _ = x.shape
        sh = lambda t: t.view(B, T, self.num_attention_heads, self.attention_head_size).transpose(1, 2)
        q, k, v = sh(self.query(x)), sh(self.key(x)), sh(self.value(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.attention_head_size ** 0.5, -1) @ v
        return x + self.out(a.transpose(1, 2).reshape(B, T, self.all_head_size))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 1)
        self.norm = nn.LayerNorm(16)
        self.attn = Attention(16, 4)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.dw(y)))
        t = self.norm(self.conv2(y).flatten(2).transpose(1, 2))
        t = self.attn(t)
        t = t + self.fc2(torch.relu(self.fc1(t)))
        return self.head(t.mean(1))


def make_net():
    torch.manual_seed(0)
    net = Net().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net


def round_trip(exporter):
    net = make_net()
    x = torch.randn(2, 3, 6, 6)
    dense = export(net, (x,), exporter, input_names=["x"])
    res = prune(dense, Options(ratio=0.5, bench=False))
    assert res.report["verify"]["passed"]
    apply_plan(net, res.report, example_inputs=(x,), onnx_model=dense, check=res.model, exporter=exporter)
    assert net.attn.num_attention_heads == 2 and net.attn.query.out_features == 8
    assert net.fc1.out_features == 16 and net.dw.groups == net.dw.out_channels == net.bn2.num_features == 8
    # the user's own training loop, then export again: it still runs and keeps the pruned shapes
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    net.train()
    loss = net(x).pow(2).mean()
    loss.backward()
    opt.step()
    net.eval()
    again = export(net, (x,), exporter, input_names=["x"])
    assert bench.run_model(again, {"x": x.numpy()})[again.graph.output[0].name].shape == (2, 10)
    return net


def test_apply_plan_round_trip_legacy_exporter():
    round_trip("legacy")


@pytest.mark.slow
def test_apply_plan_round_trip_dynamo_exporter():
    round_trip("dynamo")


def test_apply_plan_errors():
    net = make_net()
    x = torch.randn(2, 3, 6, 6)
    dense = export(net, (x,), "legacy", input_names=["x"])
    res = prune(dense, Options(ratio=0.5, bench=False))
    with pytest.raises(UsageError, match="onnx_model"):        # legacy renames folded/transposed weights
        apply_plan(make_net(), res.report)
    with pytest.raises(UsageError, match="groups"):
        apply_plan(make_net(), {"nothing": []})
    # a wrong module: the check catches it
    wrong = make_net()
    apply_plan(wrong, res.report, onnx_model=dense)
    with torch.no_grad():
        wrong.head.bias.add_(1.0)
    from graphprune.errors import VerifyError
    with pytest.raises(VerifyError):
        check_export(wrong, res.model, (x,))


def test_apply_plan_follows_an_iterative_run():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 4)).eval()
    x = torch.randn(4, 8)
    dense = export(net, (x,), "legacy", input_names=["x"])
    res = prune_and_finetune(dense, Options(ratio=0.6, bench=False), Calibration.from_arrays(data()),
                             FinetuneOptions(steps=3, lr=1e-3), steps=2)
    assert len(res.report["steps"]) == 2
    apply_plan(net, res.report, onnx_model=dense)
    shapes = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    sd = net.state_dict()
    assert any(k in shapes for k in sd)
    for k, v in sd.items():
        if k in shapes:
            assert tuple(v.shape) == shapes[k], k
    assert net[0].out_features < 32 and net[2].in_features == net[0].out_features


def test_paddle2onnx_minus_one_batch_dim_is_free(pair):
    dense, pruned = pair
    dense2, pruned2 = onnx.ModelProto(), onnx.ModelProto()
    dense2.CopyFrom(dense)
    pruned2.CopyFrom(pruned)
    for m in (dense2, pruned2):                       # paddle2onnx writes -1 for a dynamic dim
        m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    out, info = finetune(pruned2, dense2, Calibration.from_arrays(data()), FinetuneOptions(**{**OPTS, "steps": 5}))
    assert info["steps"] == 5 and structure(out) == structure(pruned2)


def test_paddle2onnx_question_mark_dims_are_independent():
    b = GraphBuilder(seed=3)
    x = b.input("x", [-1, 3, "?", "?"])
    m = b.model(b.node("Identity", [b.relu(b.conv(x, 3, 4, name="c"))], outputs=["y"]))
    Calibration.from_arrays({"x": np.zeros((2, 3, 8, 16), np.float32)}).check(m)      # H != W is fine
