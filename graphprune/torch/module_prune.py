"""Prune a PyTorch ``nn.Module`` physically per a plan computed on its ONNX export.

Plan members name constant tensors of the exported graph. They are mapped to the module's
``state_dict`` entries by name (both torch exporters keep parameter names where a weight is used
as it is: ``layer1.0.conv1.weight``), and, given the exported model, by value for the tensors an
exporter renamed (the legacy exporter's transposed ``onnx::MatMul_123`` copies of Linear weights,
de-duplicated biases): a tensor equal to a parameter, or to its transpose, maps to it. The cut of
every tensor is the one the ONNX rewrite makes (``rewrite.cut_array``: removed positions per
axis, grouped-conv input axes per row group), so the pruned module computes what the pruned
graph computes. Then layer attributes follow the new shapes: ``in/out_channels`` and ``groups``
of convolutions, ``in/out_features``, ``num_features``, ``normalized_shape``, ``num_channels``,
``embedding_dim``, ``num_parameters`` and attention head counts (``num_attention_heads`` /
``all_head_size`` as in Hugging Face models, or ``num_heads`` with ``head_dim``).

:func:`check_export` exports the pruned module again and compares it with the pruned graph.
"""

from __future__ import annotations

import io
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch

from ..errors import UsageError, VerifyError
from ..rewrite import cut_array


def _plan_cuts(plan: Mapping) -> Dict[str, List[Tuple[int, np.ndarray, int]]]:
    """tensor -> [(axis, removed positions, groups)] from a plan or report JSON (shape members
    are the graph's business: torch code derives its shapes from the layers)."""
    try:
        groups = plan["groups"]
    except (TypeError, KeyError):
        raise UsageError("the plan has no 'groups' list (pass a plan or report dict, or its JSON path)")
    cuts: Dict[str, List[Tuple[int, np.ndarray, int]]] = {}
    sizes: Dict[Tuple[str, int], int] = {}
    for g in groups:
        if g.get("channels_after", 0) == g.get("channels_before", 0):
            continue
        for m in g.get("members", []):
            if m.get("role") == "shape":
                continue
            pos = m.get("positions")
            kept = set(int(k) for k in m["kept"])
            if pos is None:
                n = sizes.get((m["tensor"], int(m["axis"])))
                pos = range(n) if n is not None else None
            if pos is None:
                cuts.setdefault(m["tensor"], []).append((int(m["axis"]), ("whole", kept), int(m.get("groups", 1))))
                continue
            dead = np.array(sorted(set(int(p) for p in pos) - kept), dtype=np.int64)
            if dead.size:
                cuts.setdefault(m["tensor"], []).append((int(m["axis"]), dead, int(m.get("groups", 1))))
    return cuts


def _resolve(cuts, shape, axis_map=None):
    """Turn ("whole", kept) entries into removed positions now the tensor's shape is known."""
    out = []
    for a, r, gr in cuts:
        if isinstance(r, tuple):
            n = shape[a] if gr <= 1 else None
            if n is None:      # a grouped input axis is indexed over the full input-channel space
                n = shape[a] * gr
            r = np.array(sorted(set(range(n)) - r[1]), dtype=np.int64)
            if not r.size:
                continue
        out.append((a, r, gr))
    return out


def _graph_constants(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    """The constants of the graph the plan names (after graphprune's load-time clean-ups)."""
    from onnx import numpy_helper

    from ..fold import fold_weight_subgraphs, untie_constants

    m = fold_weight_subgraphs(model)
    m = untie_constants(m, inplace=m is not model)
    out = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _match_by_value(arr: np.ndarray, state: Mapping[str, torch.Tensor]) -> Optional[Tuple[str, bool]]:
    for k, v in state.items():
        if not v.is_floating_point() or v.numel() != arr.size:
            continue
        t = v.detach().cpu().numpy()
        if t.shape == arr.shape and np.array_equal(t, arr):
            return k, False
        if t.ndim == 2 and t.T.shape == arr.shape and np.array_equal(t.T, arr):
            return k, True
    return None


def _match_folded(arr: np.ndarray, module: torch.nn.Module) -> Optional[List[str]]:
    """A conv weight or bias with a BatchNorm folded in at export (the legacy exporter in eval
    mode): the keys of the conv's weight (or bias) and of the BatchNorm's per-channel tensors."""
    nn = torch.nn
    convs = [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    bns = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.running_var is not None]
    for bn_name, bn in bns:
        c = bn.num_features
        if arr.shape[0] != c:
            continue
        var = bn.running_var.detach().double().numpy()
        s = 1.0 / np.sqrt(var + bn.eps)
        if bn.weight is not None:
            s = s * bn.weight.detach().double().numpy()
        bn_keys = [f"{bn_name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")
                   if getattr(bn, k, None) is not None]
        for conv_name, conv in convs:
            if conv.out_channels != c:
                continue
            W = conv.weight.detach().double().numpy()
            if arr.ndim >= 3 and W.shape == arr.shape:
                if np.allclose(W * s.reshape((-1,) + (1,) * (W.ndim - 1)), arr, rtol=1e-4, atol=1e-6):
                    return [f"{conv_name}.weight"] + bn_keys
            elif arr.ndim == 1:
                b = conv.bias.detach().double().numpy() if conv.bias is not None else 0.0
                beta = bn.bias.detach().double().numpy() if bn.bias is not None else 0.0
                want = (b - bn.running_mean.detach().double().numpy()) * s + beta
                if np.allclose(want, arr, rtol=1e-4, atol=1e-6):
                    return bn_keys + ([f"{conv_name}.bias"] if conv.bias is not None else [])
    return None


def apply_plan(module: torch.nn.Module, plan_or_report: Union[str, Mapping, Sequence], example_inputs=None,
               onnx_model: Union[str, onnx.ModelProto, None] = None, check: Union[str, onnx.ModelProto, None] = None,
               exporter: str = "legacy", atol: float = 1e-4) -> torch.nn.Module:
    """Prune ``module`` in place per ``plan_or_report`` (a dict, a JSON path, or a list of them
    applied in order, e.g. the steps of an iterative schedule) and return it.

    ``onnx_model``: the exported dense model the plan was computed on; needed only when the
    plan names tensors the exporter renamed (matched to parameters by value). ``check``: the
    pruned ONNX model; the pruned module is exported again (``exporter``: legacy or dynamo) on
    ``example_inputs`` and its outputs compared with the pruned graph's (``atol``), raising
    VerifyError on a mismatch."""
    import json

    plans = plan_or_report if isinstance(plan_or_report, (list, tuple)) else [plan_or_report]
    if len(plans) == 1 and isinstance(plans[0], str):
        with open(plans[0], encoding="utf-8") as f:
            plans = [json.load(f)]
    if len(plans) == 1 and isinstance(plans[0], Mapping) and isinstance(plans[0].get("steps"), list):
        plans = list(plans[0]["steps"])          # an iterative run's report: its steps in order
    values = None
    if onnx_model is not None:
        from ..io import load_model
        values = _graph_constants(load_model(onnx_model) if isinstance(onnx_model, str) else onnx_model)
    alias: Dict[str, List[Tuple[str, bool]]] = {}
    for plan in plans:
        if isinstance(plan, str):
            with open(plan, encoding="utf-8") as f:
                plan = json.load(f)
        cuts = _plan_cuts(plan)
        state = dict(module.state_dict(keep_vars=True))
        # map every cut tensor to (state_dict key, transposed)
        targets: Dict[str, List[Tuple[int, np.ndarray, int]]] = {}
        transposed: Dict[str, bool] = {}
        for name, cs in cuts.items():
            hit = alias.get(name)
            if hit is None and name in state:
                hit = [(name, False)]
                if values is not None and name in values and values[name].shape == tuple(state[name].shape) \
                        and not np.array_equal(values[name], state[name].detach().cpu().numpy()):
                    keys = _match_folded(values[name], module)        # the dynamo exporter's folded BN
                    if keys:
                        hit = [(k, False) for k in keys]
            if hit is None and values is not None and name in values:
                one = _match_by_value(values[name], state)
                hit = [one] if one else None
                if hit is None and values[name].ndim in (1, 3, 4, 5):
                    keys = _match_folded(values[name], module)
                    hit = [(k, False) for k in keys] if keys else None
            if hit is None:
                why = "pass the exported model (onnx_model=) to match it by value" if values is None else \
                    "its values match no parameter or buffer, nor a conv with a BatchNorm folded in"
                raise UsageError(f"plan tensor {name!r} maps to no entry of the module's state_dict: {why}")
            alias[name] = hit
            for key, tr in hit:
                if key in targets and transposed[key] != tr:
                    raise UsageError(f"plan tensors map to {key!r} both as it is and transposed")
                targets.setdefault(key, []).extend(cs)
                transposed[key] = tr
        for key, cs in targets.items():
            t = state[key]
            a = t.detach().cpu().numpy()
            tr = transposed[key]
            if tr:
                a = a.T
            new = cut_array(a, _resolve(cs, a.shape))
            if tr:
                new = new.T
            _set(module, key, torch.from_numpy(np.ascontiguousarray(new)).to(t.dtype))
        _fix_attributes(module)
    if check is not None:
        check_export(module, check, example_inputs, exporter=exporter, atol=atol)
    return module


def _set(module: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    *path, leaf = key.split(".")
    owner = module
    for p in path:
        owner = getattr(owner, p)
    old = getattr(owner, leaf)
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, leaf, torch.nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        owner._buffers[leaf] = value


def _fix_attributes(module: torch.nn.Module) -> None:
    nn = torch.nn
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = m.weight
            old_in, old_out, g = m.in_channels, m.out_channels, m.groups
            if g > 1 and w.shape[1] == old_in // g and w.shape[0] != old_out:
                g = max(1, w.shape[0] * g // old_out)       # whole groups removed (depthwise)
            m.groups, m.out_channels, m.in_channels = g, w.shape[0], w.shape[1] * g
        elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            w = m.weight
            m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = m.weight.shape[1], m.weight.shape[0]
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = m.weight if m.weight is not None else m.running_mean
            if ref is not None:
                m.num_features = ref.shape[0]
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.normalized_shape = tuple(m.weight.shape)
        elif isinstance(m, nn.GroupNorm):
            if m.weight is not None:
                m.num_channels = m.weight.shape[0]
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
        elif isinstance(m, nn.PReLU):
            m.num_parameters = m.weight.numel()
        _fix_heads(m)


def _fix_heads(m: torch.nn.Module) -> None:
    nn = torch.nn
    size = getattr(m, "attention_head_size", None) or getattr(m, "head_dim", None)
    if not isinstance(size, int) or size < 1:
        return
    proj = None
    for name in ("query", "q_proj", "q", "qkv", "in_proj", "c_attn"):
        c = getattr(m, name, None)
        if isinstance(c, nn.Linear):
            proj = (name, c)
            break
    if proj is None:
        return
    width = proj[1].weight.shape[0] // (3 if proj[0] in ("qkv", "in_proj", "c_attn") else 1)
    heads = width // size
    for attr in ("num_attention_heads", "num_heads", "n_head", "n_heads"):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, heads)
    for attr in ("all_head_size", "inner_dim"):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, heads * size)


def export(module: torch.nn.Module, example_inputs, exporter: str = "legacy", input_names=None,
           output_names=None, dynamic_axes=None, opset: Optional[int] = None) -> onnx.ModelProto:
    """The module exported to an in-memory ONNX model (legacy or dynamo exporter)."""
    args = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    module.eval()
    f = io.BytesIO()
    if exporter == "legacy":
        torch.onnx.export(module, args, f, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset or 17, dynamo=False)
        return onnx.load_from_string(f.getvalue())
    if exporter == "dynamo":
        prog = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                 opset_version=opset or 18, dynamo=True)
        return prog.model_proto
    raise UsageError(f"exporter must be legacy or dynamo, got {exporter!r}")


def check_export(module: torch.nn.Module, pruned: Union[str, onnx.ModelProto], example_inputs,
                 exporter: str = "legacy", atol: float = 1e-4) -> float:
    """Export ``module`` again and compare its outputs with the pruned graph's on
    ``example_inputs`` (onnxruntime both). Returns the largest absolute difference; raises
    VerifyError above ``atol``."""
    from .. import bench
    from ..io import load_model

    if example_inputs is None:
        raise UsageError("check_export needs example_inputs")
    p = load_model(pruned) if isinstance(pruned, str) else pruned
    args = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    names = [i.name for i in p.graph.input if i.name not in {t.name for t in p.graph.initializer}]
    again = export(module, args, exporter, input_names=names)
    feed = {n: a.detach().cpu().numpy() for n, a in zip(names, args)}
    want = list(bench.run_model(p, feed).values())
    got = list(bench.run_model(again, {i.name: feed[n] for i, n in zip(
        [i for i in again.graph.input if i.name not in {t.name for t in again.graph.initializer}], names)}).values())
    if len(want) != len(got):
        raise VerifyError(f"the re-exported module has {len(got)} outputs, the pruned graph {len(want)}")
    worst = 0.0
    for w, g in zip(want, got):
        if w.shape != g.shape:
            raise VerifyError(f"the re-exported module's output has shape {g.shape}, the pruned graph's {w.shape}")
        worst = max(worst, float(np.abs(w.astype(np.float64) - g.astype(np.float64)).max()) if w.size else 0.0)
    if worst > atol:
        raise VerifyError(f"the pruned module disagrees with the pruned graph (max abs diff {worst:.3g} > {atol})")
    return worst
