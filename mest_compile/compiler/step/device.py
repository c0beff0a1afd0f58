"""Where the compiled step runs: this machine, or a board over TVM's RPC (a real one or the emulated one).

A `StepDevice` loads a built step and holds its arrays. On a board the step is cross-compiled
here, linked by the preset's cross compiler, uploaded once per build, and run by the board's VM;
batches go over every step, and the engine sends a state array only when it changed since it was
last sent (the mutation and repacking run here, on the weights read back).
"""

from __future__ import annotations

import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from mest_compile.compiler.devices.cross import board_fcompile
from mest_compile.compiler.step.build import BuiltStep
from mest_compile.compiler.target import Target
from mest_compile.errors import MestError

#: The `--rpc` value that starts the project's emulated aarch64 board.
EMULATED = "emulated"


class StepDevice:
    """This machine: the step's VM in this process."""

    name = "host"

    def load(self, built: BuiltStep) -> Any:
        """The VM running `built`."""
        if built.vm is None:
            raise MestError("the step was built for another machine")
        return built.vm

    def run(self, vm: Any, args: list[Any]) -> list[Any]:
        """`train_step(*args)`'s outputs (device arrays)."""
        out = vm["train_step"](*args)
        return [out[i] for i in range(len(out))]

    def put(self, array: np.ndarray) -> Any:
        """A device array holding `array`."""
        return tvm.runtime.tensor(np.require(array, requirements="C"))


class RemoteDevice(StepDevice):
    """A board reached through a TVM RPC tracker (`HOST:PORT` and key, or the emulated board)."""

    def __init__(self, target: Target, rpc: str, key: str | None, timeout_s: float = 10.0) -> None:
        from tvm import rpc as tvm_rpc

        self.target = target
        self._board: Any = None
        if rpc == EMULATED:
            from mest_compile.compiler.devices.qemu_board import EmulatedBoard

            self._board = EmulatedBoard()
            self._board.start()
            weakref.finalize(self, self._board.close)
            self.session = self._board.session()
            self.name = "emulated aarch64 board"
        else:
            from mest_compile.compiler.tune.remote import checked_tracker

            if key is None:
                raise MestError("--rpc needs --rpc-key KEY (the key the board registered under)")
            where = checked_tracker(rpc, key, timeout_s)
            try:
                self.session = tvm_rpc.connect_tracker(where.host, where.port).request(key, max_retry=1)
            except (RuntimeError, OSError) as err:
                raise MestError(f"the board {key!r} at {rpc} did not accept a session: {err}") from None
            self.name = f"{key}@{rpc}"
        self.device = self.session.cpu()
        self._work = Path(tempfile.mkdtemp(prefix="mest-step-"))
        self._uploads = 0

    def load(self, built: BuiltStep) -> Any:
        """Link `built` for the board, upload it, and open it in the board's VM."""
        self._uploads += 1
        library = self._work / f"step{self._uploads}.so"
        built.executable.export_library(str(library), fcompile=board_fcompile(self.target.preset))
        self.session.upload(str(library))
        return relax.VirtualMachine(self.session.load_module(library.name), self.device)

    def run(self, vm: Any, args: list[Any]) -> list[Any]:
        """`train_step(*args)` on the board; the outputs stay there (a tuple is not sent back whole)."""
        vm.set_input("train_step", *args)
        vm.invoke_stateful("train_step")
        return list(vm.get_outputs("train_step"))

    def put(self, array: np.ndarray) -> Any:
        """An array on the board holding `array` (sent now)."""
        return tvm.runtime.tensor(np.require(array, requirements="C"), device=self.device)


def step_device(target: Target, rpc: str | None, key: str | None) -> StepDevice:
    """Where a step for `target` runs: here, or the board `rpc` names.

    Raises:
        MestError: a foreign target without `--rpc`, or `--rpc` with a target that runs here.
    """
    from mest_compile.compiler.step.build import runs_here

    if runs_here(target):
        if rpc is not None:
            raise MestError(f"--rpc runs the step on a board; target {target.name!r} is this machine's CPU "
                            "(use --target arm for a board)")
        return StepDevice()
    if target.family.name != "cpu" or target.preset.cross_compiler is None:
        raise MestError(f"--engine tvm runs the step on a CPU; target {target.name!r} is not one")
    if rpc is None:
        raise MestError(f"target {target.name!r} is a board: give --rpc HOST:PORT --rpc-key KEY, or --rpc emulated")
    return RemoteDevice(target, rpc, key)
