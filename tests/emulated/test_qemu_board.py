"""Kernels cross-compiled for the `arm` preset run on the emulated aarch64 board over RPC."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tvm import rpc

from mest_compile.compiler.devices import (
    EmulatedBoard,
    RemoteLibrary,
    build_for_board,
    provision_board,
)
from mest_compile.errors import MestError


def _close(got: object, expected: torch.Tensor) -> None:
    assert isinstance(got, np.ndarray) and got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def remote(board: EmulatedBoard) -> rpc.RPCSession:
    """One RPC session for the module: the board serves one session at a time, like a real one."""
    return board.session()


@pytest.fixture(scope="module")
def csr_library(
    remote: rpc.RPCSession, csr: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory
) -> RemoteLibrary:
    path = build_for_board(csr.kernel(*csr.shape), tmp_path_factory.mktemp("arm") / "csr_conv.so", "arm")
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[18] == 0xB7  # e_machine 183: AArch64
    return RemoteLibrary(remote, path)


def test_sparse_kernel_runs_on_the_board(csr_library: RemoteLibrary, csr: SimpleNamespace) -> None:
    # One library, several masks and batch sizes: nnz and N are runtime sizes on the device too.
    for batch, density, seed in [(2, 0.3, 0), (3, 0.1, 1), (1, 0.0, 2)]:
        problem = csr.problem(batch, density, seed)
        *_, y = csr_library("csr_conv", *problem.args())
        _close(y, problem.expected)


def test_time_evaluator_runs_remotely(csr_library: RemoteLibrary, csr: SimpleNamespace) -> None:
    seconds = csr_library.time("csr_conv", *csr.problem(2, 0.3, 0).args(), number=2)
    assert 0 < seconds < 1.0  # emulated: only proves the remote timer runs


def test_remote_errors_are_one_line(
    csr_library: RemoteLibrary, remote: rpc.RPCSession, board: EmulatedBoard, tmp_path: Path
) -> None:
    with pytest.raises(MestError, match="no function 'nope'"):
        csr_library("nope")
    with pytest.raises(MestError, match="does not exist"):
        RemoteLibrary(remote, tmp_path / "missing.so")
    with pytest.raises(MestError, match="stayed busy"):  # the module's session holds the board
        board.session(timeout_s=1.0)


def test_block_forward_kernel_on_the_board(remote: rpc.RPCSession, tmp_path: Path) -> None:
    """The project's real block-scheme forward kernel, cross-compiled and run on the board."""
    from mest_compile.compiler.formats.block import random_block_mask
    from mest_compile.compiler.formats.block import BlockFormat
    from mest_compile.compiler.formats.geometry import ConvGeometry
    from mest_compile.compiler.kernels.block_fwd import block_forward
    from mest_compile.schedules.block_host import BlockTiles
    from mest_compile.schedules.host_space import schedule_host

    geo = ConvGeometry(8, 8, 8, 16, 3, 3, stride=1, padding=1)
    tiles = BlockTiles.default(geo, 4)
    mod = schedule_host(block_forward(geo, tiles.fwd_rows), "forward")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 8, 8, generator=gen)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    mask = random_block_mask(16, (8, 3, 3), 0.4, gen)
    fmt = BlockFormat.pack(mask, geo)
    expected = F.conv2d(x, w * mask, padding=1)
    library = RemoteLibrary(remote, build_for_board(mod, tmp_path / "block_fwd.so", "arm"))
    *_, y = library("block_fwd", x, fmt.values(w), fmt.group_ptr, fmt.x_off, torch.zeros_like(expected))
    _close(y, expected)


def test_provisioned_image_is_reused(board: EmulatedBoard) -> None:
    start = time.perf_counter()
    assert board.image is not None and provision_board().path == board.image.path
    assert time.perf_counter() - start < 1.0
