"""Batched CIFAR augmentation, Pad(4) + RandomCrop(32) + RandomHorizontalFlip, on whole tensors.

Randomness comes only from an explicit CPU `torch.Generator`: the same generator state gives
the same batch on any device, and saving `generator.get_state()` in a checkpoint makes a resumed
run draw exactly what the uninterrupted run would have. One gather per batch replaces the
per-image PIL transforms and DataLoader workers of the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mest_compile.errors import MestError


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    fill: float | torch.Tensor = 0.0,
    flip_prob: float = 0.5,
) -> torch.Tensor:
    """Pad every image by `padding`, crop it back to its size at a random offset, maybe flip it.

    Draws, in this order, `B` vertical offsets, `B` horizontal offsets (each uniform in
    `[0, 2 * padding]`) and `B` uniforms for the flips, all from `generator`.

    Args:
        images: `(B, C, H, W)` batch, on any device.
        generator: a CPU generator; it is advanced by exactly three draws of size `B`.
        padding: pixels added on every side before cropping (4 in MEST).
        fill: value of the padded pixels, a scalar or one value per channel. For images that
            are already normalised pass `DatasetSplits.pad_fill`, which reproduces padding the
            raw image with black before normalising, as the reference does.
        flip_prob: probability of a horizontal flip per image.

    Returns:
        A new `(B, C, H, W)` tensor; `images` is not modified.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> augment_batch(torch.zeros(2, 3, 32, 32), g).shape
        torch.Size([2, 3, 32, 32])
    """
    if images.dim() != 4:
        raise MestError(f"augmentation needs a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise MestError(f"padding must be an int >= 0, got {padding!r}")
    if not 0.0 <= flip_prob <= 1.0:
        raise MestError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
    if generator.device.type != "cpu":
        raise MestError(f"the augmentation generator must be a CPU generator, got one on {generator.device}")
    batch, channels, height, width = images.shape
    span = 2 * padding + 1
    dy = torch.randint(0, span, (batch,), generator=generator)
    dx = torch.randint(0, span, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < flip_prob

    fill_t = torch.as_tensor(fill, dtype=images.dtype).to(images.device).reshape(-1)
    if fill_t.numel() not in (1, channels):
        raise MestError(f"fill needs 1 or {channels} values, got {fill_t.numel()}")
    if padding:
        padded = F.pad(images, (padding,) * 4)
        # F.pad's constant mode takes one scalar; paint the per-channel fill into the border.
        border = torch.ones(1, 1, height + 2 * padding, width + 2 * padding, dtype=torch.bool, device=images.device)
        border[..., padding : padding + height, padding : padding + width] = False
        padded = torch.where(border, fill_t.view(1, -1, 1, 1), padded)
    else:
        padded = images

    # Row and column indices into the padded image; a flipped image reads its columns backwards.
    ar_h = torch.arange(height)
    ar_w = torch.arange(width)
    rows = dy[:, None] + ar_h
    cols = dx[:, None] + torch.where(flip[:, None], width - 1 - ar_w, ar_w)
    rows, cols = rows.to(images.device), cols.to(images.device)
    b = torch.arange(batch, device=images.device)[:, None, None, None]
    c = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]
