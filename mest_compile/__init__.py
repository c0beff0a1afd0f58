"""mest-compile: MEST sparse training with compiled sparse kernels.

The training side (schemes, Elastic Mutation, profiles, data efficiency, training) needs torch
only; the compiler side is imported on demand.

Example:
    >>> import torch, mest_compile as mc
    >>> mask = mc.mask_for(torch.randn(32, 32, 3, 3), "irregular", 0.9)
    >>> int(mask.sum())
    922
"""

import os

#: Environment variables importing mest_compile (or its compiler side) set because they were
#: unset: what a benchmark removes again to run the dense side as the user would.
SET_ON_IMPORT: list[str] = []


def default_environment(name: str, value: str) -> None:
    """Set `name` to `value` unless the user set it (recorded in `SET_ON_IMPORT`)."""
    if name not in os.environ:
        os.environ[name] = value
        SET_ON_IMPORT.append(name)


# OMP_WAIT_POLICY is left to the user: PASSIVE slowed a dense ResNet-32 step by 12-30% here, and
# compiled training handles spinning PyTorch workers itself (`compiler/runtime/cache.py`).


def openmp_passive() -> bool:
    """Whether PyTorch's OpenMP workers sleep when idle (`OMP_WAIT_POLICY=PASSIVE`, which libgomp reads
    once, when torch loads; mest_compile never sets it)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"

from mest_compile.errors import MestError  # noqa: E402
from mest_compile.sparsity.bounds import BoundSchedule  # noqa: E402
from mest_compile.sparsity.compat import Compat  # noqa: E402
from mest_compile.sparsity.data_efficiency import ForgettingTracker, read_importance, removal, write_importance  # noqa: E402
from mest_compile.sparsity.module import SparseConv2d, sparse_layers, sparsify, sparsify_  # noqa: E402
from mest_compile.sparsity.mutation import ElasticMutation, MutationConfig  # noqa: E402
from mest_compile.sparsity.profile import Profile, erk_profile, load_profile, save_profile, uniform_profile  # noqa: E402
from mest_compile.sparsity.schemes import SCHEMES, get_scheme, list_schemes, mask_for  # noqa: E402
from mest_compile.train.config import TrainConfig  # noqa: E402
from mest_compile.train.datasets import load_dataset  # noqa: E402
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm  # noqa: E402
from mest_compile.train.loop import Trainer  # noqa: E402
from mest_compile.train.models import build_model  # noqa: E402

# The compiler side imports TVM: loaded on first use, so the training side runs with torch alone.
_COMPILER = {
    "sparse_conv2d": "mest_compile.compiler.api",
    "compile_model": "mest_compile.compiler.api",
    "compile_": "mest_compile.compiler.api",
    "as_target": "mest_compile.compiler.target",
    "Target": "mest_compile.compiler.target",
    "TuningRecords": "mest_compile.compiler.tune.records",
}


def __getattr__(name: str) -> object:
    if name in _COMPILER:
        import importlib

        return getattr(importlib.import_module(_COMPILER[name]), name)
    raise AttributeError(f"module 'mest_compile' has no attribute {name!r}")


__all__ = [
    "ALGORITHMS",
    "SCHEMES",
    "AlgorithmSpec",
    "BoundSchedule",
    "Compat",
    "ElasticMutation",
    "ForgettingTracker",
    "MestError",
    "MutationConfig",
    "Profile",
    "SparseConv2d",
    "Target",
    "TrainConfig",
    "Trainer",
    "TrainingAlgorithm",
    "TuningRecords",
    "as_target",
    "build_model",
    "compile_",
    "compile_model",
    "erk_profile",
    "get_scheme",
    "list_schemes",
    "load_dataset",
    "load_profile",
    "mask_for",
    "read_importance",
    "removal",
    "save_profile",
    "sparse_conv2d",
    "sparse_layers",
    "sparsify",
    "sparsify_",
    "uniform_profile",
    "write_importance",
]
