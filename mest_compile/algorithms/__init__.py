"""Training algorithms on the trainer's events: MEST's Elastic Mutation, data efficiency, SparCL, compiled kernels.

Each algorithm is one file holding its config section (a frozen dataclass whose fields are the
algorithm's settings) and its `TrainingAlgorithm`, and registers both in
`mest_compile.train.events.ALGORITHMS`. Nothing else changes for a new algorithm: its settings
become `train` flags, flat and nested YAML keys and `TrainConfig` attributes; its state goes into
the checkpoint under its name; the trainer calls it on every event.

Adding one, e.g. `mest_compile/algorithms/agc.py`::

    @dataclass(frozen=True)
    class AGCConfig:
        agc_clip: float | None = setting(None, "adaptive gradient clipping factor (off when empty)")

    class AGC(TrainingAlgorithm):
        def __init__(self, config: AGCConfig) -> None:
            self.config = config

        def after_backward(self, trainer: Trainer, step: int, last: bool) -> None:
            ...  # clip trainer.model's gradients

    ALGORITHMS.add("agc", AlgorithmSpec(section="agc", config=AGCConfig, factory=AGC,
                                        enabled=lambda c: c.agc_clip is not None))

and one import line below. Setting names must be unique across all sections (they are flat
flags); registration order is the order in which algorithms see each event.

An algorithm implemented behind a heavy import registers its section here and names its
implementation by module path (`factory="mest_compile.compiler.training:CompiledKernels"`): the
module is imported only when a run enables the algorithm, so the training side never imports TVM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Registration order is event order: gradients are averaged across ranks before anything reads
# them (continual learning refuses data-parallel runs); the FLOPs counter hooks the model before
# anything copies it (AGC's snapshot) and opens each epoch's count first; the continual task is set
# before anything reads it, and rehearsal's buffer gradient is added before anything reads or masks
# gradients (SparCL's gradient masking comes after AGC's correction, last); layers freeze before the
# mutation skips them; masks mutate before data is removed, as in MEST; sieving sees what removal
# left; AGC's full pass runs on the epoch's masks and examples. isort: skip_file
from mest_compile.algorithms import distributed  # noqa: F401, I001  (importing registers)
from mest_compile.algorithms import training_flops  # noqa: F401
from mest_compile.algorithms import continual  # noqa: F401
from mest_compile.algorithms import rehearsal  # noqa: F401
from mest_compile.algorithms import layer_freezing  # noqa: F401
from mest_compile.algorithms import elastic_mutation  # noqa: F401
from mest_compile.algorithms import tdm  # noqa: F401
from mest_compile.algorithms import data_efficiency  # noqa: F401
from mest_compile.algorithms import ddr  # noqa: F401
from mest_compile.algorithms import data_sieving  # noqa: F401
from mest_compile.algorithms import agc  # noqa: F401
from mest_compile.algorithms import dgm  # noqa: F401
from mest_compile.algorithms import compiled  # noqa: F401
from mest_compile.train.events import ALGORITHMS, AlgorithmSpec, TrainingAlgorithm

if TYPE_CHECKING:
    from mest_compile.train.config import TrainConfig


def algorithm_specs() -> dict[str, AlgorithmSpec]:
    """Every registered algorithm by name (the built-in ones and any registered since), in order."""
    return {name: ALGORITHMS.get(name) for name in ALGORITHMS}


def build_algorithms(config: TrainConfig) -> dict[str, TrainingAlgorithm]:
    """The algorithms `config` enables, by registered name, in registration order."""
    built: dict[str, TrainingAlgorithm] = {}
    for name, spec in algorithm_specs().items():
        section = config.section(spec.section)
        if spec.enabled(section):
            built[name] = spec.create(section)
    return built


def record_defaults() -> dict[str, Any]:
    """Every registered algorithm's epoch-record fields at their off values (one metrics schema)."""
    return {key: value for spec in algorithm_specs().values() for key, value in spec.record_defaults.items()}


def summary_defaults() -> dict[str, Any]:
    """Every registered algorithm's summary fields at their off values."""
    return {key: value for spec in algorithm_specs().values() for key, value in spec.summary_defaults.items()}
