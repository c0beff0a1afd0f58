"""Sparsity schemes by name: `get_scheme("pattern+filter_balance")`, `mask_for(weight, "block", 0.9)`.

Registered: irregular, pattern, filter_balance, free_block_prune_column_4 (alias `block`),
channel. A name joined with `+` is a compound applied part by part (see `compound.py`).
"""

from __future__ import annotations

import torch

from mest_compile.errors import MestError
from mest_compile.registry import Registry
from mest_compile.sparsity.schemes.base import Scheme, check_sparsity
from mest_compile.sparsity.schemes.block import Block
from mest_compile.sparsity.schemes.channel import Channel, filters_pruned
from mest_compile.sparsity.schemes.compound import Compound
from mest_compile.sparsity.schemes.filter_balance import FilterBalance, kernel_ratio
from mest_compile.sparsity.schemes.irregular import Irregular
from mest_compile.sparsity.schemes.pattern import PATTERNS, Pattern, kernel_patterns

__all__ = [
    "PATTERNS",
    "SCHEMES",
    "Compound",
    "Scheme",
    "filters_pruned",
    "get_scheme",
    "kernel_patterns",
    "kernel_ratio",
    "list_schemes",
    "mask_for",
]

SCHEMES: Registry[Scheme] = Registry("sparsity scheme")
SCHEMES.add(Irregular.name, Irregular())
SCHEMES.add(Pattern.name, Pattern())
SCHEMES.add(FilterBalance.name, FilterBalance())
SCHEMES.add(Block.name, Block(), aliases=("block",))
SCHEMES.add(Channel.name, Channel())


def get_scheme(name: str | Scheme) -> Scheme:
    """The scheme called `name` (or an alias); `a+b` builds a compound. A `Scheme` passes through.

    Example:
        >>> get_scheme("block").name
        'free_block_prune_column_4'
        >>> get_scheme("pattern+filter_balance").parts[1].name
        'filter_balance'
    """
    if isinstance(name, Scheme):
        return name
    if not isinstance(name, str):
        raise MestError(f"a sparsity scheme is a name, got {name!r}")
    parts = [part.strip() for part in name.split("+")]
    if not all(parts):
        raise MestError(f"empty part in sparsity scheme {name!r}")
    if len(parts) == 1:
        return SCHEMES.get(parts[0])
    return Compound([SCHEMES.get(part) for part in parts])


def list_schemes() -> list[str]:
    """The registered scheme names (aliases: `SCHEMES.aliases()`)."""
    return SCHEMES.names()


def mask_for(weight: torch.Tensor, scheme: str | Scheme, sparsity: float) -> torch.Tensor:
    """The one-shot bool mask of `weight` at `sparsity` under `scheme`, scored by magnitude.

    Raises:
        MestError: unknown scheme, sparsity outside [0, 1), or a shape the scheme cannot take.
    """
    resolved = get_scheme(scheme)
    value = check_sparsity(sparsity)
    resolved.check(tuple(weight.shape))
    return resolved.prune(weight, value)
