"""mest-compile: MEST sparse training with compiled sparse kernels.

The training side (schemes, Elastic Mutation, profiles, data efficiency, training) needs torch
only; the compiler side is imported on demand.

Example:
    >>> import torch, mest_compile as mc
    >>> mask = mc.mask_for(torch.randn(32, 32, 3, 3), "irregular", 0.9)
    >>> int(mask.sum())
    922
"""

from mest_compile.errors import MestError
from mest_compile.sparsity.bounds import BoundSchedule
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.data_efficiency import ForgettingTracker, read_importance, removal, write_importance
from mest_compile.sparsity.module import SparseConv2d, sparse_layers, sparsify
from mest_compile.sparsity.mutation import ElasticMutation, MutationConfig
from mest_compile.sparsity.profile import Profile, erk_profile, load_profile, save_profile, uniform_profile
from mest_compile.sparsity.schemes import SCHEMES, get_scheme, list_schemes, mask_for
from mest_compile.train.config import TrainConfig
from mest_compile.train.datasets import load_dataset
from mest_compile.train.loop import Trainer
from mest_compile.train.models import build_model

__all__ = [
    "SCHEMES",
    "BoundSchedule",
    "Compat",
    "ElasticMutation",
    "ForgettingTracker",
    "MestError",
    "MutationConfig",
    "Profile",
    "SparseConv2d",
    "TrainConfig",
    "Trainer",
    "build_model",
    "erk_profile",
    "get_scheme",
    "list_schemes",
    "load_dataset",
    "load_profile",
    "mask_for",
    "read_importance",
    "removal",
    "save_profile",
    "sparse_layers",
    "sparsify",
    "uniform_profile",
    "write_importance",
]
