"""One contract, every registered kernel family: pack, build, gate, call, gradients against masked dense.

Parametrised over the registry, so a new family is checked the day it is registered. Kernels are
called directly (never through `sparse_conv2d`'s dense fallback), so a kernel the gate rejects
fails here instead of comparing dense with dense.
"""

from __future__ import annotations

import pytest
import torch

from mest_compile.compiler.families import PHASES, KernelFamily, families
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.cache import CACHE, kernels_for
from mest_compile.compiler.runtime.gate import reference, relative_error
from mest_compile.compiler.runtime.op_args import geometry_list
from mest_compile.compiler.runtime.ops import PACKED_CONV2D

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
