"""`--engine tvm`: the trainer's steps run as one compiled TVM function per batch size.

The step is traced, lowered (sparse layers on their scheme's kernels) and built on the first epoch
and once per new batch size (a partial last batch has its own static shape). Between
`begin_epoch` and `end_epoch` the weights, momenta and running statistics live in the step's
arrays; the model and the optimizer get them back at the end of every epoch, so evaluation,
Elastic Mutation and checkpoints work on the model as with the torch engine. A mutation then
repacks each changed layer's buffers in place when the recompile policy allows (same executable)
and rebuilds the step when a layer overflows its capacity or drifts too far.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mest_compile.compiler.families import PackedFormat, family_for
from mest_compile.compiler.runtime.policy import RecompilePolicy, refill
from mest_compile.compiler.step.build import Argument, BuiltStep, Sgd, compile_step
from mest_compile.compiler.step.device import StepDevice, step_device
from mest_compile.compiler.step.state import momentum_of, pack_tensor, unpack_tensor
from mest_compile.compiler.step.trace import TracedStep
from mest_compile.compiler.target import Target, as_target
from mest_compile.compiler.runtime.records import TunedChoices
from mest_compile.compiler.tune.machine import records_for
from mest_compile.errors import MestError
from mest_compile.train.engine import StepEngine

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer

# What the step counts in the summary.
COUNTERS = ("builds", "packs", "repacks", "rebuilds", "overflows")


class TvmEngine(StepEngine):
    """Runs each training step as one compiled TVM function (see the module docstring)."""

    name = "tvm"
    # The step updates the weights inside TVM: no gradients in `.grad` to average across processes.
    data_parallel = False

    def __init__(self, policy: RecompilePolicy | None = None) -> None:
        self.policy = policy or RecompilePolicy()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.build_seconds = 0.0
        self.target: Target | None = None
        self.sgd: Sgd | None = None
        self.records: TunedChoices | None = None
        self._traces: dict[tuple[int, ...], TracedStep] = {}
        self._steps: dict[tuple[int, ...], BuiltStep] = {}
        self._vms: dict[tuple[int, ...], Any] = {}
        self.device: StepDevice = StepDevice()
        # Per state array, the digest of what the device holds: unchanged arrays are not sent again.
        self._sent: dict[tuple[Argument, str], bytes] = {}
        self.bytes_sent = self.bytes_kept = 0
        self.formats: dict[str, PackedFormat] = {}
        # Rows of each compiled layer's `values` argument (its capacity, or its units exactly).
        self.rows: dict[str, int] = {}
        self.report: dict[str, dict[str, Any]] = {}
        # The model's dense convs run on a kernel family's kernels (weight name -> family).
        self.dense_convs: dict[str, str] = {}
        self._versions: dict[str, int] = {}
        # Each layer's format signature at its last build (what drift is measured from).
        self._signatures: dict[str, tuple] = {}
        self._arrays: dict[Argument, Any] = {}
        self._momenta: dict[Argument, Any] = {}
        self._steps_this_epoch = 0

    # --- the engine's events -------------------------------------------------------------------
    def setup(self, trainer: Trainer) -> None:
        """Refuse what the compiled step cannot run, in one line."""
        cfg = trainer.config
        if cfg.compile.compiled:
            raise MestError("--engine tvm compiles the whole step; --compiled (compiled convs behind torch ops) belongs "
                            "to --engine torch: drop one of them")
        self.sgd = Sgd.of(cfg.optim.optimizer, trainer.optimizer, "--engine tvm", "; it runs on --engine torch")
        self.target = as_target(cfg.compile.target)
        self.device = step_device(self.target, cfg.compile.rpc, cfg.compile.rpc_key)
        self.records = records_for(cfg.compile.work_dir, cfg.compile.tuning)

    def begin_epoch(self, trainer: Trainer) -> None:
        """Repack or rebuild for changed masks, then push the model's state into the step's arrays."""
        self._steps_this_epoch = 0
        if self._steps:
            self._absorb_mutations(trainer)
        if not self._steps:
            self._build(trainer, self._batch_shape(trainer, trainer.config.optim.batch_size))
        self._push(trainer)

    def step(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor, step: int, last: bool) -> tuple[float, torch.Tensor]:
        """One compiled SGD step; on the epoch's last step the gradients are written to the model's `.grad`."""
        shape = tuple(x.shape)
        built = self._steps.get(shape) or self._build(trainer, shape)
        trainable = built.trainable
        onehot = F.one_hot(y, trainer.data.num_classes).float()
        lr = np.array(trainer.optimizer.param_groups[0]["lr"], dtype=np.float32)
        batch = [self.device.put(a) for a in (x.numpy(), onehot.numpy(), lr)]
        args = [*batch, *(self._arrays[a] for a in trainable), *(self._momenta[a] for a in trainable),
                *(self._arrays[a] for a in built.inputs)]
        out = self.device.run(self._vms[shape], args)
        n = len(trainable)
        loss, logits = float(out[0].numpy()), torch.from_numpy(out[1].numpy())
        for i, arg in enumerate(trainable):
            self._arrays[arg] = out[2 + i]
            self._momenta[arg] = out[2 + n + i]
        states = [a for a in built.inputs if a.kind == "state"]
        for i, arg in enumerate(states):
            self._arrays[arg] = out[2 + 2 * n + i]
        if last:
            grads = [out[2 + 2 * n + len(states) + i] for i in range(n)]
            self._write_grads(trainer, trainable, grads)
        self._steps_this_epoch += 1
        trainer.emit("after_backward", step, last)
        return loss, logits

    def end_epoch(self, trainer: Trainer) -> None:
        """Write weights, momenta and running statistics back to the model and the optimizer."""
        params = dict(trainer.model.named_parameters())
        tensors = {**params, **dict(trainer.model.named_buffers())}
        with torch.no_grad():
            for arg, array in self._arrays.items():
                if arg.trainable:
                    param = params[arg.name]
                    param.copy_(unpack_tensor(arg, self._received(arg, "value", array), trainer.layers, self.formats))
                    momentum = self._received(arg, "momentum", self._momenta[arg])
                    state = trainer.optimizer.state.setdefault(param, {})
                    state["momentum_buffer"] = unpack_tensor(arg, momentum, trainer.layers, self.formats)
                elif arg.kind == "state":
                    tensors[arg.name].copy_(torch.from_numpy(self._received(arg, "value", array)))
            for name in self._any_trace().batch_norms:
                tensors[f"{name}.num_batches_tracked"] += self._steps_this_epoch

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """What the step did: builds, packs, repacks, rebuilds; each sparse layer's status."""
        return {"name": self.name, "target": self.target.name if self.target else None, "device": self.device.name,
                "bytes_sent": self.bytes_sent, "bytes_kept": self.bytes_kept, **self.counts,
                "build_seconds": round(self.build_seconds, 3), "layers": self.report,
                "dense_convs_on_kernels": self.dense_convs, "sparse_state_bytes": self._sparse_state_bytes(trainer)}

    def _sparse_state_bytes(self, trainer: Trainer) -> dict[str, int]:
        """What the step holds for its compiled sparse layers (values, momentum and gradient, each packed,
        plus row masks and index buffers) against the dense weight, gradient and momentum they replace."""
        packed = 0
        for arg, array in self._arrays.items():
            if arg.name in self.formats and arg.kind in ("values", "rows", "buffer"):
                size = int(np.prod(array.shape)) * np.dtype(str(array.dtype)).itemsize
                packed += size * (3 if arg.kind == "values" else 1)
        dense = sum(3 * trainer.layers[name].weight.numel() * 4 for name in self.formats)
        return {"packed": packed, "dense": dense}

    # --- building ------------------------------------------------------------------------------
    def _batch_shape(self, trainer: Trainer, batch: int) -> tuple[int, ...]:
        return (batch, *trainer.data.train_x.shape[1:])

    def _any_trace(self) -> TracedStep:
        return next(iter(self._traces.values()))

    def _build(self, trainer: Trainer, shape: tuple[int, ...]) -> BuiltStep:
        assert self.target is not None and self.sgd is not None
        start = time.perf_counter()
        fresh = [name for name in trainer.layers if name not in self.formats]
        step = compile_step(trainer.model, trainer.layers, shape, trainer.data.num_classes, self.target, self.sgd,
                            formats=self.formats, records=self.records, capacity=self.policy.capacity,
                            traced=self._traces.get(shape))
        self._traces[shape] = step.traced
        lowered, built = step.lowered, step.built
        for slot in lowered.slots.values():
            if slot.layer in fresh:
                self.counts["packs"] += 1
            self.formats[slot.layer] = slot.fmt
            self.rows[slot.layer] = slot.capacity
            self._versions[slot.layer] = trainer.layers[slot.layer].mask_version
            self.report[slot.layer] = {"status": "compiled", "scheme": slot.family.scheme_name,
                                       "capacity": slot.fmt.capacity, "units": slot.fmt.nnz}
        for dense in lowered.dense.values():
            self.report[dense.layer] = {"status": "dense", "reason": dense.reason}
        self.dense_convs = step.dense_convs
        self._signatures = {name: fmt.signature() for name, fmt in self.formats.items()}
        self._steps[shape] = built
        self._vms[shape] = self.device.load(built)
        self.counts["builds"] += 1
        self.build_seconds += time.perf_counter() - start
        if self._arrays:  # a new batch size mid-epoch: same arguments, the arrays carry over
            self._check_same_arguments(built)
        return built

    def _check_same_arguments(self, built: BuiltStep) -> None:
        missing = [a for a in built.arguments if a not in self._arrays]
        if missing:
            raise MestError(f"the step built for another batch size takes other arguments ({missing[0]})")

    def _absorb_mutations(self, trainer: Trainer) -> None:
        """Repack layers whose mask changed; rebuild the step when one must (overflow, padding, drift)."""
        rebuild = False
        for name, fmt in list(self.formats.items()):
            layer = trainer.layers[name]
            if self._versions.get(name) == layer.mask_version:
                continue
            family = family_for(layer.scheme.name)
            units = family.units(layer.mask)
            if family.visits_every_value_row and units != self.rows[name] and units <= fmt.capacity:
                decision = "rows"  # its values must hold exactly the units: a new shape
            else:
                decision = refill(self.policy, fmt, layer.mask, units, self._signatures[name])
                self.counts["overflows"] += int(decision == "overflow")
            self._versions[name] = layer.mask_version
            if decision == "reuse":
                self.counts["repacks"] += 1
                self.report[name]["units"] = fmt.nnz
            else:
                del self.formats[name]  # packed afresh with a capacity for the new mask
                self.report[name]["rebuilt"] = decision
                rebuild = True
        if rebuild:
            self.counts["rebuilds"] += 1
            self._steps.clear()
            self._vms.clear()

    # --- moving state --------------------------------------------------------------------------
    def _push(self, trainer: Trainer) -> None:
        built = next(iter(self._steps.values()))
        params = dict(trainer.model.named_parameters())
        tensors = {**params, **dict(trainer.model.named_buffers())}
        for arg in built.arguments:
            self._arrays[arg] = self._send(arg, "value", pack_tensor(arg, tensors, trainer.layers, self.formats,
                                                                     self.rows), self._arrays.get(arg))
            if arg.trainable:
                momentum = momentum_of(trainer.optimizer, params[arg.name])
                packed = pack_tensor(arg, tensors, trainer.layers, self.formats, self.rows, source=momentum)
                self._momenta[arg] = self._send(arg, "momentum", packed, self._momenta.get(arg))

    def _received(self, arg: Argument, role: str, held: Any) -> np.ndarray:
        """The device array `held`, read back; remembered as what the device holds."""
        array = held.numpy()
        self._sent[(arg, role)] = _digest(array)
        return array

    def _send(self, arg: Argument, role: str, array: np.ndarray, held: Any) -> Any:
        """`held` when the device already holds `array`, else `array` sent anew."""
        digest = _digest(array)
        if held is not None and self._sent.get((arg, role)) == digest:
            self.bytes_kept += array.nbytes
            return held
        self._sent[(arg, role)] = digest
        self.bytes_sent += array.nbytes
        return self.device.put(array)

    def _write_grads(self, trainer: Trainer, trainable: list[Argument], grads: list[Any]) -> None:
        params = dict(trainer.model.named_parameters())
        for arg, grad in zip(trainable, grads, strict=True):
            params[arg.name].grad = unpack_tensor(arg, grad, trainer.layers, self.formats)


def _digest(array: np.ndarray) -> bytes:
    return hashlib.blake2b(array.tobytes(), digest_size=16).digest() + str(array.shape).encode()
