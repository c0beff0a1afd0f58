"""Packed format of the pattern schemes (`pattern`, `pattern+filter_balance`).

Every 3x3 kernel `(o, c)` is empty or keeps the 4 entries of one of MEST's 8 patterns. The
format lists the kept kernels twice, each list grouped by pattern (PatDNN's filter-kernel
reorder), so that the kernels run one pattern-specialised loop per (filter, pattern) with the
pattern's 4 taps as compile-time constants:

* by filter (forward and weight gradient): kernels sorted by `(o, pattern, c)`; `fwd_ptr` is a
  CSR over `o * 8 + pattern - 1` and `x_off[j]` kernel `j`'s input channel `c` (a kernel scales it
  by its own compile-time scratch plane; the tap offsets inside a channel are constants, see
  `forward_tap_offsets`);
* by input channel (input gradient): the same kernels sorted by `(c, pattern, o)`; `dx_ptr` is a
  CSR over `c * 8 + pattern - 1`, `dx_ker[e]` the kernel (row of `values`) and `dx_off[e]` its
  filter `o` (scaled by the gradient-scratch plane in the kernels).

Storing channels and filters rather than scratch offsets bounds every index by the layer's kernel
count `O * C`, so all five buffers share one dtype chosen per layer (`index_dtype`): int16 when
`O * C` fits (every ResNet-32 layer), int32 otherwise. The kernels read them through a cast, so
their address arithmetic stays int32.

`values` is `(nnz, 4)`: each kept kernel's 4 entries in the pattern's row-major tap order. Buffers
are sized by a capacity in kernels; a new mask that fits is a repack in torch (same buffers,
same compiled kernels).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.formats.values import gather_flat, scatter_flat
from mest_compile.errors import MestError
from mest_compile.sparsity.schemes.pattern import PATTERNS, kernel_patterns

SCHEMES = ("pattern", "pattern+filter_balance")
NUM_PATTERNS = 8
TAPS_PER_KERNEL = 4
INT16_MAX = 2**15 - 1


def index_dtype(geometry: ConvGeometry) -> str:
    """The dtype of `geometry`'s index buffers: `"int16"` when its kernel count fits, else `"int32"`.

    Every stored index (a pointer or kernel row <= nnz <= O * C, a channel < C, a filter < O) is
    bounded by `O * C`, so that bound alone decides; the kernels are generated for this dtype.

    Example:
        >>> index_dtype(ConvGeometry(128, 8, 8, 128, 3, 3, padding=1))
        'int16'
    """
    return "int16" if geometry.out_channels * geometry.in_channels <= INT16_MAX else "int32"


@cache
def pattern_taps() -> tuple[tuple[tuple[int, int], ...], ...]:
    """`(kh, kw)` of each pattern's 4 kept entries, row-major (the order of `values` columns)."""
    taps = []
    for pattern in PATTERNS:
        kh, kw = pattern.nonzero(as_tuple=True)
        taps.append(tuple(zip(kh.tolist(), kw.tolist())))
    return tuple(taps)


def pattern_ids(mask: torch.Tensor) -> torch.Tensor:
    """(O, C) long pattern id per kernel (0 = empty); raises on a kernel that is neither.

    Raises:
        MestError: the mask is not a 3x3 pattern mask.
    """
    if mask.dim() != 4 or tuple(mask.shape[2:]) != (3, 3):
        raise MestError(f"pattern format needs a 3x3 conv mask, got shape {tuple(mask.shape)}")
    ids = kernel_patterns(mask.detach().cpu().to(torch.bool))
    if bool((ids < 0).any()):
        raise MestError("mask has a 3x3 kernel that is neither empty nor one of MEST's 8 patterns")
    return ids


@dataclass
class PatternFormat:
    """Kept kernels of one layer, grouped by pattern, as runtime index buffers (`index_dtype`)."""

    geometry: ConvGeometry
    capacity: int
    nnz: int
    fwd_ptr: torch.Tensor  # (O * 8 + 1,)
    x_off: torch.Tensor  # (capacity,)
    flat_idx: torch.Tensor  # (capacity, 4) int64 into weight.view(-1)
    dx_ptr: torch.Tensor  # (C * 8 + 1,)
    dx_ker: torch.Tensor  # (capacity,)
    dx_off: torch.Tensor  # (capacity,)

    @classmethod
    def pack(cls, mask: torch.Tensor, geometry: ConvGeometry, capacity: int | None = None) -> PatternFormat:
        """Pack a legal pattern `mask` (shaped like the weight) for `geometry`.

        Args:
            capacity: buffer size in kernels; defaults to the number of kept kernels (at least 1).
        """
        ids = pattern_ids(mask)
        nnz = int((ids > 0).sum())
        capacity = max(1, nnz) if capacity is None else int(capacity)
        if nnz > capacity:
            raise MestError(f"mask keeps {nnz} kernels, more than the capacity {capacity}")
        o, c = geometry.out_channels, geometry.in_channels
        dtype = getattr(torch, index_dtype(geometry))
        fmt = cls(
            geometry=geometry,
            capacity=capacity,
            nnz=0,
            fwd_ptr=torch.zeros(o * NUM_PATTERNS + 1, dtype=dtype),
            x_off=torch.zeros(capacity, dtype=dtype),
            flat_idx=torch.zeros(capacity, TAPS_PER_KERNEL, dtype=torch.int64),
            dx_ptr=torch.zeros(c * NUM_PATTERNS + 1, dtype=dtype),
            dx_ker=torch.zeros(capacity, dtype=dtype),
            dx_off=torch.zeros(capacity, dtype=dtype),
        )
        fmt._fill(ids)
        return fmt

    def fits(self, mask: torch.Tensor) -> bool:
        """Whether `mask` can be repacked into these buffers (same layer, within capacity)."""
        geo = self.geometry
        if tuple(mask.shape) != (geo.out_channels, geo.in_channels, 3, 3):
            return False
        return int((pattern_ids(mask) > 0).sum()) <= self.capacity

    def repack_(self, mask: torch.Tensor) -> PatternFormat:
        """Refill the buffers in place for a new mask of the same layer (no new buffers)."""
        ids = pattern_ids(mask)
        nnz = int((ids > 0).sum())
        if nnz > self.capacity:
            raise MestError(f"mask keeps {nnz} kernels, more than the capacity {self.capacity}")
        self._fill(ids)
        return self

    def _fill(self, ids: torch.Tensor) -> None:
        n_out, n_in = ids.shape
        o, c = (ids > 0).nonzero(as_tuple=True)  # row-major: by filter, then channel
        pat = ids[o, c] - 1  # 0..7
        # Forward order (o, pattern, c): a stable sort on the (o, pattern) key keeps c ascending.
        key = o * NUM_PATTERNS + pat
        order = torch.argsort(key, stable=True)
        o, c, pat, key = o[order], c[order], pat[order], key[order]
        nnz = int(o.numel())
        self.nnz = nnz
        self.fwd_ptr.zero_()
        self.fwd_ptr[1:] = torch.cumsum(torch.bincount(key, minlength=n_out * NUM_PATTERNS), 0)
        self.x_off.zero_()
        self.x_off[:nnz] = c
        taps = torch.tensor([[kh * 3 + kw for kh, kw in t] for t in pattern_taps()], dtype=torch.int64)
        self.flat_idx.zero_()
        self.flat_idx[:nnz] = (o * n_in + c)[:, None] * 9 + taps[pat]
        # Input-gradient order (c, pattern, o), stable so each run stays sorted by filter.
        tkey = c * NUM_PATTERNS + pat
        torder = torch.argsort(tkey, stable=True)
        self.dx_ptr.zero_()
        self.dx_ptr[1:] = torch.cumsum(torch.bincount(tkey, minlength=n_in * NUM_PATTERNS), 0)
        self.dx_ker.zero_()
        self.dx_ker[:nnz] = torder
        self.dx_off.zero_()
        self.dx_off[:nnz] = o[torder]

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """`(nnz, 4)` kept values of `weight`; differentiable (its gradient is zero off the mask)."""
        return gather_flat(weight, self.flat_idx, self.nnz)

    def dense_grad(self, values_grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The dense weight gradient `values`' backward builds from `values_grad` (zero off the mask)."""
        return scatter_flat(values_grad, self.flat_idx, weight.numel()).view(weight.shape)

    def pattern_counts(self) -> torch.Tensor:
        """(8,) kept kernels per pattern."""
        per = (self.fwd_ptr[1:] - self.fwd_ptr[:-1]).reshape(-1, NUM_PATTERNS)
        return per.sum(0)

    def signature(self, buckets: int = 8) -> tuple:
        """Structure signature: geometry, capacity, kernels-per-filter histogram, kernels per pattern.

        The last element (what `policy.drift` compares) is the kernel count of each of the 8
        specialised loops, i.e. how the work splits over them; the per-filter histogram says how
        balanced the filters are (a single bucket under filter balance).
        """
        per_filter = (self.fwd_ptr[NUM_PATTERNS::NUM_PATTERNS] - self.fwd_ptr[:-1:NUM_PATTERNS]).to(torch.float32)
        filter_hist = torch.histc(per_filter, bins=buckets, min=0, max=max(1, self.geometry.in_channels))
        return (
            "pattern",
            self.geometry,
            self.capacity,
            tuple(filter_hist.to(torch.int64).tolist()),
            tuple(self.pattern_counts().tolist()),
        )

    def buffers(self) -> dict[str, torch.Tensor]:
        """The index buffers by name (what a kernel call needs besides activations and values)."""
        return {
            "fwd_ptr": self.fwd_ptr,
            "x_off": self.x_off,
            "dx_ptr": self.dx_ptr,
            "dx_ker": self.dx_ker,
            "dx_off": self.dx_off,
        }

    def nbytes(self) -> int:
        """Bytes of the index buffers plus the packed values (float32)."""
        idx = sum(t.numel() * t.element_size() for t in self.buffers().values())
        return idx + self.capacity * TAPS_PER_KERNEL * 4


def random_pattern_mask(weight_shape: tuple[int, ...], density: float, generator: torch.Generator,
                        per_filter: int | None = None) -> torch.Tensor:
    """A legal pattern mask `(O, C, 3, 3)`: random patterns, the first filter always empty.

    Args:
        density: fraction of kernels kept (ignored with `per_filter`).
        per_filter: keep exactly this many kernels in every filter but the first (filter balance).
    """
    o, c = weight_shape[0], weight_shape[1]
    if per_filter is None:
        kept = torch.rand(o, c, generator=generator) < density
    else:
        order = torch.rand(o, c, generator=generator).argsort(dim=1)
        kept = order < per_filter
    ids = torch.randint(0, NUM_PATTERNS, (o, c), generator=generator)
    kept[0] = False
    return PATTERNS[ids] & kept[:, :, None, None]
