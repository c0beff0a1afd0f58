"""Emulated-device tier: a small sparse kernel of our own, its oracle, and the shared board.

The kernel is a CSR sparse conv with runtime index buffers (a data-dependent loop over each
output channel's nonzeros) and symbolic batch and nnz: the shape of every real sparse kernel,
small enough for qemu. A missing device tool skips with the reason, except under CI (`CI` set),
where the Makefile installs the tools, so a skip would hide a broken setup: there it fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tvm import s_tir, tirx
from tvm.script import tirx as T

from mest_compile.compiler.devices import (
    EmulatedBoard,
    MissingToolError,
    devices,
    provision_board,
)
from mest_compile.compiler.devices.opencl import Context, OpenCLError


def unavailable(reason: str) -> None:
    """Skip (developer machine) or fail (CI) because a device tool is missing."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see docs/DEVICES.md)")
    pytest.skip(reason)


def csr_conv2d(C: int, H: int, W: int, O: int, K: int, pad: int) -> tirx.PrimFunc:
    """`y = conv2d(x, w * mask)` with the weight as CSR over output channels (column c*K*K+kh*K+kw)."""
    OH, OW, KK = H + 2 * pad - K + 1, W + 2 * pad - K + 1, K * K

    @T.prim_func(s_tir=True)
    def csr_conv(x: T.handle, v: T.handle, col: T.handle, ptr: T.handle, y: T.handle):
        T.func_attr({"global_symbol": "csr_conv", "tirx.noalias": True})
        N = T.int32()
        nnz = T.int32()
        X = T.match_buffer(x, (N, C, H, W), "float32")
        V = T.match_buffer(v, (nnz,), "float32")
        COL = T.match_buffer(col, (nnz,), "int32")
        PTR = T.match_buffer(ptr, (O + 1,), "int32")
        Y = T.match_buffer(y, (N, O, OH, OW), "float32")
        for n, o, oh, ow in T.grid(N, O, OH, OW):
            with T.sblock("y"):
                vn, vo, vh, vw = T.axis.remap("SSSS", [n, o, oh, ow])
                T.reads(PTR[vo : vo + 2], V[0:nnz], COL[0:nnz], X[vn, 0:C, 0:H, 0:W])
                T.writes(Y[vn, vo, vh, vw])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)  # explicit: a fully pruned channel writes zeros
                for j in range(PTR[vo], PTR[vo + 1]):
                    ih = vh + T.truncdiv(T.truncmod(COL[j], KK), K) - pad
                    iw = vw + T.truncmod(COL[j], K) - pad
                    inside = ih >= 0 and ih < H and iw >= 0 and iw < W
                    acc[0] = acc[0] + V[j] * T.if_then_else(inside, X[vn, T.truncdiv(COL[j], KK), ih, iw], T.float32(0))
                Y[vn, vo, vh, vw] = acc[0]

    return csr_conv


def gpu_schedule(func: tirx.PrimFunc, threads: int = 64) -> tirx.PrimFunc:
    """One output element per work item: fuse, split, bind to blockIdx.x / threadIdx.x."""
    sch = s_tir.Schedule(func)
    fused = sch.fuse(*sch.get_loops(sch.get_sblock("y")))
    blocks, lanes = sch.split(fused, [None, threads])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(lanes, "threadIdx.x")
    return sch.mod["main"]


@dataclass
class Problem:
    """One random sparse conv: inputs in the kernel's argument order, and the PyTorch result."""

    x: torch.Tensor
    values: torch.Tensor
    columns: torch.Tensor
    indptr: torch.Tensor
    expected: torch.Tensor

    def args(self) -> list[torch.Tensor]:
        """Kernel arguments, the output last (filled with NaN so unwritten elements show)."""
        return [self.x, self.values, self.columns, self.indptr, torch.full_like(self.expected, float("nan"))]


SHAPE = (4, 6, 6, 8, 3, 1)  # C, H, W, O, K, pad: tiny, because qemu and PoCL interpret it all


def make_problem(batch: int, density: float, seed: int, shape: tuple[int, ...] = SHAPE) -> Problem:
    """A random masked conv with one fully pruned output channel, as CSR."""
    C, H, W, O, K, pad = shape
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(O, C, K, K, generator=gen)
    mask = torch.rand(O, C, K, K, generator=gen) < density
    mask[1] = False
    x = torch.randn(batch, C, H, W, generator=gen)
    dense = (w * mask).reshape(O, -1)
    rows, cols = mask.reshape(O, -1).nonzero(as_tuple=True)
    indptr = torch.zeros(O + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=O), 0)
    return Problem(x, dense[rows, cols].contiguous(), cols.to(torch.int32), indptr, F.conv2d(x, w * mask, padding=pad))


@pytest.fixture(scope="session")
def board() -> Iterator[EmulatedBoard]:
    """The emulated aarch64 board, provisioned once per machine and started once per session."""
    try:
        image = provision_board()
    except MissingToolError as err:
        unavailable(str(err))
    with EmulatedBoard(image) as running:
        yield running


@pytest.fixture(scope="session")
def csr() -> SimpleNamespace:
    """The kernel helpers above, for test modules (importlib mode cannot import conftest)."""
    return SimpleNamespace(kernel=csr_conv2d, gpu_schedule=gpu_schedule, problem=make_problem, shape=SHAPE)


@pytest.fixture(scope="session")
def require_tool() -> Callable[[str], None]:
    """`require_tool(reason)`: skip here, fail under CI."""
    return unavailable


@pytest.fixture(scope="session")
def opencl_context() -> Context:
    """An OpenCL context on the first device (PoCL's CPU device here); skip, or fail under CI, without one."""
    try:
        found = devices()
    except OpenCLError as err:  # no ICD loader at all
        unavailable(str(err))
    if not found:
        unavailable("no OpenCL platform: install the Debian package pocl-opencl-icd for a CPU device")
    return Context(found[0])
