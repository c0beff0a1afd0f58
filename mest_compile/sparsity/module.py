"""`SparseConv2d`: a conv carrying its dense weight, a bool mask and its sparsity scheme.

This is the training side of the contract with the compiler: (dense weight, bool mask, scheme).
The forward is `conv2d(x, weight * mask)`, so the weight gradient is exactly restricted to the
mask; a compiled kernel plugs in through `backend` and must compute the same thing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mest_compile.errors import MestError
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.profile import Profile
from mest_compile.sparsity.schemes import Scheme, get_scheme

Backend = Callable[["SparseConv2d", torch.Tensor], torch.Tensor]
# MEST's generate_mask leaves a layer this dense unmasked (compat `skip-nearly-dense`).
_NEARLY_DENSE = 0.1


class SparseConv2d(nn.Conv2d):
    """A `Conv2d` whose weight is masked by a structural `mask` of a given `scheme`.

    Attributes:
        mask: bool buffer shaped like the weight (in the state_dict).
        scheme: the `Scheme` the mask is legal for (in the state_dict, by name).
        mask_version: incremented on every `set_mask_`, so a compiled backend knows to repack.
        backend: optional `backend(module, x) -> Tensor` replacing the masked dense forward;
            None by default and never saved.
        weight_grad_mask: optional bool tensor shaped like the weight, set by an algorithm that
            applies the weight gradient only there (SparCL's gradient masking): a compiled backend
            then computes just those gradients (and the rest of the mask's may read zero). To
            change it, set a new tensor (a backend packs each tensor once). None by default.

    Example:
        >>> conv = SparseConv2d.from_dense(nn.Conv2d(8, 8, 3), "irregular", sparsity=0.5)
        >>> conv.sparsity
        0.5
    """

    mask: torch.Tensor

    def __init__(self, *args: Any, scheme: str | Scheme = "irregular", **kwargs: Any) -> None:
        """Same arguments as `nn.Conv2d`, plus the keyword `scheme`; the mask starts dense."""
        super().__init__(*args, **kwargs)
        self.scheme = get_scheme(scheme)
        self.scheme.check(tuple(self.weight.shape))
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        self.mask_version = 0
        self.backend: Backend | None = None
        self.weight_grad_mask: torch.Tensor | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # A backend may be an nn.Module; registering it as a submodule would put it in the
        # state_dict, and a checkpoint must not depend on which kernels were compiled.
        if name == "backend":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        scheme: str | Scheme,
        *,
        mask: torch.Tensor | None = None,
        sparsity: float | None = None,
    ) -> "SparseConv2d":
        """A sparse copy of `conv` (same attributes, device, dtype, copied parameters).

        Args:
            conv: the dense conv.
            scheme: scheme name or object.
            mask: an explicit legal mask; or
            sparsity: a one-shot magnitude prune at this sparsity (`scheme.prune`).
                With neither, the mask is dense.
        """
        if mask is not None and sparsity is not None:
            raise MestError("from_dense takes a mask or a sparsity, not both")
        if not isinstance(conv, nn.Conv2d):
            raise MestError(f"from_dense needs an nn.Conv2d, got {type(conv).__name__}")
        new = cls(**_conv_arguments(conv), scheme=scheme)
        with torch.no_grad():
            weight = conv.weight * conv.mask if isinstance(conv, SparseConv2d) else conv.weight
            new.weight.copy_(weight)
            if conv.bias is not None and new.bias is not None:
                new.bias.copy_(conv.bias)
        new.train(conv.training)
        if sparsity is not None:
            mask = new.scheme.prune(new.weight.detach(), sparsity)
        if mask is not None:
            new.set_mask_(mask)
        return new

    def to_dense(self) -> nn.Conv2d:
        """A plain `nn.Conv2d` holding `weight * mask`."""
        dense = nn.Conv2d(**_conv_arguments(self))
        with torch.no_grad():
            dense.weight.copy_(self.weight * self.mask)
            if self.bias is not None and dense.bias is not None:
                dense.bias.copy_(self.bias)
        dense.train(self.training)
        return dense

    @torch.no_grad()
    def set_mask_(self, mask: torch.Tensor) -> None:
        """Install a new legal mask, zero the weight outside it and bump `mask_version`.

        A dense (all-true) mask is always accepted: it is what growth to sparsity 0 produces.
        """
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise MestError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(self.weight.shape)}")
        mask = mask.to(device=self.mask.device, dtype=torch.bool)
        if not bool(mask.all()) and not self.scheme.is_legal(mask):
            shape = tuple(self.weight.shape)
            raise MestError(f"mask is not legal for scheme {self.scheme.name!r} (weight shape {shape})")
        self.mask.copy_(mask)
        self.weight.mul_(self.mask)
        self.mask_version += 1

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the weight outside the mask (after every optimizer step: decay, momentum)."""
        self.weight.mul_(self.mask)

    @property
    def sparsity(self) -> float:
        """Fraction of masked-out weights."""
        return 1.0 - int(self.mask.sum()) / self.mask.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is not None:
            return self.backend(self, x)
        # The product (not an in-place mask) makes autograd restrict the weight gradient to the
        # mask; _conv_forward handles padding_mode like Conv2d does.
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scheme={self.scheme.name}, sparsity={self.sparsity:.4f}"

    def get_extra_state(self) -> dict[str, Any]:
        return {"scheme": self.scheme.name}

    def set_extra_state(self, state: Any) -> None:
        # Runs after the buffers were loaded, so the restored mask is checked against the
        # restored scheme; the mask changed, so a compiled backend must repack.
        if not isinstance(state, Mapping) or "scheme" not in state:
            raise MestError(f"SparseConv2d extra state must hold a scheme name, got {state!r}")
        scheme = get_scheme(str(state["scheme"]))
        scheme.check(tuple(self.weight.shape))
        self.scheme = scheme
        if not bool(self.mask.all()) and not scheme.is_legal(self.mask):
            raise MestError(f"loaded mask is not legal for scheme {scheme.name!r}")
        self.mask_version += 1


def _conv_arguments(conv: nn.Conv2d) -> dict[str, Any]:
    """The constructor arguments that rebuild `conv`'s geometry on its device and dtype."""
    return {
        "in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": conv.kernel_size,
        "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups,
        "bias": conv.bias is not None, "padding_mode": conv.padding_mode,
        "device": conv.weight.device, "dtype": conv.weight.dtype,
    }


def _weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def sparse_layers(model: nn.Module) -> dict[str, SparseConv2d]:
    """Every `SparseConv2d` of `model`, keyed by its weight's parameter name, in model order."""
    return {_weight_name(n): m for n, m in model.named_modules() if isinstance(m, SparseConv2d)}


def _replace(model: nn.Module, module_name: str, new: nn.Module) -> None:
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def sparsify(
    model: nn.Module,
    scheme: str | Scheme,
    profile: Profile | Mapping[str, float],
    *,
    compat: Compat = Compat(),
) -> dict[str, SparseConv2d]:
    """Swap the profiled convs of `model` for `SparseConv2d`, in place, and harden them.

    Hardening is a one-shot magnitude prune of each layer at its profile sparsity (MEST's
    prune_harden followed by generate_mask).

    Returns:
        The sparse layers, keyed by weight parameter name, in model order (for the mutation).

    Raises:
        MestError: naming the layer, for a profile entry the model lacks, a non-conv weight, or a
            shape the scheme cannot take.
    """
    scheme = get_scheme(scheme)
    profile = profile if isinstance(profile, Profile) else Profile(profile)
    params = dict(model.named_parameters())
    owners = {_weight_name(n): (n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for name in profile:
        if name not in params:
            raise MestError(f"profile layer {name!r} is not a parameter of the model")
        if name not in owners:
            raise MestError(f"profile layer {name!r} is not the weight of an nn.Conv2d")
        shape = tuple(params[name].shape)
        if profile.ratio_space == "kernel" and shape[2:] != (3, 3):
            raise MestError(f"profile layer {name!r}: kernel-space ratios describe 3x3 convs, this one is {shape}")
        try:
            scheme.check(shape)
        except MestError as err:
            raise MestError(f"profile layer {name!r}: {err}") from None
    layers: dict[str, SparseConv2d] = {}
    for name in owners:  # model order, like MEST's named_parameters loop
        if name not in profile:
            continue
        module_name, conv = owners[name]
        sparse = SparseConv2d.from_dense(conv, scheme, sparsity=profile[name])
        hardened = 1.0 - int(torch.count_nonzero(sparse.weight)) / sparse.weight.numel()
        if compat.skip_nearly_dense and hardened < _NEARLY_DENSE:
            # The reference writes the pruned weights back but builds no mask, so the layer
            # trains dense from there on; the mutation never sees it (the reference crashes).
            with torch.no_grad():
                conv.weight.copy_(sparse.weight)
            warnings.warn(
                f"layer {name!r} is {hardened:.3f} sparse after hardening (< {_NEARLY_DENSE}); "
                "compat skip-nearly-dense leaves it dense, unmasked and out of the mutation",
                stacklevel=2,
            )
            continue
        _replace(model, module_name, sparse)
        layers[name] = sparse
    return layers


#: `sparsify` with PyTorch's in-place spelling (torchao's `sparsify_`): it swaps `model`'s convs in place.
sparsify_ = sparsify
