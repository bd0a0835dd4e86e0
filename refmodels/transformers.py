"""Tiny reference transformers that mirror the coupling of real families (random weights).

- ``vit``: patch embedding Conv, class token Concat, position embedding Add, fused QKV Linear
  reshaped to [B, N, 3, H, D] and unbound, pre-LayerNorm blocks, GELU MLP, head on the class token.
- ``gpt2``: token + position embeddings (Gather), fused c_attn split into Q/K/V, causal mask,
  GELU MLP, tied LM head (the embedding table is read twice).
- ``llama``: RMSNorm written out (Pow/ReduceMean/Rsqrt), rotary embeddings (rotate_half via
  Slice/Neg/Concat), grouped-query attention (repeat_kv via Expand/Reshape), SwiGLU MLP.

``build(name, seed=0)`` returns (model in eval mode, example inputs tuple, input names,
dynamic axes) ready for ``models.export``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Separate or fused projections, H query heads, Hkv key/value heads (GQA when Hkv < H)."""

    def __init__(self, dim, heads, kv_heads=None, fused="none", bias=True, rotary=False, causal=False):
        super().__init__()
        self.h, self.hkv = heads, kv_heads or heads
        self.d = dim // heads
        self.fused, self.rotary, self.causal = fused, rotary, causal
        if fused == "none":
            self.q = nn.Linear(dim, self.h * self.d, bias=bias)
            self.k = nn.Linear(dim, self.hkv * self.d, bias=bias)
            self.v = nn.Linear(dim, self.hkv * self.d, bias=bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.o = nn.Linear(self.h * self.d, dim, bias=bias)

    def forward(self, x, mask=None, cos=None, sin=None):
        b, n, _ = x.shape
        if self.fused == "reshape":  # timm ViT: [B, N, 3, H, D] -> permute -> unbind
            qkv = self.qkv(x).reshape(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            if self.fused == "split":  # GPT-2: one c_attn, split on the last axis
                q, k, v = self.qkv(x).split(self.h * self.d, dim=2)
            else:
                q, k, v = self.q(x), self.k(x), self.v(x)
            q = q.view(b, n, self.h, self.d).transpose(1, 2)
            k = k.view(b, n, self.hkv, self.d).transpose(1, 2)
            v = v.view(b, n, self.hkv, self.d).transpose(1, 2)
        if self.rotary:
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.hkv != self.h:
            rep = self.h // self.hkv
            k = k[:, :, None].expand(b, self.hkv, rep, n, self.d).reshape(b, self.h, n, self.d)
            v = v[:, :, None].expand(b, self.hkv, rep, n, self.d).reshape(b, self.h, n, self.d)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d)
        if self.causal:
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float("-inf"))
        if mask is not None:
            att = att + mask
        att = att.softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, n, self.h * self.d)
        return self.o(y)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MLP(nn.Module):
    def __init__(self, dim, hidden, gated=False):
        super().__init__()
        self.gated = gated
        self.fc1 = nn.Linear(dim, hidden)
        if gated:
            self.up = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        if self.gated:
            return self.fc2(F.silu(self.fc1(x)) * self.up(x))
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, norm="ln", **attn):
        super().__init__()
        mk = (lambda: nn.LayerNorm(dim)) if norm == "ln" else (lambda: RMSNorm(dim))
        self.n1, self.n2 = mk(), mk()
        self.attn = Attention(dim, heads, **{k: v for k, v in attn.items() if k != "gated"})
        self.mlp = MLP(dim, hidden, gated=attn.get("gated", False))

    def forward(self, x, mask=None, cos=None, sin=None):
        x = x + self.attn(self.n1(x), mask, cos, sin)
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    def __init__(self, img=32, patch=8, dim=64, depth=2, heads=4, classes=10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        n = (img // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.5)
        self.blocks = nn.ModuleList(Block(dim, heads, 2 * dim, fused="reshape") for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x)[:, 0])


class GPT2(nn.Module):
    def __init__(self, vocab=100, ctx=128, dim=64, depth=2, heads=4):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(ctx, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, 4 * dim, fused="split", causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)[None]
        for b in self.blocks:
            x = b(x)
        return self.norm(x) @ self.wte.weight.t()  # tied LM head


class Llama(nn.Module):
    def __init__(self, vocab=100, dim=64, depth=2, heads=4, kv_heads=2, hidden=96, ctx=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, norm="rms", kv_heads=kv_heads, bias=False,
                                          rotary=True, causal=True, gated=True) for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.lm = nn.Linear(dim, vocab, bias=False)
        d = dim // heads
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        t = torch.arange(ctx).float()
        freqs = torch.outer(t, inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, ids):
        n = ids.shape[1]
        x = self.tok(ids)
        cos, sin = self.cos[:n], self.sin[:n]
        for b in self.blocks:
            x = b(x, None, cos, sin)
        return self.lm(self.norm(x))


def _randomise(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, RMSNorm)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.2, 0.2)


REGISTRY: Dict[str, Callable[[], nn.Module]] = {"vit": ViT, "gpt2": GPT2, "llama": Llama}


def build(name: str, seed: int = 0, batch: int = 2, seq: int = 16) -> Tuple[nn.Module, tuple, list, dict]:
    torch.manual_seed(seed)
    model = REGISTRY[name]()
    _randomise(model)
    model.eval()
    if name == "vit":
        return model, (torch.randn(batch, 3, 32, 32),), ["input"], {"input": {0: "batch"}, "output": {0: "batch"}}
    ids = torch.randint(0, 100, (batch, seq))
    return model, (ids,), ["input_ids"], {"input_ids": {0: "batch", 1: "sequence"},
                                          "output": {0: "batch", 1: "sequence"}}


def export_model(model: nn.Module, example: tuple, input_names: list, dynamic: dict, path: str,
                 exporter: str = "legacy", opset: int | None = None) -> str:
    """Export with named inputs and dynamic axes (batch, sequence) by either torch exporter."""
    import onnx

    from .export import _fix_ir_version, _quiet

    with _quiet(), torch.no_grad():
        if exporter == "legacy":
            torch.onnx.export(model, example, path, dynamo=False, opset_version=opset or 17,
                              do_constant_folding=True, input_names=input_names, output_names=["output"],
                              dynamic_axes=dynamic)
            proto = onnx.load(path)
        else:
            dims = {}
            shapes = []
            for name, ex in zip(input_names, example):
                axes = {}
                for ax, sym in dynamic.get(name, {}).items():
                    dims.setdefault(sym, torch.export.Dim(sym, min=2, max=64 if sym == "sequence" else 1024))
                    axes[ax] = dims[sym]
                shapes.append(axes)
            program = torch.onnx.export(model, example, dynamo=True, opset_version=opset or 18,
                                        input_names=input_names, output_names=["output"],
                                        dynamic_shapes=tuple(shapes), optimize=True, external_data=False)
            proto = program.model_proto
    onnx.save(_fix_ir_version(proto), path)
    return path


def export_named(name: str, path: str, exporter: str = "legacy", seed: int = 0, opset: int | None = None) -> str:
    model, example, names, dynamic = build(name, seed)
    return export_model(model, example, names, dynamic, path, exporter, opset)
