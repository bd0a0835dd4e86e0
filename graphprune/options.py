"""Every setting, defined once: :class:`Options` (a pruning run), :class:`FinetuneOptions` (the
distillation step) and :class:`SweepConfig` (a sensitivity sweep).

Each field is declared with :func:`setting`: its default, its help text and how the command line
shows it. The classes' docstrings (the ``Args`` section) and the CLI's flags (``cli.field_option``:
flag, default, type or choices, help) are both made from these definitions, so the Python API
and ``graphprune run | analyze | prune | verify`` (Options), ``finetune`` and ``run --finetune-*``
(FinetuneOptions) and ``sensitivity`` (SweepConfig) cannot drift apart.

A field's ``cli`` says what the command line does with it:

* ``True`` (the default): a flag named after the field (``round_to`` -> ``--round-to``) built
  from this definition;
* a flag (``"--group"``): the same, under another name;
* a tuple of flags: the command line has hand-written flags (or an argument) for it (``calib`` is
  read from ``--calib FILE.npz`` or ``--calib-dir DIR``), whose defaults still come from here;
* ``False``: Python only.

The readers (``cli_flag``, ``cli_kind``, ``cli_default``, ``cli_help``, ...) take the class as
``of`` (default :class:`Options`) and, for flags, a ``prefix``: ``run`` shows FinetuneOptions'
``lr`` as ``--finetune-lr``.

In help texts, a field name in single backquotes (`` `ratio` ``) becomes its flag (``--ratio``) in
the CLI's help and ``ratio`` in the docstring.

This module imports nothing heavy (no onnx, onnxruntime, numpy, torch or click); the ``check``
methods import what they need when they run.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import math
import numbers
import re
import textwrap
from dataclasses import MISSING, dataclass
from typing import (Any, Callable, Dict, Literal, Optional, Sequence, Tuple, Union, get_args, get_origin,
                    get_type_hints)

from .choices import (CLOCKS, LATENCY_OBJECTIVES, LOSSES, NORMALIZE, REDUCE, REPAIR, RIDGE_PRIORS, SCOPES,
                      SPARSE_CRITERIA, SPARSE_KERNELS, Clock, LatencyObjective, Loss, Normalize, Provider, Reduce,
                      RepairMode, RidgePrior, Scope, SparseCriterion, SparseKernels)
from .errors import UsageError

__all__ = ["Options", "FinetuneOptions", "SweepConfig", "setting", "fields", "cli_flag", "cli_flags", "cli_kind",
           "cli_default", "cli_help", "cli_fields", "python_only", "doc_help"]


def setting(default: Any = MISSING, *, help: str, none: Optional[str] = None, metavar: Optional[str] = None,
            cli: Union[bool, str, Tuple[str, ...]] = True, cli_default: Any = MISSING,
            default_factory: Any = MISSING) -> Any:
    """A field of a settings dataclass (:class:`Options`, :class:`FinetuneOptions`,
    :class:`SweepConfig`) with its documentation.

    Args:
        default: the Python default (or ``default_factory``).
        help: one line, shared by the docstring and the CLI's help.
        none: what ``None`` means for this field (shown as the CLI's default when it is None there).
        metavar: the CLI's placeholder for the value.
        cli: ``True``: a generated ``--flag``; a flag: generated under that name; a tuple: the
            hand-written flags (or argument) of cli.py; ``False``: Python only.
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


# ----------------------------------------------------------------------------- fine-tuning

MAX_MATCH = 12          # `match` auto: at most this many tensors


@dataclass
class FinetuneOptions:
    """Settings of the distillation step (``graphprune finetune``; ``run --finetune-*``).

    The ``Args`` section is generated from the fields' definitions (options.setting)."""
    steps: Optional[int] = setting(None, none="from `epochs`, else 1 epoch", help="optimizer steps")
    epochs: Optional[float] = setting(None, none="1", help="passes over the training split, when `steps` is not "
                                                           "given")
    lr: float = setting(1e-4, help="Adam learning rate (cosine decay)")
    batch: int = setting(16, help="samples per step")
    seed: int = setting(Options.seed, help="seed of the train/validation split, the sample order and torch")
    loss: Loss = setting("mse", cli=("--loss",), metavar="KIND|OUTPUT=KIND",
                         help="mse (relative), cosine or kl (logits), for every output")
    output_loss: Dict[str, str] = setting(default_factory=dict, cli=("--loss",),
                                          help="output name -> its loss where it is not `loss` (the command line's "
                                               "--loss OUTPUT=KIND)")
    temperature: float = setting(1.0, help="kl loss temperature")
    match: Sequence[str] = setting((), metavar="NAME|auto",
                                   help="also match this intermediate tensor (name or glob) that both graphs keep "
                                        f"with the same shape; auto: layer outputs of equal shape that pruning reached (on a "
                                        f"transformer its LayerNorm outputs), <= {MAX_MATCH}")
    match_weight: float = setting(1.0, help="weight of the intermediate-tensor loss")
    max_match: int = setting(MAX_MATCH, cli=False, help="`match` auto: at most this many tensors, evenly spaced")
    val_fraction: float = setting(0.1, help="held-out samples for early stopping (best weights kept)")
    eval_every: Optional[int] = setting(None, none="about 10 per run", help="steps between validations")
    patience: int = setting(5, help="validations without improvement before stopping")
    weight_decay: float = setting(0.0, cli=False, help="AdamW weight decay (0: Adam)")
    max_seconds: Optional[float] = setting(None, none="no budget", help="time budget for training")
    clock: Clock = setting("wall", cli=False, help="the time budget's clock: wall, or cpu (this process' CPU time)")
    threads: int = setting(Options.threads, help="torch and onnxruntime threads")
    train_embeddings: bool = setting(False, help="also train embedding tables (constants read only by Gather)")
    freeze: Sequence[str] = setting((), metavar="NAME", help="keep this constant (name or glob) as it is")
    extra_loss: Optional[Callable] = setting(None, cli=False, none="none",
                                             help="a term added to the loss: extra_loss(student, teacher, feed) -> "
                                                  "scalar tensor (dicts of torch tensors by output and matched name; "
                                                  "the batch's inputs)")

    def check(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise UsageError(f"--epochs must be > 0, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.batch < 1:
            raise UsageError(f"--batch must be >= 1, got {self.batch}")
        for name, kind in [("", self.loss)] + list(self.output_loss.items()):
            if kind not in LOSSES:
                raise UsageError(f"--loss {name + '=' if name else ''}{kind}: choose from {', '.join(LOSSES)}")
        if not (0.0 <= self.val_fraction < 1.0):
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if self.threads < 1:
            raise UsageError("--threads must be >= 1")
        if self.patience < 1:
            raise UsageError("--patience must be >= 1")
        if self.clock not in CLOCKS:
            raise UsageError(f"clock must be {_or(CLOCKS)}, got {self.clock!r}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise UsageError("--max-seconds must be > 0")


# ----------------------------------------------------------------------------- sensitivity sweeps

DEFAULT_RATIOS = (0.25, 0.5, 0.75)
MIN_QUALITY = 0.99      # `min_quality` None: this cosine, or this fraction of the dense model's metric
# fields that do not change a trial's result: left out of SweepConfig.fingerprint, so a rerun with
# other values reuses the finished trials
NOT_FINGERPRINTED = ("model", "groups", "ratios", "jobs", "ray_address", "min_quality")


@dataclass
class SweepConfig:
    """Settings of a sensitivity sweep (``graphprune sensitivity``; sensitivity.sweep).

    The ``Args`` section is generated from the fields' definitions (options.setting)."""
    model: str = setting(cli=("MODEL",), help="path of the ONNX model")
    ratios: Sequence[float] = setting(DEFAULT_RATIOS, metavar="R,R,...", help="fractions of each group to remove (comma-separated on "
                                                           "the command line)")
    criterion: str = setting(Options.criterion, help="which channels go first (as in run)")
    calib: Optional[str] = setting(None, metavar="FILE.npz", help="calibration samples: quality is measured on them")
    calib_dir: Optional[str] = setting(None, metavar="DIR", help="calibration samples: a folder of .npz/.npy files")
    calib_batch: int = setting(Options.calib_batch, help="calibration batch size")
    samples: int = setting(8, help="samples the quality is measured on")
    seed: int = setting(Options.seed, help="seed of the random criterion and of random inputs")
    threads: int = setting(Options.threads, help="onnxruntime threads per trial")
    repeats: int = setting(20, help="timed runs per trial")
    round_to: int = setting(1, metavar="N", help="kept counts are multiples of N")
    metric: Optional[str] = setting(None, metavar="MODULE:FUNCTION", none="output cosine",
                                    help="user quality metric: FUNCTION(model, feeds) -> float, higher is better")
    static_batch: Optional[int] = setting(None, cli=("--static-batch",),
                                          help="fix the symbolic batch of the inputs to this first")
    groups: Optional[Sequence[int]] = setting(None, cli="--group", none="every prunable group",
                                              help="only this group id")
    jobs: int = setting(1, help="parallel worker processes (or Ray actors)")
    ray_address: Optional[str] = setting(None, cli="--ray", metavar="ADDRESS",
                                         help="run the trials on a Ray cluster (ray.init(address=ADDRESS); 'local' "
                                              "starts one here)")
    min_quality: Optional[float] = setting(
        None, none=f"cosine {MIN_QUALITY}, or {MIN_QUALITY} x the dense model's metric",
        help="a ratio is suggested while quality stays >= this")

    def fingerprint(self, model_sha: str) -> str:
        """What identifies this sweep's trials (with the model's hash): every field that changes a
        trial's result."""
        d = dataclasses.asdict(self)
        for k in NOT_FINGERPRINTED:
            d.pop(k)
        d["model_sha"] = model_sha
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def check(self) -> None:
        from .score import CRITERIA

        if not self.ratios:
            raise UsageError("--ratios is empty")
        for r in self.ratios:
            if not (0.0 < r < 1.0):
                raise UsageError(f"--ratios must lie in (0, 1), got {r}")
        if self.criterion not in CRITERIA:
            raise UsageError(f"unknown criterion {self.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
        if self.calib and self.calib_dir:
            raise UsageError("give --calib or --calib-dir, not both")
        for name in ("samples", "round_to", "threads", "repeats", "calib_batch", "jobs"):
            if getattr(self, name) < 1:
                raise UsageError(f"{cli_flag(name, of=SweepConfig)} must be >= 1")
        if self.static_batch is not None and self.static_batch < 1:
            raise UsageError(f"--static-batch must be an integer >= 1, got {self.static_batch}")


# ----------------------------------------------------------------------------- reading the definitions

_REF = re.compile(r"`([^`]+)`")
_DEFS: Dict[type, Tuple[Dict[str, dataclasses.Field], Dict[str, Any]]] = {}


def _defs(of: type) -> Tuple[Dict[str, dataclasses.Field], Dict[str, Any]]:
    if of not in _DEFS:
        _DEFS[of] = ({f.name: f for f in dataclasses.fields(of)}, get_type_hints(of))
    return _DEFS[of]


def fields(of: type = Options) -> Dict[str, dataclasses.Field]:
    """The fields of a settings dataclass by name, in order (``FIELDS``: those of Options)."""
    return _defs(of)[0]


FIELDS: Dict[str, dataclasses.Field] = fields(Options)


def _prefixed(flag: str, prefix: str) -> str:
    return "--" + prefix + flag[2:] if flag.startswith("--") else flag


def cli_flags(name: str, of: type = Options, prefix: str = "") -> Tuple[str, ...]:
    """The command-line flags of field ``name`` (an argument's name too): ``()`` for a Python-only
    field."""
    cli = fields(of)[name].metadata["cli"]
    if cli is True or isinstance(cli, str):
        return (cli_flag(name, of, prefix),)
    return tuple(_prefixed(f, prefix) for f in cli) if cli else ()


def cli_flag(name: str, of: type = Options, prefix: str = "") -> str:
    """The generated flag of a field: ``round_to`` -> ``--round-to`` (the flag its definition
    names, if any; ``prefix`` "finetune-": ``--finetune-lr``)."""
    cli = fields(of)[name].metadata["cli"]
    return _prefixed(cli if isinstance(cli, str) else "--" + name.replace("_", "-"), prefix)


def cli_fields(of: type = Options) -> Tuple[str, ...]:
    """The fields whose flag cli.py builds from the definition (``cli`` True or a flag), in field
    order."""
    return tuple(n for n, f in fields(of).items() if f.metadata["cli"] is True or isinstance(f.metadata["cli"], str))


def python_only(of: type = Options) -> Tuple[str, ...]:
    """The fields with no command-line form (``cli=False``)."""
    return tuple(n for n, f in fields(of).items() if f.metadata["cli"] is False)


def cli_default(name: str, of: type = Options) -> Any:
    """The command line's default of field ``name``: the class's default unless the definition
    says otherwise (``cli_default``)."""
    f = fields(of)[name]
    if "cli_default" in f.metadata:
        return f.metadata["cli_default"]
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def cli_kind(name: str, of: type = Options) -> Tuple[str, tuple]:
    """How the command line takes field ``name``, read from its type: ``("flag", ())`` (a bool that is
    off unless given), ``("switch", ())`` (``--x/--no-x``), ``("choice", values)`` (a ``Literal``),
    ``("int" | "float" | "str", ())``, ``("multiple", (str,))`` or ``("multiple", (int,))`` (a
    sequence of str or int, repeatable), or ``("custom", ())``: cli.py supplies the type."""
    t = _defs(of)[1][name]
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
        return ("switch", ()) if optional or cli_default(name, of) is not False else ("flag", ())
    if t in (int, float, str):
        return (t.__name__, ())
    if get_origin(t) in (collections.abc.Sequence, tuple, list):
        for item in (str, int):
            if get_args(t) in ((item,), (item, ...)):
                return ("multiple", (item,))
    return ("custom", ())


def _cli_ref(word: str, of: type, prefix: str) -> str:
    flags = cli_flags(word, of, prefix) if word in fields(of) else ()
    return "/".join(flags) if flags else f"`{word}`"


def cli_help(name: str, of: type = Options, prefix: str = "") -> str:
    """The help of field ``name``'s flag: its ``help`` with field names as flags (with ``prefix``),
    "repeatable" for a repeatable flag, and what None means as the default where the command
    line's default is None."""
    md = fields(of)[name].metadata
    ref = lambda m: _cli_ref(m.group(1), of, prefix)
    text = _REF.sub(ref, md["help"])
    if cli_kind(name, of)[0] == "multiple":
        text += "; repeatable"
    if md["none"] is not None and cli_default(name, of) is None:
        text += f" [default: {_REF.sub(ref, md['none'])}]"
    return text


def doc_help(name: str, of: type = Options) -> str:
    """The docstring line of field ``name`` (field names as ``literals``)."""
    md = fields(of)[name].metadata
    text = _REF.sub(lambda m: f"``{m.group(1)}``", md["help"])
    if md["none"] is not None:
        text += f" (None: {_REF.sub(lambda m: f'``{m.group(1)}``', md['none'])})"
    if md["cli"] is False:
        text += " (Python only)"
    return text


def _docstring(of: type) -> str:
    lines = [(of.__doc__ or "").rstrip(), "", "    Args:"]
    for name in fields(of):
        lines.append(textwrap.fill(f"{name}: {doc_help(name, of)}", width=104, initial_indent=" " * 8,
                                   subsequent_indent=" " * 12, break_on_hyphens=False))
    return "\n".join(lines) + "\n    "


for _cls in (Options, FinetuneOptions, SweepConfig):
    _cls.__doc__ = _docstring(_cls)
