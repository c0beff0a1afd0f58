"""Kernel families: one per sparsity scheme, registered by the training-side scheme name.

A family knows how to pack a scheme's mask into runtime index buffers (a `PackedFormat`), how to
build the scheme's three kernels (forward, input gradient, masked weight gradient) for one layer
geometry and target, and how to call them from PyTorch as a differentiable op. Everything around
that is shared and scheme-agnostic: the build cache and correctness gate (`build.py`,
`gate.py`), the module backend with its recompile policy (`backend.py`), and the public
`sparse_conv2d` / `compile_model` (`api.py`).

Adding a scheme is one module here that registers a `KernelFamily` subclass instance.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.errors import MestError
from mest_compile.registry import Registry

if TYPE_CHECKING:
    import tvm
    from tvm import tirx

#: A generic CPU (no `mcpu`, no `mattr`) the graph-rewriting kernels are tiled for; one core, as forward tiles
#: do not depend on the core count.
PORTABLE_CPU: dict[str, Any] = {"kind": "llvm", "num-cores": 1}


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

    def signature(self) -> tuple:
        """`(scheme, geometry, capacity, ..., histogram)`: the last histogram (a tuple of counts, e.g. units
        per filter bucketed) is what `policy.drift` compares; drift beyond a threshold rebuilds."""

    def nbytes(self) -> int:
        """Bytes of the values and index buffers."""


class KernelSet(Protocol):
    """The compiled kernels of one geometry on one target (callable with torch tensors)."""

    geometry: ConvGeometry
    target: str
    build_seconds: float

    def source(self, which: str = "forward", kind: str = "asm") -> str:
        """Generated code of one kernel (`which`: forward, dgrad, wgrad)."""


class KernelFamily(ABC):
    """The compiled kernels of one sparsity scheme."""

    #: The canonical training-side scheme names this family serves.
    schemes: tuple[str, ...] = ()
    #: The unit `capacity` counts ("block", "kernel", "filter", "weight").
    unit: str = "weight"

    def supports(self, geometry: ConvGeometry) -> str | None:
        """Why this family cannot compile `geometry`, or None if it can."""
        return None

    def units(self, mask: torch.Tensor) -> int:
        """How many capacity units `mask` keeps."""
        return int(mask.sum())

    #: The compiled symbol of each kernel: {"forward": ..., "dgrad": ..., "wgrad": ...}.
    entries: ClassVar[dict[str, str]] = {}

    def build(self, geometry: ConvGeometry, target: Any) -> KernelSet:
        """Compile the three kernels for `geometry` (no gate, no cache: `build.py` does both).

        Kernels with tuning records for this geometry and target (`compiler/tune/records.py`)
        use the tuned tiles and schedule; the others the hand-written ones.
        """
        from mest_compile.compiler.families.compiled import compile_kernels
        from mest_compile.compiler.tune.records import tuned_choice

        tiles, traces = tuned_choice(self, geometry, target)
        return compile_kernels(self, geometry, target, tiles, traces)

    def pack(self, kernels: Any, mask: torch.Tensor, capacity: int | None = None) -> PackedFormat:
        """Pack a legal mask of this scheme for `kernels` (capacity in units; default: exact)."""
        return self.pack_with(kernels.geometry, kernels.tiles, mask, capacity)

    # ---- what `compiled.py` and the tuner build kernels from ----------------------------------
    @abstractmethod
    def default_tiles(self, geometry: ConvGeometry, target: tvm.target.Target) -> Any:
        """The hand-picked template knobs (a frozen dataclass) of `geometry` on `target`."""

    @abstractmethod
    def template(self, geometry: ConvGeometry, which: str, tiles: Any) -> tirx.PrimFunc:
        """The unscheduled TIR of kernel `which` (forward, dgrad, wgrad) for `tiles`.

        Batch size and the buffers' sizes stay symbolic; the output buffer is the last argument.
        """

    def knobs(self, geometry: ConvGeometry, which: str, tiles: Any) -> dict[str, list[Any]]:
        """Tile fields of kernel `which` and the values a tuner tries (each list includes `tiles`' own)."""
        return {}

    @abstractmethod
    def pack_with(self, geometry: ConvGeometry, tiles: Any, mask: torch.Tensor, capacity: int | None = None) -> PackedFormat:
        """Pack `mask` in the layout the kernels built with `tiles` read."""

    @abstractmethod
    def kernel_args(self, which: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor,
                    fmt: PackedFormat) -> list[torch.Tensor]:
        """The arguments of kernel `which` for this data, the (allocated) output last."""

    @abstractmethod
    def conv(self, x: torch.Tensor, weight: torch.Tensor, fmt: PackedFormat, kernels: KernelSet) -> torch.Tensor:
        """`F.conv2d(x, weight * mask)` (no bias), differentiable in `x` and `weight`."""

    @abstractmethod
    def random_mask(self, weight_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """A legal random mask for the correctness gate, with at least one empty unit."""

    @abstractmethod
    def phase_calls(self, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, fmt: PackedFormat,
                    kernels: KernelSet) -> dict[str, Callable[[], object]]:
        """One call per training phase, for the benchmark: {"fwd", "dgrad", "wgrad"} -> thunk.

        Each thunk runs one kernel with what training pays around it (value gather, output
        allocation, scattering the weight gradient into the dense gradient), so its time compares
        with `F.conv2d`, `conv2d_input` and `conv2d_weight` of the dense layer.
        """

    # ---- graph rewriting (optional): what the Relax pass (`compiler/graph/rewrite.py`) calls ------
    #: Names of the forward kernel's runtime buffers, in argument order between `x` and `y`.
    forward_buffer_names: tuple[str, ...] = ()

    @property
    def scheme_name(self) -> str:
        """The family's main scheme name (for messages and kernel records)."""
        return self.schemes[0] if self.schemes else type(self).__name__

    def forward_func(self, geometry: ConvGeometry) -> tirx.PrimFunc:
        """The forward kernel `f(x, *buffers, y)` of `geometry`, scheduled for CPUs.

        Batch size and the buffers' sizes (nonzeros, capacity) stay symbolic, so one compiled
        graph serves every mask of the layer. Built with the default tiles of `PORTABLE_CPU`:
        a rewritten graph may be built for another CPU than this one, so no CPU-specific knob
        (the channel forward's CLZERO) may slip in.
        """
        from mest_compile.schedules.host_space import schedule_host
        from mest_compile.compiler.target import resolve_target

        if not self.forward_buffer_names:  # a graph could not name the kernel's buffers
            raise MestError(f"scheme {self.scheme_name!r} has no forward kernel for graph rewriting yet")
        tiles = self.default_tiles(geometry, resolve_target(PORTABLE_CPU))
        return schedule_host(self.template(geometry, "forward", tiles), "forward")["main"]

    def device_forward_func(self, geometry: ConvGeometry, target: Any) -> tirx.PrimFunc:
        """The forward kernel for `target` (GPU- or CPU-scheduled), tuned when records are in use."""
        from mest_compile.compiler.families.compiled import replay
        from mest_compile.compiler.tune.records import tuned_choice

        tiles, traces = tuned_choice(self, geometry, target)
        gpu = is_gpu_target(target)
        if "forward" not in traces:
            return self.gpu_forward_func(geometry) if gpu else self.forward_func(geometry)
        if gpu:
            return replay(self.gpu_template(geometry), traces["forward"])["main"].with_attr("tirx.is_scheduled", True)
        return replay(self.template(geometry, "forward", tiles), traces["forward"])["main"]

    def gpu_template(self, geometry: ConvGeometry, which: str = "forward") -> tirx.PrimFunc:
        """The unscheduled GPU kernel `which` (one complete block `conv`); the forward takes the host one's arguments."""
        raise MestError(f"scheme {self.scheme_name!r} has no GPU {which} kernel yet")

    def gpu_kernel_args(self, which: str, x: torch.Tensor, values: torch.Tensor, dy: torch.Tensor | None,
                        fmt: PackedFormat) -> list[torch.Tensor]:
        """Arguments of GPU kernel `which` for packed `values` (the allocated output last)."""
        if which != "forward":
            raise MestError(f"scheme {self.scheme_name!r} has no GPU {which} kernel yet")
        geo = fmt.geometry
        buffers = [getattr(fmt, name) for name in self.forward_buffer_names[1:]]
        return [x, values, *buffers, x.new_empty(x.shape[0], geo.out_channels, geo.out_h, geo.out_w)]

    def gpu_forward_func(self, geometry: ConvGeometry) -> tirx.PrimFunc:
        """The forward kernel scheduled for GPUs (loops bound to blockIdx / threadIdx).

        Same arguments as `forward_func`, so the same packed buffers drive both.
        """
        from mest_compile.schedules.gpu import bind_spatial

        return bind_spatial(self.gpu_template(geometry), ("conv",))

    def forward_format(self, geometry: ConvGeometry, mask: torch.Tensor) -> PackedFormat:
        """Pack `mask` for the forward kernel alone (no compiled kernels needed)."""
        raise MestError(f"scheme {self.scheme_name!r} has no forward kernel for graph rewriting yet")

    def forward_buffers(self, fmt: PackedFormat, weight: torch.Tensor) -> list[torch.Tensor]:
        """The forward kernel's runtime buffers for `weight` packed by `fmt`, in `forward_buffer_names` order."""
        raise MestError(f"scheme {self.scheme_name!r} has no forward kernel for graph rewriting yet")


def is_gpu_target(target: Any) -> bool:
    """Whether `target` (any form `resolve_target` takes) needs GPU-scheduled kernels."""
    from mest_compile.compiler.target import resolve_target

    return "gpu" in [str(k) for k in resolve_target(target).keys]


FAMILIES: Registry[KernelFamily] = Registry("compiled scheme")

# Where each scheme's family is registered; a module is imported only when its scheme is first
# compiled, so `import mest_compile.compiler` stays cheap.
_MODULE_OF = {
    "free_block_prune_column_4": "block",
    "channel": "channel",
    "pattern": "pattern",
    "pattern+filter_balance": "pattern",
    "irregular": "irregular",
    "filter_balance": "irregular",
}


def family_for(scheme: str) -> KernelFamily:
    """The family compiling `scheme` (a training-side scheme name or alias)."""
    from mest_compile.sparsity.schemes import get_scheme

    name = get_scheme(scheme).name
    module = _MODULE_OF.get(name)
    if module is not None:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{module}":
                raise
    for family_name in FAMILIES:
        family = FAMILIES.get(family_name)
        if name in family.schemes:
            return family
    raise MestError(f"no compiled kernels for scheme {name!r} yet; compiled: {', '.join(sorted(compiled_schemes()))}")


def compiled_schemes() -> list[str]:
    """Schemes whose family module is present (imports them)."""
    for module in sorted(set(_MODULE_OF.values())):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError:
            continue
    return [s for f in FAMILIES for s in FAMILIES.get(f).schemes]
