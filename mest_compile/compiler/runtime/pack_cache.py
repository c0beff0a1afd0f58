"""Packed formats of the masks `sparse_conv2d` has seen, so that a mask is packed once, not once per call.

Packing a mask costs 1-3 ms per ResNet-32 layer, as much as the kernels themselves; a module that
calls `sparse_conv2d` with the same mask every step would pay it every call. Keyed by the kernels
(their handle: family, geometry, tiles) and the mask's content (a 128-bit digest, about 10 us for a
64x64x3x3 mask), so an in-place edit of the mask or a new tensor with new content packs afresh, and
an equal mask in a new tensor does not. Least recently used entries go first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import torch

from mest_compile.compiler.families import PackedFormat


class Packer(Protocol):
    """What packs masks for one set of kernels: `CompiledKernels`, or a device backend's per-geometry packer."""

    handle: str

    def pack(self, mask: torch.Tensor) -> PackedFormat:
        """The packed format of `mask`."""


@dataclass
class PackStats:
    """How often a mask was packed, and how often its packing was reused."""

    packs: int = 0
    hits: int = 0


class PackCache:
    """The last `size` packed masks (see the module docstring)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.stats = PackStats()
        self._entries: OrderedDict[tuple, PackedFormat] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kernels: Packer, mask: torch.Tensor) -> PackedFormat:
        """`kernels.pack(mask)`, or the format packed before for an equal mask."""
        flat = mask.detach().to("cpu").contiguous()
        digest = hashlib.blake2b(flat.view(torch.uint8).numpy() if flat.dtype == torch.bool else flat.numpy(),
                                 digest_size=16).digest()
        key = (kernels.handle, tuple(flat.shape), str(flat.dtype), digest)
        with self._lock:
            fmt = self._entries.get(key)
            if fmt is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return fmt
        fmt = kernels.pack(mask)
        with self._lock:
            self._entries[key] = fmt
            self.stats.packs += 1
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return fmt

    def clear(self) -> None:
        """Forget every packed mask."""
        with self._lock:
            self._entries.clear()


#: The process's cache, used by `sparse_conv2d`.
PACKED = PackCache()
