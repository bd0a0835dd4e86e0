"""Command line: ``graphprune run | analyze | prune | verify``.

Every user-facing failure is one line on stderr and a documented exit code (see errors.py);
no traceback unless GRAPHPRUNE_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Sequence

import click

from . import __version__, options as optdefs
from .errors import GraphpruneError, InputError, UsageError

STEPS = ("analyze", "score", "plan", "rewrite", "count", "verify", "bench")


class Progress:
    """One line per step: its name, then its time. A step running over TICK seconds gets a dot
    every TICK seconds so a long step is visibly alive; a warning raised during a step ends the
    line, is printed on its own, and the step's line starts again."""
    active = None
    TICK = 2.0

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t = None
        self.step = None
        self._lock = __import__("threading").Lock()
        self._stop = None
        Progress.active = self
        import onnxruntime
        # graphprune catches and reports onnxruntime's failures (trying free-dim sizes, checking
        # the output); its own error log would print them again, inside a progress line
        onnxruntime.set_default_logger_severity(4)
        if not quiet:
            import warnings
            self._showwarning = warnings.showwarning
            warnings.showwarning = self._warning

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        with self._lock:
            open_line = self.step is not None
            if open_line:
                click.echo("", err=True)
            click.echo(f"warning: {' '.join(str(message).split())}", err=True)
            if open_line:
                click.echo(f"  {self.step:<8s} ...", err=True, nl=False)

    def _tick(self, stop) -> None:
        while not stop.wait(self.TICK):
            with self._lock:
                if self.step is None:
                    return
                click.echo(".", err=True, nl=False)

    def close(self) -> None:
        self.done()
        if not self.quiet and getattr(self, "_showwarning", None) is not None:
            import warnings
            warnings.showwarning = self._showwarning
            self._showwarning = None

    @classmethod
    def interrupt(cls) -> None:
        """End an open progress line so an error message starts on its own line."""
        p = cls.active
        if p is not None and p._stop is not None:
            p._stop.set()
            p._stop = None
        if p is not None and p.step is not None and not p.quiet:
            click.echo("", err=True)
            p.step = None
        if p is not None:
            p.close()

    def __call__(self, step: str) -> None:
        self.done()
        self.step, self.t = step, time.perf_counter()
        if not self.quiet:
            click.echo(f"  {step:<8s} ...", err=True, nl=False)
            import threading
            self._stop = threading.Event()
            threading.Thread(target=self._tick, args=(self._stop,), daemon=True).start()

    def done(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        with self._lock:
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

    def ratio(b, a):        # None: not a number (0 / 0)
        return None if not a and not b else b / max(a, 1)

    rows = [("MACs", _fmt_int(m["before"]), _fmt_int(m["after"]), ratio(m["before"], m["after"])),
            ("params", _fmt_int(p["before"]), _fmt_int(p["after"]), ratio(p["before"], p["after"]))]
    lat = report.get("latency_ms")
    if lat and "skipped" not in lat:
        rows.append(("latency ms", f"{lat['before']:.3f}", f"{lat['after']:.3f}", lat["speedup"]))
    click.echo(f"{'':12s} {'before':>10s} {'after':>10s} {'ratio':>8s}")
    for name, b, a, r in rows:
        click.echo(f"{name:12s} {b:>10s} {a:>10s} " + (f"{r:7.2f}x" if r is not None else f"{'-':>8s}"))
    s = report["summary"]
    tgt = s.get("target") or {}
    if "latency" in tgt:
        state = "within tolerance" if tgt["converged"] else f"NOT within ±{tgt['tolerance']:.0%}: closest shown"
        again = f"; {tgt['remeasured']:.3f} timed again" if "remeasured" in tgt else ""
        click.echo(f"target       latency {tgt['latency']:.3f} of dense: measured {tgt['measured']:.3f} ({state}, "
                   f"{len(tgt['iterations'])} measurement(s){again})")
    click.echo(f"groups       {s['pruned_groups']} pruned of {s['prunable_groups']} prunable ({s['groups']} found)")
    v = report.get("verify")
    if v is not None and "skipped" in v:
        click.echo(f"verify       {v['skipped']}")
    elif v is not None:
        state = "passed" if v["passed"] else "FAILED"
        click.echo(f"verify       {state} (max abs diff {v['max_abs_diff']:.3g})"
                   if v.get("max_abs_diff") is not None else f"verify       {state}")
        a = v.get("inexact_agreement")
        if a and a.get("cosine") is not None:
            n = len(v.get("inexact_groups", []))
            click.echo(f"             exact groups only; the {n} inexact group{'s' if n != 1 else ''}: cosine "
                       f"{a['cosine']:.4f} to the dense outputs (rel err {a['rel_err']:.3g})")


def _load(path: str, static_batch: Optional[int] = None, keep_initializer_inputs: bool = False,
          quiet: bool = False):
    """Load a model; nodes out of order are sorted and (unless kept) initializers that are also
    graph inputs become constants: each said in one line."""
    from .io import drop_initializer_inputs, load_model, with_static_batch
    from .pipeline import initializer_inputs_note

    notes: list = []
    m = load_model(path, notes=notes)
    if not keep_initializer_inputs:
        names = drop_initializer_inputs(m)
        if names:
            notes.append(initializer_inputs_note(names))
    if not quiet:
        for n in notes:
            click.echo(f"note: {n}", err=True)
    return with_static_batch(m, static_batch) if static_batch is not None else m


def _keep_init_option(f):
    return field_option("keep_initializer_inputs")(f)


def _feed_options(f):
    f = click.option("--inputs", "inputs_npz", metavar="SAMPLE.npz",
                     help="sample inputs (one array per graph input) for verify and the benchmark "
                          "[default: the calibration data when given, else random valid inputs]")(f)
    f = click.option("--input", "input_ranges", multiple=True, metavar="NAME=LOW:HIGH",
                     help="random values of input NAME in [LOW, HIGH) (integer inputs default to the rows "
                          "of the tables they index); repeatable")(f)
    return f


def _parse_feeds(input_ranges, inputs_npz) -> dict:
    """Options fields from --input / --inputs."""
    from .inputs import parse_input_range
    from .calib import Calibration

    out = {}
    ranges = {}
    for text in input_ranges:
        try:
            name, r = parse_input_range(text)
        except ValueError as e:
            raise UsageError(str(e))
        ranges[name] = r
    out["input_ranges"] = ranges
    if inputs_npz:
        c = Calibration.from_npz(inputs_npz, 1 << 30)
        c.source = f"sample inputs {inputs_npz}"
        out["sample"] = c
    return out


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


class _Ratios(click.ParamType):
    """Comma-separated fractions (``0.25,0.5``), sorted, each once (SweepConfig.check checks them)."""
    name = "ratios"

    def convert(self, value, param, ctx):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        try:
            return sorted({float(x) for x in items if str(x).strip()})
        except ValueError:      # graphprune's one-line message, as before this was a click type
            raise UsageError(f"--ratios must be comma-separated numbers, got {value!r}")


# Fields whose type click cannot read from the annotation in options.py: (class, field) -> type.
_CLICK_TYPES = {(optdefs.Options, "round_to"): ROUND_TO, (optdefs.SweepConfig, "ratios"): _Ratios()}


def field_option(name: str, of: type = optdefs.Options, prefix: str = "", **override):
    """The click option of field ``name`` of a settings class of options.py (``Options``,
    ``FinetuneOptions``, ``SweepConfig``), made from its definition: flag (``round_to`` ->
    ``--round-to``; ``prefix`` "finetune-": ``--finetune-lr``), default, type or choices, metavar and
    help. The parameter is the field's name (with the prefix: ``finetune_lr``). ``override``: click
    keywords one command changes (``analyze --ratio``)."""
    kind, values = optdefs.cli_kind(name, of)
    flag, default = optdefs.cli_flag(name, of, prefix), optdefs.cli_default(name, of)
    kw = dict(default=default, help=optdefs.cli_help(name, of, prefix),
              show_default=default is not None and kind not in ("flag", "switch", "multiple"))
    metavar = optdefs.fields(of)[name].metadata["metavar"]
    if metavar:
        kw["metavar"] = metavar
    decls = [flag, prefix.replace("-", "_") + name]
    if kind == "flag":
        kw["is_flag"] = True
    elif kind == "switch":
        decls[0] = f"{flag}/--no-{flag[2:]}"
    elif kind == "choice":
        kw["type"] = click.Choice(values)
    elif kind == "multiple":
        kw.update(multiple=True, type=values[0])
    elif kind == "custom":
        kw["type"] = _CLICK_TYPES[(of, name)]
    else:
        kw["type"] = {"int": int, "float": float, "str": str}[kind]
    kw.update(override)
    return click.option(*decls, **kw)


def field_options(*names: str, of: type = optdefs.Options, prefix: str = "", **overrides: dict):
    """``field_option`` of each name, listed in this order by --help; ``overrides``: field name ->
    click keywords."""
    def deco(f):
        for name in reversed(names):
            f = field_option(name, of, prefix, **overrides.get(name, {}))(f)
        return f
    return deco


def _common_prune_options(**overrides: dict):
    """The flags of `run` and `analyze` that choose what is pruned (and the quality flags)."""
    def deco(f):
        f = _quality_options(f)
        return field_options("ratio", "head_ratio", "mlp_ratio", "prune_hidden", "round_to", "protect", "criterion",
                             "seed", "allow_inexact", **overrides)(f)
    return deco


def _quality_options(f):
    """Calibration, criterion details and allocation: passed on to Options as they are (the
    calibration files are read into ``Options.calib``)."""
    f = field_options("calib_batch", "reduce", "normalize", "scope", "target_macs", "target_params", "min_ratio",
                      "max_ratio")(f)
    f = click.option("--calib-dir", metavar="DIR", help="calibration samples: a folder of .npz/.npy files")(f)
    return click.option("--calib", metavar="FILE.npz",
                        help="calibration samples: one array per graph input, first axis = samples")(f)


def _repair_options(f):
    return field_options("repair", "ridge", "ridge_prior")(f)


def _latency_options(f):
    f = click.option("--html", "html_out", metavar="REPORT.html",
                     help="also write a self-contained HTML report (per-layer widths, MACs, latency, groups)")(f)
    return field_options("target_latency", "latency_tolerance", "latency_iterations", "latency_objective",
                         "latency_cache")(f)


def _latency(kw: dict) -> dict:
    """Options fields from the latency flags (--target-latency defaults the scope to global)."""
    q = {k: kw.pop(k) for k in ("target_latency", "latency_tolerance", "latency_iterations", "latency_cache",
                                "latency_objective")}
    if q["target_latency"] is not None:
        src = click.get_current_context().get_parameter_source("scope")
        if src is not None and src.name == "DEFAULT":
            kw["scope"] = "global"
    return q


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
    batch = q.pop("calib_batch")
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


FT = optdefs.FinetuneOptions
# the FinetuneOptions fields of `run --finetune-*` (its seed and threads are run's --seed, --threads)
RUN_FINETUNE_FIELDS = ("steps", "epochs", "lr", "batch", "loss", "match", "val_fraction", "max_seconds")
# and of `graphprune finetune`
FINETUNE_FIELDS = RUN_FINETUNE_FIELDS + ("temperature", "match_weight", "patience", "eval_every", "freeze",
                                         "train_embeddings", "seed", "threads")


def _run_finetune_options(f):
    """`run --finetune-data D [--prune-steps k] [--finetune-...]`: distillation after repair."""
    f = _finetune_options(RUN_FINETUNE_FIELDS, "finetune-")(f)
    f = click.option("--prune-steps", type=int, default=1, show_default=True,
                     help="with --finetune-data: prune in k steps toward the target, distilling after each")(f)
    f = click.option("--finetune-data", default=None, metavar="FILE.npz|DIR",
                     help="after pruning (and repair), distil the pruned model toward the input model on these "
                          "unlabeled inputs (see `graphprune finetune`)")(f)
    return f


def _pop_run_finetune(kw: dict, seed: int, threads: int):
    path, k = kw.pop("finetune_data"), kw.pop("prune_steps")
    ft = _ft_options(kw, RUN_FINETUNE_FIELDS, "finetune-", seed=seed, threads=threads)
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


def _loss_option(prefix: str):
    """--loss KIND|OUTPUT=KIND (repeatable): FinetuneOptions.loss, or one output's (output_loss)."""
    flag = optdefs.cli_flags("loss", FT, prefix)[0]
    return click.option(flag, prefix.replace("-", "_") + "loss", multiple=True,
                        metavar=optdefs.fields(FT)["loss"].metadata["metavar"],
                        help=f"{optdefs.cli_help('loss', FT, prefix)}; OUTPUT=KIND: for that output; repeatable "
                             f"[default: {optdefs.cli_default('loss', FT)}]")


def _finetune_options(names: Sequence[str], prefix: str = ""):
    """The flags of these FinetuneOptions fields, from their definitions; ``prefix`` ("finetune-")
    names them on `run`."""
    def deco(f):
        for name in reversed(names):
            f = (_loss_option(prefix) if name == "loss" else field_option(name, FT, prefix))(f)
        return f
    return deco


def _ft_options(kw: dict, names: Sequence[str], prefix: str = "", **given):
    """FinetuneOptions from the popped values of the flags of ``names`` (and ``given`` fields)."""
    k = prefix.replace("-", "_")
    vals = {n: kw.pop(k + n) for n in names}
    per = {}
    for item in vals.pop("loss", ()):
        if "=" in item:
            name, kind = item.rsplit("=", 1)
            per[name] = kind
        else:
            vals["loss"] = item
    o = FT(output_loss=per, **vals, **given)
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
@_finetune_options(FINETUNE_FIELDS)
@click.option("-q", "--quiet", is_flag=True)
def finetune_cmd(model, teacher, data_path, out, report, quiet, **kw):
    """Recover accuracy: distil the pruned MODEL toward the dense --teacher's outputs on unlabeled
    --data. Only weight values change (same nodes, names and shapes); zeros stay zero."""
    from .finetune import finetune
    from .io import check_output_path, save_json_atomic, save_model

    ft = _ft_options(kw, FINETUNE_FIELDS)
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


def _provider_options(f):
    """--provider / --device: the onnxruntime execution provider of verify, the benchmark,
    calibration and the latency model."""
    return field_options("provider", "device")(f)


def _sparse_options(f):
    return field_options("sparsity", "pattern", "sparse_kernels", "sparse_criterion", "seq_len")(f)


@cli.command()
@click.argument("model", required=False)
@click.option("-o", "--output", "out", default=None, help="pruned model path [default: IN.pruned.onnx]")
@click.option("--report", default=None, help="report JSON path [default: OUT.report.json]")
@_common_prune_options()
@field_options("threads", "bench", "verify")
@click.option("--demo", is_flag=True, help="prune the built-in demo CNN (also used when MODEL is omitted)")
@_static_batch_option
@_repair_options
@_keep_init_option
@_feed_options
@field_option("bench_seconds")
@_latency_options
@_provider_options
@_sparse_options
@_run_finetune_options
@click.option("-q", "--quiet", is_flag=True)
def run(model, out, report, ratio, round_to, protect, criterion, seed, allow_inexact, head_ratio, mlp_ratio,
        prune_hidden, threads, bench, verify, demo, static_batch, quiet, keep_initializer_inputs, input_ranges,
        inputs_npz, bench_seconds, html_out, provider, device, sparsity, pattern, sparse_kernels,
        sparse_criterion, seq_len, **quality):
    """Prune MODEL end to end: load, analyze, score, plan, rewrite, verify, bench, save."""
    from .io import check_output_path, save_json_atomic, save_model
    from .pipeline import Options, check_verified, prune

    ft = _pop_run_finetune(quality, seed, threads)

    opts = Options(ratio=ratio, round_to=round_to, protect=protect, criterion=criterion, seed=seed,
                   allow_inexact=allow_inexact, head_ratio=head_ratio, mlp_ratio=mlp_ratio,
                   prune_hidden=prune_hidden, threads=threads, bench=bench, verify=verify,
                   provider=provider, device=device,
                   keep_initializer_inputs=keep_initializer_inputs, bench_seconds=bench_seconds,
                   sparsity=sparsity, pattern=pattern, sparse_kernels=sparse_kernels,
                   sparse_criterion=sparse_criterion, seq_len=seq_len,
                   **_parse_feeds(input_ranges, inputs_npz), layer_table=bool(html_out), **_latency(quality),
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
    if html_out:
        check_output_path(html_out, model)
    m = _load(model, static_batch, keep_initializer_inputs, quiet)
    progress = Progress(quiet)
    if not quiet:
        rt = f"auto = {opts.rounding()}" if round_to == "auto" else round_to
        click.echo(f"pruning {model} (ratio {ratio}, round-to {rt}, criterion {criterion})", err=True)
    res = prune(m, opts, progress) if ft is None else _run_with_finetune(m, opts, ft, progress, quiet)
    progress.close()
    rep = res.report
    for step in rep.get("steps", []):
        check_verified(step)
    if static_batch is not None:
        rep["summary"]["options"]["static_batch"] = static_batch
    if rep["summary"]["pruned_groups"] == 0 and not opts.sparse():
        why = rep["summary"].get("reason") or "no prunable group at these settings"
        click.echo(f"nothing was pruned: {why}; writing an unchanged copy (`graphprune analyze` lists every "
                   "group)", err=True)
    check_verified(rep)
    save_model(res.model, out)
    save_json_atomic(rep, report_path)
    if html_out:
        from .html_report import write_html
        write_html(rep, html_out, source=report_path)
    if not quiet:
        print_summary(rep)
        print_sparse(rep)
        if "finetune" in rep:
            print_finetune(rep["finetune"])
        click.echo(f"wrote {out} and {report_path}" + (f" and {html_out}" if html_out else ""))


def print_sparse(report: dict) -> None:
    sp = report.get("sparse")
    if not sp:
        return
    click.echo(f"sparse       {sp['pattern']} at {sp['sparsity']:g}: {sp.get('converted', 0)} of "
               f"{sp.get('masked', 0)} masked layers on the sparse kernel ({len(sp['kept_dense'])} not eligible)")
    sp_ = sorted(e["speedup"] for e in sp.get("layers", []) if e.get("speedup") is not None)
    if sp_:
        mc = sp.get("model_check", {})
        click.echo(f"layer timing kernel vs dense at {sp.get('timed_at')}: {sp_[0]:.2f}x .. "
                   f"{sp_[len(sp_) // 2]:.2f}x (median) .. {sp_[-1]:.2f}x"
                   + (f"; whole model {mc['speedup']:.2f}x" if "speedup" in mc else ""))
    v = sp.get("verify")
    if v:
        parts = []
        for k in ("kernels_vs_densified", "densified_vs_oracle"):
            x = v.get(k)
            if x is not None:
                parts.append(f"{k.replace('_', ' ')} " + (x["skipped"] if "skipped" in x else
                             f"{'passed' if x.get('passed') else 'FAILED'} (max rel diff {x.get('max_rel_diff') or 0:.3g})"))
        click.echo("sparse check " + "; ".join(parts))
    if sp.get("needs"):
        click.echo(f"note         {sp['needs']}")


@cli.command("densify")
@click.argument("model")
@click.option("-o", "--output", "out", required=True, help="standard-ONNX model path")
def densify_cmd(model, out):
    """Write the standard-ONNX equivalent of a model with graphprune's sparse ops (the zeros in
    place): runs in any onnxruntime, no kernel library needed."""
    from .io import check_output_path, save_model
    from .sparsify import densify, uses_kernels

    check_output_path(out, model)
    m = _load(model)
    if not uses_kernels(m):
        click.echo("the model has no graphprune sparse ops: writing an unchanged copy", err=True)
    try:
        d = densify(m)
    except (KeyError, ValueError, IndexError) as e:
        raise InputError(f"cannot densify {model}: {' '.join(str(e).split())[:200]}")
    save_model(d, out)
    click.echo(f"wrote {out}")


@cli.command("analyze")
@click.argument("model")
@click.option("--plan", "plan_out", default=None, help="write the plan JSON (groups, members, kept) here")
@_common_prune_options(ratio=dict(default=0.0, show_default=False,
                                  help="fraction of each group's channels to remove in the written plan "
                                       "[default: 0, every channel kept]"))
@_static_batch_option
@_keep_init_option
@click.option("-v", "--verbose", is_flag=True, help="list every blocked reason")
def analyze_cmd(model, plan_out, ratio, round_to, protect, criterion, seed, allow_inexact, head_ratio, mlp_ratio,
                prune_hidden, static_batch, verbose, keep_initializer_inputs, **quality):
    """Print the coupled channel groups of MODEL, what is blocked and why; optionally write a plan
    (at --ratio, default 0 here: every channel kept) to edit and apply with `prune --plan`."""
    from .explain import group_state
    from .io import save_json_atomic
    from .pipeline import Analyzed, Options, calibration, n_inexact_only, n_prunable, plan_for, quantized_reason

    opts = Options(ratio=ratio, round_to=round_to, protect=protect, criterion=criterion, seed=seed,
                   allow_inexact=allow_inexact, head_ratio=head_ratio, mlp_ratio=mlp_ratio, prune_hidden=prune_hidden,
                   **_quality(quality, static_batch))
    opts.check()
    allow_inexact = allow_inexact or prune_hidden
    if plan_out:
        from .io import check_output_path
        check_output_path(plan_out, model)
    m = _load(model, static_batch, keep_initializer_inputs)
    why = quantized_reason(m)
    if why:                 # said from the op list, before any analysis
        click.echo(f"0 groups, 0 prunable\nwhy: {why}")
        if plan_out:
            save_json_atomic({"groups": []}, plan_out)
            click.echo(f"wrote {plan_out}")
        return
    an = Analyzed(m)
    plan = plan_for(an, m, opts, calibration(m, opts))
    pj = plan.to_json()
    click.echo(f"{'id':>4s}  {'channels':>9s}  {'kind':8s}  {'state':10s}  name / reason")
    for g, e in zip(an.groups, pj["groups"]):
        state, reasons = group_state(g, allow_inexact)
        ch = f"{e['channels_after']}/{e['channels_before']}"
        click.echo(f"{g.id:4d}  {ch:>9s}  {g.kind:8s}  {state:10s}  {g.name}")
        for r in (reasons if verbose else reasons[:1]):
            click.echo(f"{'':39s}  - {r}")
        if not verbose and len(reasons) > 1:
            click.echo(f"{'':39s}  - ... {len(reasons) - 1} more (use -v)")
    n_ok, n_inexact = n_prunable(an.groups, opts), n_inexact_only(an.groups, opts)
    more = f" ({n_inexact} more with --allow-inexact)" if n_inexact else ""
    click.echo(f"{len(an.groups)} groups, {n_ok} prunable{more}")
    if static_batch is None and n_ok < len(an.groups):
        _static_batch_hint(m, n_ok)
    if n_ok == 0:
        from .pipeline import nothing_pruned_reason
        click.echo(f"why: {nothing_pruned_reason(m, an.groups, opts)}")
    if plan_out:
        save_json_atomic(pj, plan_out)
        click.echo(f"wrote {plan_out}")


def _static_batch_hint(m, n_prunable: int) -> None:
    from .explain import static_batch_gain
    n1 = static_batch_gain(m, n_prunable)
    if n1 is not None:
        click.echo(f"hint: with --static-batch 1, {n1} groups are prunable (channels the exporter merges into "
                   "the symbolic batch can then be followed)")


@cli.command("prune")
@click.argument("model")
@click.option("--plan", "plan_in", required=True, help="plan JSON from `analyze --plan` or a report")
@click.option("-o", "--output", "out", default=None, help="pruned model path [default: IN.pruned.onnx]")
@click.option("--report", default=None, help="report JSON path [default: OUT.report.json]")
@click.option("--no-bench", is_flag=True, help="skip the latency benchmark")
@_static_batch_option
@_keep_init_option
@click.option("-q", "--quiet", is_flag=True)
def prune_cmd(model, plan_in, out, report, no_bench, static_batch, keep_initializer_inputs, quiet):
    """Apply an (edited) plan to MODEL."""
    from .io import check_output_path, save_json_atomic, save_model
    from .pipeline import Options, check_verified, prune

    out = out or _default_out(model)
    report_path = report or _default_report(out)
    check_output_path(out, model)
    check_output_path(report_path, model)
    pj = _load_json(plan_in, "plan")
    m = _load(model, static_batch, keep_initializer_inputs, quiet)
    progress = Progress(quiet)
    res = prune(m, Options(ratio=0.0, bench=not no_bench, keep_initializer_inputs=keep_initializer_inputs),
                progress, plan_json=pj)
    progress.close()
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
@_provider_options
def verify_cmd(dense, pruned, plan_in, provider, device):
    """Check PRUNED against the masked-dense oracle built from DENSE and the plan."""
    from .errors import VerifyError
    from .runtime import check_provider, use_provider
    from .verify import verify

    check_provider(provider, device)
    pj = _load_json(plan_in, "plan")
    d, p = _load(dense), _load(pruned)
    try:
        with use_provider(provider, device):
            if (pj.get("sparse") or {}).get("layers"):      # sparse layers: sparsify.verify_model
                from .sparsify import verify_model
                v = verify_model(d, p, pj)
            else:
                v = verify(d, p, pj)
    except GraphpruneError:
        raise
    except Exception as e:  # onnxruntime refusing one of the models
        raise VerifyError(f"cannot run the models: {str(e).strip().splitlines()[0]}")
    click.echo(json.dumps({"verify": v}))
    if not v["passed"]:
        raise VerifyError("verification failed: pruned model disagrees with the masked-dense oracle "
                          f"(max abs diff {v.get('max_abs_diff')})")


SENSITIVITY_FIELDS = ("ratios", "criterion", "calib", "calib_dir", "calib_batch", "samples", "metric", "min_quality",
                      "round_to", "groups", "jobs", "ray_address", "threads", "repeats", "seed")


@cli.command("sensitivity")
@click.argument("model")
@click.option("-o", "--output", "out", default=None, help="result JSON [default: IN.sensitivity.json]")
@field_options(*SENSITIVITY_FIELDS, of=optdefs.SweepConfig)
@_static_batch_option
@click.option("-q", "--quiet", is_flag=True)
def sensitivity_cmd(model, out, static_batch, quiet, **settings):
    """Prune each group of MODEL alone at several ratios; write per-group quality and latency
    curves, a suggested ratio per group and a plan for `prune --plan`. Resumable: finished trials
    are kept in OUT.trials.jsonl and skipped by a rerun."""
    from .io import check_output_path, load_model
    from .sensitivity import sweep

    settings["groups"] = list(settings["groups"]) or None
    cfg = optdefs.SweepConfig(model=model, static_batch=static_batch, **settings)
    cfg.check()
    out = out or ((model[:-5] if model.endswith(".onnx") else model) + ".sensitivity.json")
    check_output_path(out, model)
    load_model(model)                     # a bad input: one line, exit 3, before any worker starts
    say = (lambda s: None) if quiet else (lambda s: click.echo(f"  {s}", err=True))
    res = sweep(cfg, out, progress=say)
    if not quiet:
        click.echo(f"{'group':>5s}  {'channels':>8s}  " + "  ".join(f"q@{r:<5g}" for r in res["ratios"])
                   + "  suggested  name")
        for gid, g in res["groups"].items():
            by = {round(t["ratio"], 6): t for t in g["trials"]}
            qs = "  ".join(f"{by[round(r, 6)]['quality']:7.4f}" if round(r, 6) in by else f"{'-':>7s}"
                           for r in res["ratios"])
            click.echo(f"{gid:>5s}  {g['channels']:8d}  {qs}  {res['suggested'][gid]:9.2f}  {g['name']}")
        base = out[:-5] if out.endswith(".json") else out
        click.echo(f"wrote {out}, {base}.trials.jsonl ({res['trials_run']} run, {res['trials_reused']} reused) "
                   f"and {base}.plan.json")


@cli.command("report")
@click.argument("report_json")
@click.option("-o", "--output", "out", default=None, help="HTML path [default: REPORT.html]")
@click.option("--sensitivity", "sens", default=None, metavar="SENS.json", help="a `graphprune sensitivity` result")
@click.option("--runs", multiple=True, metavar="REPORT.json", help="other reports for the trade-off chart")
def report_cmd(report_json, out, sens, runs):
    """Render a run's report (REPORT.json) as one self-contained HTML page."""
    from .html_report import write_html
    from .io import check_output_path

    rep = _load_json(report_json, "report")
    out = out or ((report_json[:-5] if report_json.endswith(".json") else report_json) + ".html")
    check_output_path(out, report_json)
    s = None
    if sens:
        try:
            with open(sens, encoding="utf-8") as fh:
                s = json.load(fh)
        except (OSError, ValueError) as e:
            raise InputError(f"sensitivity {sens} cannot be read: {str(e).splitlines()[0]}")
        if not isinstance(s, dict) or not isinstance(s.get("groups"), dict):
            raise InputError(f"sensitivity {sens} has no 'groups' object")
    others = []
    for r in runs:
        o = _load_json(r, "report")
        o["_label"] = os.path.basename(r)
        others.append(o)
    write_html(rep, out, source=report_json, sensitivity=s, runs=others)
    click.echo(f"wrote {out}")


@cli.command("kernels")
def kernels_cmd():
    """Build (if needed) graphprune's sparse custom-op library for onnxruntime; the last line printed
    is its path (for SessionOptions.register_custom_ops_library)."""
    from . import kernels
    path = kernels.library_path()
    click.echo(f"graphprune sparse kernels ({kernels.library_info(path)}), domain {kernels.DOMAIN}: "
               f"{', '.join(kernels.OPS)}")
    click.echo(path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    debug = os.environ.get("GRAPHPRUNE_DEBUG") == "1"
    from .memory import allow_lean_heap
    allow_lean_heap()       # the process is ours: the steps may trim glibc's heap (memory.lean_heap)
    try:
        try:
            cli.main(args=list(argv) if argv is not None else None, prog_name="graphprune",
                     standalone_mode=False)
        finally:
            Progress.interrupt()
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
