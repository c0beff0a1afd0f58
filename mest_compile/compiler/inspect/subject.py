"""What `inspect` looks at: a sparsified model, or one sparse conv layer, with an example input.

Both are built the way training builds them (the model registry, MEST profiles, the scheme's
magnitude prune), seeded, so the same flags always show the same kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mest_compile.errors import MestError

# CIFAR-sized images: what MEST's models are trained on.
DEFAULT_IMAGE = (3, 32, 32)
# MEST's headline sparsity.
DEFAULT_SPARSITY = 0.9


@dataclass
class Subject:
    """A model (or layer) with sparse convs, and the input it is traced with."""

    name: str
    model: nn.Module
    example: torch.Tensor


def _dims(text: str | tuple[int, ...] | None, count: int, what: str) -> tuple[int, ...] | None:
    """`"1,3,32,32"` -> (1, 3, 32, 32), checked."""
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.split(",")) if isinstance(text, str) else tuple(int(v) for v in text)
    except ValueError:
        raise MestError(f"{what} must be {count} comma-separated integers, got {text!r}") from None
    if len(dims) != count or min(dims) < 1:
        raise MestError(f"{what} must be {count} positive integers, got {text!r}")
    return dims


def model_subject(model_name: str, scheme: str, *, profile: str | None = None, sparsity: float | None = None,
                  input_shape: str | tuple[int, ...] | None = None, seed: int = 0) -> Subject:
    """A registered model sparsified with a MEST profile file or a uniform sparsity.

    Raises:
        MestError: unknown model or scheme, both or a bad profile, or no sparse layer results.
    """
    from mest_compile.sparsity.module import sparse_layers, sparsify
    from mest_compile.sparsity.profile import load_profile, uniform_profile
    from mest_compile.train.models import build_model

    if profile is not None and sparsity is not None:
        raise MestError("give --profile or --sparsity, not both")
    shape = _dims(input_shape, 4, "--input") or (1, *DEFAULT_IMAGE)
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=10, in_channels=shape[1])
    chosen = load_profile(profile) if profile is not None else uniform_profile(model, sparsity if sparsity is not None else DEFAULT_SPARSITY)
    sparsify(model, scheme, chosen)
    if not sparse_layers(model):
        raise MestError(f"model {model_name!r} has no sparse layer with this profile: nothing to inspect")
    return Subject(name=model_name, model=model.eval(), example=torch.randn(*shape))


def layer_subject(scheme: str, shape: str | tuple[int, ...], *, input_shape: str | tuple[int, ...] | None = None,
                  stride: int = 1, padding: int = 0, sparsity: float | None = None, seed: int = 0) -> Subject:
    """One `SparseConv2d` of weight shape `O,I,KH,KW`, magnitude-pruned at `sparsity`.

    Raises:
        MestError: a malformed shape, an input whose channels differ, or a shape the scheme cannot take.
    """
    from mest_compile.sparsity.module import SparseConv2d

    out_ch, in_ch, kh, kw = _dims(shape, 4, "--shape") or ()
    n, c, h, w = _dims(input_shape, 4, "--input") or (1, in_ch, *DEFAULT_IMAGE[1:])
    if c != in_ch:
        raise MestError(f"--input has {c} channels, the weight --shape expects {in_ch}")
    if stride < 1 or padding < 0:
        raise MestError(f"stride must be >= 1 and padding >= 0, got {stride} and {padding}")
    torch.manual_seed(seed)
    dense = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=stride, padding=padding, bias=False)
    conv = SparseConv2d.from_dense(dense, scheme, sparsity=sparsity if sparsity is not None else DEFAULT_SPARSITY)
    if (h + 2 * padding - kh) // stride + 1 < 1 or (w + 2 * padding - kw) // stride + 1 < 1:
        raise MestError(f"a {kh}x{kw} kernel with padding {padding} does not fit a {h}x{w} input")
    return Subject(name=f"conv {out_ch}x{in_ch}x{kh}x{kw}", model=conv.eval(), example=torch.randn(n, c, h, w))
