"""Target families: what differs between kinds of targets, answered in one place per kind.

A `Target` (`compiler/target.py`) names its family in its preset (`"family": "cpu"` or `"gpu"`
in `targets/*.json`). The family says which kernels exist there (`phases`), how a kernel's
unscheduled TIR is obtained (`template`), its hand-written schedule (`schedule`), the tuner's
design spaces (`spaces`, `default_schedule`) and whether the tuner searches template variants.
A new board of an existing kind is one JSON file in `targets/`; a new kind of target (Vulkan,
a DSP) is one module here registering a `TargetFamily`, plus its JSON file.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from mest_compile.errors import MestError
from mest_compile.registry import Registry

if TYPE_CHECKING:
    import torch
    import tvm
    from tvm import s_tir, tirx

    from mest_compile.compiler.families import KernelFamily, PackedFormat
    from mest_compile.compiler.formats.geometry import ConvGeometry
    from mest_compile.compiler.target import Target


class TargetFamily(ABC):
    """How kernels are made for one kind of target."""

    name: str = ""
    #: Whether the tuner searches the kernel families' tile knobs (template variants) here.
    searches_variants: bool = False
    #: Whether a replayed tuned schedule must be marked scheduled (so Relax's GPU pipeline leaves it).
    marks_scheduled: bool = False

    @abstractmethod
    def phases(self, family: KernelFamily) -> tuple[str, ...]:
        """The kernels (`forward`, `dgrad`, `wgrad`) `family` has on this kind of target."""

    @abstractmethod
    def template(self, family: KernelFamily, geometry: ConvGeometry, which: str, tiles: Any) -> tirx.PrimFunc:
        """The unscheduled TIR of kernel `which` for `tiles`."""

    @abstractmethod
    def schedule(self, func: tirx.PrimFunc, which: str) -> tvm.IRModule:
        """The hand-written schedule of `func` (kernel `which`), as a module keyed `main`."""

    @abstractmethod
    def spaces(self, func: tirx.PrimFunc, which: str, target: Target) -> list[Any]:
        """The tuner's design spaces of `func` (each a `Schedule -> None`)."""

    @abstractmethod
    def default_schedule(self, sch: s_tir.Schedule, which: str) -> None:
        """Apply the hand-written schedule to `sch` (traced: what the tuner measures as untuned)."""

    def unsupported(self, family: KernelFamily, which: str) -> str | None:
        """Why kernel `which` of `family` cannot be compiled here, or None."""
        if which in self.phases(family):
            return None
        return f"scheme {family.scheme_name!r} has no {self.name.upper()} {which} kernel yet"

    def require(self, family: KernelFamily, which: str) -> None:
        """Raise `MestError` saying why kernel `which` of `family` cannot be compiled here, if it cannot."""
        reason = self.unsupported(family, which)
        if reason is not None:
            raise MestError(reason)

    def kernel_args(self, family: KernelFamily, which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
                    fmt: PackedFormat) -> list[torch.Tensor]:
        """The arguments kernel `which` takes here for this data, the (allocated) output last."""
        return family.kernel_args(which, x, weight, dy, fmt)

    def untunable(self, which: str) -> str | None:
        """Why the tuner does not search kernel `which` here, or None."""
        return None

    def forward_func(self, family: KernelFamily, geometry: ConvGeometry) -> tirx.PrimFunc:
        """The forward kernel of `geometry` scheduled by hand, for graph rewriting (symbolic batch and nonzeros)."""
        return self.schedule(self.template(family, geometry, "forward", family.portable_tiles(geometry)), "forward")["main"]


TARGET_FAMILIES: Registry[TargetFamily] = Registry("target family")


def family_of(name: str) -> TargetFamily:
    """The registered target family `name` (its module is imported on first use)."""
    if name not in TARGET_FAMILIES:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
    return TARGET_FAMILIES.get(name)
