"""Sparsity schemes: names, errors, and the reference's exact one-shot masks (MEST_SPEC §1)."""

from __future__ import annotations

import pytest
import torch

from mest_compile.errors import MestError
from mest_compile.sparsity.schemes import (
    PATTERNS,
    SCHEMES,
    Compound,
    filters_pruned,
    get_scheme,
    kernel_patterns,
    kernel_ratio,
    list_schemes,
    mask_for,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- names --------------------------------------------------------------------------------------


def test_registered_names_and_alias() -> None:
    assert list_schemes() == ["irregular", "pattern", "filter_balance", "free_block_prune_column_4", "channel"]
    assert get_scheme("block") is SCHEMES.get("free_block_prune_column_4")
    assert get_scheme(get_scheme("channel")).name == "channel"


def test_compound_is_parsed_with_pattern_growth() -> None:
    scheme = get_scheme(" pattern + filter_balance ")
    assert isinstance(scheme, Compound)
    assert scheme.name == "pattern+filter_balance"
    assert scheme.grower.name == "pattern"
    assert get_scheme("filter_balance+pattern").grower.name == "pattern"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "unknown sparsity scheme 'nope'; known: irregular"),
        ("pattern+", "empty part"),
        ("pattern+pattern", "repeats a part"),
        ("irregular+block", "leaves 'free_block_prune_column_4' masks illegal"),
        ("pattern+channel", "illegal"),
        (3, "is a name"),
    ],
)
def test_bad_names(name: object, message: str) -> None:
    with pytest.raises(MestError, match=message):
        get_scheme(name)  # type: ignore[arg-type]


# --- constraints ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "shape", "message"),
    [
        ("block", (6, 4, 3, 3), "divisible by 4, got 6"),
        ("pattern", (8, 4, 5, 5), "needs 3x3 conv kernels.*\\(8, 4, 5, 5\\)"),
        ("pattern", (8, 4), "needs 3x3"),
        ("pattern+filter_balance", (8, 4, 1, 1), "needs 3x3"),
        ("irregular", (8, 4, 3), "conv \\(O,I,kh,kw\\) or linear \\(O,I\\).*\\(8, 4, 3\\)"),
        ("channel", (8,), "got shape \\(8,\\)"),
    ],
)
def test_shape_constraints(scheme: str, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(MestError, match=message):
        mask_for(torch.ones(shape), scheme, 0.5)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, float("nan"), "half", None])
def test_sparsity_must_be_in_unit_interval(sparsity: object) -> None:
    with pytest.raises(MestError, match="sparsity"):
        mask_for(randn(8, 4, 3, 3), "irregular", sparsity)  # type: ignore[arg-type]


def test_score_shape_is_checked() -> None:
    with pytest.raises(MestError, match="score shape"):
        get_scheme("irregular").prune(randn(8, 4), 0.5, score=torch.ones(4, 8))


# --- exact counts from MEST_SPEC ----------------------------------------------------------------------


@pytest.mark.parametrize(("sparsity", "kept"), [(0.9, 922), (0.92, 738)])
def test_irregular_counts(sparsity: float, kept: int) -> None:
    mask = mask_for(randn(32, 32, 3, 3), "irregular", sparsity)
    assert mask.dtype == torch.bool and int(mask.sum()) == kept


def test_irregular_prunes_scores_equal_to_threshold() -> None:
    # Percentile of [0,1,1,1,2] at 50% is 1: every 1 is pruned (strict >), as in the reference.
    mask = mask_for(torch.tensor([[0.0, 1.0, -1.0, 1.0, 2.0]]), "irregular", 0.5)
    assert mask.tolist() == [[False, False, False, False, True]]


def test_block_counts() -> None:
    mask = mask_for(randn(32, 16, 3, 3), "block", 0.9)
    blocks = mask.reshape(8, 4, -1)
    assert bool((blocks.all(dim=1) | ~blocks.any(dim=1)).all())
    assert int(blocks[:, 0].sum()) == 116 and blocks[:, 0].numel() == 1152


def test_block_prunes_norms_equal_to_threshold() -> None:
    # All blocks of equal norm: the percentile equals that norm and `<=` prunes them all.
    assert not mask_for(torch.ones(8, 2, 3, 3), "block", 0.5).any()


# MEST_SPEC §1.3: kept kernels per filter for I = 32, 64, 128.
FILTER_BALANCE_TABLE = {
    0.775: (17, 33, 65),
    0.82: (13, 26, 52),
    0.90: (8, 15, 29),
    0.91: (7, 13, 26),
    0.92: (6, 12, 24),
    0.95: (4, 8, 15),
    0.98: (2, 3, 6),
}


@pytest.mark.parametrize("sparsity", sorted(FILTER_BALANCE_TABLE))
def test_filter_balance_table(sparsity: float) -> None:
    for n_in, expected in zip((32, 64, 128), FILTER_BALANCE_TABLE[sparsity]):
        mask = mask_for(randn(4, n_in, 3, 3, seed=n_in), "filter_balance", sparsity)
        kernels = mask.reshape(4, n_in, 9)
        assert kernels.any(dim=-1).sum(dim=1).tolist() == [expected] * 4
        assert bool((kernels.all(dim=-1) == kernels.any(dim=-1)).all())  # kept kernels are whole


def test_kernel_ratio() -> None:
    assert kernel_ratio(0.9) == 1 - ((1 - 0.9) * 9 / 4)
    assert kernel_ratio(0.775) == pytest.approx(0.49375)


def test_filter_balance_negative_kernel_ratio_drops_nothing() -> None:
    # 0.5 -> r_k = -0.125, int(32 * r_k) = -4: no kernel drops (see the report on the reference).
    assert mask_for(randn(4, 32, 3, 3), "filter_balance", 0.5).all()


def test_filter_balance_1x1_uses_ratio_unconverted() -> None:
    mask = mask_for(randn(4, 32, 1, 1), "filter_balance", 0.9)
    assert mask.reshape(4, 32).sum(dim=1).tolist() == [32 - int(32 * 0.9)] * 4


# --- patterns -----------------------------------------------------------------------------------------


def test_pattern_table() -> None:
    assert PATTERNS.shape == (8, 3, 3) and PATTERNS.dtype == torch.bool
    assert PATTERNS.reshape(8, 9).sum(dim=1).tolist() == [4] * 8
    assert len({tuple(p.flatten().tolist()) for p in PATTERNS}) == 8
    assert [bool(p[1, 1]) for p in PATTERNS] == [True] * 4 + [False] + [True] * 3
    assert PATTERNS[0].int().tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]


def _single(position: tuple[int, int] | None) -> torch.Tensor:
    kernel = torch.zeros(1, 1, 3, 3)
    if position is not None:
        kernel[0, 0, position[0], position[1]] = 1.0
    return kernel


@pytest.mark.parametrize(
    ("position", "pattern_id"),
    [(None, 1), ((1, 1), 1), ((0, 1), 3), ((2, 0), 2), ((0, 0), 4), ((2, 2), 1), ((1, 2), 1)],
)
def test_pattern_ties_go_to_lowest_id(position: tuple[int, int] | None, pattern_id: int) -> None:
    mask = mask_for(_single(position), "pattern", 0.5)
    assert kernel_patterns(mask).item() == pattern_id


def test_pattern_picks_largest_remaining_norm() -> None:
    weight = torch.full((1, 1, 3, 3), 0.1)
    weight[0, 0][PATTERNS[4]] = -3.0  # pattern 5, the one without the centre
    assert kernel_patterns(mask_for(weight, "pattern", 0.9)).item() == 5


def test_pattern_ignores_sparsity_and_keeps_structure_on_zero_weights() -> None:
    weight = randn(8, 6, 3, 3)
    weight[0, 0] = 0.0
    for sparsity in (0.0, 0.5, 0.9):
        mask = mask_for(weight, "pattern", sparsity)
        assert int(mask.sum()) == 8 * 6 * 4
    # Structural: the all-zero kernel still carries pattern 1 (the reference's `w != 0` is empty).
    assert torch.equal(mask[0, 0], PATTERNS[0])


def test_kernel_patterns_flags_illegal_kernels() -> None:
    mask = torch.zeros(1, 3, 3, 3, dtype=torch.bool)
    mask[0, 1] = PATTERNS[6]
    mask[0, 2, 0, 0] = True
    assert kernel_patterns(mask).tolist() == [[0, 7, -1]]
    assert not get_scheme("pattern").is_legal(mask)


def test_compound_parts_see_the_masked_weight() -> None:
    weight = randn(8, 16, 3, 3)
    pattern = mask_for(weight, "pattern", 0.9)
    balance = mask_for(weight * pattern, "filter_balance", 0.9)
    compound = mask_for(weight, "pattern+filter_balance", 0.9)
    assert torch.equal(compound, pattern & balance)
    # 16 * r_k = 16 * 0.775 -> 12 kernels drop, 4 of 16 stay per filter, each on a pattern.
    assert kernel_patterns(compound).gt(0).sum(dim=1).tolist() == [4] * 8
    assert get_scheme("pattern+filter_balance").is_legal(compound)


# --- channel --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_filters", "sparsity", "pruned"),
    [(16, 0.0, 0), (16, 0.9, 14), (16, 0.97, 16), (3, 0.5, 2), (10, 0.9, 9), (64, 0.92, 59), (1, 0.49, 0), (1, 0.5, 1)],
)
def test_channel_count_rule(n_filters: int, sparsity: float, pruned: int) -> None:
    assert filters_pruned(n_filters, sparsity) == pruned
    mask = mask_for(randn(n_filters, 3, 3, 3), "channel", sparsity)
    assert int((~mask.reshape(n_filters, -1).any(dim=1)).sum()) == pruned


def test_channel_prunes_weakest_filters_and_lower_index_on_ties() -> None:
    weight = torch.ones(6, 2, 3, 3)
    weight[4] *= 0.5
    mask = mask_for(weight, "channel", 0.5)  # prunes 3: filter 4, then ties 0 and 1
    assert mask.reshape(6, -1).all(dim=1).tolist() == [False, False, True, True, False, True]


def test_channel_fully_pruned_layer_is_legal() -> None:
    mask = mask_for(randn(8, 4), "channel", 0.95)
    assert not mask.any() and get_scheme("channel").is_legal(mask)


def test_masks_follow_weight_dtype_and_are_bool() -> None:
    weight = randn(8, 8, 3, 3).double()
    for name in list_schemes():
        mask = mask_for(weight, name, 0.8)
        assert mask.dtype == torch.bool and mask.shape == weight.shape and mask.device == weight.device
