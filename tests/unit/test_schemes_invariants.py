"""Property tests: every scheme's masks are legal by construction, before and after growth.

Derandomized so that a run is reproducible; widen `max_examples` locally to search harder.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mest_compile.sparsity.schemes import get_scheme, list_schemes, mask_for

NAMES = [*list_schemes(), "pattern+filter_balance"]
NEEDS_3X3 = {"pattern", "pattern+filter_balance"}


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, torch.Tensor, float, float]:
    name = draw(st.sampled_from(NAMES))
    n_out = 4 * draw(st.integers(1, 4))
    n_in = draw(st.integers(1, 12))
    tail = (3, 3) if name in NEEDS_3X3 else draw(st.sampled_from([(3, 3), (1, 1), (), (2, 3)]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    weight = torch.randn(n_out, n_in, *tail, generator=gen)
    zeros = draw(st.sampled_from([0.0, 0.3]))  # exactly-zero weights, as after a previous prune
    weight = weight * (torch.rand(weight.shape, generator=gen) >= zeros)
    lower = draw(st.floats(0.0, 0.99))
    upper = draw(st.floats(0.0, 0.99))
    return name, weight, lower, upper


@settings(max_examples=120, deadline=None, derandomize=True)
@given(cases())
def test_prune_and_grow_are_legal(case: tuple[str, torch.Tensor, float, float]) -> None:
    name, weight, lower, upper = case
    scheme = get_scheme(name)
    mask = mask_for(weight, name, lower)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert scheme.is_legal(mask)
    assert torch.equal(mask, mask_for(weight, name, lower))  # deterministic
    grown = scheme.grow(weight * mask, mask, upper, torch.Generator().manual_seed(1))
    assert scheme.is_legal(grown)
    assert bool((grown | ~mask).all())  # growth only adds


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cases())
def test_more_sparsity_never_keeps_more(case: tuple[str, torch.Tensor, float, float]) -> None:
    name, weight, lower, upper = case
    low, high = sorted((lower, upper))
    assert int(mask_for(weight, name, high).sum()) <= int(mask_for(weight, name, low).sum())


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 400), st.floats(0.0, 0.99), st.integers(0, 2**16))
def test_irregular_keeps_reference_count_on_distinct_scores(size: int, sparsity: float, seed: int) -> None:
    weight = torch.randn(size, 1, generator=torch.Generator().manual_seed(seed))
    kept = int(mask_for(weight, "irregular", sparsity).sum())
    # MEST_SPEC §1.1; floor of the float product, like NumPy's percentile index.
    assert kept == size - 1 - math.floor(sparsity * 100 / 100 * (size - 1))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 400), st.floats(0.0, 0.99), st.floats(0.0, 0.99), st.integers(0, 2**16))
def test_irregular_growth_count(size: int, lower: float, upper: float, seed: int) -> None:
    weight = torch.randn(size, 1, generator=torch.Generator().manual_seed(seed))
    mask = mask_for(weight, "irregular", lower)
    empty = size - int(mask.sum())
    grown = get_scheme("irregular").grow(weight * mask, mask, upper, torch.Generator().manual_seed(seed))
    assert int(grown.sum()) - int(mask.sum()) == min(max(int(empty - upper * size), 0), empty)
