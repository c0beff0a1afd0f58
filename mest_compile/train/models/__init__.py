"""Models by name: `build_model("resnet32", num_classes=10, in_channels=3)`.

A model factory takes `num_classes` and `in_channels` and may take keyword options of its own;
`build_model` validates all of them and turns a misuse into a one-line `MestError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from mest_compile.errors import MestError
from mest_compile.registry import Registry
from mest_compile.train.models.resnet18_mammoth import resnet18_mammoth
from mest_compile.train.models.resnet32 import resnet32
from mest_compile.train.models.small_cnn import small_cnn

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.add("resnet32", resnet32)
MODELS.add("resnet18_mammoth", resnet18_mammoth, aliases=("resnet18-mammoth",))
MODELS.add("small_cnn", small_cnn, aliases=("small-cnn",))
# Twice as wide: at 90% sparsity the default small_cnn keeps ~1,400 conv weights, too few for ten
# classes learned in sequence (docs/ALGORITHMS.md, SparCL).
MODELS.add("small_cnn_wide", partial(small_cnn, widths=(32, 64, 64)), aliases=("small-cnn-wide",))


def build_model(name: str, num_classes: int, in_channels: int, **options: Any) -> nn.Module:
    """Build the model registered as `name`.

    Args:
        name: a registered model name (see `MODELS.names()`).
        num_classes: classifier width, at least 1.
        in_channels: input channels, at least 1.
        **options: the factory's own keyword options (e.g. `widths` for `small_cnn`).

    Returns:
        A freshly initialised `nn.Module` in train mode (the caller seeds torch beforehand).

    Raises:
        MestError: unknown name, bad sizes, or an option the factory does not take.
    """
    factory = MODELS.get(name)
    for what, value, low in (("num_classes", num_classes, 1), ("in_channels", in_channels, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MestError(f"{what} must be an int >= {low}, got {value!r}")
    params = inspect.signature(factory).parameters
    for option in options:
        if option in ("num_classes", "in_channels") or params.get(option) is None:
            known = ", ".join(p for p in params if p not in ("num_classes", "in_channels")) or "none"
            raise MestError(f"model {name!r} has no option {option!r}; known: {known}")
    return factory(num_classes=num_classes, in_channels=in_channels, **options)


__all__ = ["MODELS", "build_model"]
