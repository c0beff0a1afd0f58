"""The three kernels of a sparse conv layer, in the order training calls them."""

from __future__ import annotations

#: forward `y = conv(x, w * mask)`, input gradient `dx`, and the weight gradient restricted to the mask.
PHASES: tuple[str, ...] = ("forward", "dgrad", "wgrad")
