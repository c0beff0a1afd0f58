"""The rewritten forward graph builds for every target preset and exports as a shared library."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import tvm

from mest_compile.compiler.devices import MissingToolError
from mest_compile.compiler.graph.export import build, device_modules, export, run
from mest_compile.compiler.graph.rewrite import rewrite
from mest_compile.compiler.graph.trace import Traced, model_tensors, trace
from mest_compile.sparsity.module import sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.models import build_model

# Preset -> (ELF machine of the library: 62 x86-64, 183 AArch64; device module kind or None).
PRESETS = {"host": (62, None), "cuda": (62, "cuda"), "arm": (183, None), "mali": (183, "opencl"),
           "adreno": (183, "opencl")}  # fmt: skip


@pytest.fixture(scope="module")
def model_and_trace() -> tuple[torch.nn.Module, Traced]:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=3)
    sparsify(model, "block", uniform_profile(model, 0.7, layers="all"))
    return model, trace(model, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_export_for_every_preset(model_and_trace: tuple[torch.nn.Module, Traced], preset: str, tmp_path: Path,
                                 require_tool: Callable[[str], None]) -> None:  # fmt: skip
    model, traced = model_and_trace
    rewritten = rewrite(traced, preset)
    assert len(rewritten.replaced) == 3 and not rewritten.skipped
    executable = build(rewritten)
    machine, device_kind = PRESETS[preset]
    kinds = [m.kind for m in device_modules(executable.mod)]
    assert device_kind is None or device_kind in kinds
    try:
        library = export(rewritten, tmp_path / f"{preset}.so", executable)
    except MissingToolError as err:
        require_tool(str(err))
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[18] == machine
    if preset == "host":  # this machine can load it back and run it
        x = torch.randn(4, 3, 8, 8)
        got = run(tvm.runtime.load_module(str(library)), x, rewritten.arguments(model_tensors(model)))
        with torch.no_grad():
            expected = model.eval()(x)
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max()) + 1e-6
