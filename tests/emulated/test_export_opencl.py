"""The GPU-scheduled forward kernels (what the rewritten graph calls on mali / adreno) on PoCL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mest_compile.compiler.devices import compile_opencl
from mest_compile.compiler.devices.opencl import Context
from mest_compile.compiler.families import family_for
from mest_compile.compiler.target_families import family_of
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.gate import reference


@pytest.fixture(scope="module")
def context(opencl_context: Context) -> Context:
    return opencl_context


@pytest.mark.parametrize("scheme", ["block", "irregular", "channel", "pattern+filter_balance"])
@pytest.mark.parametrize(
    ("geometry", "preset"),
    [
        (ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1), "mali"),
        (ConvGeometry(8, 9, 7, 12, 3, 3, stride=2, padding=1), "adreno"),  # odd sizes, stride 2
    ],
)
def test_gpu_forward_matches_pytorch(context: Context, scheme: str, geometry: ConvGeometry, preset: str) -> None:
    family = family_for(scheme)
    kernel = compile_opencl(family_of("gpu").forward_func(family, geometry), preset, context)
    gen = torch.Generator().manual_seed(0)
    g = geometry
    x = torch.randn(2, g.in_channels, g.in_h, g.in_w, generator=gen)
    w = torch.randn(g.out_channels, g.in_channels, g.kernel_h, g.kernel_w, generator=gen)
    mask = family.random_mask(tuple(w.shape), gen)  # with an empty unit
    buffers = family.forward_buffers(family.forward_format(g, mask), w)
    expected = reference("forward", x, w, mask, None, g.stride, g.padding)
    *_, y = kernel(x, *buffers, np.full(tuple(expected.shape), np.nan, np.float32))
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-5, atol=1e-5)
