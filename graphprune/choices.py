"""The closed choices of the pruning options, as ``Literal`` types and as tuples.

One definition for the settings of ``options.py`` (the field types), their checks, and the CLI's
``click.Choice`` lists. This module imports nothing heavy, so the CLI can read it at start-up.
"""

from typing import Literal, get_args

Scope = Literal["uniform", "global"]
Normalize = Literal["mean", "max", "std", "none"]
Reduce = Literal["mean", "sum", "max"]
RepairMode = Literal["none", "bias", "lstsq"]
RidgePrior = Literal["zero", "weights"]
Provider = Literal["cpu", "cuda", "tensorrt"]
LatencyObjective = Literal["auto", "importance", "macs"]
SparseKernels = Literal["auto", "always", "never"]
SparseCriterion = Literal["magnitude", "wanda", "sparsegpt", "random"]
Loss = Literal["mse", "cosine", "kl"]                  # FinetuneOptions.loss
Clock = Literal["wall", "cpu"]                         # FinetuneOptions.clock

SCOPES = get_args(Scope)
NORMALIZE = get_args(Normalize)
REDUCE = get_args(Reduce)
REPAIR = get_args(RepairMode)
RIDGE_PRIORS = get_args(RidgePrior)
PROVIDER_NAMES = get_args(Provider)
LATENCY_OBJECTIVES = get_args(LatencyObjective)
SPARSE_KERNELS = get_args(SparseKernels)
SPARSE_CRITERIA = get_args(SparseCriterion)
LOSSES = get_args(Loss)
CLOCKS = get_args(Clock)
