"""A tiny BERT (Hugging Face ``BertModel``, random weights): MiniLM's graph at a fraction of its
size, for tests that need a real BERT export without MiniLM's 90 MB. onnxruntime's transformer
optimizer fuses it into the same com.microsoft ops (Attention, SkipLayerNormalization, BiasGelu,
EmbedLayerNormalization).

Hidden size 32, 2 layers of 4 heads (head dim 8), MLP width 64, a 100-token vocabulary; biases
and LayerNorm parameters random too (no two layers alike, as after training). The ONNX
graph takes ``input_ids`` and ``attention_mask`` ([batch, sequence], int64) and returns
``last_hidden_state`` ([batch, sequence, 32]), like refmodels/minilm.py.

    python -m refmodels.bert_tiny OUT.onnx --exporter legacy|dynamo
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HIDDEN, LAYERS, HEADS, MLP, VOCAB = 32, 2, 4, 64, 100


def build(seed: int = 0):
    """(encoder in eval mode, example (input_ids, attention_mask), input names, dynamic axes)."""
    import torch
    from transformers import BertConfig, BertModel

    from .minilm import token_states

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=MLP, max_position_embeddings=64, type_vocab_size=2,
                     attn_implementation="eager")
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    # BERT initialises biases to 0 and LayerNorms to the identity: every layer would hold equal
    # tensors, which the legacy exporter stores once (coupling the layers). Trained values differ.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in bert.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith("bias"):
                p.copy_((torch.rand(p.shape, generator=gen) - 0.5) * 0.4)

    ids = torch.randint(0, VOCAB, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, 6:] = 0                                   # the second sequence is padded
    names = ["input_ids", "attention_mask"]
    dyn = {n: {0: "batch", 1: "sequence"} for n in names + ["output"]}
    return token_states(bert).eval(), (ids, mask), names, dyn


def export(path: str, exporter: str = "legacy", opset: int | None = None, seed: int = 0) -> str:
    from .transformers import export_model

    model, example, names, dyn = build(seed)
    return export_model(model, example, names, dyn, path, exporter, opset)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    a = ap.parse_args()
    print(export(a.out, a.exporter))
