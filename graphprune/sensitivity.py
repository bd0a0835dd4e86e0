"""``graphprune sensitivity``: prune each group alone at several ratios and measure what it costs.

One *trial* prunes one group (the units the criterion ranks lowest, as ``run`` would) at one
ratio, rewrites the model and measures

* quality: the mean cosine similarity of the pruned and dense outputs on the calibration
  samples (random inputs without ``--calib``), or a user metric ``--metric MODULE:FUNCTION``
  (``FUNCTION(model: onnx.ModelProto, feeds: list[dict]) -> float``, higher is better; a path
  ``file.py:function`` works too), also evaluated on the dense model for reference;
* latency: the pruned model's time as a fraction of the dense model's (interleaved, thread CPU
  time with one thread, see latency.measure_fraction).

Trials run in worker processes (``--jobs N``, concurrent.futures) or on a Ray cluster
(``--ray ADDRESS``, ``ray.init(address=ADDRESS)``; ``--ray local`` starts a local one): each
worker loads and analyses the model once. Every finished trial is appended to
``OUT.trials.jsonl`` at once; a rerun with the same model and settings skips the trials there.

The result (``OUT.json``) has per group its curve (ratio -> quality, latency) and a suggested
ratio: the largest whose quality stays at or above ``--min-quality`` (a cosine, or a fraction of
the dense model's metric). The suggested ratios are also written as a plan (``OUT.plan.json``)
that ``graphprune prune --plan`` applies. Groups that lose little quality for much latency get
large ratios; the effects of several groups add up, so the combined plan loses more than any
one trial (check it with ``run``'s report or another sweep).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import time
from dataclasses import asdict, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import UsageError
from .options import DEFAULT_RATIOS, MIN_QUALITY, SweepConfig  # noqa: F401  (defined in the light options.py)

def load_metric(spec: Optional[str]) -> Optional[Callable]:
    """``module:function`` or ``path/to/file.py:function`` -> the function."""
    if not spec:
        return None
    if ":" not in spec:
        raise UsageError(f"--metric must be MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    mod, fn = spec.rsplit(":", 1)
    try:
        if mod.endswith(".py"):
            if not os.path.exists(mod):
                raise UsageError(f"--metric: {mod} does not exist")
            sp = importlib.util.spec_from_file_location("graphprune_user_metric", mod)
            m = importlib.util.module_from_spec(sp)
            sp.loader.exec_module(m)
        else:
            m = importlib.import_module(mod)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"--metric: cannot import {mod}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    f = getattr(m, fn, None)
    if not callable(f):
        raise UsageError(f"--metric: {mod} has no function {fn!r}")
    return f


# --------------------------------------------------------------------------- one worker


class Worker:
    """Holds the analysed model, its scores, the probe feeds and a dense session; runs trials."""

    def __init__(self, cfg: dict, model_bytes: Optional[bytes] = None):
        from . import bench
        from .calib import Calibration
        from .io import load_model, with_static_batch
        from .pipeline import Analyzed, Options, calibration, scores_for

        self.cfg = cfg = SweepConfig(**cfg)
        if model_bytes is not None:
            import onnx
            m = onnx.load_from_string(model_bytes)
        else:
            m = load_model(cfg.model)
        if cfg.static_batch is not None:
            m = with_static_batch(m, cfg.static_batch)
        calib = None
        if cfg.calib:
            calib = Calibration.from_npz(cfg.calib, cfg.calib_batch)
        elif cfg.calib_dir:
            calib = Calibration.from_dir(cfg.calib_dir, cfg.calib_batch)
        self.opts = Options(criterion=cfg.criterion, seed=cfg.seed, threads=cfg.threads, calib=calib,
                            calib_batch=cfg.calib_batch)
        self.model = m
        self.an = Analyzed(m)
        cal = calibration(m, self.opts)
        self.scores = scores_for(self.an, self.opts, cal)
        if cal is not None:
            feeds = []
            for f in cal:
                n = next(iter(f.values())).shape[0]
                for i in range(n):
                    feeds.append({k: v[i:i + 1] for k, v in f.items()})
                    if len(feeds) >= cfg.samples:
                        break
                if len(feeds) >= cfg.samples:
                    break
        else:
            size, _ = bench.at_free_sizes(m, lambda s: bench.run_model(m, bench.random_inputs(m, other=s)))
            feeds = [bench.random_inputs(m, seed=cfg.seed + i, other=size) for i in range(cfg.samples)]
        self.feeds = feeds
        self.metric = load_metric(cfg.metric)
        self.dense_sess = bench.make_session(m, cfg.threads)
        self.dense_metric = float(self.metric(m, feeds)) if self.metric else None

    def trial(self, gid: int, ratio: float) -> dict:
        from . import bench
        from .latency import measure_fraction
        from .plan import select_units, kept_count
        from .rewrite import rewrite
        from .verify import agreement

        t0 = time.perf_counter()
        g = next(x for x in self.an.groups if x.id == gid)
        n = len(g.units)
        k = kept_count(n, ratio, self.cfg.round_to if g.kind != "heads" else 1, 1)
        mask = select_units(g, np.asarray(self.scores[gid], dtype=np.float64), k, self.cfg.round_to)
        out = {"group": gid, "ratio": ratio, "channels": n}
        if mask is None:
            out.update({"kept": n, "quality": self.dense_metric if self.metric else 1.0, "cosine": 1.0,
                        "latency": 1.0, "note": "nothing removed at this ratio"})
            return out
        removed = g.units[~mask].tolist()
        pruned = rewrite(self.an.model, self.an.analysis, self.an.root, removed)
        agree = agreement(self.model, pruned, self.feeds)
        frac, dense_ms = measure_fraction(self.dense_sess, bench.make_session(pruned, self.cfg.threads),
                                          self.feeds[0], repeats=self.cfg.repeats, threads=self.cfg.threads)
        out.update({"kept": int(mask.sum()), "cosine": agree["cosine"], "rel_err": agree["rel_err"],
                    "latency": round(frac, 5), "dense_ms": round(dense_ms, 4)})
        if self.metric:
            out["metric"] = float(self.metric(pruned, self.feeds))
            out["quality"] = out["metric"]
        else:
            out["quality"] = agree["cosine"]
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return out


_WORKER: Optional[Worker] = None


def _init(cfg: dict) -> None:
    global _WORKER
    _WORKER = Worker(cfg)


def _run(job: Tuple[int, float]) -> dict:
    return _WORKER.trial(*job)


# --------------------------------------------------------------------------- the sweep


def _read_done(path: str, fp: str) -> Dict[Tuple[int, float], dict]:
    done = {}
    if not os.path.exists(path):
        return done
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue                     # a line cut short by an interrupted run
            if r.get("config") == fp:
                done[(int(r["group"]), round(float(r["ratio"]), 6))] = r
    return done


def _sha(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def sweep(cfg: SweepConfig, out: str, jobs: Optional[int] = None, ray_address: Optional[str] = None,
          min_quality: Optional[float] = None, progress=None) -> dict:
    """Run (or resume) the sweep; write ``out`` (curves + suggested ratios), ``out``'s
    ``.trials.jsonl`` and ``.plan.json``. Returns the result dict. ``jobs``, ``ray_address`` and
    ``min_quality``, when given, replace ``cfg``'s."""
    from .io import save_json_atomic
    from .plan import Plan, select_units, kept_count

    given = {"jobs": jobs, "ray_address": ray_address, "min_quality": min_quality}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    jobs, ray_address = cfg.jobs, cfg.ray_address
    progress = progress or (lambda s: None)
    cfg.check()
    base = out[:-5] if out.endswith(".json") else out
    trials_path, plan_path = base + ".trials.jsonl", base + ".plan.json"
    fp = cfg.fingerprint(_sha(cfg.model))
    load_metric(cfg.metric)                  # a bad --metric fails here, in one line
    local = Worker(asdict(cfg))              # the driver's own copy: groups, scores, the plan at the end
    ids = [g.id for g in local.an.groups if g.id in local.scores and g.prunable and g.exact]
    if cfg.groups is not None:
        unknown = set(cfg.groups) - set(ids)
        if unknown:
            raise UsageError(f"--group: no prunable group {sorted(unknown)[0]} in this model")
        ids = [i for i in ids if i in set(cfg.groups)]
    todo_all = [(gid, round(float(r), 6)) for gid in ids for r in cfg.ratios]
    done = _read_done(trials_path, fp)
    todo = [j for j in todo_all if j not in done]
    skipped = len(todo_all) - len(todo)
    progress(f"{len(todo_all)} trials, {skipped} done before, {len(todo)} to run")
    t0 = time.perf_counter()
    results = list(done.values())
    fh = open(trials_path, "a", encoding="utf-8")

    def record(r: dict) -> None:
        r["config"] = fp
        fh.write(json.dumps(r, sort_keys=True) + "\n")
        fh.flush()
        results.append(r)
        progress(f"group {r['group']} ratio {r['ratio']}: quality {r.get('quality')}, latency {r.get('latency')}")

    try:
        if not todo:
            pass
        elif ray_address:
            _run_ray(cfg, todo, jobs, ray_address, record)
        elif jobs == 1:
            for job in todo:
                record(local.trial(*job))
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_init,
                                     initargs=(asdict(cfg),)) as ex:
                futs = [ex.submit(_run, job) for job in todo]
                for f in as_completed(futs):
                    record(f.result())
    finally:
        fh.close()
    result = summarize(local, results, ids, cfg, cfg.min_quality)
    result.update({"trials_file": os.path.basename(trials_path), "plan_file": os.path.basename(plan_path),
                   "trials_run": len(todo), "trials_reused": skipped, "seconds": round(time.perf_counter() - t0, 2),
                   "backend": ("ray " + ray_address) if ray_address else f"processes ({jobs})"})
    # the suggested ratios as a plan `prune --plan` accepts
    keep = {}
    for g in local.an.groups:
        r = result["suggested"].get(str(g.id), 0.0)
        if r > 0:
            k = kept_count(len(g.units), r, cfg.round_to if g.kind != "heads" else 1, 1)
            mask = select_units(g, np.asarray(local.scores[g.id], dtype=np.float64), k, cfg.round_to)
            if mask is not None:
                keep[g.id] = mask
    full = {g.id: np.ones(len(g.units), bool) for g in local.an.groups}
    full.update(keep)
    plan = Plan(local.an.groups, full, {"source": "sensitivity"})
    save_json_atomic(plan.to_json(), plan_path)
    save_json_atomic(result, out)
    return result


def summarize(local: Worker, results: List[dict], ids: Sequence[int], cfg: SweepConfig,
              min_quality: Optional[float]) -> dict:
    if min_quality is None:
        min_quality = MIN_QUALITY * local.dense_metric if local.metric else MIN_QUALITY
    by_g: Dict[int, List[dict]] = {}
    for r in results:
        if r["group"] in ids and round(r["ratio"], 6) in {round(x, 6) for x in cfg.ratios}:
            by_g.setdefault(int(r["group"]), []).append(r)
    groups, suggested = {}, {}
    names = {g.id: g for g in local.an.groups}
    for gid in ids:
        trials = sorted(by_g.get(gid, []), key=lambda t: t["ratio"])
        # deduplicate (a resumed run may hold a trial twice): the last one counts
        uniq = {}
        for t in trials:
            uniq[round(t["ratio"], 6)] = {k: v for k, v in t.items() if k != "config"}
        trials = [uniq[k] for k in sorted(uniq)]
        # the largest ratio whose quality holds, with every smaller tried ratio holding too
        best = 0.0
        for t in trials:
            if t.get("quality") is not None and t["quality"] >= min_quality:
                best = t["ratio"]
            else:
                break
        g = names[gid]
        groups[str(gid)] = {"name": g.name, "kind": g.kind, "channels": len(g.units), "trials": trials}
        suggested[str(gid)] = best
    return {"model": cfg.model, "ratios": list(cfg.ratios), "criterion": cfg.criterion,
            "metric_name": cfg.metric or "output cosine", "dense_metric": local.dense_metric,
            "threshold": min_quality, "groups": groups, "suggested": suggested}


def _run_ray(cfg: SweepConfig, todo, jobs: int, address: str, record) -> None:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'graphprune[ray]'")
    with open(cfg.model, "rb") as fh:
        blob = fh.read()
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=max(jobs, 1), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=1)(_RayWorker)
        model_ref = ray.put(blob)
        workers = [actor.remote(asdict(cfg), model_ref) for _ in range(max(1, min(jobs, len(todo))))]
        pending = {}
        queue = list(todo)
        for w in workers:
            if queue:
                pending[w.trial.remote(*queue.pop(0))] = w
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                w = pending.pop(ref)
                record(ray.get(ref))
                if queue:
                    pending[w.trial.remote(*queue.pop(0))] = w
    finally:
        if started:
            ray.shutdown()


class _RayWorker:
    """A Ray actor around Worker (the model comes through the object store)."""

    def __init__(self, cfg: dict, model_bytes: bytes):
        self.w = Worker(cfg, model_bytes)

    def trial(self, gid: int, ratio: float) -> dict:
        return self.w.trial(gid, ratio)
