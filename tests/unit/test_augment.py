"""Batched crop + flip augmentation: legal crops only, exactly reproducible from the generator."""

from __future__ import annotations

import pytest
import torch

from mest_compile.errors import MestError
from mest_compile.train.augment import augment_batch


def candidates(image: torch.Tensor, padding: int, fill: torch.Tensor) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every crop of `image` padded with per-channel `fill`, by (dy, dx, flipped)."""
    c, h, w = image.shape
    padded = fill.view(-1, 1, 1).expand(c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, padding : padding + h, padding : padding + w] = image
    crops = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            crops[dy, dx, False] = crop
            crops[dy, dx, True] = crop.flip(-1)
    return crops


def test_every_output_is_a_crop_or_its_mirror() -> None:
    images = torch.randn(16, 3, 6, 5)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = augment_batch(images, torch.Generator().manual_seed(0), padding=2, fill=fill)
    assert out.shape == images.shape and out.dtype == images.dtype
    for image, result in zip(images, out):
        assert any(torch.equal(result, crop) for crop in candidates(image, 2, fill).values())


def test_all_offsets_and_both_flips_occur() -> None:
    # Distinct positive pixels make the (dy, dx, flip) of every crop identifiable.
    image = torch.arange(1.0, 65.0).view(1, 8, 8)
    crops = candidates(image, 4, torch.zeros(1))
    out = augment_batch(image.expand(400, 1, 8, 8), torch.Generator().manual_seed(0), padding=4)
    drawn = [next(key for key, crop in crops.items() if torch.equal(crop, result)) for result in out]
    assert {dy for dy, _, _ in drawn} == set(range(9)) and {dx for _, dx, _ in drawn} == set(range(9))
    assert 150 < sum(flip for _, _, flip in drawn) < 250


def test_reproducible_and_resumable() -> None:
    images = torch.randn(8, 3, 32, 32)
    gen = torch.Generator().manual_seed(914)
    first = augment_batch(images, gen)
    state = gen.get_state()
    second = augment_batch(images, gen)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(augment_batch(images, resumed), second)
    assert torch.equal(augment_batch(images, torch.Generator().manual_seed(914)), first)
    assert not torch.equal(first, second)


def test_identity_and_pure_flip() -> None:
    images = torch.randn(4, 2, 5, 5)
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(augment_batch(images, gen, padding=0, flip_prob=0.0), images)
    assert torch.equal(augment_batch(images, gen, padding=0, flip_prob=1.0), images.flip(-1))


def test_bad_arguments() -> None:
    gen = torch.Generator()
    with pytest.raises(MestError, match="\\(B, C, H, W\\)"):
        augment_batch(torch.zeros(3, 8, 8), gen)
    with pytest.raises(MestError, match="padding"):
        augment_batch(torch.zeros(1, 3, 8, 8), gen, padding=-1)
    with pytest.raises(MestError, match="fill needs 1 or 3"):
        augment_batch(torch.zeros(1, 3, 8, 8), gen, fill=torch.zeros(2))
