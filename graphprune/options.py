"""Every setting of a pruning run, defined once: :class:`Options`.

Each field is declared with :func:`setting`: its default, its help text and how the command line
shows it. ``Options.__doc__`` (the ``Args`` section) and the CLI's flags (``cli.field_option``:
flag, default, type or choices, help) are both made from these definitions, so the Python API
and ``graphprune run | analyze | prune | verify`` cannot drift apart.

A field's ``cli`` says what the command line does with it:

* ``True`` (the default): a flag named after the field (``round_to`` -> ``--round-to``) built
  from this definition;
* a tuple of flags: the command line has hand-written flags for it (``calib`` is read from
  ``--calib FILE.npz`` or ``--calib-dir DIR``), whose defaults still come from here;
* ``False``: Python only.

In help texts, a field name in single backquotes (`` `ratio` ``) becomes ``--ratio`` in the CLI's
help and ``ratio`` in the docstring.

This module imports nothing heavy (no onnx, onnxruntime, numpy, torch or click); ``check``
imports what it needs when it runs.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import numbers
import re
import textwrap
from dataclasses import MISSING, dataclass
from typing import (Any, Callable, Dict, Literal, Optional, Sequence, Tuple, Union, get_args, get_origin,
                    get_type_hints)

from .choices import (LATENCY_OBJECTIVES, NORMALIZE, REDUCE, REPAIR, RIDGE_PRIORS, SCOPES, SPARSE_CRITERIA,
                      SPARSE_KERNELS, LatencyObjective, Normalize, Provider, Reduce, RepairMode, RidgePrior,
                      Scope, SparseCriterion, SparseKernels)
from .errors import UsageError

__all__ = ["Options", "setting", "cli_flag", "cli_flags", "cli_kind", "cli_default", "cli_help", "cli_fields",
           "python_only", "doc_help"]


def setting(default: Any = MISSING, *, help: str, none: Optional[str] = None, metavar: Optional[str] = None,
            cli: Union[bool, Tuple[str, ...]] = True, cli_default: Any = MISSING,
            default_factory: Any = MISSING) -> Any:
    """A field of :class:`Options` with its documentation.

    Args:
        default: the Python default (or ``default_factory``).
        help: one line, shared by the docstring and the CLI's help.
        none: what ``None`` means for this field (shown as the CLI's default when it is None there).
        metavar: the CLI's placeholder for the value.
        cli: ``True``: a generated ``--flag``; a tuple: the hand-written flags of cli.py; ``False``:
            Python only.
        cli_default: the command line's default where it differs from Python's on purpose
            (``bench`` and ``verify``: None, automatic, on the command line).
    """
    md = {"help": help, "none": none, "metavar": metavar, "cli": cli}
    if cli_default is not MISSING:
        md["cli_default"] = cli_default
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


@dataclass(kw_only=True)
class Options:
    """Every setting of a pruning run (keyword-only; the CLI flags of the same names).

    The ``Args`` section is generated from the fields' definitions (options.setting)."""
    ratio: float = setting(0.5, help="fraction of each group's channels to remove, in [0, 1)")
    head_ratio: Optional[float] = setting(None, none="`ratio`", help="fraction of attention heads to remove")
    mlp_ratio: Optional[float] = setting(None, none="`ratio`",
                                         help="fraction of MLP (and CNN channel) widths to remove")
    prune_hidden: bool = setting(False, help="also prune the residual (hidden) width of transformers: not exact")
    round_to: Union[int, Literal["auto"]] = setting(
        1, metavar="N|auto", help="kept channel counts are multiples of N; auto: the SIMD block onnxruntime's CPU "
                                  "convolutions want here (16 with AVX-512, 8 with AVX2; runtime.simd_block)")
    protect: Sequence[str] = setting((), metavar="NAME",
                                     help="node or tensor name (glob) whose groups keep every channel")
    criterion: Union[str, Callable[..., Any]] = setting(
        "l2", help="importance: l2, l1, bn-scale, fpgm, lamp, random, obspa (data-free); activation, fluctuation, "
                   "obs, taylor (need `calib`); in Python also any graphprune.score.Criterion")
    reduce: Reduce = setting("mean", help="how a group's members' scores combine")
    seed: int = setting(0, help="seed of the random criterion and of random inputs")
    allow_inexact: bool = setting(False, help="also prune groups that feed LayerNorm/Softmax/ReduceMean over "
                                              "channels")
    threads: int = setting(1, help="onnxruntime threads (benchmark, calibration)")
    provider: Provider = setting(
        "cpu", help="onnxruntime execution provider of every session (verify, benchmark, calibration, latency "
                    "model); cuda/tensorrt need onnxruntime-gpu (pip install 'graphprune[gpu]'); never a silent "
                    "fall back to the CPU")
    device: int = setting(0, help="GPU index for `provider` cuda/tensorrt")
    bench: Optional[bool] = setting(True, cli_default=None, none="on, off for models over 1 GiB",
                                    help="latency benchmark")
    bench_repeats: int = setting(30, cli=False, help="timed runs per model")
    verify: Optional[bool] = setting(True, cli_default=None, none="on, off for models over 1 GiB",
                                     help="masked-dense oracle check")
    seq_len: int = setting(64, metavar="N", help="symbolic non-batch input dims (sequence) when counting MACs and "
                                                 "timing sparse layers (e.g. 1 for a decoder's one-token step)")
    normalize: Normalize = setting("mean", help="per-layer score normalisation (before global ranking)")
    scope: Scope = setting("uniform", help="uniform: every group loses `ratio`; global: one threshold over all "
                                           "groups")
    target_macs: Optional[float] = setting(None, metavar="F", help="prune to this fraction of the dense MACs "
                                                                   "(e.g. 0.5 for 2x fewer)")
    target_params: Optional[float] = setting(None, metavar="F",
                                             help="prune to this fraction of the dense parameters")
    min_ratio: float = setting(0.0, help="every pruned group loses at least this fraction")
    max_ratio: Optional[float] = setting(None, none="0.9 with `scope` global",
                                         help="no group loses more than this fraction")
    per_cost: bool = setting(True, cli=False, help="global scope with a target: rank by importance per unit of "
                                                   "cost")
    calib: Any = setting(None, cli=("--calib", "--calib-dir"),
                         help="calibration data: a calib.Calibration or any iterable of feed dicts (the command "
                              "line reads --calib FILE.npz or --calib-dir DIR)")
    calib_batch: int = setting(16, help="calibration batch size")
    repair: RepairMode = setting("none", help="training-free repair of the layers that lost inputs (needs "
                                              "calibration data)")
    ridge: float = setting(1e-3, help="lstsq repair: ridge strength relative to the mean input energy (the mean "
                                      "diagonal of X·Xᵀ)")
    ridge_prior: RidgePrior = setting("zero", help="lstsq repair: the ridge term pulls the refit toward zero or "
                                                   "the layer's kept weights")
    taylor_samples: int = setting(8, cli=False, help="samples of the taylor criterion")
    taylor_eps: float = setting(1e-2, cli=False, help="finite-difference step of the taylor criterion")
    keep_initializer_inputs: bool = setting(
        False, help="initializers also listed as graph inputs (IR < 4) stay inputs, and block the channels they "
                    "touch (else they are treated as constants and dropped from the inputs)")
    input_ranges: Dict[str, tuple] = setting(
        default_factory=dict, cli=("--input",),
        help="input name -> (low, high): random values of that input in [low, high) (integer inputs default to "
             "the rows of the tables they index)")
    sample: Any = setting(None, cli=("--inputs",), none="the calibration data when given, else random valid inputs",
                          help="feed dicts for verify and the benchmark (the command line reads --inputs "
                               "SAMPLE.npz)")
    bench_seconds: float = setting(10.0, help="the latency benchmark stops after about this long (at least 3 "
                                              "pairs of runs)")
    target_latency: Optional[float] = setting(
        None, metavar="F", help="prune until the measured latency is this fraction of the dense model's on this "
                                "machine (the command line implies `scope` global unless it is given)")
    latency_tolerance: float = setting(0.05, help="`target_latency`: accepted relative error of the measured "
                                                  "latency")
    latency_iterations: int = setting(6, help="`target_latency`: measured bisection steps at most")
    latency_objective: LatencyObjective = setting(
        "auto", help="`target_latency`: remove channels by importance lost per ms saved, or by MACs per ms saved; "
                     "auto: search both, keep the plan whose outputs agree best with the dense model's")
    latency_cache: Optional[str] = setting(None, metavar="DIR", none="~/.cache/graphprune",
                                           help="folder of the per-layer timing cache ('' turns it off)")
    latency_timer: Any = setting(None, cli=False, help="tests: (spec, a, b) -> ms instead of timing in onnxruntime")
    layer_table: bool = setting(False, cli=("--html",),
                                help="report['layers'] (widths, MACs, latency per layer) without a target (the "
                                     "command line's --html REPORT.html asks for it)")
    sparsity: Optional[float] = setting(None, metavar="S",
                                        help="fraction of the weights of every eligible MatMul/Gemm/pointwise Conv "
                                             "zeroed, in [0, 1) (sparse layers; see docs/sparse.md)")
    pattern: Optional[str] = setting(None, metavar="unstructured|N:M|block:RxC",
                                     none="unstructured with `sparsity`, else no sparse step",
                                     help="sparse-layer pattern (N:M and RxC: R/N:M along the reduction axis, C "
                                          "along the outputs)")
    sparse_kernels: SparseKernels = setting(
        "auto", help="auto: a layer runs on graphprune's sparse kernel only where it beats dense here (timed per "
                     "layer); always; never (zeros in dense layers)")
    sparse_criterion: Optional[SparseCriterion] = setting(
        None, none="from `criterion`: activation → wanda, obs → sparsegpt, else magnitude",
        help="sparse masks: magnitude, wanda (|W|·‖X‖), sparsegpt (OBS with weight updates; wanda and sparsegpt "
             "need `calib`) or random")
    sparse_margin: float = setting(1.05, cli=False, help="a layer's sparse kernel must be this much faster than "
                                                         "dense")
    sparse_sequential: bool = setting(False, cli=False, help="sparsegpt: prune stage by stage on the sparse "
                                                             "model's inputs")

    def sparse(self) -> bool:
        return self.sparsity is not None or self.pattern is not None

    def structured(self) -> bool:
        """Whether structured pruning has anything to do (else its scoring is skipped)."""
        return bool(self.ratio or self.head_ratio or self.mlp_ratio or self.target() is not None)

    def kind_ratios(self) -> Dict[str, Optional[float]]:
        return {"heads": self.head_ratio, "channels": self.mlp_ratio}

    def rounding(self) -> int:
        """``round_to`` as a number (``"auto"``: this machine's SIMD block, runtime.simd_block)."""
        if self.round_to == "auto":
            from .runtime import simd_block
            return simd_block()
        return int(self.round_to)

    def check(self) -> None:
        from .runtime import check_provider
        from .score import CRITERIA, criterion_name, needs as criterion_needs

        for name in ("ratio", "head_ratio", "mlp_ratio"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 1.0):
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
        if self.round_to != "auto" and (not isinstance(self.round_to, numbers.Integral) or isinstance(self.round_to, bool)
                                        or self.round_to < 1):
            raise UsageError(f"--round-to must be an integer >= 1 or auto, got {self.round_to!r}")
        if not callable(self.criterion) and self.criterion not in CRITERIA:
            raise UsageError(f"unknown criterion {self.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
        if self.threads < 1:
            raise UsageError("--threads must be >= 1")
        if not self.bench_seconds > 0:
            raise UsageError(f"--bench-seconds must be > 0, got {self.bench_seconds}")
        check_provider(self.provider, self.device)
        for name, allowed in (("scope", SCOPES), ("normalize", NORMALIZE), ("reduce", REDUCE), ("repair", REPAIR),
                              ("ridge_prior", RIDGE_PRIORS)):
            if getattr(self, name) not in allowed:
                raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("target_macs", "target_params"):
            v = getattr(self, name)
            if v is not None and not (0.0 < v <= 1.0):
                raise UsageError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
        if self.target_macs is not None and self.target_params is not None:
            raise UsageError("give --target-macs or --target-params, not both")
        if self.target_latency is not None:
            if not (0.0 < self.target_latency <= 1.0):
                raise UsageError(f"--target-latency must be in (0, 1], got {self.target_latency}")
            if self.target_macs is not None or self.target_params is not None:
                raise UsageError("give --target-latency or --target-macs/--target-params, not both")
            if not (0.0 < self.latency_tolerance < 1.0):
                raise UsageError(f"--latency-tolerance must be in (0, 1), got {self.latency_tolerance}")
            if self.latency_iterations < 1:
                raise UsageError("--latency-iterations must be >= 1")
            if self.latency_objective not in LATENCY_OBJECTIVES:
                raise UsageError(f"--latency-objective must be {_or(LATENCY_OBJECTIVES)}, "
                                 f"got {self.latency_objective!r}")
        if not (0.0 <= self.min_ratio < 1.0):
            raise UsageError(f"--min-ratio must be in [0, 1), got {self.min_ratio}")
        if self.max_ratio is not None and not (self.min_ratio <= self.max_ratio < 1.0):
            raise UsageError(f"--max-ratio must be in [min-ratio, 1), got {self.max_ratio}")
        if self.seq_len < 1:
            raise UsageError(f"--seq-len must be >= 1, got {self.seq_len}")
        if self.calib_batch < 1:
            raise UsageError("--calib-batch must be >= 1")
        need = criterion_needs(self.criterion)
        if self.calib is None and need in ("calib", "gram", "samples"):
            raise UsageError(f"criterion {criterion_name(self.criterion)!r} needs calibration data: pass "
                             f"--calib FILE.npz or --calib-dir DIR (Options(calib=...) in Python)")
        if self.calib is None and self.repair != "none":
            raise UsageError(f"--repair {self.repair} needs calibration data: pass --calib FILE.npz or "
                             f"--calib-dir DIR (Options(calib=...) in Python)")
        self.check_sparse()

    def check_sparse(self) -> None:
        if not self.sparse():
            return
        from .sparsify import Pattern, resolve_sparsity

        resolve_sparsity(Pattern.parse(self.pattern or "unstructured"), self.sparsity)
        if self.sparse_kernels not in SPARSE_KERNELS:
            raise UsageError(f"--sparse-kernels must be {_or(SPARSE_KERNELS)}, got {self.sparse_kernels!r}")
        if self.sparse_criterion is not None and self.sparse_criterion not in SPARSE_CRITERIA:
            raise UsageError(f"--sparse-criterion must be one of {', '.join(SPARSE_CRITERIA)}, "
                             f"got {self.sparse_criterion!r}")
        if self.calib is None and self.sparse_criterion in ("wanda", "sparsegpt"):
            raise UsageError(f"--sparse-criterion {self.sparse_criterion} needs calibration data: pass "
                             f"--calib FILE.npz or --calib-dir DIR")

    def target(self):
        if self.target_macs is not None:
            return ("macs", float(self.target_macs))
        if self.target_params is not None:
            return ("params", float(self.target_params))
        return None


def _or(words: Sequence[str]) -> str:
    return f"{', '.join(words[:-1])} or {words[-1]}"


# ----------------------------------------------------------------------------- reading the definitions

FIELDS: Dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Options)}
_HINTS = get_type_hints(Options)
_REF = re.compile(r"`([^`]+)`")


def cli_flags(name: str) -> Tuple[str, ...]:
    """The command-line flags of field ``name``: ``()`` for a Python-only field."""
    cli = FIELDS[name].metadata["cli"]
    if cli is True:
        return (cli_flag(name),)
    return tuple(cli) if cli else ()


def cli_flag(name: str) -> str:
    """The generated flag of a field: ``round_to`` -> ``--round-to``."""
    return "--" + name.replace("_", "-")


def cli_fields() -> Tuple[str, ...]:
    """The fields whose flag cli.py builds from the definition (``cli=True``), in field order."""
    return tuple(n for n, f in FIELDS.items() if f.metadata["cli"] is True)


def python_only() -> Tuple[str, ...]:
    """The fields with no command-line form (``cli=False``)."""
    return tuple(n for n, f in FIELDS.items() if f.metadata["cli"] is False)


def cli_default(name: str) -> Any:
    """The command line's default of field ``name``: the Options default unless the definition
    says otherwise (``cli_default``)."""
    f = FIELDS[name]
    if "cli_default" in f.metadata:
        return f.metadata["cli_default"]
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def cli_kind(name: str) -> Tuple[str, tuple]:
    """How the command line takes field ``name``, read from its type: ``("flag", ())`` (a bool that is
    off unless given), ``("switch", ())`` (``--x/--no-x``), ``("choice", values)`` (a ``Literal``),
    ``("int" | "float" | "str", ())``, ``("multiple", ())`` (a sequence of str, repeatable), or
    ``("custom", ())``: cli.py supplies the type."""
    t = _HINTS[name]
    optional = False
    if get_origin(t) is Union:
        args = get_args(t)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) == 1:
            t = rest[0]
        elif str in rest:          # a name or, in Python, a callable: the command line gives the name
            t = str
        else:
            return ("custom", ())
    if get_origin(t) is Literal:
        return ("choice", get_args(t))
    if t is bool:
        return ("switch", ()) if optional or cli_default(name) is not False else ("flag", ())
    if t in (int, float, str):
        return (t.__name__, ())
    if get_origin(t) in (collections.abc.Sequence, tuple, list) and get_args(t) in ((str,), (str, ...)):
        return ("multiple", ())
    return ("custom", ())


def _cli_ref(word: str) -> str:
    flags = cli_flags(word) if word in FIELDS else ()
    return "/".join(flags) if flags else f"`{word}`"


def cli_help(name: str) -> str:
    """The help of field ``name``'s flag: its ``help`` with field names as flags, "repeatable" for a
    repeatable flag, and what None means as the default where the command line's default is None."""
    md = FIELDS[name].metadata
    text = _REF.sub(lambda m: _cli_ref(m.group(1)), md["help"])
    if cli_kind(name)[0] == "multiple":
        text += "; repeatable"
    if md["none"] is not None and cli_default(name) is None:
        text += f" [default: {_REF.sub(lambda m: _cli_ref(m.group(1)), md['none'])}]"
    return text


def doc_help(name: str) -> str:
    """The docstring line of field ``name`` (field names as ``literals``)."""
    md = FIELDS[name].metadata
    text = _REF.sub(lambda m: f"``{m.group(1)}``", md["help"])
    if md["none"] is not None:
        text += f" (None: {_REF.sub(lambda m: f'``{m.group(1)}``', md['none'])})"
    if md["cli"] is False:
        text += " (Python only)"
    return text


def _docstring() -> str:
    lines = [(Options.__doc__ or "").rstrip(), "", "    Args:"]
    for name in FIELDS:
        lines.append(textwrap.fill(f"{name}: {doc_help(name)}", width=104, initial_indent=" " * 8,
                                   subsequent_indent=" " * 12, break_on_hyphens=False))
    return "\n".join(lines) + "\n    "


Options.__doc__ = _docstring()
