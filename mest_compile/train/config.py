"""The training configuration: one frozen object built from a YAML file and command-line flags."""

from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from mest_compile.errors import MestError


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Field names follow MEST's script variables.

    Defaults reproduce MEST's ResNet-32 recipe where it has one, and otherwise an offline run
    that finishes in about a minute on two cores.
    """

    # --- model and data ---
    model: str = "small_cnn"  # offline default; MEST's recipes use resnet32
    dataset: str = "digits"  # ships inside scikit-learn: works with no download
    data_dir: str | None = None  # directory of the CIFAR python-pickle files
    # --- sparsity ---
    scheme: str = "irregular"  # MEST's SPARSITY_TYPE
    sparsity: float = 0.9  # uniform per-layer sparsity when no --profile file is given
    profile: str | None = None  # MEST YAML path, or `uniform` / `erk` generated for the model
    ratio_space: str = "overall"  # `kernel`: ratios are MEST pattern kernel-level values (0.775 = 90%)
    lower_bound: str | None = None  # LOWER_BOUND, e.g. "0.92-0.91-0.9"; prune-to sparsity
    upper_bound: str | None = None  # UPPER_BOUND, e.g. "0.9-0.9-0.9"; grow-to sparsity
    mask_update_decay_epoch: str | None = None  # MASK_UPDATE_DECAY_EPOCH, e.g. "90-120"
    sp_mask_update_freq: int = 5  # SP_MASK_UPDATE_FREQ in epochs (epoch 0 included)
    sp_lmd: float = 0.0  # lambda of |grad| in the prune score; 0 is MEST's magnitude pruning
    regrow_momentum: str = "reset"  # `keep` reproduces MEST (regrown weights keep old momentum)
    compat: tuple[str, ...] = ()  # reference-behaviour switches, see docs/QUIRKS.md
    # --- optimisation (MEST: SGD 0.9 / 1e-4, lr 0.1, cosine to 4e-8, batch 64) ---
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_scheduler: str = "cosine"
    epochs: int = 30  # MEST trains 160 epochs on CIFAR; 30 is plenty for digits
    batch_size: int = 64
    test_batch_size: int = 256
    seed: int = 914  # MEST's seed
    # --- data efficiency (MEST_SPEC section 4) ---
    data_efficient: bool = False  # record forgetting statistics during training
    remove_data_epoch: int | None = None  # remove examples at the start of this epoch
    remove_n: int = 0  # how many of the least-forgotten examples to remove
    keep_lowest_n: int = 0  # skip this many of the least-forgotten before removing
    sorting_file: str | None = None  # a MEST importance .pkl to remove by instead of own statistics
    output_name: str = "mest"  # prefix of the importance file: <name>_unforget_<zeros>.pkl
    # --- compiled kernels ---
    compiled: bool = False  # run sparse layers on compiled kernels instead of masked dense convs
    target: str = "host"  # target preset of the compiled kernels (they run on this machine)
    fallback: str = "measure"  # `measure`: a layer slower than dense stays dense; `never`
    work_dir: str | None = None  # tuning records of `mest-compile tune` the compiled kernels replay
    # --- run ---
    threads: int | None = None  # torch intra-op threads; None keeps torch's default

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "test_batch_size": self.test_batch_size,
                    "sp_mask_update_freq": self.sp_mask_update_freq}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise MestError(f"{name} must be a positive integer, got {value!r}")
        for name in ("remove_n", "keep_lowest_n"):
            if getattr(self, name) < 0:
                raise MestError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise MestError(f"lr must be > 0, got {self.lr!r}")
        if self.ratio_space not in ("overall", "kernel"):
            raise MestError(f"ratio_space must be 'overall' or 'kernel', got {self.ratio_space!r}")
        if self.fallback not in ("measure", "never"):
            raise MestError(f"fallback must be 'measure' or 'never', got {self.fallback!r}")
        if self.regrow_momentum not in ("reset", "keep"):
            raise MestError(f"regrow_momentum must be 'reset' or 'keep', got {self.regrow_momentum!r}")
        if (self.lower_bound is None) != (self.upper_bound is None):
            raise MestError("--lower-bound and --upper-bound go together: give both or neither")
        if self.lower_bound is not None and self.mask_update_decay_epoch is None:
            # MEST silently never mutates without a decay string; say so instead.
            raise MestError("--lower-bound/--upper-bound need --mask-update-decay-epoch (masks update only when it "
                            "is set); e.g. 90-120, or one epoch past the end for a single stage")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (YAML/JSON/checkpoint friendly)."""
        out = dataclasses.asdict(self)
        out["compat"] = list(self.compat)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a mapping; unknown keys are errors (typos must not be ignored)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise MestError(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
        values = dict(data)
        if "compat" in values:
            compat = values["compat"]
            values["compat"] = tuple(compat.split(",") if isinstance(compat, str) else compat or ())
        for key, value in values.items():
            values[key] = _coerce(known[key], value, source)
        return cls(**values)

    @classmethod
    def load(cls, path: str | pathlib.Path | None, overrides: dict[str, Any]) -> "TrainConfig":
        """A YAML file (or nothing) overlaid with flags that were given (None means not given)."""
        data: dict[str, Any] = {}
        if path is not None:
            file = pathlib.Path(path)
            if not file.is_file():
                raise MestError(f"config file {str(file)!r} does not exist")
            try:
                loaded = yaml.safe_load(file.read_text())
            except yaml.YAMLError as exc:
                raise MestError(f"config file {str(file)!r} is not valid YAML: {_first_line(exc)}") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise MestError(f"config file {str(file)!r} must hold a mapping of settings")
            data = {str(k).replace("-", "_"): v for k, v in (loaded or {}).items()}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=str(path) if path else "flags")


def _coerce(spec: dataclasses.Field, value: Any, source: str) -> Any:
    """Check a YAML value against the field's type; bound strings may be written as numbers."""
    kind = str(spec.type)
    if value is None:
        if "None" in kind:
            return None
        raise MestError(f"{source}: {spec.name} may not be empty")
    if spec.name in ("lower_bound", "upper_bound", "mask_update_decay_epoch"):
        return str(value)
    try:
        if kind.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("int"):
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise MestError(f"{source}: {spec.name} has the wrong type: {value!r}") from None
    return value


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
