"""A self-contained training bundle: the compiled step, its state, the data, and a numpy driver.

`export_bundle` writes a directory that trains a run's model on a board with no host attached:
the cross-compiled `train_step` with the model's state (`board.export_step`), the initial masks,
the training split, the plan of the run (learning rate and mutation bounds per epoch, from the
run's config), the `mest_driver` package (numpy and TVM's runtime only: `step/driver/`) and a
README. On the board, `python -m mest_driver` trains, mutates and repacks with the same
executable; `load_trained` reads its run back into the PyTorch model here (to evaluate it, or to
go on training with either engine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mest_compile.compiler.devices.board_image import BoardImage, provision_board
from mest_compile.compiler.families import PackedFormat
from mest_compile.compiler.step.board import export_step
from mest_compile.compiler.step.build import Sgd
from mest_compile.compiler.step.driver import loop as driver_loop
from mest_compile.compiler.step.driver.schemes import SCHEMES as DRIVER_SCHEMES
from mest_compile.compiler.target import Target
from mest_compile.compiler.tune.machine import records_for
from mest_compile.errors import MestError, last_output_line
from mest_compile.io import atomic_directory
from mest_compile.sparsity.compat import Compat
from mest_compile.train.optim import SCHEDULERS

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer

DRIVER = Path(driver_loop.__file__).parent
PLAN, MASKS, DATA, README = "bundle.json", "masks.npz", "data.npz", "README.md"
#: Tile choices a format's layout may carry (the packers read the ones of their kind).
_TILES = ("chunk_filters", "channel_block", "chunk_groups", "scatter_channels")

_README = """# Training bundle: {model} ({scheme}, {sparsity:.0%} sparse) for `{target}`

Trains on a machine with Python 3, numpy and TVM's runtime (no PyTorch, no mest-compile):

    python -m mest_driver                # all {epochs} planned epochs; the run goes to run/
    python -m mest_driver --epochs 2     # stop after 2 epochs
    python -m mest_driver --resume       # continue run/ from its last finished epoch

- `step.so`: one compiled `train_step` (forward, loss, gradients, SGD with momentum {momentum} and
  weight decay {weight_decay}) for batches of {batch} ({target}); a partial last batch is skipped.
- `state.npz`, `step.json`: its arguments (weights, packed sparse values, momenta, running
  statistics, the kernels' index buffers) and what each one is; `masks.npz`: the initial masks.
- `bundle.json`: the plan: learning rate and Elastic Mutation bounds per epoch, the layers'
  packed formats. At a mutation the driver prunes and regrows each sparse layer in numpy and
  repacks its index buffers for the same executable.
- `data.npz`: the training split ({examples} examples).

After every epoch `run/` holds `state.npz`, `masks.npz` and `progress.json` (metrics, the
generator's state), written atomically. On the host, `mest_compile.compiler.step.bundle.load_trained`
reads the run back into the model to evaluate it.
"""


def export_bundle(trainer: Trainer, target: Target, out: str | Path) -> Path:
    """Write the bundle of `trainer`'s run (its model, data, schedule) for `target` into `out`.

    Written in a temporary directory beside `out` and renamed at the end: a failed export leaves
    nothing behind.

    Raises:
        MestError: the run uses something the board driver does not do (one line), `out` is not
            empty, or the step failed to compile.
    """
    plan = _plan(trainer)
    with atomic_directory(out) as work:
        data = trainer.data
        batch_shape = (trainer.config.optim.batch_size, *data.train_x.shape[1:])
        if len(data.train_y) < batch_shape[0]:
            raise MestError(f"the training split has {len(data.train_y)} examples, fewer than one batch of "
                            f"{batch_shape[0]}")
        exported = export_step(trainer.model, batch_shape, data.num_classes, target, Sgd(**plan["sgd"]), work,
                               trainer.optimizer, allow_host=True,
                               records=records_for(trainer.config.compile.work_dir, trainer.config.compile.tuning))
        assert exported.compiled is not None
        lowered = exported.compiled.lowered
        layers: dict[str, Any] = {}
        for slot in lowered.slots.values():
            layers[slot.layer] = _layer(trainer, slot.layer, slot.family.name, slot.fmt, slot.family.visits_every_value_row)
        for dense in lowered.dense.values():
            layers[dense.layer] = _layer(trainer, dense.layer, "mask", None, False)
        plan |= {"layers": layers, "batch_norms": list(exported.compiled.traced.batch_norms)}
        (work / PLAN).write_text(json.dumps(plan, indent=1))
        np.savez(work / MASKS, **{name: trainer.layers[name].mask.numpy().astype(bool) for name in layers})
        np.savez(work / DATA, train_x=data.train_x.numpy(), train_y=data.train_y.numpy())
        shutil.copytree(DRIVER, work / "mest_driver", ignore=shutil.ignore_patterns("__pycache__"))
        (work / README).write_text(_README.format(
            model=trainer.config.data.model, scheme=trainer.config.sparse.scheme, sparsity=trainer.sparsity(),
            target=target.name, epochs=len(plan["lr"]), batch=batch_shape[0], examples=len(data.train_y),
            momentum=plan["sgd"]["momentum"], weight_decay=plan["sgd"]["weight_decay"]))
    return Path(out)


def _plan(trainer: Trainer) -> dict[str, Any]:
    """The run's schedule as data: learning rate and mutation bounds per epoch, and what the driver needs."""
    cfg = trainer.config
    # The FLOPs counter is always on and only watches the host's forwards: nothing to carry.
    others = sorted(set(trainer.algorithms) - {"elastic_mutation", "training_flops"})
    if others:
        raise MestError(f"the board driver runs MEST's Elastic Mutation only; {others[0]} is enabled in this run")
    if trainer.compat != Compat():
        raise MestError("the board driver implements the corrected rules only: drop --compat")
    mutation: list[list[float] | None] = [None] * cfg.optim.epochs
    em = trainer.algorithms.get("elastic_mutation")
    if em is not None and em.mutation is not None and em.mutation.config.schedule is not None:
        if em.mutation.config.score != "magnitude":
            raise MestError(f"the board driver scores by magnitude; this run scores by {em.mutation.config.score}")
        schedule = em.mutation.config.schedule
        for epoch in range(cfg.optim.epochs):
            if schedule.updates_at(epoch):
                mutation[epoch] = [float(b) for b in schedule.bounds(epoch)]
        unsupported = {layer.scheme.name for layer in trainer.layers.values()} - set(DRIVER_SCHEMES)
        if any(mutation) and unsupported:
            raise MestError(f"the board driver cannot mutate scheme {sorted(unsupported)[0]!r}; "
                            f"it mutates {', '.join(DRIVER_SCHEMES)}")
    return {"lr": _learning_rates(trainer), "mutation": mutation, "seed": cfg.run.seed,
            "regrow_momentum": em.config.regrow_momentum if em is not None else "reset",
            "augment": bool(trainer.data.augment), "pad_fill": trainer.data.pad_fill.reshape(-1).tolist(),
            "data": DATA,
            "sgd": vars(Sgd.of(cfg.optim.optimizer, trainer.optimizer, "a training bundle")), "model": cfg.data.model, "scheme": cfg.sparse.scheme}


def _learning_rates(trainer: Trainer) -> list[float]:
    """The learning rate of every epoch under the run's scheduler (replayed on a stand-in parameter)."""
    optim = trainer.config.optim
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=optim.lr)
    scheduler = SCHEDULERS.get(optim.lr_scheduler)(stand_in, optim.epochs)
    rates = []
    for _ in range(optim.epochs):
        rates.append(float(stand_in.param_groups[0]["lr"]))
        stand_in.step()
        scheduler.step()
    return rates


def _layer(trainer: Trainer, name: str, kind: str, fmt: PackedFormat | None, exact_rows: bool) -> dict[str, Any]:
    """A sparse layer's entry: its scheme, and for a compiled layer its format and geometry tables."""
    layer = trainer.layers[name]
    entry: dict[str, Any] = {"scheme": layer.scheme.name, "format": kind, "weight_shape": list(layer.weight.shape),
                             "exact_rows": exact_rows}
    if fmt is None:
        return entry
    return entry | {"capacity": fmt.capacity, "layout": format_layout(fmt)}


def format_layout(fmt: PackedFormat) -> dict[str, Any]:
    """What the board's packer of `fmt`'s kind needs besides the mask: geometry tables and tile choices."""
    geo = fmt.geometry
    phase, offsets = geo.dx_phase_and_offsets
    layout = {"x_offsets": geo.x_offsets.tolist(), "dx_phase": phase.tolist(), "dx_offsets": offsets.tolist(),
              "stride": geo.stride, "dy_plane": geo.dy_plane, "dx_pad_plane": geo.dx_pad_plane,
              "dx_pad_pitch": geo.dx_pad_pitch,
              # Compact per-unit indices (formats/compact.py) are int16 in every buffer that has them.
              "index_dtype": "int16" if any(t.dtype == torch.int16 for t in fmt.buffers().values()) else "int32"}
    return layout | {tile: int(getattr(fmt, tile)) for tile in _TILES if hasattr(fmt, tile)}


def train_on_board(bundle: str | Path, *args: str, image: BoardImage | None = None, timeout_s: float = 1800) -> str:
    """`python -m mest_driver *args` in the bundle on the emulated board; its output.

    Raises:
        MestError: the driver failed (its last line).
    """
    image = image or provision_board()
    root = Path(bundle)
    env = image.environment() | {"TVM_NUM_THREADS": "1"}
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}{os.pathsep}{root.resolve()}"  # the image sets PYTHONSAFEPATH
    done = subprocess.run(image.command("-m", "mest_driver", *args), cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise MestError(f"the bundle failed on the board: {last_output_line(done.stderr)}")
    return done.stdout


def load_trained(bundle: str | Path, trainer: Trainer, run: str = "run") -> dict[str, Any]:
    """Read a bundle's run (`bundle/run`) back into `trainer`'s model, masks and optimizer; its progress.

    Raises:
        MestError: the bundle or its run is missing or does not belong to this model.
    """
    root = Path(bundle)
    run_dir = root / run
    try:
        driven = driver_loop.Bundle(root, run_dir)
        progress = json.loads((run_dir / "progress.json").read_text())
    except (OSError, KeyError, ValueError) as err:
        raise MestError(f"cannot read the bundle's run in {str(run_dir)!r}: {err}") from None
    params = dict(trainer.model.named_parameters())
    tensors = {**params, **dict(trainer.model.named_buffers())}
    unknown = [a for a in driven.roles if a[0] in ("param", "state") and a[1] not in tensors]
    if unknown or set(driven.plan["layers"]) - set(trainer.layers):
        raise MestError(f"the bundle in {str(root)!r} was exported from another model")
    with torch.no_grad():
        for name, mask in driven.masks.items():
            trainer.layers[name].set_mask_(torch.from_numpy(mask))
            params[name].copy_(torch.from_numpy(driven.dense(name, "value")))
            _momentum(trainer, params[name]).copy_(torch.from_numpy(driven.dense(name, "momentum")))
        for (kind, name, _, role), array in zip(driven.roles, driven.arrays, strict=True):
            if kind == "param" and name not in driven.plan["layers"]:
                target = params[name] if role == "value" else _momentum(trainer, params[name])
                target.copy_(torch.from_numpy(array))
            elif kind == "state":
                tensors[name].copy_(torch.from_numpy(array))
        for name, steps in progress.get("num_batches_tracked", {}).items():
            tensors[f"{name}.num_batches_tracked"] += steps
    return progress


def _momentum(trainer: Trainer, param: torch.Tensor) -> torch.Tensor:
    state = trainer.optimizer.state.setdefault(param, {})
    if state.get("momentum_buffer") is None:
        state["momentum_buffer"] = torch.zeros_like(param)
    return state["momentum_buffer"]
