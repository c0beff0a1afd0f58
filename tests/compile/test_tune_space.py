"""Every point of the tuning space is a correct kernel: each design space and each tile variant.

The tuner checks every candidate numerically anyway; this makes sure the space it searches is
made of legal transformations, so no trial is wasted on a schedule that is always wrong.
"""

from __future__ import annotations

import pytest
import torch
import tvm
from tvm import s_tir

from mest_compile.compiler.families import family_for
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.schedules.host_space import spaces
from mest_compile.compiler.target import as_target, resolve_target
from mest_compile.compiler.tune.workload import TuneKernel, inputs, variants

SCHEMES = ["free_block_prune_column_4", "pattern+filter_balance", "channel", "irregular"]
GEOMETRIES = [ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1), ConvGeometry(8, 8, 8, 16, 3, 3, stride=2, padding=1)]


def _run(func: tvm.tirx.PrimFunc, schedule, args: list[torch.Tensor]) -> torch.Tensor:  # noqa: ANN001
    sch = s_tir.Schedule(func)
    schedule(sch)
    executable = tvm.compile(sch.mod, target=resolve_target("host"))
    out = [a.clone() for a in args]
    executable[func.attrs["global_symbol"]](*out)
    return out[-1]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["s1", "s2"])
def test_every_design_space_and_variant_matches_pytorch(scheme: str, geometry: ConvGeometry) -> None:
    family = family_for(scheme)
    default = family.default_tiles(geometry, as_target("host"))
    for which in PHASES:
        kernel = TuneKernel(scheme, geometry, which, batch=2, sparsity=0.6)
        for index, tiles in enumerate(variants(family, kernel, default, limit=6)):
            data = inputs(family, kernel, tiles, seed=index)
            func = family.templates[which](geometry, tiles)
            # every design space on the default tiles; the default schedule on every variant
            for space in spaces(func, which) if index == 0 else spaces(func, which)[:1]:
                got = _run(func, space, data.args)
                scale = float(data.expected.abs().max()) or 1.0
                error = float((got - data.expected).abs().max()) / scale
                assert error < 1e-4, (which, tiles, error)
