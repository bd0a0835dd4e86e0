"""Command line: ``graphprune run | analyze | prune | verify``.

Every user-facing failure is one line on stderr and a documented exit code (see errors.py);
no traceback unless GRAPHPRUNE_DEBUG=1.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from typing import Optional, Sequence

import click

from . import __version__
from .errors import GraphpruneError, InputError, UsageError

STEPS = ("analyze", "score", "plan", "rewrite", "count", "verify", "bench")


class _Progress:
    active = None

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t = None
        self.step = None
        _Progress.active = self

    @classmethod
    def interrupt(cls) -> None:
        """End an open progress line so an error message starts on its own line."""
        p = cls.active
        if p is not None and p.step is not None and not p.quiet:
            click.echo("", err=True)
            p.step = None

    def __call__(self, step: str) -> None:
        self.done()
        self.step, self.t = step, time.perf_counter()
        if not self.quiet:
            click.echo(f"  {step:<8s} ...", err=True, nl=False)

    def done(self) -> None:
        if self.step is not None and not self.quiet:
            click.echo(f" {time.perf_counter() - self.t:6.2f}s", err=True)
        self.step = None


def _default_out(inp: str) -> str:
    base = inp[:-5] if inp.endswith(".onnx") else inp
    return base + ".pruned.onnx"


def _default_report(out: str) -> str:
    base = out[:-5] if out.endswith(".onnx") else out
    return base + ".report.json"


def _fmt_int(n) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def print_summary(report: dict) -> None:
    m, p = report["macs"], report["params"]
    rows = [("MACs", _fmt_int(m["before"]), _fmt_int(m["after"]), m["before"] / max(m["after"], 1)),
            ("params", _fmt_int(p["before"]), _fmt_int(p["after"]), p["before"] / max(p["after"], 1))]
    lat = report.get("latency_ms")
    if lat and "skipped" not in lat:
        rows.append(("latency ms", f"{lat['before']:.3f}", f"{lat['after']:.3f}", lat["speedup"]))
    click.echo(f"{'':12s} {'before':>10s} {'after':>10s} {'ratio':>8s}")
    for name, b, a, r in rows:
        click.echo(f"{name:12s} {b:>10s} {a:>10s} {r:7.2f}x")
    s = report["summary"]
    click.echo(f"groups       {s['pruned_groups']} pruned of {s['prunable_groups']} prunable ({s['groups']} found)")
    v = report.get("verify")
    if v is not None and "skipped" in v:
        click.echo(f"verify       {v['skipped']}")
    elif v is not None:
        state = "passed" if v["passed"] else "FAILED"
        click.echo(f"verify       {state} (max abs diff {v['max_abs_diff']:.3g})"
                   if v.get("max_abs_diff") is not None else f"verify       {state}")


def _load(path: str, static_batch: Optional[int] = None):
    from .io import load_model, with_static_batch
    m = load_model(path)
    return with_static_batch(m, static_batch) if static_batch is not None else m


def _static_batch_option(f):
    return click.option("--static-batch", "static_batch", type=int, default=None, metavar="N",
                        help="fix the symbolic batch of the inputs to N first (the output keeps it): lets "
                             "channels that an exporter merges into the batch (tf2onnx's batched Einsum) prune")(f)


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{what} {path} is not valid JSON: {str(e).splitlines()[0]}")
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise InputError(f"{what} {path} has no 'groups' list")
    return data


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="graphprune")
def cli() -> None:
    """Structurally prune any ONNX model: find coupled channel groups, remove the least
    important channels, rewrite, verify and benchmark."""


class _RoundTo(click.ParamType):
    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither an integer nor auto", param, ctx)


ROUND_TO = _RoundTo()


def _common_prune_options(f):
    f = click.option("--ratio", type=float, default=0.5, show_default=True,
                     help="fraction of each group's channels to remove, in [0, 1)")(f)
    f = click.option("--round-to", "round_to", type=ROUND_TO, default="1", show_default=True,
                     help="kept channel counts are multiples of N; auto: the SIMD block onnxruntime's CPU "
                          "convolutions want here (16 with AVX-512, 8 with AVX2)")(f)
    f = click.option("--protect", multiple=True, metavar="NAME",
                     help="node or tensor name (glob) whose groups keep every channel; repeatable")(f)
    f = click.option("--criterion", default="l2", show_default=True,
                     help="importance: l2, l1, bn-scale, fpgm, lamp, random, obspa (data-free); activation, "
                          "fluctuation, obs, taylor (need --calib/--calib-dir)")(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    f = click.option("--allow-inexact", is_flag=True,
                     help="also prune groups that feed LayerNorm/Softmax/ReduceMean over channels")(f)
    f = click.option("--head-ratio", type=float, default=None,
                     help="fraction of attention heads to remove [default: --ratio]")(f)
    f = click.option("--mlp-ratio", type=float, default=None,
                     help="fraction of MLP (and CNN channel) widths to remove [default: --ratio]")(f)
    f = click.option("--prune-hidden", is_flag=True,
                     help="also prune the residual (hidden) width of transformers: not exact")(f)
    return _quality_options(f)


def _quality_options(f):
    """Calibration, criterion details and allocation: passed on to Options as they are."""
    opts = [
        ("--calib", dict(default=None, metavar="FILE.npz",
                         help="calibration samples: one array per graph input, first axis = samples")),
        ("--calib-dir", dict(default=None, metavar="DIR", help="calibration samples: a folder of .npz/.npy files")),
        ("--calib-batch", dict(type=int, default=16, show_default=True, help="calibration batch size")),
        ("--reduce", dict(type=click.Choice(["mean", "sum", "max"]), default="mean", show_default=True,
                          help="how a group's members' scores combine")),
        ("--normalize", dict(type=click.Choice(["mean", "max", "std", "none"]), default="mean", show_default=True,
                             help="per-layer score normalisation (before global ranking)")),
        ("--scope", dict(type=click.Choice(["uniform", "global"]), default="uniform", show_default=True,
                         help="uniform: every group loses --ratio; global: one threshold over all groups")),
        ("--target-macs", dict(type=float, default=None, metavar="F",
                               help="prune to this fraction of the dense MACs (e.g. 0.5 for 2x fewer)")),
        ("--target-params", dict(type=float, default=None, metavar="F",
                                 help="prune to this fraction of the dense parameters")),
        ("--min-ratio", dict(type=float, default=0.0, show_default=True,
                             help="every pruned group loses at least this fraction")),
        ("--max-ratio", dict(type=float, default=None,
                             help="no group loses more than this fraction [default: 0.9 with --scope global]")),
    ]
    for name, kw in reversed(opts):
        f = click.option(name, **kw)(f)
    return f


def _repair_options(f):
    f = click.option("--ridge-prior", type=click.Choice(["zero", "weights"]), default="zero", show_default=True,
                     help="lstsq repair: the ridge term pulls the refit toward zero or the layer's kept weights")(f)
    f = click.option("--ridge", type=float, default=1e-3, show_default=True,
                     help="lstsq repair: ridge strength relative to the mean input energy")(f)
    f = click.option("--repair", type=click.Choice(["none", "bias", "lstsq"]), default="none", show_default=True,
                     help="training-free repair of the layers that lost inputs (needs calibration data)")(f)
    return f


QUALITY_KEYS = ("calib", "calib_dir", "calib_batch", "reduce", "normalize", "scope", "target_macs", "target_params",
                "min_ratio", "max_ratio", "repair", "ridge", "ridge_prior")


def _quality(kw: dict, static_batch: Optional[int] = None) -> dict:
    """Options fields from the quality flags; calibration files are read here (checked against
    the model later)."""
    from .calib import Calibration
    from .errors import UsageError as _UE

    q = {k: kw.pop(k) for k in QUALITY_KEYS if k in kw}
    calib, calib_dir = q.pop("calib", None), q.pop("calib_dir", None)
    if calib and calib_dir:
        raise _UE("give --calib or --calib-dir, not both")
    batch = q.pop("calib_batch", 16)
    if batch < 1:
        raise _UE("--calib-batch must be >= 1")
    if static_batch is not None:
        if static_batch < 1:
            raise _UE(f"--static-batch must be an integer >= 1, got {static_batch}")
        src = click.get_current_context().get_parameter_source("calib_batch")
        if src is not None and src.name != "DEFAULT" and batch != static_batch:
            raise _UE(f"--calib-batch {batch} does not fit --static-batch {static_batch}")
        batch = static_batch
    if calib:
        q["calib"] = Calibration.from_npz(calib, batch)
    elif calib_dir:
        q["calib"] = Calibration.from_dir(calib_dir, batch)
    q["calib_batch"] = batch
    return q


# ----------------------------------------------------------------------------- fine-tuning


def _run_finetune_options(f):
    """`run --finetune-data D [--prune-steps k] [--finetune-...]`: distillation after repair."""
    f = _finetune_options("finetune-")(f)
    f = click.option("--prune-steps", type=int, default=1, show_default=True,
                     help="with --finetune-data: prune in k steps toward the target, distilling after each")(f)
    f = click.option("--finetune-data", default=None, metavar="FILE.npz|DIR",
                     help="after pruning (and repair), distil the pruned model toward the input model on these "
                          "unlabeled inputs (see `graphprune finetune`)")(f)
    return f


def _pop_run_finetune(kw: dict, seed: int, threads: int):
    path, k = kw.pop("finetune_data", None), kw.pop("prune_steps", 1)
    ft = _ft_options(kw, "finetune-", seed=seed, threads=threads)
    if path is None:
        if k != 1:
            raise UsageError("--prune-steps needs --finetune-data")
        return None
    return path, k, ft


def _run_with_finetune(m, opts, ft, progress, quiet):
    from .finetune import prune_and_finetune

    path, k, fo = ft
    data = _data(path, fo.batch)
    bar = _Bar(quiet)

    def step(name):
        bar.done()
        progress(name)
        if name.startswith("f"):
            progress.done()
    res = prune_and_finetune(m, opts, data, fo, k, step, bar)
    bar.done()
    return res


def _finetune_options(prefix: str = ""):
    """Options of the distillation step; ``prefix`` ("finetune-") names them on `run`."""
    def deco(f):
        p = prefix
        opts = [
            (f"--{p}steps", dict(type=int, default=None, help="optimizer steps [default: 1 epoch]")),
            (f"--{p}epochs", dict(type=float, default=None, help="passes over the training split")),
            (f"--{p}lr", dict(type=float, default=1e-4, show_default=True, help="Adam learning rate (cosine decay)")),
            (f"--{p}batch", dict(type=int, default=16, show_default=True, help="samples per step")),
            (f"--{p}loss", dict(multiple=True, metavar="KIND|OUTPUT=KIND",
                                help="mse (relative, default), cosine or kl (logits), for every output or one; "
                                     "repeatable")),
            (f"--{p}match", dict(multiple=True, metavar="NAME|auto",
                                 help="also match this intermediate tensor (name or glob) that both graphs keep "
                                      "with the same shape; auto: layer outputs of equal shape (<= 12)")),
            (f"--{p}val-fraction", dict(type=float, default=0.1, show_default=True,
                                        help="held-out samples for early stopping (best weights kept)")),
            (f"--{p}max-seconds", dict(type=float, default=None, help="time budget for training")),
        ]
        if not prefix:
            opts += [("--temperature", dict(type=float, default=1.0, show_default=True, help="kl loss temperature")),
                     ("--match-weight", dict(type=float, default=1.0, show_default=True,
                                             help="weight of the intermediate-tensor loss")),
                     ("--patience", dict(type=int, default=5, show_default=True,
                                         help="validations without improvement before stopping")),
                     ("--eval-every", dict(type=int, default=None, help="steps between validations [~10 per run]")),
                     ("--freeze", dict(multiple=True, metavar="NAME", help="keep this constant (name or glob) as "
                                                                           "it is; repeatable")),
                     ("--train-embeddings", dict(is_flag=True, help="also train embedding tables (constants "
                                                                    "read only by Gather)"))]
        for name, kw in reversed(opts):
            f = click.option(name, **kw)(f)
        return f
    return deco


def _ft_options(kw: dict, prefix: str = "", seed: int = 0, threads: int = 1):
    """FinetuneOptions from the popped option values."""
    from .finetune import FinetuneOptions

    k = prefix.replace("-", "_")
    g = lambda n, d=None: kw.pop(k + n, d)
    loss, per = "mse", {}
    for item in g("loss", ()) or ():
        if "=" in item:
            name, kind = item.rsplit("=", 1)
            per[name] = kind
        else:
            loss = item
    o = FinetuneOptions(steps=g("steps"), epochs=g("epochs"), lr=g("lr", 1e-4), batch=g("batch", 16), seed=seed,
                        loss=loss, output_loss=per, match=tuple(g("match", ()) or ()),
                        val_fraction=g("val_fraction", 0.1), max_seconds=g("max_seconds"), threads=threads)
    for n in ("temperature", "match_weight", "patience", "eval_every", "freeze", "train_embeddings"):
        v = kw.pop(n, None)
        if v is not None:
            setattr(o, n, tuple(v) if n == "freeze" else v)
    o.check()
    return o


def _data(path: str, batch: int):
    from .calib import Calibration
    from .errors import CalibrationError

    if os.path.isdir(path):
        return Calibration.from_dir(path, batch)
    if not os.path.exists(path):
        raise CalibrationError(f"data {path} does not exist")
    return Calibration.from_npz(path, batch)


class _Bar:
    """One progress line on stderr: rewritten in place on a terminal, every 10 % otherwise."""

    def __init__(self, quiet: bool, label: str = "finetune"):
        self.quiet, self.label, self.last, self.shown = quiet, label, 0.0, -1
        self.tty = sys.stderr.isatty()

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        step, total = ev["step"], ev["total"]
        decile = step * 10 // max(total, 1)
        now = time.perf_counter()
        if self.tty and (now - self.last < 0.2 and step < total):
            return
        if not self.tty and decile == self.shown and step < total:
            return
        self.last, self.shown = now, decile
        w = 20
        fill = w * step // max(total, 1)
        val = f" val {ev['val']:.4g}" if ev.get("val") is not None else ""
        line = (f"  {self.label} [{'#' * fill}{'.' * (w - fill)}] {step}/{total} loss {ev['loss_avg']:.4g}{val} "
                f"{ev['elapsed_s']:.0f}s")
        click.echo(("\r" + line) if self.tty else line, err=True, nl=not self.tty)

    def done(self) -> None:
        if self.tty and not self.quiet and self.shown >= 0:
            click.echo("", err=True)


def print_finetune(info: dict) -> None:
    a = info.get("agreement", {})
    b, f = a.get("before") or {}, a.get("after") or {}
    if b.get("cosine") is not None and f.get("cosine") is not None:
        click.echo(f"finetune     {info['steps']} steps ({info['stopped']}), {info['seconds']:.0f}s; agreement with "
                   f"the teacher on {a.get('on', 'held-out data')}: cosine {b['cosine']:.4f} -> {f['cosine']:.4f}, "
                   f"rel. error {b['rel_err']:.4f} -> {f['rel_err']:.4f}")
    if info["stopped"] == "non-finite loss":
        click.echo(f"finetune     the loss became non-finite at step {info.get('nan_step')}: stopped, kept the last "
                   "weights with a finite loss", err=True)


@cli.command("finetune")
@click.argument("model")
@click.option("--teacher", required=True, help="the dense model whose outputs the pruned MODEL learns")
@click.option("--data", "data_path", required=True, metavar="FILE.npz|DIR",
              help="unlabeled inputs: one array per graph input (first axis = samples), or a folder of .npz/.npy")
@click.option("-o", "--output", "out", default=None, help="fine-tuned model [default: IN.finetuned.onnx]")
@click.option("--report", default=None, help="also write what happened (JSON) here")
@_finetune_options()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch and onnxruntime threads")
@click.option("-q", "--quiet", is_flag=True)
def finetune_cmd(model, teacher, data_path, out, report, seed, threads, quiet, **kw):
    """Recover accuracy: distil the pruned MODEL toward the dense --teacher's outputs on unlabeled
    --data. Only weight values change (same nodes, names and shapes); zeros stay zero."""
    from .finetune import finetune
    from .io import check_output_path, save_json_atomic, save_model

    ft = _ft_options(kw, seed=seed, threads=threads)
    out = out or (model[:-5] if model.endswith(".onnx") else model) + ".finetuned.onnx"
    check_output_path(out, model)
    check_output_path(out, teacher)
    if report:
        check_output_path(report, model)
    s, t = _load(model), _load(teacher)
    data = _data(data_path, ft.batch)
    bar = _Bar(quiet)
    if not quiet:
        click.echo(f"fine-tuning {model} toward {teacher} ({data.samples()} samples)", err=True)
    tuned, info = finetune(s, t, data, ft, bar)
    bar.done()
    save_model(tuned, out)
    if report:
        save_json_atomic({"finetune": info}, report)
    print_finetune(info)
    if not quiet:
        click.echo(f"wrote {out}" + (f" and {report}" if report else ""))


@cli.command()
@click.argument("model", required=False)
@click.option("-o", "--output", "out", default=None, help="pruned model path [default: IN.pruned.onnx]")
@click.option("--report", default=None, help="report JSON path [default: OUT.report.json]")
@_common_prune_options
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime threads for the benchmark")
@click.option("--bench/--no-bench", "bench", default=None,
              help="latency benchmark [default: on, off for models over 1 GiB]")
@click.option("--verify/--no-verify", "verify", default=None,
              help="masked-dense oracle check [default: on, off for models over 1 GiB]")
@click.option("--demo", is_flag=True, help="prune the built-in demo CNN (also used when MODEL is omitted)")
@_static_batch_option
@_repair_options
@_run_finetune_options
@click.option("-q", "--quiet", is_flag=True)
def run(model, out, report, ratio, round_to, protect, criterion, seed, allow_inexact, head_ratio, mlp_ratio,
        prune_hidden, threads, bench, verify, demo, static_batch, quiet, **quality):
    """Prune MODEL end to end: load, analyze, score, plan, rewrite, verify, bench, save."""
    from .io import check_output_path, save_json_atomic, save_model
    from .pipeline import Options, check_verified, prune

    ft = _pop_run_finetune(quality, seed, threads)

    opts = Options(ratio=ratio, round_to=round_to, protect=protect, criterion=criterion, seed=seed,
                   allow_inexact=allow_inexact, head_ratio=head_ratio, mlp_ratio=mlp_ratio,
                   prune_hidden=prune_hidden, threads=threads, bench=bench, verify=verify,
                   **_quality(quality, static_batch))
    opts.check()
    if model is None or demo:
        from .demo import write_demo_model
        model = model or "graphprune-demo.onnx"
        if not os.path.exists(model):
            write_demo_model(model, seed=seed)
            if not quiet:
                click.echo(f"wrote the demo model to {model}", err=True)
    out = out or _default_out(model)
    report_path = report or _default_report(out)
    check_output_path(out, model)
    check_output_path(report_path, model)
    m = _load(model, static_batch)
    progress = _Progress(quiet)
    if not quiet:
        rt = f"auto = {opts.rounding()}" if round_to == "auto" else round_to
        click.echo(f"pruning {model} (ratio {ratio}, round-to {rt}, criterion {criterion})", err=True)
    res = prune(m, opts, progress) if ft is None else _run_with_finetune(m, opts, ft, progress, quiet)
    progress.done()
    rep = res.report
    for step in rep.get("steps", []):
        check_verified(step)
    if static_batch is not None:
        rep["summary"]["options"]["static_batch"] = static_batch
    if rep["summary"]["pruned_groups"] == 0:
        why = _whole_model_reason(m)
        if why:
            click.echo(f"nothing was pruned: {why}", err=True)
        click.echo("nothing was pruned (no prunable group at these settings; `graphprune analyze` says why); "
                   "writing an unchanged copy", err=True)
    check_verified(rep)
    save_model(res.model, out)
    save_json_atomic(rep, report_path)
    if not quiet:
        print_summary(rep)
        if "finetune" in rep:
            print_finetune(rep["finetune"])
        click.echo(f"wrote {out} and {report_path}")


@cli.command("analyze")
@click.argument("model")
@click.option("--plan", "plan_out", default=None, help="write the plan JSON (groups, members, kept) here")
@_common_prune_options
@_static_batch_option
@click.option("-v", "--verbose", is_flag=True, help="list every blocked reason")
def analyze_cmd(model, plan_out, ratio, round_to, protect, criterion, seed, allow_inexact, head_ratio, mlp_ratio,
                prune_hidden, static_batch, verbose, **quality):
    """Print the coupled channel groups of MODEL, what is blocked and why; optionally write a plan
    (at --ratio, default 0 here: every channel kept) to edit and apply with `prune --plan`."""
    from .io import save_json_atomic
    from .pipeline import Analyzed, Options, calibration, plan_for

    src = click.get_current_context().get_parameter_source("ratio")
    if src is not None and src.name == "DEFAULT":
        ratio = 0.0
    opts = Options(ratio=ratio, round_to=round_to, protect=protect, criterion=criterion, seed=seed,
                   allow_inexact=allow_inexact, head_ratio=head_ratio, mlp_ratio=mlp_ratio, prune_hidden=prune_hidden,
                   **_quality(quality, static_batch))
    opts.check()
    allow_inexact = allow_inexact or prune_hidden
    if plan_out:
        from .io import check_output_path
        check_output_path(plan_out, model)
    m = _load(model, static_batch)
    an = Analyzed(m)
    plan = plan_for(an, m, opts, calibration(m, opts))
    pj = plan.to_json()
    click.echo(f"{'id':>4s}  {'channels':>9s}  {'kind':8s}  {'state':10s}  name / reason")
    for g, e in zip(an.groups, pj["groups"]):
        if g.prunable and (g.exact or allow_inexact):
            state = "prunable" if not g.blocked else "partial"
        elif g.prunable:
            state = "inexact"
        else:
            state = "blocked"
        ch = f"{e['channels_after']}/{e['channels_before']}"
        click.echo(f"{g.id:4d}  {ch:>9s}  {g.kind:8s}  {state:10s}  {g.name}")
        reasons = sorted(set(g.blocked.values())) if g.blocked else []
        if state == "inexact":
            reasons = sorted(set(g.inexact.values()))
        for r in (reasons if verbose else reasons[:1]):
            click.echo(f"{'':39s}  - {r}")
        if not verbose and len(reasons) > 1:
            click.echo(f"{'':39s}  - ... {len(reasons) - 1} more (use -v)")
    n_prunable = sum(1 for g in an.groups if g.prunable)
    click.echo(f"{len(an.groups)} groups, {n_prunable} prunable")
    if static_batch is None and n_prunable < len(an.groups):
        _static_batch_hint(m, n_prunable)
    why = _whole_model_reason(m) if n_prunable == 0 else None
    if why:
        click.echo(f"why: {why}")
    if plan_out:
        save_json_atomic(pj, plan_out)
        click.echo(f"wrote {plan_out}")


QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                 "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM", "QGemm", "QAttention", "DynamicQuantizeMatMul")
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")


def _whole_model_reason(m) -> Optional[str]:
    """Why a model has nothing prunable, when the reason is the model's kind (quantized, or its
    layers inside control flow), not one op."""
    ops = collections.Counter(n.op_type for n in m.graph.node)
    quant = {k: v for k, v in ops.items() if k in QUANTIZED_OPS}
    if quant:
        what = ", ".join(f"{v} {k}" for k, v in sorted(quant.items()))
        return (f"the model is quantized ({what}); quantized weights and run-time scales are not pruned: "
                "prune the float model, then quantize it")
    flow = {k: v for k, v in ops.items() if k in CONTROL_FLOW_OPS}
    if flow:
        what = ", ".join(f"{v} {k}" for k, v in sorted(flow.items()))
        return f"its layers run inside control flow ({what}), whose subgraphs are not analysed"
    return None


def _static_batch_hint(m, n_prunable: int) -> None:
    """If fixing a symbolic batch would let more groups prune, say so (analysed again at batch 1;
    skipped for models over 1 GiB)."""
    from .bench import batch_symbols
    from .io import approx_model_bytes, with_static_batch
    from .pipeline import AUTO_SKIP_BYTES, Analyzed

    if not batch_symbols(m) or approx_model_bytes(m) > AUTO_SKIP_BYTES:
        return
    try:
        n1 = sum(1 for g in Analyzed(with_static_batch(m, 1)).groups if g.prunable)
    except Exception:       # a hint only: the analysis above stands
        return
    if n1 > n_prunable:
        click.echo(f"hint: with --static-batch 1, {n1} groups are prunable (channels the exporter merges into "
                   "the symbolic batch can then be followed)")


@cli.command("prune")
@click.argument("model")
@click.option("--plan", "plan_in", required=True, help="plan JSON from `analyze --plan` or a report")
@click.option("-o", "--output", "out", default=None, help="pruned model path [default: IN.pruned.onnx]")
@click.option("--report", default=None, help="report JSON path [default: OUT.report.json]")
@click.option("--no-bench", is_flag=True, help="skip the latency benchmark")
@_static_batch_option
@click.option("-q", "--quiet", is_flag=True)
def prune_cmd(model, plan_in, out, report, no_bench, static_batch, quiet):
    """Apply an (edited) plan to MODEL."""
    from .io import check_output_path, save_json_atomic, save_model
    from .pipeline import Options, check_verified, prune

    out = out or _default_out(model)
    report_path = report or _default_report(out)
    check_output_path(out, model)
    check_output_path(report_path, model)
    pj = _load_json(plan_in, "plan")
    m = _load(model, static_batch)
    progress = _Progress(quiet)
    res = prune(m, Options(ratio=0.0, bench=not no_bench), progress, plan_json=pj)
    progress.done()
    check_verified(res.report)
    save_model(res.model, out)
    save_json_atomic(res.report, report_path)
    if not quiet:
        print_summary(res.report)
        click.echo(f"wrote {out} and {report_path}")


@cli.command("verify")
@click.argument("dense")
@click.argument("pruned")
@click.option("--plan", "plan_in", required=True, help="the plan (or report) the pruned model was made from")
def verify_cmd(dense, pruned, plan_in):
    """Check PRUNED against the masked-dense oracle built from DENSE and the plan."""
    from .errors import VerifyError
    from .verify import verify

    pj = _load_json(plan_in, "plan")
    d, p = _load(dense), _load(pruned)
    try:
        v = verify(d, p, pj)
    except GraphpruneError:
        raise
    except Exception as e:  # onnxruntime refusing one of the models
        raise VerifyError(f"cannot run the models: {str(e).strip().splitlines()[0]}")
    click.echo(json.dumps({"verify": v}))
    if not v["passed"]:
        raise VerifyError("verification failed: pruned model disagrees with the masked-dense oracle "
                          f"(max abs diff {v.get('max_abs_diff')})")


def main(argv: Optional[Sequence[str]] = None) -> None:
    debug = os.environ.get("GRAPHPRUNE_DEBUG") == "1"
    try:
        try:
            cli.main(args=list(argv) if argv is not None else None, prog_name="graphprune",
                     standalone_mode=False)
        finally:
            _Progress.interrupt()
    except click.exceptions.Abort:
        click.echo("graphprune: aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as e:
        click.echo(f"graphprune: error: {e.format_message()}", err=True)
        sys.exit(2)
    except GraphpruneError as e:
        if debug:
            raise
        click.echo(f"graphprune: error: {' '.join(e.message.split())}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("graphprune: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug: still one line, but say so
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        click.echo(f"graphprune: internal error ({type(e).__name__}): {msg} "
                   f"(set GRAPHPRUNE_DEBUG=1 for a traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
