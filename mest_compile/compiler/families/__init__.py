"""Kernel families: one per sparsity scheme, stated as data.

A family says what the compiler needs to know about a scheme and nothing more:

* `buffers`: per phase, the packed format's index buffers the kernel takes, in argument order.
  Every kernel's arguments are `(x or dy, values or dy, *buffers, output)`: forward
  `(x, values, ...) -> y`, input gradient `(dy, values, ...) -> dx`, weight gradient
  `(x, dy, ...) -> dvalues` (`PHASE_INPUTS`);
* `templates`: per phase, the unscheduled TIR for a choice of tiles (CPU targets), and
  `gpu_templates` for GPU targets (`compiler/target_families/`);
* `entries`: the compiled symbol of each kernel; `packing`: the (format, tiles) fields a format
  must agree on with the kernels that read it;
* how to pack a mask (`pack_with`), count its capacity units (`units`), draw a random legal mask
  for the correctness gate (`random_mask`), pick default tiles and the tuner's knobs.

Building, caching, gating and calling the kernels from PyTorch is the runtime's job
(`compiler/runtime/`), generic over these tables; nothing here imports the runtime or the tuner.

Adding a scheme (compiler side): a format in `formats/<scheme>.py` (pack, repack_, values,
dense_grad, signature, and a random legal mask), kernels in `kernels/<scheme>_{fwd,dgrad,wgrad}.py`,
a host schedule with its tiles dataclass in `schedules/<scheme>_host.py`, and one module here
defining the family's tables and registering it in `FAMILIES`. `tests/compile/test_family_contract.py`
then checks it like every other family (pack, build, gate, call, gradients against masked dense).
"""

from __future__ import annotations

import functools
import importlib
import math
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.errors import MestError
from mest_compile.registry import Registry

if TYPE_CHECKING:
    from tvm import tirx

    from mest_compile.compiler.target import Target

__all__ = ["FAMILIES", "PHASES", "PHASE_INPUTS", "PORTABLE_CPU", "KernelFamily", "KernelSet", "PackedFormat",
           "compiled_schemes", "family_for"]

#: A generic CPU (no `mcpu`, no `mattr`) the graph-rewriting kernels are tiled for; one core, as forward tiles
#: do not depend on the core count.
PORTABLE_CPU: dict[str, Any] = {"kind": "llvm", "num-cores": 1}

#: The data arguments every kernel of a phase takes before its index buffers.
PHASE_INPUTS: dict[str, tuple[str, str]] = {"forward": ("x", "values"), "dgrad": ("dy", "values"), "wgrad": ("x", "dy")}


class PackedFormat(Protocol):
    """A scheme's mask as runtime buffers sized by a capacity (no recompile while it fits)."""

    geometry: ConvGeometry
    capacity: int  # in the family's units (blocks, kernels, filters, weights)
    nnz: int  # units in use (<= capacity)

    def fits(self, mask: torch.Tensor) -> bool:
        """Whether `mask` packs into these buffers (same geometry, within capacity)."""

    def repack_(self, mask: torch.Tensor) -> Any:
        """Refill the buffers in place for `mask` (which `fits`)."""

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """The kept weights in kernel order; differentiable, so autograd scatters the gradient back."""

    def dense_grad(self, values_grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The dense weight gradient `values`' backward builds from `values_grad` (zero outside the mask)."""

    def signature(self) -> tuple:
        """`(scheme, geometry, capacity, ..., histogram)`: the last histogram (a tuple of counts, e.g. units
        per filter bucketed) is what `policy.drift` compares; drift beyond a threshold rebuilds."""

    def nbytes(self) -> int:
        """Bytes of the values and index buffers."""


class KernelSet(Protocol):
    """The compiled kernels of one geometry on one target (callable with torch tensors)."""

    family: KernelFamily
    geometry: ConvGeometry
    target: str
    tiles: Any
    build_seconds: float
    #: What the torch ops find these kernels by.
    handle: str
    #: The correctness gate's relative errors by phase, and its time (set by the runtime's gate).
    gate_errors: dict[str, float]
    gate_seconds: float

    def source(self, which: str = "forward", kind: str = "asm") -> str:
        """Generated code of one kernel (`which`: forward, dgrad, wgrad)."""


#: A CPU template builder: `(geometry, tiles) -> unscheduled PrimFunc`.
Template = Callable[[ConvGeometry, Any], "tirx.PrimFunc"]
#: A GPU template builder: `geometry -> unscheduled PrimFunc` (one complete block `conv`).
GpuTemplate = Callable[[ConvGeometry], "tirx.PrimFunc"]


class KernelFamily(ABC):
    """The compiled kernels of one sparsity scheme, as tables plus packing (see the module docstring)."""

    #: The registry key (`"block"`), what people type.
    name: ClassVar[str] = ""
    #: The canonical training-side scheme names this family serves.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: The unit `capacity` counts ("block", "kernel", "filter", "weight").
    unit: ClassVar[str] = "weight"
    #: The compiled symbol of each kernel, by phase.
    entries: ClassVar[Mapping[str, str]] = {}
    #: The format's index buffers each kernel takes (after its two data inputs), by phase.
    buffers: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: The unscheduled CPU kernel of each phase.
    templates: ClassVar[Mapping[str, Template]] = {}
    #: The unscheduled GPU kernel of each phase that has one (the work in one block `conv`).
    gpu_templates: ClassVar[Mapping[str, GpuTemplate]] = {}
    #: The index buffers each GPU kernel takes after its two data inputs, by phase: the format's
    #: attributes or `gpu_derived` names (default for the forward: `buffers["forward"]`).
    gpu_buffers: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: `(format attribute, tiles attribute)` pairs: the layout choices a format shares with its kernels.
    packing: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: Whether the kernels visit every row of `values` (rather than the rows the index buffers point
    #: to): then `values` must hold exactly the mask's units, never zero padding up to the capacity.
    visits_every_value_row: ClassVar[bool] = False

    @property
    def scheme_name(self) -> str:
        """The family's main scheme name (MEST's name: messages and kernel records)."""
        return self.schemes[0]

    @property
    def recipe_scheme(self) -> str:
        """The scheme MEST's recipes use this family's kernels for (what the benchmarks measure)."""
        return self.schemes[0]

    def supports(self, geometry: ConvGeometry) -> str | None:
        """Why this family cannot compile `geometry`, or None if it can."""
        return None

    def units(self, mask: torch.Tensor) -> int:
        """How many capacity units `mask` keeps."""
        return int(mask.sum())

    def unit_ids(self, weight_shape: tuple[int, ...]) -> torch.Tensor:
        """Int64, weight-shaped: which capacity unit each weight belongs to (a unit is kept or
        pruned whole); by default every weight is its own unit."""
        return torch.arange(math.prod(weight_shape)).view(weight_shape)

    @abstractmethod
    def default_tiles(self, geometry: ConvGeometry, target: Target) -> Any:
        """The hand-picked template knobs (a frozen dataclass) of `geometry` on `target`."""

    def portable_tiles(self, geometry: ConvGeometry) -> Any:
        """The default tiles of `PORTABLE_CPU`: graph-rewritten kernels may be built for another CPU
        than this one, so no CPU-specific knob (the channel forward's CLZERO) may slip in."""
        from mest_compile.compiler.target import as_target

        return self.default_tiles(geometry, as_target(PORTABLE_CPU))

    def knobs(self, geometry: ConvGeometry, which: str, tiles: Any) -> dict[str, list[Any]]:
        """Tile fields of kernel `which` and the values a tuner tries (each list includes `tiles`' own)."""
        return {}

    @abstractmethod
    def pack_with(self, geometry: ConvGeometry, tiles: Any, mask: torch.Tensor, capacity: int | None = None) -> PackedFormat:
        """Pack `mask` in the layout the kernels built with `tiles` read."""

    @abstractmethod
    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """A legal random mask for the correctness gate, with at least one empty unit."""

    # ---- generic: what the runtime, the tuner and the graph pass derive from the tables -------
    def check_packing(self, fmt: PackedFormat, tiles: Any) -> None:
        """Fail unless `fmt` was packed with the layout `tiles`' kernels read.

        Raises:
            MestError: the format came from other kernels' `pack` (or a default one).
        """
        packed = tuple(getattr(fmt, f) for f, _ in self.packing)
        expected = tuple(getattr(tiles, t) for _, t in self.packing)
        if packed != expected:
            names = ", ".join(f for f, _ in self.packing)
            raise MestError(f"format packed with ({names}) = {packed}, the kernels expect {expected}: "
                            "pack it with `kernels.pack(mask)`")

    def phase_buffers(self, which: str, fmt: PackedFormat) -> list[torch.Tensor]:
        """The index buffers of kernel `which`, in its argument order."""
        return [getattr(fmt, name) for name in self.buffers[which]]

    def kernel_args(self, which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
                    fmt: PackedFormat) -> list[torch.Tensor]:
        """The arguments of kernel `which` for this data, the (allocated) output last."""
        values = fmt.values(weight).contiguous()
        data = {"x": x, "dy": dy, "values": values}
        outputs = {"forward": dy, "dgrad": x, "wgrad": values}
        first, second = PHASE_INPUTS[which]
        return [data[first], data[second], *self.phase_buffers(which, fmt), torch.empty_like(outputs[which])]

    @property
    def forward_buffer_names(self) -> tuple[str, ...]:
        """The forward kernel's runtime buffers between `x` and `y` (what a rewritten graph passes)."""
        return ("values", *self.buffers["forward"])

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> PackedFormat:
        """Pack `mask` for the forward kernel alone, in the portable tiles' layout (no compiled kernels needed)."""
        return self.pack_with(geometry, self.portable_tiles(geometry), mask)

    def forward_buffers(self, fmt: PackedFormat, weight: torch.Tensor) -> list[torch.Tensor]:
        """The forward kernel's runtime buffers for `weight` packed by `fmt`, in `forward_buffer_names` order."""
        return [fmt.values(weight).contiguous(), *self.phase_buffers("forward", fmt)]

    def gpu_phase_buffers(self, which: str) -> tuple[str, ...]:
        """The index buffers GPU kernel `which` takes after its two data inputs (the forward's
        default: the CPU forward's)."""
        if which in self.gpu_buffers:
            return tuple(self.gpu_buffers[which])
        if which == "forward":
            return tuple(self.buffers["forward"])
        raise MestError(f"scheme {self.scheme_name!r} has no GPU {which} kernel yet")

    def gpu_derived(self, fmt: PackedFormat) -> dict[str, torch.Tensor]:
        """Index buffers the GPU kernels read that the packed format does not hold (derived from it)."""
        return {}

    def gpu_index_buffers(self, fmt: PackedFormat) -> dict[str, torch.Tensor]:
        """Every index buffer some GPU kernel of this family takes, by name: what a device keeps
        for one packing (a mutation that repacks refreshes it; a device backend uploads it once)."""
        names = {n for which in self.gpu_templates for n in self.gpu_phase_buffers(which)}
        derived = self.gpu_derived(fmt)
        return {name: derived[name] if name in derived else getattr(fmt, name) for name in sorted(names)}

    def gpu_kernel_args(self, which: str, x: torch.Tensor, values: torch.Tensor, dy: torch.Tensor | None,
                        fmt: PackedFormat, index: Mapping[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Arguments of GPU kernel `which` for packed `values` (the allocated output last, on `x`'s device).

        Every GPU kernel follows `PHASE_INPUTS`; `index` is `gpu_index_buffers(fmt)` where the
        caller keeps them (on the device), else they are gathered here.
        """
        buffers = self.gpu_phase_buffers(which)
        index = index if index is not None else self.gpu_index_buffers(fmt)
        if which != "forward" and dy is None:
            raise MestError(f"GPU {which} kernel needs the output gradient")
        geo = fmt.geometry
        data = {"x": x, "dy": dy, "values": values}
        first, second = PHASE_INPUTS[which]
        if which == "forward":
            out = x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)
        else:
            out = torch.empty_like(x if which == "dgrad" else values)
        return [data[first], data[second], *(index[name] for name in buffers), out]


FAMILIES: Registry[KernelFamily] = Registry("compiled scheme")


@functools.cache
def _discover() -> None:
    """Import every family module here once (each registers itself): a new scheme needs no list edited."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def family_for(scheme: str) -> KernelFamily:
    """The family compiling `scheme` (a training-side scheme name or alias, or a family name)."""
    from mest_compile.sparsity.schemes import get_scheme

    _discover()
    if scheme in FAMILIES:
        return FAMILIES.get(scheme)
    name = get_scheme(scheme).name
    for family_name in FAMILIES:
        family = FAMILIES.get(family_name)
        if name in family.schemes:
            return family
    raise MestError(f"no compiled kernels for scheme {name!r} yet; compiled: {', '.join(sorted(compiled_schemes()))}")


def compiled_schemes() -> list[str]:
    """The training-side schemes some family compiles."""
    _discover()
    return [s for f in FAMILIES for s in FAMILIES.get(f).schemes]


def families() -> list[KernelFamily]:
    """Every registered family."""
    _discover()
    return [FAMILIES.get(name) for name in FAMILIES]
