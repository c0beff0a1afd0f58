"""Elastic Mutation: MEST's EM and EM&S trajectories (MEST_SPEC 2.4), momentum, resumption, scores."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from mest_compile.errors import MestError
from mest_compile.sparsity.bounds import BoundSchedule
from mest_compile.sparsity.module import SparseConv2d
from mest_compile.sparsity.mutation import ElasticMutation, MutationConfig
from mest_compile.sparsity.schemes import get_scheme

# The distinct 3x3 conv shapes (out, in) of MEST's wide ResNet-32 and how often each occurs.
RESNET32 = {(32, 32): 10, (64, 32): 1, (64, 64): 9, (128, 64): 1, (128, 128): 9}
EM = BoundSchedule.parse("0.92-0.91-0.9", "0.9-0.9-0.9", "90-120", 5)
EMS = BoundSchedule.parse("0.9-0.9-0.9", "0.85-0.875-0.9", "90-120", 5)
# One update per stage, plus a second stage-0 update after some "training".
EPOCHS = (0, 5, 90, 120)


def make_layers(scheme: str, shapes=RESNET32, sparsity: float = 0.9, seed: int = 0) -> dict[str, SparseConv2d]:
    torch.manual_seed(seed)
    return {
        f"l{o}x{i}.weight": SparseConv2d.from_dense(nn.Conv2d(i, o, 3, bias=False), scheme, sparsity=sparsity)
        for o, i in shapes
    }


@torch.no_grad()
def train_stub(layers: dict[str, SparseConv2d]) -> None:
    """Stands in for an epoch of training: every kept weight (grown ones too) moves a little."""
    for layer in layers.values():
        layer.weight.add_(0.01 * torch.randn_like(layer.weight) * layer.mask)


def keep_at(n: int, p: float) -> int:
    """What a strict-percentile prune keeps of `n` distinct scores (MEST_SPEC 1.1)."""
    return n - 1 - math.floor(p * (n - 1))


def run(layers: dict[str, SparseConv2d], schedule: BoundSchedule, **config) -> list:
    em = ElasticMutation(layers, MutationConfig(schedule, **config))
    reports = []
    for epoch in EPOCHS:
        reports.append(em.step(epoch))
        train_stub(layers)
    return reports


def overall(report, shapes=RESNET32) -> float:
    """Mask sparsity over the full ResNet-32 (each distinct shape weighted by its count)."""
    sizes = {f"l{o}x{i}.weight": (o * i * 9, n) for (o, i), n in shapes.items()}
    kept = sum(sizes[name][1] * nnz(u) for name, u in report.layers.items())
    return 1 - kept / sum(size * n for size, n in sizes.values())


def nnz(u, after: str = "grow") -> int:
    """Kept weights of a layer after the prune or after the growth."""
    return round((1 - (u.sparsity_after_grow if after == "grow" else u.sparsity_after_prune)) * u.size)


def test_irregular_em_matches_the_reference_counts() -> None:
    reports = run(make_layers("irregular"), EM)
    table = {  # size: kept at 0.92, grown, final nnz (MEST_SPEC 2.4)
        9216: (738, 183, 921),
        18432: (1475, 368, 1843),
        36864: (2950, 736, 3686),
        73728: (5899, 1473, 7372),
        147456: (11797, 2948, 14745),
    }
    for report in reports[:2]:  # stage 0: prune to 0.92, grow to 0.9
        assert (report.stage, report.lower, report.upper) == (0, 0.92, 0.9)
        for u in report.layers.values():
            assert (nnz(u, "prune"), u.grown, nnz(u)) == table[u.size]
    for u in reports[2].layers.values():  # stage 1: prune to 0.91, grow back
        assert (nnz(u, "prune"), nnz(u)) == (keep_at(u.size, 0.91), table[u.size][2])
    for u in reports[3].layers.values():  # stage 2: prune to 0.9 keeps the steady state, no growth
        assert u.grown == 0 and nnz(u) == table[u.size][2]
    # MEST_SPEC 2.4 measured 0.9001 over the whole model; these counts give 0.90001.
    assert [overall(r) for r in reports] == pytest.approx([0.9001] * 4, abs=1e-4)


def test_irregular_em_and_s_trains_denser_between_updates() -> None:
    reports = run(make_layers("irregular"), EMS)
    for report, upper in zip(reports, (0.85, 0.85, 0.875, 0.9)):
        assert report.upper == upper
        for u in report.layers.values():
            assert abs(nnz(u, "prune") - keep_at(u.size, 0.9)) <= 1
            assert abs((1 - u.sparsity_after_grow) * u.size - (1 - upper) * u.size) <= 1  # within one weight
    assert [round(overall(r), 4) for r in reports] == [0.85, 0.85, 0.875, 0.9]


@pytest.mark.parametrize(("schedule", "expected"), [(EM, [0.9002] * 4), (EMS, [0.85, 0.85, 0.875, 0.9])])
def test_block_trajectories(schedule: BoundSchedule, expected: list[float]) -> None:
    layers = make_layers("block")
    reports = run(layers, schedule)
    live = {name: keep_at(layer.mask.numel() // 4, 0.9) for name, layer in layers.items()}  # hardened
    for report in reports:
        for name, u in report.layers.items():
            blocks = u.size // 4
            # A prune to at most the current sparsity keeps only the live blocks (the rest are zero).
            kept = min(keep_at(blocks, report.lower), live[name])
            grown = 0 if report.upper == report.lower else int((blocks - kept) - report.upper * blocks)
            assert (nnz(u, "prune"), u.grown) == (4 * kept, 4 * grown), name
            live[name] = kept + grown
    assert all(get_scheme("block").is_legal(layer.mask) for layer in layers.values())
    assert [overall(r) for r in reports] == pytest.approx(expected, abs=2e-4)


def test_pattern_filter_balance_with_overall_bounds_reaches_0_903() -> None:
    layers = make_layers("pattern+filter_balance")
    hardened = {n: layer.sparsity for n, layer in layers.items()}
    # The bounds of MEST's data-efficient pattern script (overall sparsity, not kernel space).
    reports = run(layers, EM)
    # Stages 0 and 1: every filter keeps 7/14/28 kernels of 32/64/128, as in the reference.
    for report in reports[:3]:
        assert round(overall(report), 4) == 0.9028
    # Stage 2 prunes to 0.9 without growth: the scheme's one-shot 0.9 mask (0.898 overall). The
    # reference stays at 0.903 because its prune returns `w != 0`, dropping the all-zero kernel
    # that filter_balance keeps; our schemes' masks are structural and keep it.
    assert {n: u.sparsity_after_grow for n, u in reports[3].layers.items()} == pytest.approx(hardened)
    assert all(get_scheme("pattern+filter_balance").is_legal(layer.mask) for layer in layers.values())


def test_grown_weights_are_exactly_zero_and_upper_zero_grows_dense() -> None:
    layers = make_layers("irregular", {(32, 32): 1, (64, 32): 1})
    em = ElasticMutation(layers, MutationConfig(EMS))
    train_stub(layers)
    report = em.step(0)
    for name, layer in layers.items():
        inside = layer.weight.detach()[layer.mask]
        assert int((inside == 0).sum()) == report.layers[name].grown > 0
        assert torch.all(layer.weight.detach()[~layer.mask] == 0)
    dense = ElasticMutation(layers, MutationConfig(BoundSchedule.parse("0.9", "0", "100", 1)))
    assert dense.step(1).layers["l32x32.weight"].sparsity_after_grow == 0.0
    assert all(bool(layer.mask.all()) for layer in layers.values())


def optimizer_step(layers: dict[str, SparseConv2d], opt: torch.optim.Optimizer, em: ElasticMutation) -> None:
    for layer in layers.values():
        layer(torch.randn(2, layer.in_channels, 6, 6)).square().mean().backward()
    opt.step()
    em.apply_masks_()


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
}


@pytest.mark.parametrize("policy", ["reset", "keep"])
@pytest.mark.parametrize("make_opt", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_regrow_momentum(policy: str, make_opt) -> None:
    layers = make_layers("irregular", {(32, 32): 1}, sparsity=0.85)
    opt = make_opt([layer.weight for layer in layers.values()])
    em = ElasticMutation(layers, MutationConfig(EMS, regrow_momentum=policy, seed=3), opt)
    optimizer_step(layers, opt, em)
    layer = layers["l32x32.weight"]
    before = {k: v.clone() for k, v in opt.state[layer.weight].items()}
    old_mask = layer.mask.clone()
    em.step(0)
    state = opt.state[layer.weight]
    survivors = (layer.weight.detach() != 0) & layer.mask
    grown = layer.mask & ~survivors
    tensors = [k for k, v in before.items() if v.shape == layer.weight.shape]
    assert tensors  # momentum_buffer, or exp_avg and exp_avg_sq
    for key in tensors:
        if policy == "keep":
            assert torch.equal(state[key], before[key])
            assert bool((state[key][grown & old_mask] != 0).any())  # pruned and regrown: stale
        else:
            assert torch.all(state[key][~survivors] == 0)  # outside the mask and at grown weights
            assert torch.equal(state[key][survivors], before[key][survivors])
    for key in set(before) - set(tensors):  # Adam's step counter is left alone
        assert torch.equal(state[key], before[key])


def test_state_dict_round_trip_reproduces_the_next_update() -> None:
    cfg = MutationConfig(EMS, score="magnitude+grad", sp_lmd=0.5, seed=7)
    shapes = {(32, 32): 1, (64, 32): 1}
    a_layers = make_layers("irregular", shapes)
    a = ElasticMutation(a_layers, cfg)
    a.step(0)
    train_stub(a_layers)
    for layer in a_layers.values():
        layer(torch.randn(2, layer.in_channels, 6, 6)).sum().backward()
    a.observe_gradients()
    saved_layers = {n: copy.deepcopy(layer.state_dict()) for n, layer in a_layers.items()}
    saved = a.state_dict()
    a.step(5)
    b_layers = make_layers("irregular", shapes, seed=99)
    for name, layer in b_layers.items():
        layer.load_state_dict(saved_layers[name])
    b = ElasticMutation(b_layers, cfg)
    b.load_state_dict(saved)
    assert b.updates == 1 and set(saved["grads"]) == set(a_layers)
    b.step(5)
    for name in a_layers:
        assert torch.equal(a_layers[name].mask, b_layers[name].mask)
        assert torch.equal(a_layers[name].weight, b_layers[name].weight)
    with pytest.raises(MestError, match="keys"):
        b.load_state_dict({"generator": saved["generator"]})


def test_same_seed_same_masks_and_step_only_on_schedule() -> None:
    masks = []
    for seed in (1, 1, 2):
        layers = make_layers("irregular", {(32, 32): 1})
        em = ElasticMutation(layers, MutationConfig(EMS, seed=seed))
        assert em.step(0) is not None and em.step(0) is None  # a repeated epoch does not mutate twice
        assert em.step(3) is None and em.updates == 1
        masks.append(layers["l32x32.weight"].mask.clone())
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    assert ElasticMutation(make_layers("irregular", {(32, 32): 1}), MutationConfig()).step(0) is None


def test_gradient_score_changes_the_mask_only_with_a_gradient() -> None:
    def mask_after(score: str, lmd: float, grads: bool) -> torch.Tensor:
        layers = make_layers("irregular", {(32, 32): 1})
        em = ElasticMutation(layers, MutationConfig(EM, score=score, sp_lmd=lmd))
        if grads:
            layer = layers["l32x32.weight"]
            layer(torch.randn(4, 32, 8, 8)).square().sum().backward()
            em.observe_gradients()
            assert (score == "magnitude") == (em.state_dict()["grads"] == {})  # no memory when unused
        em.step(0)
        return layers["l32x32.weight"].mask.clone()

    magnitude = mask_after("magnitude", 0.0, grads=True)
    assert not torch.equal(mask_after("magnitude+grad", 10.0, grads=True), magnitude)
    assert torch.equal(mask_after("magnitude+grad", 10.0, grads=False), magnitude)
    assert torch.equal(mask_after("magnitude+grad", 0.0, grads=True), magnitude)


def test_report_is_json_ready() -> None:
    report = ElasticMutation(make_layers("irregular", {(32, 32): 1}), MutationConfig(EM)).step(0)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["epoch"] == 0 and data["layers"]["l32x32.weight"]["grown"] == 183


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(score="saliency"), "known: magnitude, magnitude\\+grad"),
        (dict(sp_lmd=0.5), "magnitude\\+grad"),
        (dict(score="magnitude+grad", sp_lmd=-1.0), "-1.0"),
        (dict(score="magnitude+grad", sp_lmd=float("nan")), "nan"),
        (dict(regrow_momentum="zero"), "known: reset, keep"),
        (dict(schedule="0.9"), "0.9"),
        (dict(seed=1.5), "1.5"),
    ],
)
def test_config_errors(kwargs: dict, named: str) -> None:
    with pytest.raises(MestError, match=named):
        MutationConfig(**kwargs)


def test_only_sparse_layers_mutate() -> None:
    with pytest.raises(MestError, match="conv.weight"):
        ElasticMutation({"conv.weight": nn.Conv2d(2, 2, 3)}, MutationConfig(EM))  # type: ignore[dict-item]
