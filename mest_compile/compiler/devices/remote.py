"""Run an exported kernel library on an RPC device (a real board or the emulated one).

Arrays travel by value: every argument is copied to the device before the call and copied back
after it, so output buffers are read at their argument position, as in a local TVM call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import rpc

from mest_compile.compiler.devices.arrays import ArrayLike, as_numpy
from mest_compile.errors import MestError


class RemoteLibrary:
    """A kernel library uploaded to, and loaded on, the CPU of an RPC session.

    Example:
        >>> lib = RemoteLibrary(board.session(), "kernel.so")            # doctest: +SKIP
        >>> x, y = lib("scale", x, np.empty_like(x))                      # doctest: +SKIP
        >>> seconds = lib.time("scale", x, y)                             # doctest: +SKIP
    """

    def __init__(self, session: rpc.RPCSession, library: str | Path) -> None:
        path = Path(library)
        if not path.is_file():
            raise MestError(f"kernel library {path} does not exist")
        self.session = session
        self.device = session.cpu(0)
        session.upload(str(path))
        self.module = session.load_module(path.name)

    def _function(self, name: str) -> Any:
        try:
            return self.module[name]
        except (AttributeError, KeyError, RuntimeError) as err:
            raise MestError(f"the library on the device has no function {name!r}") from err

    def _send(self, args: Sequence[ArrayLike | int | float]) -> list[Any]:
        return [a if isinstance(a, int | float) else tvm.runtime.tensor(as_numpy(a), device=self.device) for a in args]

    def __call__(self, name: str, *args: ArrayLike | int | float) -> list[np.ndarray | int | float]:
        """Call `name` on the device; returns every argument as it is after the call."""
        remote = self._send(args)
        self._function(name)(*remote)
        return [r if isinstance(r, int | float) else r.numpy() for r in remote]

    def time(self, name: str, *args: ArrayLike | int | float, number: int = 3, repeat: int = 1) -> float:
        """Mean seconds per call measured on the device by TVM's `time_evaluator`."""
        self._function(name)  # a clear error for a wrong name before TVM's
        evaluator = self.module.time_evaluator(name, self.device, number=number, repeat=repeat)
        return float(evaluator(*self._send(args)).mean)


def fixed_arguments(arrays: Sequence[ArrayLike]) -> Callable[..., list[list[Any]]]:
    """An `f_alloc_argument` for MetaSchedule's `RPCRunner` that uploads exactly `arrays`.

    The default fills every buffer with random values, which for a sparse kernel means random
    index buffers and out-of-bounds gathers (TVM_NOTES §3); measuring needs the real ones. The
    result pickles (a partial of a module-level function), as the runner's worker requires.
    """
    return functools.partial(_alloc_fixed, tuple(as_numpy(a) for a in arrays))


def _alloc_fixed(
    arrays: tuple[np.ndarray, ...], session: rpc.RPCSession, device: Any, args_info: Sequence[Any], alloc_repeat: int
) -> list[list[Any]]:
    """Runs in the runner's worker: check the kernel's argument info, then upload the arrays."""
    if len(args_info) != len(arrays):
        raise MestError(f"the kernel takes {len(args_info)} arguments, {len(arrays)} arrays were given")
    for index, (info, array) in enumerate(zip(args_info, arrays, strict=True)):
        _, dtype, shape = info  # ["TENSOR", dtype, shape]: MetaSchedule's JSON form
        if str(dtype) != str(array.dtype) or [int(d) for d in shape] != list(array.shape):
            want, got = f"{dtype}{list(shape)}", f"{array.dtype}{list(array.shape)}"
            raise MestError(f"argument {index}: the kernel expects {want}, got {got}")
    return [[tvm.runtime.tensor(a, device=device) for a in arrays] for _ in range(alloc_repeat)]
