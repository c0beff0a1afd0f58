"""One contract, every registered kernel family: pack, build, gate, call, gradients against masked dense,
and the weight gradient on a packed gradient mask (`grad_subset.py`).

Parametrised over the registry, so a new family is checked the day it is registered. Kernels are
called directly (never through `sparse_conv2d`'s dense fallback), so a kernel the gate rejects
fails here instead of comparing dense with dense.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mest_compile.compiler.families import PHASES, KernelFamily, families
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.backend import CompiledConvBackend
from mest_compile.compiler.runtime.cache import CACHE, kernels_for
from mest_compile.compiler.runtime.gate import reference, relative_error
from mest_compile.compiler.runtime.grad_subset import cover, pack_subset
from mest_compile.compiler.runtime.op_args import geometry_list
from mest_compile.compiler.runtime.ops import PACKED_CONV2D
from mest_compile.compiler.target import as_target
from mest_compile.errors import MestError
from mest_compile.sparsity.module import SparseConv2d

FAMILIES = families()
IDS = [f.name for f in FAMILIES]
# Stride 1 and 2, a channel count that is no multiple of the vector width, an odd batch.
GEOMETRIES = [ConvGeometry(6, 7, 7, 8, 3, 3, 1, 1), ConvGeometry(5, 9, 9, 12, 3, 3, 2, 1)]


def _data(family: KernelFamily, geo: ConvGeometry, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, geo.in_channels, geo.in_h, geo.in_w, generator=gen)
    w = torch.randn(geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w, generator=gen)
    mask = family.random_mask(tuple(w.shape), gen)  # with an empty unit
    dy = torch.randn(3, geo.out_channels, geo.out_h, geo.out_w, generator=gen)
    return x, w, mask, dy


def _errors(kernels, fmt, x, w, mask, dy) -> dict[str, float]:  # noqa: ANN001
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = kernels.conv(xs, ws, fmt)
    y.backward(dy)
    got = {"forward": y.detach(), "dgrad": xs.grad, "wgrad": ws.grad}
    geo = fmt.geometry
    return {which: relative_error(got[which], reference(which, x, w, mask, dy, geo.stride, geo.padding))
            for which in PHASES}


def test_every_scheme_family_is_registered() -> None:
    assert sorted(IDS) == ["block", "channel", "irregular", "pattern"]


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_tables_name_every_phase(family: KernelFamily) -> None:
    for table in (family.entries, family.buffers, family.templates):
        assert set(table) == set(PHASES)
    assert set(family.gpu_templates) <= set(PHASES) and "forward" in family.gpu_templates
    assert family.forward_buffer_names[0] == "values" and family.schemes


@pytest.mark.parametrize("geo", GEOMETRIES, ids=["stride1", "stride2"])
@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_kernels_match_masked_dense(family: KernelFamily, geo: ConvGeometry) -> None:
    failures = CACHE.stats.gate_failures
    kernels = kernels_for(family, geo)  # raises if the gate rejects them
    assert CACHE.stats.gate_failures == failures
    assert kernels.family is family and set(kernels.gate_errors) == set(PHASES)
    assert all(err <= 1e-4 for err in kernels.gate_errors.values())
    x, w, mask, dy = _data(family, geo, seed=1)
    fmt = kernels.pack(mask, capacity=family.units(mask) + 5)  # headroom: only nnz entries may be read
    errors = _errors(kernels, fmt, x, w, mask, dy)
    assert all(err <= 1e-4 for err in errors.values()), errors


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_repack_within_capacity_needs_no_build(family: KernelFamily) -> None:
    geo = GEOMETRIES[0]
    kernels = kernels_for(family, geo)
    x, w, mask, dy = _data(family, geo, seed=2)
    fmt = kernels.pack(mask, capacity=geo.out_channels * geo.in_channels * geo.kernel_h * geo.kernel_w)
    builds = CACHE.stats.builds
    for seed in (3, 4):
        _, w, mask, dy = _data(family, geo, seed)
        assert fmt.fits(mask)
        fmt.repack_(mask)
        errors = _errors(kernels, fmt, x, w, mask, dy)
        assert all(err <= 1e-4 for err in errors.values()), errors
    assert CACHE.stats.builds == builds


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_weight_gradient_is_zero_off_the_mask(family: KernelFamily) -> None:
    geo = GEOMETRIES[1]
    kernels = kernels_for(family, geo)
    x, w, mask, dy = _data(family, geo, seed=5)
    ws = w.clone().requires_grad_()
    kernels.conv(x, ws, kernels.pack(mask)).backward(dy)
    assert ws.grad is not None and bool((ws.grad[~mask] == 0).all())


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_opcheck(family: KernelFamily) -> None:
    geo = GEOMETRIES[0]
    kernels = kernels_for(family, geo)
    x, w, mask, _ = _data(family, geo, seed=6)
    fmt = kernels.pack(mask)
    buffers = [family.phase_buffers(which, fmt) for which in PHASES]
    args = (x.requires_grad_(), fmt.values(w).detach().requires_grad_(), *buffers, kernels.handle, geometry_list(geo))
    torch.library.opcheck(PACKED_CONV2D, args)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_forward_format_and_units_agree_with_the_packed_format(family: KernelFamily) -> None:
    geo = GEOMETRIES[0]
    kernels = kernels_for(family, geo)
    _, _, mask, _ = _data(family, geo, seed=7)
    fmt = kernels.pack(mask)
    family.check_packing(fmt, kernels.tiles)  # its own layout always passes
    assert family.forward_format(geo, mask).nnz == fmt.nnz == family.units(mask)


def _grad_data(family: KernelFamily, geo: ConvGeometry, seed: int) -> tuple[torch.Tensor, ...]:
    """`_data` plus a gradient mask on about half of the units, holding part of each (so the cover
    widens it), and a few weights outside the mask (which the cover drops). A test of the narrowed
    kernel fails if the whole mask's ran: its gradient outside the cover is nonzero."""
    x, w, mask, dy = _data(family, geo, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    ids = family.unit_ids(tuple(w.shape))
    units = torch.rand(int(ids.max()) + 1, generator=gen) < 0.5
    units[ids[mask][0]], units[ids[mask][-1]] = True, False  # at least one unit in, one out
    noise = torch.rand(w.shape, generator=gen)
    grad_mask = units[ids] & (noise < 0.5) | ~mask & (noise > 0.95)
    return x, w, mask, dy, grad_mask


@pytest.mark.parametrize("geo", GEOMETRIES, ids=["stride1", "stride2"])
@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_weight_gradient_runs_on_the_cover_only(family: KernelFamily, geo: ConvGeometry) -> None:
    kernels = kernels_for(family, geo)
    x, w, mask, dy, grad_mask = _grad_data(family, geo, seed=11)
    fmt = kernels.pack(mask, capacity=family.units(mask) + 3)
    covered = cover(family, grad_mask, mask)
    assert bool((covered <= mask).all()) and bool((grad_mask & mask <= covered).all())
    assert 0 < family.units(covered) < family.units(mask)
    if family.name == "irregular":
        assert torch.equal(covered, grad_mask & mask)
    subset = pack_subset(kernels.family, kernels.pack, fmt, mask, grad_mask)
    assert subset is not None and subset.units == family.units(covered)

    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = kernels.conv(xs, ws, fmt, subset)
    y.backward(dy)
    want = {which: reference(which, x, w, mask, dy, geo.stride, geo.padding) for which in PHASES}
    assert relative_error(y.detach(), want["forward"]) <= 1e-4
    assert relative_error(xs.grad, want["dgrad"]) <= 1e-4
    assert ws.grad is not None
    assert relative_error(ws.grad, want["wgrad"] * covered) <= 1e-4
    off = mask & ~covered  # where the full kernel would have written a gradient
    assert bool((ws.grad[off] == 0).all()) and bool((want["wgrad"][off] != 0).any())


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_a_cover_of_the_whole_mask_packs_nothing(family: KernelFamily) -> None:
    geo = GEOMETRIES[0]
    kernels = kernels_for(family, geo)
    _, _, mask, _, _ = _grad_data(family, geo, seed=12)
    assert pack_subset(kernels.family, kernels.pack, kernels.pack(mask), mask, torch.ones_like(mask)) is None


def test_an_empty_gradient_mask_computes_no_weight_gradient() -> None:
    family = FAMILIES[IDS.index("irregular")]
    geo = GEOMETRIES[0]
    kernels = kernels_for(family, geo)
    x, w, mask, dy, _ = _grad_data(family, geo, seed=13)
    fmt = kernels.pack(mask)
    subset = pack_subset(kernels.family, kernels.pack, fmt, mask, torch.zeros_like(mask))
    assert subset is not None and subset.units == 0
    ws = w.clone().requires_grad_()
    kernels.conv(x, ws, fmt, subset).backward(dy)
    assert ws.grad is not None and not bool(ws.grad.any())


def test_a_gradient_mask_of_another_shape_is_refused() -> None:
    family = FAMILIES[IDS.index("irregular")]
    mask = torch.ones(8, 6, 3, 3, dtype=torch.bool)
    with pytest.raises(MestError, match="weight_grad_mask of shape"):
        cover(family, torch.ones(8, 6, 1, 1, dtype=torch.bool), mask)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_opcheck_with_slots(family: KernelFamily) -> None:
    geo = GEOMETRIES[0]
    kernels = kernels_for(family, geo)
    x, w, mask, _, grad_mask = _grad_data(family, geo, seed=14)
    fmt = kernels.pack(mask)
    subset = pack_subset(kernels.family, kernels.pack, fmt, mask, grad_mask)
    assert subset is not None
    buffers = [family.phase_buffers(which, fmt) for which in ("forward", "dgrad")]
    args = (x.requires_grad_(), fmt.values(w).detach().requires_grad_(), *buffers,
            family.phase_buffers("wgrad", subset.fmt), kernels.handle, geometry_list(geo), subset.slots)
    torch.library.opcheck(PACKED_CONV2D, args)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_backend_packs_each_gradient_mask_once_per_packing(family: KernelFamily) -> None:
    geo = GEOMETRIES[0]
    x, w, mask, dy, grad_mask = _grad_data(family, geo, seed=15)
    layer = SparseConv2d(geo.in_channels, geo.out_channels, 3, padding=1, bias=False, scheme=family.scheme_name)
    with torch.no_grad():
        layer.weight.copy_(w)
    layer.set_mask_(mask)
    backend = CompiledConvBackend(family, as_target("host"))
    layer.backend = backend

    def weight_grad() -> torch.Tensor:
        layer.weight.grad = None
        layer(x).backward(dy)
        assert layer.weight.grad is not None
        return layer.weight.grad.clone()

    full = weight_grad()  # no gradient mask: the whole mask's gradient
    layer.weight_grad_mask = grad_mask
    narrowed = weight_grad()
    weight_grad()
    covered = cover(family, grad_mask, layer.mask)
    assert backend.stats.grad_packs == 1 and backend.stats.narrowed_calls == 2
    assert relative_error(narrowed, full * covered) <= 1e-4
    with torch.no_grad():
        layer(x)
    assert backend.stats.narrowed_calls == 2  # a forward without gradient uses no subset
    layer.weight_grad_mask = grad_mask.clone()  # a new tensor is a new gradient mask
    weight_grad()
    layer.set_mask_(layer.mask)  # a new packing of the mask
    weight_grad()
    assert backend.stats.grad_packs == 3
    layer.weight_grad_mask = None
    ref = nn.functional.conv2d(x, layer.weight * layer.mask, padding=1)
    assert relative_error(weight_grad(), torch.autograd.grad(ref, layer.weight, dy)[0]) <= 1e-4
