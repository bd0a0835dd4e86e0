"""MiniLM baseline (transformers issue): 50 % of the heads and 50 % of the MLP width removed with
L2 magnitude and no calibration, graphprune vs Torch-Pruning's Hugging Face BERT recipe at the
same ratios, in one run. Metrics vs the dense model on real English sentences (Python standard
library docstrings): mean cosine similarity of sentence embeddings and the Spearman correlation
of the pairwise-similarity matrices.

    python tools/minilm_baseline.py [--exporter legacy|dynamo] [--n-eval 256]

Needs torch-pruning in the environment (pip install torch-pruning) besides the test extra.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from graphprune import bench  # noqa: E402
from graphprune.pipeline import Options, count_feed, prune  # noqa: E402
from refmodels import minilm  # noqa: E402
from quality import bert_macs, sentences, spearman  # noqa: E402


def metrics(e, e0):
    return {"cos": round(float((e * e0).sum(1).mean()), 4), "spearman": round(spearman(e @ e.T, e0 @ e0.T), 4)}


def torch_pruning_hf(bert, ids, mask, ratio, importance=None):
    """Torch-Pruning's recipe for Hugging Face BERT: heads via num_heads / prune_num_heads,
    MLP widths, residual width kept; then patch the attention modules' head counts.
    ``importance``: a Torch-Pruning importance (default MagnitudeImportance(p=2))."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    m = copy.deepcopy(bert).eval()
    num_heads = {}
    for mod in m.modules():
        if isinstance(mod, BertSelfAttention):
            num_heads[mod.query] = num_heads[mod.key] = num_heads[mod.value] = mod.num_attention_heads
    ignored = [m.pooler, m.embeddings] if m.pooler is not None else [m.embeddings]
    for layer in m.encoder.layer:
        ignored += [layer.attention.output.dense, layer.output.dense]
    pr = tp.pruner.MetaPruner(m, {"input_ids": ids, "attention_mask": mask},
                              importance=importance or tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                              ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
                              prune_head_dims=False, head_pruning_ratio=ratio, global_pruning=False)
    t = time.perf_counter()
    pr.step()
    dt = time.perf_counter() - t
    for mod in m.modules():
        if isinstance(mod, BertSelfAttention):
            mod.num_attention_heads = pr.num_heads[mod.query]
            mod.all_head_size = mod.query.out_features
            mod.attention_head_size = mod.all_head_size // mod.num_attention_heads
    return m.eval(), dt


def main():
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    tok, bert = minilm.load()
    _, eval_s = sentences(128, a.n_eval)
    ev = minilm.tokenize(tok, eval_s)
    path = minilm.export(os.path.join(tempfile.mkdtemp(), "minilm.onnx"), a.exporter)
    dense = onnx.load(path)

    def emb(m):
        h = bench.run_model(m, ev, threads=2)
        return minilm.embed(next(iter(h.values())), ev["attention_mask"])

    e0 = emb(dense)
    rows = []
    t = time.perf_counter()
    res = prune(dense, Options(head_ratio=a.ratio, mlp_ratio=a.ratio, criterion="l2", bench=False, verify=False))
    gp_s = time.perf_counter() - t
    feed = count_feed(dense, 64)
    macs0 = bench.count_macs_params(dense, feed)[0]
    macs1 = bench.count_macs_params(res.model, feed)[0]
    rows.append({"tool": "graphprune", "macs_kept": round(macs1 / macs0, 4), **metrics(emb(res.model), e0),
                 "prune_s": round(gp_s, 2)})
    ids = torch.from_numpy(ev["input_ids"][:2])
    mask = torch.from_numpy(ev["attention_mask"][:2])
    m, tp_s = torch_pruning_hf(bert, ids, mask, a.ratio)
    with torch.no_grad():
        h = m(input_ids=torch.from_numpy(ev["input_ids"]),
              attention_mask=torch.from_numpy(ev["attention_mask"])).last_hidden_state.numpy()
    rows.append({"tool": "torch-pruning (HF recipe)", "macs_kept": round(bert_macs(m) / bert_macs(bert), 4),
                 **metrics(minilm.embed(h, ev["attention_mask"]), e0), "prune_s": round(tp_s, 2)})
    print(f"MiniLM, {int(a.ratio * 100)} % heads + {int(a.ratio * 100)} % MLP, L2 magnitude, no calibration, "
          f"{len(eval_s)} sentences, {a.exporter} export")
    print("| tool | MACs kept (seq 64) | mean cosine vs dense | Spearman of pairwise similarities | prune s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tool']} | {r['macs_kept']:.3f} | {r['cos']:.4f} | {r['spearman']:.4f} | {r['prune_s']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
