"""Config sections: the frozen dataclasses a `TrainConfig` is made of, and the helpers that declare them.

A section groups the settings of one concern. Each field is declared with `setting(default,
help)`: the help text is the `train --help` line, the default a comment on why. Algorithm
sections (in `mest_compile.algorithms`) are declared the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mest_compile.errors import MestError


def setting(default: Any, help: str, *, text: bool = False) -> Any:
    """A section field with its `--help` text; `text=True`: YAML numbers are read as strings (bounds)."""
    return field(default=default, metadata={"help": help, "text": text})


@dataclass(frozen=True)
class DataConfig:
    """What is trained, on what."""

    # Offline default; MEST's recipes use resnet32.
    model: str = setting("small_cnn", "model name (resnet32 is MEST's wide ResNet-32; small_cnn for quick runs)")
    dataset: str = setting("digits", "digits | cifar10 | cifar100 | synthetic")  # ships inside scikit-learn: no download
    data_dir: str | None = setting(None, "directory holding the CIFAR python-pickle files")


@dataclass(frozen=True)
class SparseConfig:
    """Which weights are sparse, in which structure, how sparse at the start."""

    scheme: str = setting("irregular", "sparsity scheme (SPARSITY_TYPE), e.g. irregular, pattern+filter_balance, "
                                       "block, channel")  # MEST's SPARSITY_TYPE
    sparsity: float = setting(0.9, "uniform per-layer sparsity when --profile is not a file")
    profile: str | None = setting(None, "MEST per-layer YAML (CONFIG_FILE), or 'uniform' / 'erk' generated for "
                                        "the model")  # None: uniform at `sparsity`
    ratio_space: str = setting("overall", "'kernel' if profile and bounds hold MEST pattern kernel-level ratios "
                                          "(0.775 = 90%)")

    def __post_init__(self) -> None:
        if self.ratio_space not in ("overall", "kernel"):
            raise MestError(f"ratio_space must be 'overall' or 'kernel', got {self.ratio_space!r}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation; defaults are MEST's (SGD 0.9 / 1e-4, lr 0.1, cosine to 4e-8, batch 64)."""

    optimizer: str = setting("sgd", "sgd | adam")
    lr: float = setting(0.1, "initial learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(1e-4, "weight decay")
    lr_scheduler: str = setting("cosine", "cosine | step | constant")
    # MEST trains 160 epochs on CIFAR; 30 is plenty for digits.
    epochs: int = setting(30, "number of epochs (may be raised with --resume to extend a run)")
    batch_size: int = setting(64, "training batch size")
    test_batch_size: int = setting(256, "evaluation batch size")

    def __post_init__(self) -> None:
        require_positive(self, "epochs", "batch_size", "test_batch_size")
        if self.lr <= 0:
            raise MestError(f"lr must be > 0, got {self.lr!r}")


@dataclass(frozen=True)
class RunConfig:
    """How the run itself behaves: randomness, reference quirks, threads."""

    seed: int = setting(914, "seed of every random choice (init, batches, augmentation, growth)")  # MEST's seed
    # Off by default: the corrections are the point; docs/QUIRKS.md lists each switch.
    compat: tuple[str, ...] = setting((), "comma-separated reference-behaviour switches, or 'reference' "
                                          "(see docs/QUIRKS.md)")
    threads: int | None = setting(None, "torch intra-op threads")  # None keeps torch's default
    # torch: PyTorch eager (sparse layers masked dense, or compiled kernels with --compiled);
    # tvm: the whole step (forward, loss, gradients, SGD) compiled by TVM for --target.
    engine: str = setting("torch", "step engine: torch (PyTorch eager) or tvm (the whole training step compiled by TVM)")


def require_positive(section: Any, *names: str) -> None:
    """A `MestError` naming the first of `names` that is not a positive integer."""
    for name in names:
        value = getattr(section, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MestError(f"{name} must be a positive integer, got {value!r}")


def require_non_negative(section: Any, *names: str) -> None:
    """A `MestError` naming the first of `names` below 0 (None means unset and passes)."""
    for name in names:
        value = getattr(section, name)
        if value is not None and value < 0:
            raise MestError(f"{name} must be >= 0, got {value!r}")


# The trainer's own sections, by name (algorithms add theirs through their registration).
CORE_SECTIONS: dict[str, type] = {"data": DataConfig, "sparse": SparseConfig, "optim": OptimConfig, "run": RunConfig}
