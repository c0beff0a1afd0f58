"""Sparse-aware gradient averaging: one flat buffer per step, sparse layers' kept values only.

A data-parallel step must average every gradient across processes. DDP all-reduces each
parameter's dense gradient; a sparse layer's gradient is zero outside its mask (the forward
multiplies the weight by the mask), so reducing only the kept positions gives the same average
and sends `1 - sparsity` of the bytes. The masks are identical on every process (the distributed
algorithm checks it), so the positions need not travel: each process packs the same positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from mest_compile.sparsity.module import SparseConv2d


class PackedGradients:
    """Packs gradients into one flat buffer, lets a collective reduce it, unpacks the result.

    Example:
        >>> grads = PackedGradients(model, layers, packed=True)  # doctest: +SKIP
        >>> grads.replan()                                       # after every mask change
        >>> grads.reduce_(scale=0.5, all_reduce=dist.all_reduce)  # after backward
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, SparseConv2d], *, packed: bool) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        # id(weight) -> its layer: the parameters whose gradients travel at the kept positions only.
        self.sparse = {id(layer.weight): layer for layer in layers.values()} if packed else {}
        self.kept: dict[int, torch.Tensor] = {}
        self.last_bytes = 0
        self.replan()

    def replan(self) -> None:
        """Read the masks' kept positions again (after a mask update or a resume)."""
        self.kept = {key: layer.mask.reshape(-1).nonzero().squeeze(1) for key, layer in self.sparse.items()}

    def _with_grads(self) -> Iterable[torch.nn.Parameter]:
        # Same model and graph on every process, so every process skips the same parameters.
        return (p for p in self.params if p.grad is not None)

    @property
    def dense_bytes(self) -> int:
        """Bytes a dense all-reduce of every gradient sends per step (what DDP reduces)."""
        return sum(p.numel() * p.element_size() for p in self.params)

    @property
    def packed_bytes(self) -> int:
        """Bytes of the flat buffer reduced per step (the kept values only for sparse layers)."""
        return sum((self.kept[id(p)].numel() if id(p) in self.kept else p.numel()) * p.element_size()
                   for p in self.params)

    @torch.no_grad()
    def reduce_(self, scale: float, all_reduce: Callable[[torch.Tensor], None]) -> None:
        """Multiply every gradient by `scale`, sum it across processes with `all_reduce`, in place.

        `scale` is this process's share of the batch (its examples / the batch's), so the sum is
        the gradient of the mean loss over the whole batch, whatever the split.
        """
        params = list(self._with_grads())
        for p in params:
            if not p.grad.is_contiguous():  # unpacking writes through a flat view
                p.grad = p.grad.contiguous()
        chunks = [p.grad.reshape(-1).index_select(0, self.kept[id(p)]) if id(p) in self.kept else p.grad.reshape(-1)
                  for p in params]
        if not chunks:
            return
        flat = torch.cat(chunks).mul_(scale)
        all_reduce(flat)
        self.last_bytes = flat.numel() * flat.element_size()
        offset = 0
        for p, chunk in zip(params, chunks):
            values = flat[offset:offset + chunk.numel()]
            offset += chunk.numel()
            grad = p.grad.view(-1)
            if id(p) in self.kept:
                # Outside the mask the average is zero on every process: restrict it to the mask.
                grad.zero_().index_copy_(0, self.kept[id(p)], values)
            else:
                grad.copy_(values)
