"""onnxruntime contrib ops (domain com.microsoft) as produced by onnxruntime's transformer
optimizer: fused Attention / MultiHeadAttention (heads are units; ``num_heads`` is rewritten),
SkipLayerNormalization, EmbedLayerNormalization, BiasGelu, FastGelu, Gelu, QuickGelu, BiasAdd.
Other contrib ops have no rule and block what they touch."""

import numpy as np

from ..engine import AnalysisError
from . import register

MS = "com.microsoft"


def _last(ctx, name):
    r = ctx.rank(name)
    if r is None:
        d = ctx.desc(name)
        if not d:
            return None, None
        r = max(d) + 1
    return r - 1, ctx.atoms(name, r - 1)


def _last_and_pass_others(ctx, x):
    """The hidden (last) axis of x, with every other channel axis passed to output 0."""
    ax, a = _last(ctx, x)
    for k, atoms in ctx.desc(x).items():
        if k != ax:
            ctx.set_desc(ctx.outputs[0], k, atoms)
    return ax, a


def _param(ctx, name, atoms):
    if not name:
        return
    shape = ctx.const_shape(name)
    if shape is None:
        raise AnalysisError(f"{name} is not constant")
    if len(shape) == 0 or shape[-1] != len(atoms):
        raise AnalysisError(f"{name} has an unexpected shape {list(shape)}")
    ctx.member(name, len(shape) - 1, "param", atoms)


def _rewrite_num_heads(ctx, heads):
    node_index = ctx.index
    ctx.on_rewrite(lambda rw: rw.set_attr(node_index, "num_heads", rw.count(heads)))


@register("Attention", domain=MS, doc="fused QKV attention: heads are units (Q, K, V columns of "
                                      "one head go together); num_heads rewritten")
def attention(ctx):
    """com.microsoft.Attention(input, weights[in, 3H], bias[3H], mask_index, ...)."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    ax, xin = _last(ctx, x)
    if ctx.attr("qkv_hidden_sizes") is not None or any(ctx.input(k) for k in (4, 5, 6)) \
            or any(o for o in ctx.outputs[1:]):
        raise AnalysisError("Attention with qkv_hidden_sizes, past state or attention bias")
    wshape = ctx.const_shape(w)
    if wshape is None or len(wshape) != 2:
        raise AnalysisError("weights are not a constant matrix")
    if xin is not None:
        ctx.member(w, 0, "in", xin)
    nh = int(ctx.attr("num_heads"))
    hidden = wshape[1] // 3
    d = hidden // nh
    heads = ctx.new_space(nh, w)
    ctx.mark_heads(heads)
    cols = np.tile(np.repeat(heads, d), 3)
    ctx.member(w, 1, "out", cols)
    _param(ctx, b, cols)
    ctx.set_desc(ctx.outputs[0], ax if ax is not None else 2, np.repeat(heads, d))
    _rewrite_num_heads(ctx, heads)


@register("MultiHeadAttention", domain=MS, doc="separate Q/K/V inputs: head h of Q, K and V is one "
                                               "unit; num_heads rewritten")
def multi_head_attention(ctx):
    """com.microsoft.MultiHeadAttention(query, key, value, bias, ...)."""
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    if not k or not v or any(ctx.input(i) for i in range(4, 8)) or any(o for o in ctx.outputs[1:]):
        raise AnalysisError("packed QKV, masks with heads or past state")
    nh = int(ctx.attr("num_heads"))
    parts = []
    for name in (q, k, v):
        ax, atoms = _last(ctx, name)
        if atoms is None or len(atoms) % nh:
            raise AnalysisError(f"{name} has no prunable head axis")
        parts.append(atoms.reshape(nh, -1))
    for p in parts:
        for row in p:
            ctx.couple_all(row)
    for p in parts[1:]:
        ctx.couple(parts[0][:, 0], p[:, 0])
    heads = parts[0][:, 0].copy()
    ctx.mark_heads(heads)
    if ctx.input(3):
        _param(ctx, ctx.input(3), np.concatenate([p.ravel() for p in parts]))
    out_ax = (ctx.rank(q) or 3) - 1
    ctx.set_desc(ctx.outputs[0], out_ax, parts[2].ravel().copy())
    _rewrite_num_heads(ctx, heads)


@register("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS,
          doc="residual add + LayerNorm over the hidden axis: couples input and skip, not exact")
def skip_layernorm(ctx):
    """(input, skip, gamma, beta?, bias?) -> (output, mean, inv_std_var, input_skip_bias_sum)."""
    x, skip = ctx.input(0), ctx.input(1)
    ax, a = _last(ctx, x)
    sax, s = _last(ctx, skip)
    for name in (x, skip):
        for k, atoms in ctx.desc(name).items():
            if k != (ax if name == x else sax):
                raise AnalysisError("channels on a non-hidden axis")
    if a is None and s is None:
        return
    if a is None or s is None:
        ctx.block(a if a is not None else s, f"{ctx.op} {ctx.label} adds an unprunable tensor")
        return
    ctx.couple(a, s)
    ctx.inexact(a, f"{ctx.op} {ctx.label} normalises over this axis")
    gamma = ctx.input(2)
    beta = ctx.input(3) if ctx.op == "SkipLayerNormalization" else ""
    bias = ctx.input(4) if ctx.op == "SkipLayerNormalization" else ctx.input(3)
    for p in (gamma, beta, bias):
        _param(ctx, p, a)
    for i in (0, 3):
        if i < len(ctx.outputs) and ctx.outputs[i]:
            ctx.set_desc(ctx.outputs[i], ax, a)


@register("SimplifiedLayerNormalization", doc="RMSNorm over the last axis: pass-through, not exact")
@register("SimplifiedLayerNormalization", domain=MS, doc="RMSNorm over the last axis: pass-through, not exact")
def simplified_layernorm(ctx):
    """(X, scale) -> Y (RMSNorm)."""
    x = ctx.input(0)
    ax, a = _last_and_pass_others(ctx, x)
    if a is None:
        return
    ctx.inexact(a, f"{ctx.op} {ctx.label} normalises over this axis")
    _param(ctx, ctx.input(1), a)
    ctx.set_desc(ctx.outputs[0], ax, a)


@register("EmbedLayerNormalization", domain=MS, doc="embeddings + LayerNorm: a new hidden space whose "
                                                    "members are the tables, gamma and beta; not exact")
def embed_layernorm(ctx):
    """(input_ids, segment_ids, word_emb, pos_emb, seg_emb, gamma, beta, mask, position_ids)."""
    word = ctx.input(2)
    wshape = ctx.const_shape(word)
    if wshape is None:
        raise AnalysisError("word embedding is not constant")
    hidden = ctx.new_space(wshape[1], word)
    ctx.member(word, 1, "param", hidden)
    for name in (ctx.input(3), ctx.input(4), ctx.input(5), ctx.input(6)):
        _param(ctx, name, hidden)
    ctx.inexact(hidden, f"EmbedLayerNormalization {ctx.label} normalises over this axis")
    for i in (0, 2):
        if i < len(ctx.outputs) and ctx.outputs[i]:
            ctx.set_desc(ctx.outputs[i], 2, hidden)


@register("BiasGelu", "FastGelu", "BiasAdd", domain=MS, doc="elementwise with a bias on the last axis "
                                                            "(BiasAdd also adds a skip input)")
def bias_act(ctx):
    """BiasGelu(A, B), FastGelu(X, bias?), BiasAdd(X, bias, skip)."""
    x = ctx.input(0)
    ax, a = _last_and_pass_others(ctx, x)
    if ctx.op == "BiasAdd":
        sax, s = _last(ctx, ctx.input(2))
        if (a is None) != (s is None):
            ctx.block(a if a is not None else s, f"BiasAdd {ctx.label} adds an unprunable tensor")
            return
        if a is not None:
            ctx.couple(a, s)
    if a is None:
        return
    if ctx.input(1):
        _param(ctx, ctx.input(1), a)
    ctx.set_desc(ctx.outputs[0], ax, a)


@register("Gelu", "QuickGelu", domain=MS, doc="pass-through (elementwise)")
def ms_unary(ctx):
    """Elementwise activation."""
    ctx.pass_through(ctx.input(0), ctx.outputs[0])
