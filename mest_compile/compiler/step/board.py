"""The compiled training step for a board: cross-compiled here, run and counted where it runs.

`export_step` writes a directory a board with only TVM's runtime and numpy can train from:
`step.so` (the `train_step` VM executable, linked by the preset's cross compiler), `state.npz`
(every argument after the batch: weights, momenta, running statistics, index buffers, in the
step's order) and `step.json` (what each argument is). `run_on_board` runs steps in it on the
emulated board; `count_step_instructions` counts the guest instructions of one step under qemu
(`devices/insn_count.py`): instructions, not time.
"""

from __future__ import annotations

import json
import os
import subprocess
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mest_compile.compiler.devices.board_image import BoardImage, provision_board
from mest_compile.compiler.devices.cross import board_fcompile
from mest_compile.compiler.devices.insn_count import count_per_call
from mest_compile.compiler.runtime.records import TunedChoices
from mest_compile.compiler.step.build import Argument, CompiledStep, Sgd, compile_step
from mest_compile.compiler.step.state import momentum_of, pack_tensor
from mest_compile.compiler.target import Target
from mest_compile.errors import MestError, last_output_line
from mest_compile.sparsity.module import SparseConv2d, sparse_layers

LIBRARY, STATE, MANIFEST = "step.so", "state.npz", "step.json"

#: Board-side: load the step and its state, then run `train_step` on `batch.npz` N times (the
#: arguments are not advanced: every call does the same work), saving the last outputs.
_RUN = """
import json, numpy as np, tvm
from tvm.runtime.vm import VirtualMachine
vm = VirtualMachine(tvm.runtime.load_module("step.so"), tvm.cpu())
state, batch = np.load("state.npz"), np.load("batch.npz")
args = [tvm.runtime.tensor(batch[k]) for k in ("x", "onehot", "lr")]
args += [tvm.runtime.tensor(state[k]) for k in json.load(open("step.json"))["order"]]
step = vm["train_step"]
for _ in range(N):
    out = step(*args)
np.savez("out.npz", *[out[i].numpy() for i in range(len(out))])
"""


@dataclass(frozen=True)
class ExportedStep:
    """A step directory (see the module docstring) and what its arguments are."""

    path: Path
    arguments: list[Argument]
    batch_shape: tuple[int, ...]
    num_classes: int
    #: What the step was built with (what a bundle needs to repack on the board).
    compiled: CompiledStep | None = None


def export_step(model: nn.Module, batch_shape: tuple[int, ...], num_classes: int, target: Target, sgd: Sgd,
                out: str | Path, optimizer: torch.optim.Optimizer | None = None, *,
                allow_host: bool = False, records: TunedChoices | None = None) -> ExportedStep:
    """Compile `model`'s training step for `target`'s board and write it with the model's state to `out`.

    Args:
        allow_host: also export for this machine's own kind of CPU (linked here, no cross compiler).
        records: tuning records the sparse kernels are built with (a `mest-compile tune` work dir
            for the target, or `--tuning quick` for this machine's CPU).

    Raises:
        MestError: the target builds for this machine (nothing to cross-compile) and `allow_host`
            is false, or the step failed.
    """
    host = target.preset.cross_compiler is None
    if host and not allow_host:
        raise MestError(f"target {target.name!r} builds for this machine: use --engine tvm here")
    layers = sparse_layers(model)
    step = compile_step(model, layers, batch_shape, num_classes, target, sgd, records=records)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    formats = {slot.layer: slot.fmt for slot in step.lowered.slots.values()}
    rows = {slot.layer: slot.capacity for slot in step.lowered.slots.values()}
    params = dict(model.named_parameters())
    tensors = {**params, **dict(model.named_buffers())}
    arrays: dict[str, np.ndarray] = {}
    order = []
    trainable = step.built.trainable
    groups = [(a, None) for a in trainable] + [(a, "momentum") for a in trainable] + [(a, None) for a in step.built.inputs]
    for i, (arg, role) in enumerate(groups):
        source = None
        if role == "momentum":
            base = params[arg.name]
            source = momentum_of(optimizer, base) if optimizer is not None else torch.zeros_like(base)
        arrays[f"a{i}"] = pack_tensor(arg, tensors, layers, formats, rows, source=source)
        order.append(f"a{i}")
    fcompile = None if host else board_fcompile(target.preset)
    _write_atomic(path / LIBRARY, lambda tmp: step.built.executable.export_library(str(tmp), fcompile=fcompile))
    _write_atomic(path / STATE, lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    manifest = {"order": order, "arguments": [asdict(a) | {"role": r or "value"} for a, r in groups],
                "batch_shape": list(batch_shape), "num_classes": num_classes, "target": target.name}
    _write_atomic(path / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    return ExportedStep(path=path, arguments=step.built.arguments, batch_shape=tuple(batch_shape),
                        num_classes=num_classes, compiled=step)


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def write_batch(exported: ExportedStep, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
    """The batch the board-side runs read (`batch.npz`)."""
    if tuple(x.shape) != exported.batch_shape:
        raise MestError(f"the step was built for batches of {exported.batch_shape}, got {tuple(x.shape)}")
    onehot = torch.nn.functional.one_hot(y, exported.num_classes).float()
    np.savez(exported.path / "batch.npz", x=x.numpy(), onehot=onehot.numpy(), lr=np.float32(lr))


def run_on_board(exported: ExportedStep, steps: int = 1, image: BoardImage | None = None,
                 timeout_s: float = 900) -> list[np.ndarray]:
    """Run `train_step` on the emulated board `steps` times on `batch.npz`; its last outputs."""
    image = image or provision_board()
    script = exported.path / "run_step.py"
    script.write_text(f"N = {int(steps)}\n{_RUN}")
    env = image.environment() | {"TVM_NUM_THREADS": "1"}
    done = subprocess.run(image.command(str(script)), cwd=exported.path, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise MestError(f"the step failed on the board: {last_output_line(done.stderr)}")
    out = np.load(exported.path / "out.npz")
    return [out[f"arr_{i}"] for i in range(len(out.files))]


def count_step_instructions(exported: ExportedStep, image: BoardImage | None = None, calls: tuple[int, int] = (1, 3),
                            timeout_s: float = 1800) -> float:
    """Guest instructions of one `train_step` on the emulated board (needs `batch.npz`; see `write_batch`).

    One step is billions of instructions, so Python's warm-up (about 1e5) does not need the insn
    counter's default of 20 calls per run to vanish.
    """
    return count_per_call(_RUN, calls=calls, cwd=exported.path, image=image, timeout_s=timeout_s)


def densified(model: nn.Module) -> nn.Module:
    """A copy of `model` with every sparse conv a plain conv of its masked weight (the dense pipeline)."""
    copy = deepcopy(model)
    for name, module in list(copy.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SparseConv2d):
                dense = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                  child.padding, child.dilation, child.groups, child.bias is not None)
                with torch.no_grad():
                    dense.weight.copy_(child.weight * child.mask)
                    if child.bias is not None:
                        dense.bias.copy_(child.bias)
                setattr(module, child_name, dense)
    return copy
