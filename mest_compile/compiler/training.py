"""The compiler side's door into training: compiled sparse kernels as a `TrainingAlgorithm`.

Registered (with its `compile` settings) in `mest_compile.algorithms.compiled` by module path, so
this module, and TVM with it, is imported only when a run sets `--compiled`. It is the only
training-side user of the compiler: `compile_model`, the tuning records and the build counters
(the process's kernel cache) are imported here and nowhere in the trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mest_compile.algorithms.compiled import CompileConfig
from mest_compile.errors import MestError
from mest_compile.compiler.api import compile_model
from mest_compile.compiler.prebuilt import load_prebuilt
from mest_compile.compiler.runtime.cache import CACHE, quiet_torch_threads
from mest_compile.compiler.target import as_target
from mest_compile.compiler.tune.machine import records_for
from mest_compile.train.events import TrainingAlgorithm

if TYPE_CHECKING:
    from mest_compile.train.loop import Trainer

# A host backend's counters: always among the summary's totals (a GPU backend's are added when one ran).
BACKEND_TOTALS = ("packs", "repacks", "rebuilds", "overflows", "dense_calls", "wgrad_skipped", "dgrad_skipped")


class CompiledKernels(TrainingAlgorithm):
    """Switches every sparse layer to compiled kernels at setup; reports what they did.

    The math is the masked dense conv's (the compiler's contract), so enabling it must not change
    the run beyond float rounding: compiling happens inside a forked global RNG, and the gate and
    timing draw their inputs from their own generators.
    """

    def __init__(self, config: CompileConfig) -> None:
        self.config = config
        # Layer name -> compile_model's report (status, reason, speedup, tuned kernels).
        self.kernels: dict[str, dict[str, Any]] = {}
        self.target_name = config.target
        self.torch_threads = torch.get_num_threads()
        self._restore: int | None = None

    def setup(self, trainer: Trainer) -> None:
        """Compile (or reuse) each layer's kernels now, timed on one training batch."""
        # Handed to the layers' backends, which build with them whenever a new input size appears.
        records = records_for(self.config.work_dir, self.config.tuning)
        target: Any = self.config.target
        if self.config.prebuilt is not None:
            target = load_prebuilt(self.config.prebuilt).target
            if self.config.target not in ("host", target.name):
                raise MestError(f"the kernels in {self.config.prebuilt} were built for {target.name}, "
                                f"not --target {self.config.target}")
        self.target_name = target if isinstance(target, str) else target.name
        # The CUDA kernels run on the model's own CUDA tensors. (Prebuilt kernels are host functions:
        # their target is the text a board's runtime keeps, without a TVM target kind.)
        if self.config.prebuilt is None and as_target(target).tensor_device == "cuda":
            if not torch.cuda.is_available():
                raise MestError("--target cuda trains on a CUDA GPU, and this PyTorch sees none (a CPU build of "
                                "torch, or no NVIDIA driver): train on the host, or install a CUDA build of torch")
            trainer.to_device("cuda")
        example = trainer.data.train_x[: trainer.config.optim.batch_size]
        # PyTorch's spinning OpenMP workers would take the cores from the kernels' pool: for the run,
        # its ops go to one thread (as fast as OMP_WAIT_POLICY=PASSIVE, whatever the import order).
        self._restore = quiet_torch_threads()
        self.torch_threads = torch.get_num_threads()
        # Whatever the compiler may draw from torch's global generator, the run must not see it:
        # the seeded stream belongs to the training (same seed, same run, compiled or not).
        with torch.random.fork_rng(devices=[]):
            self.kernels = compile_model(trainer.model, target, example_input=example,
                                         fallback=self.config.fallback, records=records)

    def on_fit_start(self, trainer: Trainer) -> None:
        """Quiet PyTorch's threads again for a later `fit()` (restored at the end of each)."""
        if self._restore is None:
            self._restore = quiet_torch_threads()

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Give the program its PyTorch thread count back."""
        if self._restore is not None:
            torch.set_num_threads(self._restore)
            self._restore = None

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        """The `kernels` field of the summary."""
        return {"kernels": self.kernel_summary(trainer)}

    def kernel_summary(self, trainer: Trainer) -> dict[str, Any]:
        """Compiled-kernel status per layer, where each ran, and what the builds and backends did.

        The totals are the sums of the counters the layers' backends report: a host backend's packs,
        repacks, rebuilds and dense calls (always present, zero when no layer ran on the host), a GPU
        backend's bytes moved, index uploads and kernel launches (present when a layer ran on one).
        """
        layers = {}
        totals = dict.fromkeys(BACKEND_TOTALS, 0)
        for name, layer in trainer.layers.items():
            entry = dict(self.kernels.get(name, {}))
            entry["runs_on"] = "dense"  # no backend: PyTorch's masked dense conv
            stats_of = getattr(layer.backend, "stats", None)
            if stats_of is not None:
                stats = stats_of.to_dict()
                entry["backend"] = stats
                # Device backends name the TVM target kind they run ("opencl", "cuda").
                entry["runs_on"] = getattr(layer.backend, "kind", "") or "host"
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0) + value
            layers[name] = entry
        return {"target": self.target_name, "prebuilt": self.config.prebuilt, "torch_threads": self.torch_threads,
                "builds": CACHE.stats.to_dict(), **totals, "layers": layers}
