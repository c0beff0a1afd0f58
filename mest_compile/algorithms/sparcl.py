"""SparCL's settings (the `sparse_continual` section), shared by its three parts.

SparCL (Wang et al., NeurIPS 2022) cuts a rehearsal run's cost three ways, each its own
algorithm here: task-aware dynamic masking (`tdm.py`), dynamic data removal (`ddr.py`) and
dynamic gradient masking (`dgm.py`). `--sparcl` turns on all three, `--tdm`, `--ddr`, `--dgm`
one each. Defaults are SparCL's script's (SEED_ALGORITHMS.md section 1.2), its per-task epoch
counts turned into fractions of a task where the task length differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from mest_compile.errors import MestError
from mest_compile.train.sections import require_non_negative, require_positive, setting

SECTION = "sparse_continual"


@dataclass(frozen=True)
class SparCLConfig:
    """SparCL's three parts and their settings."""

    sparcl: bool = setting(False, "SparCL: --tdm, --ddr and --dgm together")
    tdm: bool = setting(False, "task-aware dynamic masking: Elastic Mutation restarted every task, "
                               "importance |w| + lambda |g|")
    # SparCL's --sp-lmd default.
    tdm_lambda: float = setting(0.5, "TDM weight of |gradient of the last batch| in the importance")
    # SparCL prunes 1% of all weights beyond the target and grows them back (0.76 -> 0.75).
    tdm_swap: float = setting(0.01, "TDM fraction of each layer's weights pruned and regrown per update")
    tdm_every: int = setting(5, "TDM mask update every N epochs of a task, epoch 0 included")
    # SparCL mutates at epochs 0..40 of 50 and keeps the mask from 45 on.
    tdm_until: float = setting(0.9, "TDM masks stay fixed from this fraction of each task's epochs on")
    ddr: bool = setting(False, "dynamic data removal: the least-forgotten examples of the task leave, repeatedly")
    # SparCL removes 3000 of 10000 examples per task in 4 events (epochs 5, 10, 15, 20 of 50).
    ddr_fraction: float = setting(0.3, "DDR fraction of each task's examples removed in all")
    ddr_events: int = setting(4, "DDR removals per task, equal shares of --ddr-fraction")
    ddr_every: int = setting(5, "DDR removal every N epochs of a task (epoch 0 excluded)")
    dgm: bool = setting(False, "dynamic gradient masking: only each sparse layer's largest weight gradients apply")
    # SparCL's 0.80 gradient sparsity at 0.75 weight sparsity keeps 80% of the live gradients.
    dgm_keep: float = setting(0.8, "DGM fraction of each layer's masked-in weight gradients kept (largest |g|)")
    # SparCL's sample_frequency.
    dgm_every: int = setting(30, "DGM gradient mask refreshed every N batches of an epoch, batch 0 included")

    def __post_init__(self) -> None:
        require_positive(self, "tdm_every", "ddr_events", "ddr_every", "dgm_every")
        for name, low, high in (("tdm_swap", 0.0, 1.0), ("tdm_until", 0.0, 1.0), ("ddr_fraction", 0.0, 1.0),
                                ("dgm_keep", 0.0, 1.0)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise MestError(f"{name} must be in [{low}, {high}], got {value!r}")
        require_non_negative(self, "tdm_lambda")

    def uses(self, part: str) -> bool:
        """Whether part `tdm`, `ddr` or `dgm` is on (by its own flag or by --sparcl)."""
        return self.sparcl or bool(getattr(self, part))
