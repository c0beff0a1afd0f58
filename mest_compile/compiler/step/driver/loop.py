"""`python -m mest_driver`: train a bundle's compiled step on this machine, with MEST's mutation.

Reads the bundle written by `mest-compile export --train` (`bundle.json`, `step.json`, `step.so`,
`state.npz`, `masks.npz`, `data.npz`), trains for the planned epochs (learning rate and mutation
bounds per epoch were planned by the host from the run's config) and after every epoch writes
the run directory atomically: `state.npz` (every step argument), `masks.npz`, `progress.json`
(epochs done, generator state, metrics). `--resume` continues from it; `mest-compile` reads it
back into a model (`mest_compile.compiler.step.bundle.load_trained`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .formats import PACKERS, FormatError, Packed
from .schemes import mutate


class DriverError(Exception):
    """What stops a run, said in one line."""


def _atomic(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb" if binary else "w") as handle:
        write(handle)
    os.replace(tmp, path)


class Bundle:
    """The bundle's step, its arrays and each sparse layer's packed structure."""

    def __init__(self, root: Path, state_dir: Path) -> None:
        self.root = root
        self.plan = json.loads((root / "bundle.json").read_text())
        self.manifest = json.loads((root / "step.json").read_text())
        state, masks = np.load(state_dir / "state.npz"), np.load(state_dir / "masks.npz")
        self.arrays = [np.array(state[k]) for k in self.manifest["order"]]
        self.roles = [(a["kind"], a["name"], a.get("field", ""), a["role"]) for a in self.manifest["arguments"]]
        self.masks = {name: np.array(masks[name]).astype(bool) for name in self.plan["layers"]}
        self.packed: dict[str, Packed] = {}
        for name, layer in self.plan["layers"].items():
            if layer["format"] != "mask":
                self.packed[name] = PACKERS[layer["format"]](self.masks[name], layer["layout"], layer["capacity"])

    def index(self, kind: str, name: str, field: str = "", role: str = "value") -> int:
        return self.roles.index((kind, name, field, role))

    # --- dense weights of the sparse layers ----------------------------------------------------
    def dense(self, name: str, role: str) -> np.ndarray:
        """Layer `name`'s weight (or momentum) as a dense array, zero off its mask."""
        layer = self.plan["layers"][name]
        if layer["format"] == "mask":
            return self.arrays[self.index("param", name, role=role)].copy()
        packed, values = self.packed[name], self.arrays[self.index("values", name, role=role)]
        out = np.zeros(int(np.prod(layer["weight_shape"])), dtype=np.float32)
        rows = values.reshape(values.shape[0], -1)[: packed.nnz]
        out[packed.flat_idx[: packed.nnz].reshape(-1)] = rows.reshape(-1)
        return out.reshape(layer["weight_shape"])

    def set_dense(self, name: str, role: str, weight: np.ndarray) -> None:
        """Store a dense weight (or momentum) of layer `name` in its step argument (packed if compiled)."""
        layer = self.plan["layers"][name]
        if layer["format"] == "mask":
            self.arrays[self.index("param", name, role=role)] = weight.astype(np.float32)
            return
        i = self.index("values", name, role=role)
        packed, rows = self.packed[name], self.arrays[i].shape[0]
        gathered = weight.reshape(-1)[packed.flat_idx[:rows].reshape(-1)].reshape(self.arrays[i].shape)
        gathered[packed.nnz:] = 0.0
        self.arrays[i] = np.ascontiguousarray(gathered, dtype=np.float32)

    def set_mask(self, name: str, mask: np.ndarray) -> None:
        """Repack layer `name` for `mask` (its buffers and row mask; the same executable)."""
        layer = self.plan["layers"][name]
        self.masks[name] = mask
        if layer["format"] == "mask":
            self.arrays[self.index("mask", name)] = mask.astype(np.float32)
            return
        packed = PACKERS[layer["format"]](mask, layer["layout"], layer["capacity"])
        rows = self.arrays[self.index("rows", name)]
        if layer["exact_rows"] and packed.nnz != rows.shape[0]:
            raise DriverError(f"layer {name} now keeps {packed.nnz} units; its compiled step holds exactly "
                              f"{rows.shape[0]}: export the bundle again from the host for this schedule")
        self.packed[name] = packed
        for field, buffer in packed.buffers.items():
            self.arrays[self.index("buffer", name, field)] = buffer
        fresh = np.zeros_like(rows)
        fresh[: packed.nnz] = 1.0
        self.arrays[self.index("rows", name)] = fresh

    def mutate(self, lower: float, upper: float, rng: np.random.Generator, reset_momentum: bool) -> dict[str, Any]:
        """Elastic Mutation of every sparse layer; per layer (units before, after prune, after growth)."""
        report = {}
        for name, layer in self.plan["layers"].items():
            weight, momentum = self.dense(name, "value"), self.dense(name, "momentum")
            before = self.masks[name]
            survivors, mask = mutate(weight, layer["scheme"], lower, upper, rng)
            try:
                self.set_mask(name, mask)
            except FormatError as err:
                raise DriverError(f"layer {name}: {err}; export the bundle with more capacity") from None
            self.set_dense(name, "value", weight * survivors)
            self.set_dense(name, "momentum", momentum * (survivors & mask) if reset_momentum else momentum * mask)
            report[name] = [int(before.sum()), int(survivors.sum()), int(mask.sum())]
        return report

    def save(self, out: Path, progress: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        _atomic(out / "state.npz", lambda f: np.savez(f, **dict(zip(self.manifest["order"], self.arrays))))
        _atomic(out / "masks.npz", lambda f: np.savez(f, **self.masks))
        _atomic(out / "progress.json", lambda f: f.write(json.dumps(progress, indent=1)), binary=False)


def _augment(x: np.ndarray, rng: np.random.Generator, fill: np.ndarray, padding: int = 4) -> np.ndarray:
    """Pad(4) + random crop back to size + random horizontal flip, per image (MEST's CIFAR augmentation)."""
    b, c, h, w = x.shape
    padded = np.broadcast_to(fill.reshape(1, c, 1, 1), (b, c, h + 2 * padding, w + 2 * padding)).copy()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    dy, dx = rng.integers(0, 2 * padding + 1, b), rng.integers(0, 2 * padding + 1, b)
    flip = rng.random(b) < 0.5
    out = np.empty_like(x)
    for i in range(b):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop[:, :, ::-1] if flip[i] else crop
    return out


def train(root: Path, out: Path, epochs: int | None, resume: bool, quiet: bool) -> dict[str, Any]:
    """Train the bundle in `root`, writing the run to `out` after every epoch; the final progress."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    if resume and not (out / "progress.json").exists():
        raise DriverError(f"nothing to resume in {out}")
    if not resume and (out / "progress.json").exists():
        raise DriverError(f"{out} already holds a run: pass --resume or choose another --out")
    bundle = Bundle(root, out if resume else root)
    plan = bundle.plan
    progress = json.loads((out / "progress.json").read_text()) if resume else {"epochs_done": 0, "history": []}
    rng = np.random.default_rng(plan["seed"])
    if resume:
        rng.bit_generator.state = progress["rng"]
    total = min(epochs or len(plan["lr"]), len(plan["lr"]))
    data = np.load(root / plan["data"])
    x_all, y_all = data["train_x"].astype(np.float32), data["train_y"].astype(np.int64)
    batch_shape, classes = bundle.manifest["batch_shape"], bundle.manifest["num_classes"]
    batch = batch_shape[0]
    fill = np.asarray(plan["pad_fill"], dtype=np.float32)
    step = VirtualMachine(tvm.runtime.load_module(str(root / "step.so")), tvm.cpu())["train_step"]
    roles = bundle.roles
    n = sum(1 for r in roles if r[3] == "value" and r[0] in ("param", "values"))
    states = [i for i, r in enumerate(roles) if r[0] == "state"]
    for epoch in range(progress["epochs_done"], total):
        start = time.perf_counter()
        bounds = plan["mutation"][epoch]
        mutation = bundle.mutate(*bounds, rng, plan["regrow_momentum"] == "reset") if bounds else None
        held = [tvm.runtime.tensor(a) for a in bundle.arrays]
        order = rng.permutation(len(y_all))
        lr = tvm.runtime.tensor(np.array(plan["lr"][epoch], dtype=np.float32))
        loss_sum, correct, seen = 0.0, 0, 0
        for first in range(0, len(order) - batch + 1, batch):  # the step has one static batch size
            index = order[first:first + batch]
            x = x_all[index]
            if plan["augment"]:
                x = _augment(x, rng, fill)
            onehot = np.eye(classes, dtype=np.float32)[y_all[index]]
            result = step(tvm.runtime.tensor(np.ascontiguousarray(x)), tvm.runtime.tensor(onehot), lr, *held)
            held[: 2 * n] = [result[2 + i] for i in range(2 * n)]
            for j, i in enumerate(states):
                held[i] = result[2 + 2 * n + j]
            loss_sum += float(result[0].numpy()) * batch
            correct += int((result[1].numpy().argmax(1) == y_all[index]).sum())
            seen += batch
        bundle.arrays = [h.numpy() for h in held]
        for name in plan["batch_norms"]:
            progress.setdefault("num_batches_tracked", {}).setdefault(name, 0)
            progress["num_batches_tracked"][name] += seen // batch
        record = {"epoch": epoch + 1, "lr": plan["lr"][epoch], "train_loss": loss_sum / max(seen, 1),
                  "train_acc": correct / max(seen, 1), "seconds": round(time.perf_counter() - start, 3),
                  "units": {k: int(v.sum()) for k, v in bundle.masks.items()}, "mutation": mutation}
        progress["history"].append(record)
        progress["epochs_done"] = epoch + 1
        progress["rng"] = rng.bit_generator.state
        bundle.save(out, progress)
        if not quiet:
            print(f"epoch {epoch + 1}/{total}  loss {record['train_loss']:.4f}  train acc {100 * record['train_acc']:.2f}%"
                  f"  {record['seconds']:.1f} s" + ("  (masks mutated)" if mutation else ""), flush=True)
    return progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mest_driver", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=".", help="the bundle directory (default: here)")
    parser.add_argument("--out", default="run", help="run directory, relative to the bundle (default: run)")
    parser.add_argument("--epochs", type=int, default=None, help="stop after this many epochs of the plan")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no epoch lines")
    args = parser.parse_args(argv)
    root = Path(args.bundle)
    try:
        train(root, root / args.out, args.epochs, args.resume, args.quiet)
    except (DriverError, FormatError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
