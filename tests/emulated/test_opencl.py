"""TVM's OpenCL kernels for the mali and adreno presets, run by our ctypes OpenCL host on PoCL."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mest_compile.compiler.devices import (
    OpenCLBuildError,
    compile_opencl,
    parse_kernel_signatures,
)
from mest_compile.compiler.devices.opencl import Context
from mest_compile.errors import MestError


@pytest.fixture(scope="module")
def context(opencl_context: Context) -> Context:
    return opencl_context


def test_launch_and_read_back(context: Context) -> None:
    program = context.build(
        "__kernel void axpy(__global float* y, __global const float* x, float a, int n) {"
        "  int i = get_global_id(0); if (i < n) y[i] += a * x[i]; }"
    )
    x, y = np.arange(10, dtype=np.float32), np.ones(10, dtype=np.float32)
    out = context.buffer(y)
    seconds = context.launch(program.kernel("axpy"), [out, context.buffer(x), np.float32(3), np.int32(10)], (16,), (8,))
    np.testing.assert_array_equal(out.read(), 1 + 3 * x)
    assert seconds >= 0


def test_build_errors_carry_the_log(context: Context) -> None:
    with pytest.raises(OpenCLBuildError, match="undeclared") as caught:
        context.build("__kernel void broken(__global float* y) { y[0] = not_declared; }")
    assert "not_declared" in caught.value.log


def test_signature_parsing() -> None:
    source = (
        "__kernel void k(__global int* restrict B_ptr, __global float* restrict A_ptr, int N, int cse_v1);\n"
        "__kernel void k(__global int* restrict B_ptr, __global float* restrict A_ptr, int N, int cse_v1) {}\n"
    )
    (params,) = parse_kernel_signatures(source).values()
    assert [(p.name, p.dtype.name, p.is_buffer) for p in params] == [
        ("B_ptr", "int32", True), ("A_ptr", "float32", True), ("N", "int32", False), ("cse_v1", "int32", False),
    ]  # fmt: skip


@pytest.mark.parametrize("preset", ["mali", "adreno"])
def test_tvm_sparse_kernel_matches_pytorch(context: Context, csr: SimpleNamespace, preset: str) -> None:
    kernel = compile_opencl(csr.gpu_schedule(csr.kernel(*csr.shape), threads=64), preset, context)
    assert "__kernel" in kernel.source
    # The launch needs a host-computed scalar beyond the shapes (TVM hoists N * O*OH*OW): this
    # is what parsing the signature alone could not provide.
    assert len(kernel.signatures[kernel.launches[0].kernel]) > 6
    # One build, several batches and masks (nnz, N symbolic), a ragged last work group, no nnz.
    for batch, density, seed in [(3, 0.3, 0), (1, 0.1, 1), (2, 0.0, 2), (0, 0.3, 3)]:
        problem = csr.problem(batch, density, seed)
        *_, y = kernel(*problem.args())
        assert y.shape == tuple(problem.expected.shape)
        np.testing.assert_allclose(y, problem.expected.numpy(), rtol=1e-5, atol=1e-5)
    assert kernel.time(*csr.problem(2, 0.3, 0).args(), number=2) > 0


def test_wrong_arguments_are_rejected_before_launch(context: Context, csr: SimpleNamespace) -> None:
    kernel = compile_opencl(csr.gpu_schedule(csr.kernel(*csr.shape)), "mali", context)
    x, values, columns, indptr, y = csr.problem(2, 0.3, 0).args()
    with pytest.raises(MestError, match="does not match"):
        kernel(x, values, columns, indptr, y[:1])  # batch 2 in, batch 1 out
    with pytest.raises(MestError, match="expected 5 arguments"):
        kernel(x, values)
