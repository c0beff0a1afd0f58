"""`mest-compile tune --target mali|adreno` on PoCL: GPU design spaces measured by our OpenCL launcher.

PoCL runs the OpenCL kernels on this CPU, so the times only prove the path; every candidate is
still launched with real index buffers and checked against PyTorch before its time counts, and
the tuned kernel is what `rewrite` puts into the exported graph afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mest_compile.cli import cli
from mest_compile.compiler.devices import compile_opencl
from mest_compile.compiler.devices.opencl import Context


@pytest.mark.parametrize("scheme", ["block", "pattern+filter_balance"])
def test_tune_for_mali_on_pocl_and_replay(opencl_context: Context, tmp_path: Path, scheme: str) -> None:
    from mest_compile.cli import tune  # noqa: F401  (registers the command)
    from mest_compile.compiler.families import family_for
    from mest_compile.compiler.formats.geometry import ConvGeometry
    from mest_compile.compiler.runtime.compiled import device_forward_func
    from mest_compile.compiler.runtime.records import current_records
    from mest_compile.compiler.target import as_target
    from mest_compile.compiler.tune.records import use_records
    from mest_compile.compiler.tune.workload import TuneKernel, inputs

    args = ["tune", "--target", "mali", "--scheme", scheme, "--shape", "8,8,3,3", "--input", "2,8,8,8", "--padding", "1",
            "--sparsity", "0.6", "--trials", "6", "--work-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    entries = json.loads((tmp_path / "manifest.json").read_text())["kernels"].values()
    assert sorted(e["which"] for e in entries) == ["dgrad", "forward", "wgrad"]  # all three phases on GPUs
    assert all(e["untuned_s"] and e["tuned_s"] for e in entries) and sum(e["trials"] for e in entries) > len(entries)
    assert "candidate rejected" not in result.output
    # The tuned schedule replays onto the symbolic GPU kernel and still matches PyTorch.
    family, geo = family_for(scheme), ConvGeometry(8, 8, 8, 8, 3, 3, stride=1, padding=1)
    try:
        use_records(tmp_path)
        func = device_forward_func(family, geo, as_target("mali"), current_records())
    finally:
        use_records(None)
    kernel = TuneKernel(scheme, geo, "forward", 3, 0.5)
    data = inputs(family, kernel, family.default_tiles(geo, as_target("host")))
    *_, y = compile_opencl(func, "mali")(*data.args)
    torch.testing.assert_close(torch.from_numpy(y), data.expected, rtol=1e-4, atol=1e-4)
