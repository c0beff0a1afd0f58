"""`inspect` as a library: code for every target preset without its hardware, and the statistics."""

from __future__ import annotations

import shutil

import pytest

from mest_compile.compiler.families import family_for
from mest_compile.compiler.inspect import inspect_subject, layer_subject, render_text
from mest_compile.compiler.inspect.stats import LayerStats

# One small strided layer: every target compiles it in well under a second.
LAYER = {"scheme": "block", "shape": "16,8,3,3", "input_shape": "2,8,8,8", "stride": 2, "padding": 1, "sparsity": 0.75}

# Target -> (source language, a line its source must contain, asm language, a line its asm must contain).
EXPECTED = {
    "host": ("LLVM IR", "define ", "x86_64 assembly", "block_fwd_c8h8w8_o16k3x3s2p1"),
    "arm": ("LLVM IR", 'target triple = "aarch64', "aarch64 assembly", "fmla"),
    "mali": ("OpenCL C", "__kernel void block_fwd_gpu_", None, None),
    "adreno": ("OpenCL C", "__kernel void block_fwd_gpu_", None, None),
    "cuda": ("CUDA C", '__global__ void __launch_bounds__(64) block_fwd_gpu_', "PTX", ".entry block_fwd_gpu_"),
}


@pytest.fixture(scope="module")
def subject():  # noqa: ANN201
    return layer_subject(LAYER["scheme"], LAYER["shape"], input_shape=LAYER["input_shape"], stride=LAYER["stride"],
                         padding=LAYER["padding"], sparsity=LAYER["sparsity"])  # fmt: skip


@pytest.mark.parametrize("target", list(EXPECTED))
def test_code_for_every_target_without_hardware(subject, target: str) -> None:  # noqa: ANN001
    ins = inspect_subject(subject, target)
    (kernel,) = ins.kernels
    language, needle, asm_language, asm_needle = EXPECTED[target]
    assert kernel.source.language == language and needle in (kernel.source.text or "")
    assert "T.prim_func" in kernel.tir and kernel.layers == ["conv.weight"]
    if asm_language is None:  # OpenCL: the driver compiles it on the device
        assert kernel.asm.text is None and "device's driver" in (kernel.asm.note or "")
    elif asm_language == "PTX" and shutil.which("nvcc") is None:
        assert kernel.asm.text is None and "nvcc" in (kernel.asm.note or "")
    else:
        assert kernel.asm.language == asm_language and asm_needle in (kernel.asm.text or "")
    text = render_text(ins, ("graph", "tir", "source", "asm", "stats"))
    assert "R.nn.conv2d" in ins.before and "R.call_tir" in ins.after and "R.nn.conv2d" not in ins.after
    assert f"==== {language} of {kernel.name}" in text


def test_statistics(subject) -> None:  # noqa: ANN001
    (row,) = inspect_subject(subject, "host").stats
    assert isinstance(row, LayerStats) and row.scheme == "free_block_prune_column_4" and row.unit == "block"
    dense = 16 * 8 * 3 * 3
    assert row.dense_weights == dense and row.kept_weights == 4 * row.units and row.units == row.capacity
    assert abs(row.density - 0.25) < 0.05
    assert row.flops == 2 * 2 * 4 * 4 * row.kept_weights and row.dense_flops == 2 * 2 * 4 * 4 * dense
    # x, y and the forward buffers (values, group_ptr, x_off: compact int16), each moved once.
    assert row.bytes == 2 * 8 * 8 * 8 * 4 + 2 * 16 * 4 * 4 * 4 + row.units * 4 * 4 + 5 * 4 + row.units * 2
    assert row.intensity == pytest.approx(row.flops / row.bytes)
    assert row.arguments == ("x f32[N,8,8,8], values f32[nnz,4], group_ptr i32[5], x_off i16[cap] "
                             "-> y f32[N,16,4,4]")  # fmt: skip
    assert sum(row.histogram) == 16 // 4


def test_a_kernel_without_gpu_schedule_says_so(subject, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    family = family_for("block")
    monkeypatch.setattr(type(family), "gpu_templates", {})
    ins = inspect_subject(subject, "cuda")
    (kernel,) = ins.kernels
    assert "has no GPU forward kernel yet" in (kernel.note or "") and "stays a dense conv2d" in (kernel.note or "")
    assert kernel.source.text is None and "T.prim_func" in kernel.tir  # the CPU kernel's TIR
    assert "R.nn.conv2d" in ins.after and "kept dense" in ins.rewrite_report
    assert len(ins.stats) == 1
