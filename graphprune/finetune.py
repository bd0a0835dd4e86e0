"""Recover accuracy after pruning: knowledge distillation of the pruned ONNX graph toward the
dense model's outputs, on unlabeled inputs (the ``--calib`` formats).

The teacher (dense model) runs in onnxruntime, one batch at a time (its outputs are never held
for the whole data set); the student (pruned graph) is trained in torch by the interpreter of
:mod:`graphprune.torch.interpreter`. Loss on the graph outputs (``mse``: squared error relative
to the teacher's energy, ``cosine``: 1 - cosine over the last axis, ``kl``: KL divergence of the
softmax over the last axis, at a temperature) and optionally on intermediate tensors that both
graphs keep under the same name and shape. Updates are masked: a weight's exact zeros (sparse
layers) stay zero. Trained values are written back into the same tensors of the pruned graph,
so node and tensor names, shapes and the graph's structure do not change and plans, reports and
``verify`` stay valid (:func:`structure` is compared before and after).

Optional held-out split with early stopping (the best validation weights are kept), a time
budget, a progress callback, and determinism: the same data, options and seed give the same
bytes. A non-finite loss stops training and keeps the last weights that gave a finite one.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx

from .choices import LOSSES  # noqa: F401  (FinetuneOptions.loss)
from .errors import CalibrationError, UsageError
from .options import FinetuneOptions  # noqa: F401  (defined with the other settings, in the light options.py)

AUTO_MATCH_OPS = ("LayerNormalization", "Add", "Relu", "BatchNormalization", "Clip", "HardSwish", "Concat")
# "auto" on a transformer: the normalised residual stream (its width is kept by head/MLP pruning)
AUTO_NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization",
                 "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
VAL_CACHE_BYTES = 256 * 2 ** 20                # the teacher's outputs on the held-out split kept up to this size


# ----------------------------------------------------------------------------- structure


def structure(model: onnx.ModelProto) -> tuple:
    """Everything about a graph but its weight values: nodes (op, domain, name, inputs, outputs,
    attributes other than a Constant's value data), constants' names, dtypes and shapes, inputs,
    outputs and opsets."""
    def attr_sig(n):
        out = []
        for at in n.attribute:
            if n.op_type == "Constant" and at.name == "value":
                out.append((at.name, at.t.data_type, tuple(at.t.dims)))
            else:
                out.append((at.name, at.SerializeToString(deterministic=True)))
        return tuple(out)
    g = model.graph
    return (tuple((n.op_type, n.domain, n.name, tuple(n.input), tuple(n.output), attr_sig(n)) for n in g.node),
            tuple((t.name, t.data_type, tuple(t.dims)) for t in g.initializer),
            tuple(vi.SerializeToString(deterministic=True) for vi in g.input),
            tuple(vi.SerializeToString(deterministic=True) for vi in g.output),
            tuple((o.domain, o.version) for o in model.opset_import))


# ----------------------------------------------------------------------------- data


class _Data:
    """Samples as arrays (shuffled per epoch, re-batched) when every input has a sample axis of
    equal length; otherwise the given batches, shuffled as units. ``val`` holds out samples."""

    def __init__(self, calib, batch: int, val_fraction: float, seed: int, static_batch: Optional[int]):
        rng = np.random.default_rng(seed)
        feeds = list(calib)
        arrays = None
        try:
            keys = list(feeds[0])
            if all(list(f) == keys for f in feeds):
                arrays = {k: np.concatenate([f[k] for f in feeds], axis=0) for k in keys}
        except ValueError:
            arrays = None
        # a static batch b: batches are multiples of b (the models run in chunks of b)
        self.batch = max(1, batch // static_batch) * static_batch if static_batch else batch
        if arrays is not None:
            n = next(iter(arrays.values())).shape[0]
            perm = rng.permutation(n)
            n_val = int(round(n * val_fraction))
            if static_batch:
                n_val = (n_val // static_batch) * static_batch
                if val_fraction > 0 and n_val == 0 and n >= 2 * static_batch:
                    n_val = static_batch
            elif val_fraction > 0 and n_val == 0 and n >= 2:
                n_val = 1
            if n - n_val < 1:
                n_val = 0
            self.val_idx, self.train_idx = np.sort(perm[n - n_val:]), perm[:n - n_val]
            self.arrays = arrays
            self.n_train = len(self.train_idx)
            if static_batch and self.n_train < static_batch:
                raise CalibrationError(f"{self.n_train} training samples do not fill one batch of {static_batch}, "
                                       "the model's static batch size")
        else:
            self.arrays = None
            order = rng.permutation(len(feeds))
            n_val = int(round(len(feeds) * val_fraction))
            if val_fraction > 0 and n_val == 0 and len(feeds) >= 2:
                n_val = 1
            self.val_feeds = [feeds[i] for i in sorted(order[len(feeds) - n_val:])] if n_val else []
            self.train_feeds = [feeds[i] for i in order[:len(feeds) - n_val]]
            self.n_train = len(self.train_feeds)
        self.rng = rng
        self.static = static_batch

    def steps_per_epoch(self) -> int:
        if self.arrays is not None:
            return max(1, self.n_train // self.batch) if self.n_train >= self.batch else 1
        return self.n_train

    def epoch(self):
        """Training batches of one epoch, in a fresh seeded order."""
        if self.arrays is not None:
            idx = self.train_idx[self.rng.permutation(self.n_train)]
            b = self.batch
            stops = range(0, max(self.n_train - b + 1, 1), b) if self.n_train >= b else [0]
            for i in stops:
                sel = np.sort(idx[i:i + b])
                if self.static:
                    sel = sel[:len(sel) // self.static * self.static]
                yield {k: v[sel] for k, v in self.arrays.items()}
        else:
            for i in self.rng.permutation(self.n_train):
                yield self.train_feeds[i]

    def validation(self):
        if self.arrays is not None:
            b = self.batch
            for i in range(0, len(self.val_idx), b):
                sel = self.val_idx[i:i + b]
                yield {k: v[sel] for k, v in self.arrays.items()}
        else:
            yield from self.val_feeds

    def n_val(self) -> int:
        return len(self.val_idx) if self.arrays is not None else len(self.val_feeds)


# ----------------------------------------------------------------------------- losses


def _loss_fn(kind: str, temperature: float):
    import torch
    import torch.nn.functional as F

    if kind == "mse":
        def f(s, t):
            return ((s - t) ** 2).mean() / (t.pow(2).mean() + 1e-12)
    elif kind == "cosine":
        def f(s, t):
            if s.dim() == 1:
                s, t = s[None], t[None]
            return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    else:
        T = float(temperature)

        def f(s, t):
            ls = torch.log_softmax(s / T, dim=-1)
            lt = torch.log_softmax(t / T, dim=-1)
            return (lt.exp() * (lt - ls)).sum(-1).mean() * (T * T)
    return f


# ----------------------------------------------------------------------------- the step


def _float_outputs(model: onnx.ModelProto) -> List[str]:
    return [o.name for o in model.graph.output if o.type.tensor_type.elem_type in
            (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)]


def _static_batch(model: onnx.ModelProto) -> Optional[int]:
    firsts = set()
    for vi in model.graph.input:
        if any(vi.name == t.name for t in model.graph.initializer):
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims:
            firsts.add(dims[0].dim_value if dims[0].HasField("dim_value") else None)
    if len(firsts) == 1:
        b = next(iter(firsts))
        return b if b and b > 1 else (1 if b == 1 else None)
    return None


def _free_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose inputs' (and outputs') static first dim is symbolic."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name for t in out.graph.initializer}
    for vi in list(out.graph.input) + list(out.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "graphprune_batch"
    del out.graph.value_info[:]
    return out


def _match_candidates(student: onnx.ModelProto, teacher: onnx.ModelProto, patterns: Sequence[str]) -> List[str]:
    s_out = {o: n.op_type for n in student.graph.node for o in n.output if n.op_type != "Constant"}
    t_out = {o: n.op_type for n in teacher.graph.node for o in n.output if n.op_type != "Constant"}
    outputs = {o.name for o in student.graph.output}
    order = [o for n in student.graph.node for o in n.output if o in s_out and o in t_out and o not in outputs and o]
    out = []
    for p in patterns:
        if p == "auto":
            out += [o for o in order if s_out[o] in AUTO_MATCH_OPS and t_out[o] == s_out[o]]
        else:
            hit = [o for o in order if fnmatch.fnmatchcase(o, p)]
            if not hit:
                raise UsageError(f"--match {p!r}: no tensor of that name is kept by both graphs")
            out += hit
    return list(dict.fromkeys(out))


def _check_pair(student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
    inits = {t.name for t in student.graph.initializer}
    s_in = [i.name for i in student.graph.input if i.name not in inits]
    t_inits = {t.name for t in teacher.graph.initializer}
    t_in = [i.name for i in teacher.graph.input if i.name not in t_inits]
    if sorted(s_in) != sorted(t_in):
        raise UsageError(f"the teacher's inputs ({', '.join(t_in)}) differ from the student's ({', '.join(s_in)})")
    s_out = [o.name for o in student.graph.output]
    t_out = [o.name for o in teacher.graph.output]
    if s_out != t_out:
        raise UsageError(f"the teacher's outputs ({', '.join(t_out)}) differ in names from the student's "
                         f"({', '.join(s_out)})")


def finetune(student: onnx.ModelProto, teacher: onnx.ModelProto, data, opts: FinetuneOptions,
             progress: Optional[Callable[[dict], None]] = None):
    """Distil ``student`` (a pruned graph) toward ``teacher`` (the dense graph) on ``data`` (a
    Calibration, or any iterable of feed dicts). Returns ``(model, info)``: a copy of ``student``
    with trained weights (same structure) and a dict of what happened (steps, losses, stop
    reason, agreement on the held-out split before and after)."""
    from .calib import Calibration
    from .torch import require_torch

    torch = require_torch()
    from . import runtime
    from .torch.interpreter import OnnxModule, trainable_constants, write_back
    from .verify import agreement

    opts.check()
    _check_pair(student, teacher)
    calib = data if isinstance(data, Calibration) else Calibration(data, "fine-tuning data")
    calib.check(student)
    calib.check(teacher)
    torch.manual_seed(opts.seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    t_start, cpu0 = time.perf_counter(), time.process_time()
    try:
        names = [n for n in trainable_constants(student, embeddings=opts.train_embeddings)
                 if not any(fnmatch.fnmatchcase(n, p) for p in opts.freeze)]
        module = OnnxModule(student, trainable=names)
        dat = _Data(calib, opts.batch, opts.val_fraction, opts.seed, _static_batch(student))
        outputs = _float_outputs(student)
        if not outputs:
            raise UsageError("the student has no float outputs to distil")
        kinds = {o: opts.output_loss.get(o, opts.loss) for o in outputs}
        unknown = [k for k in opts.output_loss if k not in outputs]
        if unknown:
            raise UsageError(f"--loss {unknown[0]}=...: no float graph output of that name "
                             f"(outputs: {', '.join(outputs)})")
        fns = {o: _loss_fn(k, opts.temperature) for o, k in kinds.items()}
        match = _match_candidates(student, teacher, opts.match) if opts.match else []
        t_names = outputs + match
        chunk = _static_batch(student)
        sess = None
        if chunk:
            # a static batch: try whole batches (most graphs do not depend on it), else chunks
            probe = next(iter(dat.epoch()))
            n = next(iter(probe.values())).shape[0]
            try:
                sess = runtime.session(_free_batch(teacher), opts.threads, extra_outputs=match)
                res = sess.run(t_names, {k: v for k, v in probe.items() if k in {i.name for i in sess.get_inputs()}})
                with torch.no_grad():
                    got = module(probe, extra=match)
                if all(r.shape[:1] == (n,) for r in res[:len(outputs)]) and \
                        all(tuple(got[o].shape) == r.shape for o, r in zip(outputs, res)):
                    chunk = None
                else:
                    sess = None
            except Exception:
                sess = None
            dat.rng = np.random.default_rng(opts.seed)
        if sess is None:
            sess = runtime.session(teacher, opts.threads, extra_outputs=match)
        t_inputs = {i.name for i in sess.get_inputs()}

        def chunks(feed):
            if not chunk:
                return [feed]
            n = next(iter(feed.values())).shape[0]
            return [{k: v[i:i + chunk] for k, v in feed.items()} for i in range(0, n, chunk)]

        def cat(parts):
            return parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

        def teach(feed):
            out = []
            for f in chunks(feed):
                res = sess.run(t_names, {k: v for k, v in f.items() if k in t_inputs})
                out.append({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in zip(t_names, res)})
            return cat(out)

        def student_run(feed):
            return cat([module(f, extra=match) for f in chunks(feed)])

        # shapes of outputs (and matched tensors) must agree
        probe = next(iter(dat.epoch()))
        dat.rng = np.random.default_rng(opts.seed)              # the probe does not consume the order
        with torch.no_grad():
            ref = teach(probe)
            got = student_run(probe)
        for o in outputs:
            if tuple(ref[o].shape) != tuple(got[o].shape):
                raise UsageError(f"the teacher's output {o!r} has shape {tuple(ref[o].shape)}, the student's "
                                 f"{tuple(got[o].shape)}")
        match = [m for m in match if tuple(ref[m].shape) == tuple(got[m].shape) and got[m].is_floating_point()]
        mfn = _loss_fn("mse", 1.0)
        if "auto" in opts.match:
            explicit = set(_match_candidates(student, teacher, [p for p in opts.match if p != "auto"]))
            ops = {o: n.op_type for n in student.graph.node for o in n.output}
            # what pruning did not reach (the student computes the teacher's values) guides nothing
            match = [m for m in match if m in explicit or float(mfn(got[m].double(), ref[m].double())) > 1e-8]
            norms = [m for m in match if ops[m] in AUTO_NORM_OPS]
            if norms:       # layer outputs of a transformer: the normalised residual stream only
                match = [m for m in match if m in explicit or m in norms]
        if "auto" in opts.match and len(match) > opts.max_match:
            pick = np.linspace(0, len(match) - 1, opts.max_match).round().astype(int)
            match = [match[i] for i in sorted(set(pick.tolist()))]
        t_names = outputs + match                               # the teacher fetches only what is matched
        del ref, got

        params = list(module.params)
        masks = []
        for name, p in zip(module.names, params):
            z = (p.detach() == 0) if p.dim() >= 2 else None
            masks.append(~z if z is not None and bool(z.any()) else None)
        opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay) if opts.weight_decay \
            else torch.optim.Adam(params, lr=opts.lr)
        spe = dat.steps_per_epoch()
        total = opts.steps if opts.steps is not None else max(1, int(round((opts.epochs or 1.0) * spe)))

        def set_lr() -> None:
            # linear warm-up over the first 5 %, then cosine decay, of the planned steps or of the
            # time budget, whichever runs out first
            frac = step / total
            if opts.max_seconds is not None:
                frac = max(frac, (now() - t_train) / opts.max_seconds)
            warm = min(1.0, max(frac, (step + 1) / total) / 0.05)
            f = warm * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            for gr in opt.param_groups:
                gr["lr"] = opts.lr * f
        eval_every = opts.eval_every or max(1, total // 10)

        def batch_loss(feed, ref=None):
            ref = teach(feed) if ref is None else ref
            got = student_run(feed)
            parts = {o: fns[o](got[o].float(), ref[o].float()) for o in outputs}
            loss = sum(parts.values()) / len(parts)
            if match:
                loss = loss + opts.match_weight * sum(mfn(got[m], ref[m]) for m in match) / len(match)
            if opts.extra_loss is not None:
                loss = loss + opts.extra_loss(got, ref, feed)
            return loss

        val_refs: List[dict] = []          # the teacher's outputs on the held-out batches, when small
        val_cached = False

        def validate() -> Optional[float]:
            nonlocal val_cached
            if dat.n_val() == 0:
                return None
            tot, n = 0.0, 0
            size = 0
            with torch.no_grad():
                for i, feed in enumerate(dat.validation()):
                    b = next(iter(feed.values())).shape[0]
                    ref = val_refs[i] if val_cached else teach(feed)
                    if not val_cached and size <= VAL_CACHE_BYTES:
                        size += sum(v.numel() * v.element_size() for v in ref.values())
                        val_refs.append(ref)
                    tot += float(batch_loss(feed, ref)) * b
                    n += b
            if not val_cached:
                val_cached = size <= VAL_CACHE_BYTES
                if not val_cached:
                    val_refs.clear()
            return tot / max(n, 1)

        info = {"steps_planned": total, "train_samples": int(dat.n_train), "val_samples": int(dat.n_val()),
                "trainable_tensors": len(params), "trainable_params": int(sum(p.numel() for p in params)),
                "masked_tensors": int(sum(m is not None for m in masks)), "matched_tensors": list(match),
                "losses": kinds, "lr": opts.lr, "batch": dat.batch, "seed": opts.seed}
        # agreement before/after: on up to 16 held-out batches (their teacher outputs are held at once)
        probe_feeds = list(itertools.islice(dat.validation() if dat.n_val() else dat.epoch(), 16))
        dat.rng = np.random.default_rng(opts.seed + 1)
        sb = _static_batch(student)
        if sb:          # agreement runs the graphs as they are: in their static batch
            probe_feeds = [{k: v[i:i + sb] for k, v in f.items()} for f in probe_feeds
                           for i in range(0, next(iter(f.values())).shape[0] - sb + 1, sb)][:64]
        n_probe = sum(next(iter(f.values())).shape[0] for f in probe_feeds)
        on = f"{n_probe} held-out samples" if dat.n_val() else f"{n_probe} training samples"
        agree_before = agreement(teacher, student, probe_feeds)
        val0 = validate()
        info["val_loss_before"] = val0
        best_val, best_state, bad_evals = val0, None, 0
        prev = [p.detach().clone() for p in params]
        init = [p.detach().clone() for p in params] if dat.n_val() else None
        step, stop, losses = 0, "steps", []
        now = time.process_time if opts.clock == "cpu" else time.perf_counter
        t_train = now()
        ema = None
        while step < total and stop == "steps":
            for feed in dat.epoch():
                if step >= total:
                    break
                if opts.max_seconds is not None and now() - t_train > opts.max_seconds:
                    stop = "time budget"
                    break
                loss = batch_loss(feed)
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    with torch.no_grad():
                        for p, q in zip(params, prev):
                            p.copy_(q)
                    stop = "non-finite loss"
                    info["nan_step"] = step
                    break
                with torch.no_grad():
                    for p, q in zip(params, prev):
                        q.copy_(p)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for p, m in zip(params, masks):
                    if m is not None and p.grad is not None:
                        p.grad.mul_(m)
                set_lr()
                opt.step()
                with torch.no_grad():
                    for p, m in zip(params, masks):
                        if m is not None:
                            p.mul_(m)
                step += 1
                losses.append(lv)
                ema = lv if ema is None else 0.9 * ema + 0.1 * lv
                val = None
                if dat.n_val() and (step % eval_every == 0 or step == total):
                    val = validate()
                    if not math.isfinite(val):
                        stop = "non-finite loss"
                        break
                    if best_val is None or val < best_val:
                        best_val, bad_evals = val, 0
                        best_state = [p.detach().clone() for p in params]
                    else:
                        bad_evals += 1
                        if bad_evals >= opts.patience and step < total:
                            stop = "early stop"
                            break
                if progress is not None:
                    progress({"step": step, "total": total, "loss": lv, "loss_avg": ema, "val": val,
                              "best_val": best_val, "elapsed_s": time.perf_counter() - t_start})
        if dat.n_val() and step and stop == "time budget" and step % eval_every:
            # the budget ran out between validations: the steps since the last one count too
            val = validate()
            if math.isfinite(val) and (best_val is None or val < best_val):
                best_val, best_state = val, [p.detach().clone() for p in params]
        if dat.n_val() and step:
            # keep the best validation weights (the input's own when training never beat them)
            with torch.no_grad():
                for p, q in zip(params, best_state if best_state is not None else init):
                    p.copy_(q)
        info.update({"steps": step, "stopped": stop, "loss_first": losses[0] if losses else None,
                     "loss_last": float(np.mean(losses[-max(1, min(len(losses), spe)):])) if losses else None,
                     "val_loss_best": best_val, "seconds": time.perf_counter() - t_start,
                     "train_cpu_s": time.process_time() - cpu0})
        out = write_back(module, student)
        if structure(out) != structure(student):
            raise RuntimeError("fine-tuning changed the graph's structure")
        info["agreement"] = {"on": on, "before": agree_before, "after": agreement(teacher, out, probe_feeds)}
        return out, info
    finally:
        torch.set_num_threads(threads_before)


# ----------------------------------------------------------------------------- prune, then distil


def _step_options(opts, k: int, i: int, dense_cost: Dict[str, float], cur_cost: Dict[str, float]):
    """Options of step ``i`` (1-based) of ``k``: a geometric schedule toward the final target
    (MACs/params fraction of the dense model, or the fraction of channels kept)."""
    import copy

    o = copy.copy(opts)
    o.bench = False
    target = opts.target()
    if target is not None:
        kind, frac = target
        goal = dense_cost[kind] * frac ** (i / k)
        rel = min(1.0, goal / max(cur_cost[kind], 1.0))
        if kind == "macs":
            o.target_macs = rel
        else:
            o.target_params = rel
    else:
        step = lambda r: None if r is None else 1.0 - (1.0 - r) ** (1.0 / k)
        o.ratio, o.head_ratio, o.mlp_ratio = step(opts.ratio), step(opts.head_ratio), step(opts.mlp_ratio)
    return o


def prune_and_finetune(model: onnx.ModelProto, opts, data, ft: FinetuneOptions, steps: int = 1,
                       progress=None, ft_progress=None):
    """``pipeline.prune`` then :func:`finetune` toward the dense ``model``; with ``steps`` k > 1,
    k rounds of (prune a geometric share of the target, repair, distil toward the dense model).
    Returns a ``pipeline.Result`` whose report has a ``finetune`` section and, for k > 1, the
    report of every step under ``steps`` (each step's plan names the tensors of the previous
    step's model; ``graphprune.torch.apply_plan`` applies them in order)."""
    from . import count, inputs, runtime
    from .pipeline import count_feed, prune

    if steps < 1:
        raise UsageError(f"--prune-steps must be >= 1, got {steps}")
    ft.check()
    if steps == 1:
        res = prune(model, opts, progress or (lambda s: None))
        if progress:
            progress("finetune")
        res.model, info = finetune(res.model, model, data, ft, ft_progress)
        res.report["finetune"] = info
        return res
    feed = count_feed(model, opts.seq_len)
    mb, pb = count.count_macs_params(model, feed)
    dense_cost = {"macs": float(mb), "params": float(pb)}
    cur, reports, res = model, [], None
    for i in range(1, steps + 1):
        m, p = count.count_macs_params(cur, feed) if i > 1 else (mb, pb)
        o = _step_options(opts, steps, i, dense_cost, {"macs": float(m), "params": float(p)})
        res = prune(cur, o, progress or (lambda s: None))
        if progress:
            progress(f"ft {i}/{steps}")
        tuned, info = finetune(res.model, model, data, ft, ft_progress)
        res.report["finetune"] = info
        reports.append(res.report)
        cur = tuned
    rep = dict(res.report)
    rep["steps"] = reports
    rep["finetune"] = reports[-1]["finetune"]
    ma, pa = count.count_macs_params(cur, feed)
    rep["macs"] = {"before": int(mb), "after": int(ma)}
    rep["params"] = {"before": int(pb), "after": int(pa)}
    rep["summary"] = dict(rep["summary"])
    rep["summary"]["prune_steps"] = steps
    rep.pop("latency_ms", None)
    if opts.bench is not False:
        try:
            size, lat = inputs.at_free_sizes(model, lambda sz: runtime.measure_latency(
                model, cur, inputs.random_inputs(model, seed=opts.seed, other=sz, ranges=opts.input_ranges),
                threads=opts.threads, repeats=opts.bench_repeats, max_seconds=opts.bench_seconds))
            rep["latency_ms"] = {"before": lat["before_ms"], "after": lat["after_ms"], "speedup": lat["speedup"],
                                 "threads": opts.threads}
        except Exception as e:
            rep["latency_ms"] = {"skipped": f"onnxruntime cannot run the model: {str(e).splitlines()[0][:300]}"}
    res.model, res.report = cur, rep
    return res
