"""Per-layer kernel statistics: the sparse structure and the work and traffic it implies.

FLOPs count the multiply-adds the kernel does (2 per kept weight per output pixel), bytes count
the compulsory traffic of one call (input, packed values and index buffers, output, each once),
so `intensity = flops / bytes` places the kernel on a roofline: a lower bound on what it moves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from tvm import tirx

from mest_compile.compiler.families import family_for
from mest_compile.compiler.formats.geometry import ConvGeometry


@dataclass(frozen=True)
class LayerStats:
    """What one layer's kernel call computes and moves, at the inspected batch size."""

    layer: str
    kernel: str
    scheme: str
    batch: int
    kept_weights: int
    dense_weights: int
    units: int  # in the family's capacity unit (blocks, kernels, ...)
    unit: str
    capacity: int
    histogram: tuple[int, ...]  # the structure signature's histogram (what recompiles compare)
    arguments: str  # the kernel's signature
    flops: int
    dense_flops: int
    bytes: int

    @property
    def density(self) -> float:
        return self.kept_weights / max(1, self.dense_weights)

    @property
    def intensity(self) -> float:
        """FLOPs per byte of compulsory traffic."""
        return self.flops / max(1, self.bytes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived values."""
        return {**asdict(self), "density": round(self.density, 6), "intensity": round(self.intensity, 4)}


def signature_text(func: tirx.PrimFunc, names: tuple[str, ...]) -> str:
    """`x f32[N,3,32,32], values f32[nnz,4], ... -> y f32[N,16,32,32]` from the PrimFunc's buffers."""

    def one(name: str, buf: Any) -> str:
        dims = ",".join(str(d.name) if isinstance(d, tirx.Var) else str(int(d)) for d in buf.shape)
        return f"{name} {str(buf.dtype).replace('float', 'f').replace('int', 'i')}[{dims}]"

    params = list(func.params)
    middle = ", ".join(one(n, b) for n, b in zip(names, params[1:-1], strict=False))
    return f"{one('x', params[0])}, {middle} -> {one('y', params[-1])}"


def layer_stats(layer: str, kernel: str, scheme: str, geo: ConvGeometry, weight: torch.Tensor,
                mask: torch.Tensor, batch: int, arguments: str) -> LayerStats:
    """Statistics of one layer's forward call on `batch` images."""
    family = family_for(scheme)
    fmt = family.forward_format(geo, mask.bool())
    buffers = family.forward_buffers(fmt, weight.detach())
    kept = int(mask.bool().sum())
    pixels = geo.out_h * geo.out_w
    x_bytes = batch * geo.in_channels * geo.in_h * geo.in_w * 4
    y_bytes = batch * geo.out_channels * pixels * 4
    buffer_bytes = sum(t.numel() * t.element_size() for t in buffers)
    signature = fmt.signature()
    capacity, histogram = signature[2], signature[-1]  # (scheme, geometry, capacity, ..., histogram)
    return LayerStats(
        layer=layer, kernel=kernel, scheme=family.scheme_name, batch=batch, kept_weights=kept, dense_weights=mask.numel(),
        units=int(fmt.nnz), unit=family.unit, capacity=int(capacity), histogram=tuple(int(h) for h in histogram),
        arguments=arguments, flops=2 * batch * pixels * kept, dense_flops=2 * batch * pixels * mask.numel(),
        bytes=x_bytes + y_bytes + buffer_bytes,
    )  # fmt: skip


def format_stats(rows: list[LayerStats]) -> str:
    """A fixed-width table, one line per layer."""
    head = f"{'layer':28} {'kernel':44} {'kept':>8} {'density':>7} {'units':>11} {'MFLOP':>8} {'KiB':>8} {'FLOP/B':>6}"
    lines = [head]
    for r in rows:
        units = f"{r.units}/{r.capacity} {r.unit}"
        lines.append(f"{r.layer[:28]:28} {r.kernel[:44]:44} {r.kept_weights:8d} {r.density:7.3f} {units:>11} "
                     f"{r.flops / 1e6:8.2f} {r.bytes / 1024:8.1f} {r.intensity:6.2f}")  # fmt: skip
    for r in rows:
        lines.append(f"{r.layer}: {r.arguments}; signature histogram {list(r.histogram)}")
    return "\n".join(lines)
