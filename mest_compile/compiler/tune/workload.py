"""What the tuner measures: one kernel of one layer, its template variants and their real inputs.

A kernel (scheme family x layer geometry x forward / dgrad / wgrad) has template variants (the
family's tile knobs) and, per variant, a few loop-level design spaces (`host_space.py`).
Each variant is one MetaSchedule workload: the template specialised to the static shapes of
real inputs (batch size, nonzeros and capacity of a mask at the layer's sparsity), which is how
MetaSchedule keys its database. The same inputs, and PyTorch's result for them, drive the
measurement and the numeric check of every candidate.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
from tvm import tirx

from mest_compile.compiler.families import KernelFamily
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.runtime.gate import reference
from mest_compile.compiler.target_families import TargetFamily, family_of
from mest_compile.sparsity.schemes import mask_for

#: An argument's static shape and dtype, as the manifest stores it.
Shape = tuple[tuple[int, ...], str]


@dataclass(frozen=True)
class TuneKernel:
    """One kernel the tuner optimises: a scheme's `which` kernel of one layer geometry."""

    scheme: str
    geometry: ConvGeometry
    which: str  # forward, dgrad, wgrad
    batch: int
    sparsity: float
    layers: tuple[str, ...] = ()  # the model layers that share it (for the summary)

    @property
    def name(self) -> str:
        g = self.geometry
        stride = f"_s{g.stride}" if g.stride > 1 else ""
        return (f"{self.scheme.replace('+', '-')}_{g.out_channels}x{g.in_channels}x{g.kernel_h}x{g.kernel_w}"
                f"_{g.in_h}x{g.in_w}{stride}_p{g.padding}_{self.which}")


def variants(family: KernelFamily, kernel: TuneKernel, tiles: Any, limit: int) -> list[Any]:
    """Up to `limit` tile choices for `kernel`: the default first, then its nearest neighbours."""
    knobs = family.knobs(kernel.geometry, kernel.which, tiles)
    names = sorted(knobs)
    options = []
    for values in itertools.product(*(knobs[n] for n in names)):
        choice = dataclasses.replace(tiles, **dict(zip(names, values, strict=True)))
        changed = sum(getattr(choice, n) != getattr(tiles, n) for n in names)
        options.append((changed, values, choice))
    options.sort(key=lambda o: (o[0], o[1]))
    out: list[Any] = []
    for _, _, choice in options:
        if choice not in out:
            out.append(choice)
    return out[: max(1, limit)]


def kernel_fields(family: KernelFamily, kernel: TuneKernel, tiles: Any) -> dict[str, Any]:
    """The tile fields kernel `which` depends on, with `tiles`' values (what its records store)."""
    return {name: getattr(tiles, name) for name in family.knobs(kernel.geometry, kernel.which, tiles)}


def specialise(func: tirx.PrimFunc, shapes: list[Shape]) -> tirx.PrimFunc:
    """`func` with every buffer argument fixed to a static shape (MetaSchedule's workload form)."""
    if len(shapes) != len(func.params):
        raise ValueError(f"{len(func.params)} parameters, {len(shapes)} shapes")
    binds = {param: tirx.decl_buffer(shape, dtype) for param, (shape, dtype) in zip(func.params, shapes, strict=True)}
    return func.specialize(binds)


def workload(family: KernelFamily, kernel: TuneKernel, tiles: Any, shapes: list[Shape], flops: int,
             kind: TargetFamily) -> tvm.IRModule:
    """The MetaSchedule workload of one variant: its template with static shapes, as `main`.

    `flops` (the useful multiply-adds x 2) is attached as `estimated_flops`: TVM cannot count
    the FLOPs of a data-dependent loop (and its counter aborts on vector shuffles).
    """
    func = specialise(kind.template(family, kernel.geometry, kernel.which, tiles), shapes)
    func = func.with_attr("global_symbol", "main").with_attr("estimated_flops", int(flops))
    return tvm.IRModule({"main": func})


def shapes_of(args: list[torch.Tensor]) -> list[Shape]:
    """Static shapes and dtypes of a kernel's arguments."""
    return [(tuple(int(d) for d in a.shape), str(a.dtype).removeprefix("torch.")) for a in args]


@dataclass
class Inputs:
    """Real arguments of one variant and the output PyTorch computes for them."""

    args: list[torch.Tensor]
    expected: torch.Tensor
    flops: int  # 2 x the multiply-adds of the kept weights

    def save(self, path: Path) -> Path:
        """Write an `.npz` the runner's workers load (they run in other processes or machines)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"arg{i}": a.contiguous().numpy() for i, a in enumerate(self.args[:-1])}
        arrays[f"arg{len(self.args) - 1}"] = np.zeros(tuple(self.args[-1].shape), self.args[-1].numpy().dtype)
        np.savez(path, expected=self.expected.contiguous().numpy(), **arrays)
        return path


def layer_data(kernel: TuneKernel, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded input, weight, mask (the scheme's at the kernel's sparsity) and output gradient."""
    g = kernel.geometry
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(kernel.batch, g.in_channels, g.in_h, g.in_w, generator=gen)
    weight = torch.randn(g.out_channels, g.in_channels, g.kernel_h, g.kernel_w, generator=gen)
    dy = torch.randn(kernel.batch, g.out_channels, g.out_h, g.out_w, generator=gen)
    return x, weight, mask_for(weight, kernel.scheme, kernel.sparsity), dy


def inputs(family: KernelFamily, kernel: TuneKernel, tiles: Any, seed: int = 0, kind: TargetFamily | None = None) -> Inputs:
    """The arguments of `kernel` built with `tiles` (as target family `kind` passes them; default
    the CPU's), and PyTorch's masked-dense result."""
    x, weight, mask, dy = layer_data(kernel, seed)
    g = kernel.geometry
    fmt = family.pack_with(g, tiles, mask)
    args = (kind or family_of("cpu")).kernel_args(family, kernel.which, x, weight, dy, fmt)
    expected = reference(kernel.which, x, weight, mask, dy, g.stride, g.padding)
    if kernel.which == "wgrad":  # the kernel writes the kept values only, packed
        expected = fmt.values(expected).reshape(args[-1].shape)
    flops = 2 * int(mask.sum()) * kernel.batch * g.out_h * g.out_w
    return Inputs(args, expected, flops)
