"""Scheme growth: MEST's counts (MEST_SPEC §2.3-2.4), reproducibility, and never touching inputs."""

from __future__ import annotations

import pytest
import torch

from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.schemes import PATTERNS, get_scheme, kernel_patterns, kernel_ratio, mask_for


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prune_then_grow(name: str, weight: torch.Tensor, lower: float, upper: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    scheme = get_scheme(name)
    pruned = mask_for(weight, name, lower)
    return pruned, scheme.grow(weight * pruned, pruned, upper, gen(seed))


# MEST_SPEC §2.4: irregular EM stage 0 (prune to 0.92, grow to 0.9), per layer size.
IRREGULAR_EM = [
    ((32, 32, 3, 3), 738, 183),
    ((64, 32, 3, 3), 1475, 368),
    ((64, 64, 3, 3), 2950, 736),
    ((128, 64, 3, 3), 5899, 1473),
    ((128, 128, 3, 3), 11797, 2948),
]


@pytest.mark.parametrize(("shape", "kept", "grown"), IRREGULAR_EM)
def test_irregular_em_counts(shape: tuple[int, ...], kept: int, grown: int) -> None:
    pruned, grown_mask = prune_then_grow("irregular", randn(*shape), 0.92, 0.9)
    assert int(pruned.sum()) == kept
    assert int(grown_mask.sum()) == kept + grown
    assert bool((grown_mask | ~pruned).all())  # superset


def test_irregular_equal_bounds_grow_nothing() -> None:
    pruned, grown = prune_then_grow("irregular", randn(32, 32, 3, 3), 0.9, 0.9)
    assert torch.equal(pruned, grown)


def test_block_counts_and_clamp() -> None:
    weight = randn(32, 16, 3, 3)
    pruned, grown = prune_then_grow("block", weight, 0.92, 0.9)
    n_blocks = 8 * 16 * 9
    empty = n_blocks - int(pruned.sum()) // 4
    assert int(grown.sum()) // 4 == n_blocks - empty + int(empty - 0.9 * n_blocks)
    assert get_scheme("block").is_legal(grown)
    # Growing to a sparser level than the prune: the reference raises ValueError, we grow nothing.
    pruned, grown = prune_then_grow("block", weight, 0.8, 0.9)
    assert torch.equal(pruned, grown)


def test_pattern_filter_balance_growth_is_balanced_patterns() -> None:
    weight = randn(16, 32, 3, 3)
    pruned, grown = prune_then_grow("pattern+filter_balance", weight, 0.92, 0.9)
    kept_before = kernel_patterns(pruned).gt(0).sum(dim=1)
    kept_after = kernel_patterns(grown).gt(0).sum(dim=1)
    assert kept_before.tolist() == [6] * 16  # MEST_SPEC §1.3 table, I=32 at 0.92
    expected = 6 + int(26 - kernel_ratio(0.9) * 32)  # int(#empty_o - r_k * I) per filter
    assert kept_after.tolist() == [expected] * 16
    assert get_scheme("pattern+filter_balance").is_legal(grown)
    assert bool((grown | ~pruned).all())


def test_pattern_growth_uses_all_patterns() -> None:
    weight = randn(64, 64, 3, 3)
    pruned, grown = prune_then_grow("pattern+filter_balance", weight, 0.95, 0.8)
    new = kernel_patterns(grown)[kernel_patterns(pruned) == 0]
    assert set(new[new > 0].tolist()) == set(range(1, 9))


def test_signed_sum_compat_overwrites_a_live_kernel() -> None:
    scheme = get_scheme("pattern")
    mask = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    mask[0, 0] = PATTERNS[3]  # upper-left 2x2, live weights 1, -1, 0.5, -0.5: signed sum 0
    weight = torch.zeros(1, 2, 3, 3)
    weight[0, 0, 0, 0], weight[0, 0, 0, 1], weight[0, 0, 1, 0], weight[0, 0, 1, 1] = 1.0, -1.0, 0.5, -0.5
    # Default: only kernel 1 is empty; at r_k = 0 one kernel grows, the live one is untouched.
    grown = scheme.grow(weight, mask, 5 / 9, gen())
    assert torch.equal(grown[0, 0], PATTERNS[3]) and kernel_patterns(grown)[0, 1] > 0
    # Reference: both kernels look empty, both are regrown with random patterns.
    compat = Compat(signed_sum_empty=True)
    overwritten = [scheme.grow(weight, mask, 5 / 9, gen(seed), compat)[0, 0] for seed in range(8)]
    assert any(not torch.equal(kernel, PATTERNS[3]) for kernel in overwritten)


def test_block_signed_sum_compat_counts_zero_sum_blocks() -> None:
    scheme = get_scheme("block")
    weight = torch.zeros(4, 1, 1, 4)
    weight[:, 0, 0, 0] = torch.tensor([1.0, -1.0, 2.0, -2.0])  # a kept block summing to 0
    mask = weight != 0
    # 3 empty of 4, target 0.5 -> int(3 - 2) = 1 grows; compat sees 4 empty -> int(4 - 2) = 2,
    # one of which may be the live block (harmless: it stays kept).
    grown = scheme.grow(weight, mask, 0.5, gen())
    assert int(grown.sum()) == 8
    compat_grown = [int(scheme.grow(weight, mask, 0.5, gen(seed), Compat(signed_sum_empty=True)).sum()) for seed in range(6)]
    assert set(compat_grown) <= {8, 12} and 12 in compat_grown


def test_filter_balance_grows_whole_kernels_balanced() -> None:
    weight = randn(8, 32, 3, 3)
    pruned, grown = prune_then_grow("filter_balance", weight, 0.95, 0.9)
    per_filter = grown.reshape(8, 32, 9).any(dim=-1).sum(dim=1)
    assert per_filter.tolist() == [4 + int(28 - kernel_ratio(0.9) * 32)] * 8
    kernels = grown.reshape(8, 32, 9)
    assert bool((kernels.all(dim=-1) == kernels.any(dim=-1)).all())


@pytest.mark.parametrize(("lower", "upper"), [(0.92, 0.9), (0.9, 0.85), (0.97, 0.5), (0.6, 0.9)])
def test_channel_grow_lands_on_one_shot_count(lower: float, upper: float) -> None:
    weight = randn(20, 4, 3, 3)
    pruned, grown = prune_then_grow("channel", weight, lower, upper)
    one_shot = mask_for(weight, "channel", upper)
    expected = max(int(one_shot.sum()), int(pruned.sum()))  # growth never prunes
    assert int(grown.sum()) == expected and get_scheme("channel").is_legal(grown)


@pytest.mark.parametrize("name", ["irregular", "pattern+filter_balance", "filter_balance", "block", "channel"])
def test_growth_is_reproducible_and_leaves_inputs_alone(name: str) -> None:
    weight = randn(16, 16, 3, 3)
    mask = mask_for(weight, name, 0.95)
    pruned_weight = weight * mask
    weight_copy, mask_copy = pruned_weight.clone(), mask.clone()
    scheme = get_scheme(name)
    first = scheme.grow(pruned_weight, mask, 0.85, gen(7))
    assert torch.equal(first, scheme.grow(pruned_weight, mask, 0.85, gen(7)))
    assert not torch.equal(first, scheme.grow(pruned_weight, mask, 0.85, gen(8)))
    assert torch.equal(pruned_weight, weight_copy) and torch.equal(mask, mask_copy)
    assert first.dtype == torch.bool and scheme.is_legal(first)


def test_grow_checks_its_arguments() -> None:
    from mest_compile.errors import MestError

    scheme = get_scheme("irregular")
    with pytest.raises(MestError, match="mask shape"):
        scheme.grow(randn(4, 4), torch.ones(4, 5, dtype=torch.bool), 0.5, gen())
    with pytest.raises(MestError, match="sparsity"):
        scheme.grow(randn(4, 4), torch.ones(4, 4, dtype=torch.bool), 1.0, gen())
