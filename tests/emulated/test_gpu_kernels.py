"""Every family's GPU kernels (forward, input gradient, masked weight gradient) on PoCL, against masked dense.

The kernels are what a `mali` build compiles (the family's GPU templates, bound by the GPU target
family's hand-written schedule) and take what the launcher passes (`gpu_kernel_args`). Random
shapes and masks per seed, including filters without a kept unit and a fully pruned layer; every
output starts as NaN, so an element a kernel never writes fails the comparison.
"""

from __future__ import annotations

import functools

import pytest
import torch

from mest_compile.compiler.devices.opencl import Context
from mest_compile.compiler.devices.opencl_tvm import OpenCLFunction, compile_opencl
from mest_compile.compiler.families import PHASES, KernelFamily, family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.gate import reference
from mest_compile.compiler.target_families import family_of

FAMILIES = ("block", "pattern", "channel", "irregular")
GPU = family_of("gpu")


def _geometry(family: KernelFamily, stride: int, seed: int) -> ConvGeometry:
    """A random small geometry the family supports (3x3 for every family; 1x1 too where it can)."""
    gen = torch.Generator().manual_seed(seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    kernel = 3 if seed % 2 == 0 or family.supports(ConvGeometry(4, 7, 7, 8, 1, 1, stride=stride)) else 1
    geo = ConvGeometry(pick(2, 6), pick(5, 9), pick(5, 9), 4 * pick(1, 3), kernel, kernel, stride=stride,
                       padding=kernel // 2)
    assert family.supports(geo) is None, family.supports(geo)
    return geo


@functools.cache
def _kernels(name: str, geo: ConvGeometry, context: Context) -> dict[str, OpenCLFunction]:
    family = family_for(name)
    return {which: compile_opencl(GPU.schedule(GPU.template(family, geo, which, None), which)["main"], "mali", context)
            for which in PHASES}


def _check(context: Context, name: str, geo: ConvGeometry, mask: torch.Tensor, seed: int) -> None:
    family = family_for(name)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, geo.in_channels, geo.in_h, geo.in_w, generator=gen)
    w = torch.randn(geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w, generator=gen)
    dy = torch.randn(2, geo.out_channels, geo.out_h, geo.out_w, generator=gen)
    fmt = family.forward_format(geo, mask)
    values = fmt.values(w).detach().contiguous()
    kernels = _kernels(name, geo, context)
    for which in PHASES:
        want = reference(which, x, w, mask, dy, geo.stride, geo.padding)
        args = family.gpu_kernel_args(which, x, values, dy, fmt)
        if which == "wgrad":  # the kernel writes the kept values only, packed like the forward's
            want = fmt.values(want).reshape(args[-1].shape)
        args[-1] = torch.full_like(args[-1], float("nan"))
        *_, got = kernels[which](*args)
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4,
                                   msg=lambda m, w=which: f"{name} {which} {geo}: {m}")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_gpu_kernels_match_masked_dense(opencl_context: Context, name: str, stride: int, seed: int) -> None:
    family = family_for(name)
    assert GPU.phases(family) == PHASES  # every phase has a GPU kernel
    geo = _geometry(family, stride, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    mask = family.random_mask((geo.out_channels, geo.in_channels, geo.kernel_h, geo.kernel_w), gen)
    mask[0] = False  # a filter without a kept unit
    _check(opencl_context, name, geo, mask, seed)


@pytest.mark.parametrize("name", FAMILIES)
def test_gpu_kernels_of_a_fully_pruned_layer_write_zeros(opencl_context: Context, name: str) -> None:
    family = family_for(name)
    geo = _geometry(family, 1, 0)
    _check(opencl_context, name, geo, torch.zeros(geo.out_channels, geo.in_channels, 3, 3, dtype=torch.bool), 7)
