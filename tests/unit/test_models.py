"""Models: MEST's ResNet-32 matches the reference's names, shapes and size; small_cnn fits every scheme."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mest_compile.errors import MestError
from mest_compile.train.models import MODELS, build_model


def block_conv_table() -> dict[str, tuple[int, int, int, int]]:
    """MEST_SPEC 5: the 30 sparse convs of ResNet-32 and their shapes."""
    table = {}
    for stage, (width, prev) in enumerate(((32, 32), (64, 32), (128, 64)), start=1):
        for block in range(5):
            table[f"layer{stage}.{block}.conv1.weight"] = (width, prev if block == 0 else width, 3, 3)
            table[f"layer{stage}.{block}.conv2.weight"] = (width, width, 3, 3)
    return table


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet32", num_classes=10, in_channels=3)


def test_resnet32_parameter_count(resnet: nn.Module) -> None:
    assert sum(p.numel() for p in resnet.parameters()) == 1_860_522


def test_resnet32_block_convs_match_mest_profile_keys(resnet: nn.Module) -> None:
    params = dict(resnet.named_parameters())
    convs = {n: tuple(p.shape) for n, p in params.items() if n.startswith("layer") and ".conv" in n}
    assert convs == block_conv_table()
    sizes = sorted({p.numel() for n, p in params.items() if n in convs})
    assert sizes == [9_216, 18_432, 36_864, 73_728, 147_456]


def test_resnet32_stem_shortcuts_and_head(resnet: nn.Module) -> None:
    params = dict(resnet.named_parameters())
    assert tuple(params["conv1.weight"].shape) == (32, 3, 3, 3)
    assert "bn.weight" in params
    assert tuple(params["layer2.0.downsample.0.weight"].shape) == (64, 32, 1, 1)
    assert tuple(params["layer3.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert "layer2.0.bn3.weight" in params and "layer1.0.bn3.weight" not in params
    assert tuple(params["linear.weight"].shape) == (10, 128)


def test_resnet32_initialisation(resnet: nn.Module) -> None:
    assert torch.all(resnet.linear.bias == 0)
    assert resnet.linear.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.all(resnet.layer1[0].bn1.weight == 1) and torch.all(resnet.layer1[0].bn1.bias == 0)
    # kaiming fan_out: std = sqrt(2 / (out_channels * 9)).
    w = resnet.layer3[1].conv1.weight
    assert w.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)


def test_resnet32_forward_cifar_and_digits() -> None:
    torch.manual_seed(0)
    cifar = build_model("resnet32", num_classes=100, in_channels=3)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    digits = build_model("resnet32", num_classes=10, in_channels=1)
    out = digits(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 32, 32), (2, 3, 16, 16)])
def test_small_cnn_forward(shape: tuple[int, int, int, int]) -> None:
    model = build_model("small_cnn", num_classes=10, in_channels=shape[1])
    assert model(torch.randn(*shape)).shape == (2, 10)


def test_small_cnn_convs_fit_every_scheme() -> None:
    model = build_model("small_cnn", num_classes=10, in_channels=3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) >= 3
    assert all(c.kernel_size == (3, 3) and c.out_channels % 4 == 0 for c in convs)


def test_small_cnn_options() -> None:
    model = build_model("small-cnn", num_classes=4, in_channels=1, widths=(8, 8), strides=(1, 1))
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [8, 8]
    with pytest.raises(MestError, match="multiples of 4"):
        build_model("small_cnn", num_classes=4, in_channels=1, widths=(6, 8), strides=(1, 1))


def test_build_model_errors() -> None:
    assert MODELS.names() == ["resnet32", "resnet18_mammoth", "small_cnn", "small_cnn_wide"]
    with pytest.raises(MestError, match="unknown model 'vgg19'.*resnet32"):
        build_model("vgg19", num_classes=10, in_channels=3)
    with pytest.raises(MestError, match="num_classes.*0"):
        build_model("resnet32", num_classes=0, in_channels=3)
    with pytest.raises(MestError, match="in_channels"):
        build_model("resnet32", num_classes=10, in_channels=2.5)  # type: ignore[arg-type]
    with pytest.raises(MestError, match="no option 'depth'"):
        build_model("resnet32", num_classes=10, in_channels=3, depth=20)


def test_resnet18_mammoth_layout() -> None:
    model = build_model("resnet18_mammoth", num_classes=10, in_channels=3, nf=20)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    # Stem, 16 block convs, 3 shortcut convs (stages 2-4).
    assert len(convs) == 20 and convs[0] == "conv1" and "layer2.0.shortcut.0" in convs
    assert model.linear.in_features == 160
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in build_model("resnet18_mammoth", 10, 3).parameters()) == 11_173_962
