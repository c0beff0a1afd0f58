"""SparseConv2d and sparsify: the (dense weight, bool mask, scheme) side of the contract."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.errors import MestError
from mest_compile.sparsity.compat import Compat
from mest_compile.sparsity.module import SparseConv2d, sparse_layers, sparsify
from mest_compile.sparsity.profile import Profile
from mest_compile.sparsity.schemes import get_scheme


def small_model() -> nn.Module:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, bias=False))
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 8, 3, padding=1),
            body=body,
            short=nn.Conv2d(16, 16, 1),
            bn=nn.BatchNorm2d(16),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(16, 10),
        )
    )


CONVS = [
    dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1, dilation=1, groups=1, bias=True),
    dict(in_channels=8, out_channels=8, kernel_size=(3, 1), stride=1, padding=(2, 0), dilation=2, groups=2, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, bias=True, padding_mode="reflect"),
]


@pytest.mark.parametrize("kwargs", CONVS)
def test_forward_and_gradients_are_the_masked_dense_conv(kwargs: dict) -> None:
    torch.manual_seed(1)
    dense = nn.Conv2d(**kwargs)
    sparse = SparseConv2d.from_dense(dense, "irregular", sparsity=0.7)
    assert sparse.mask.dtype == torch.bool and abs(sparse.sparsity - 0.7) < 0.02
    assert torch.equal(sparse.weight.detach() == 0, ~sparse.mask)
    x = torch.randn(2, kwargs["in_channels"], 9, 9, requires_grad=True)
    out = sparse(x)
    w = dense.weight.detach().clone().requires_grad_(True)
    ref = dense._conv_forward(x, w * sparse.mask, dense.bias)
    assert torch.allclose(out, ref, atol=1e-6)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    gx, gw = torch.autograd.grad(ref, (x, w), grad_out)
    # The weight gradient is exactly restricted to the mask.
    assert torch.all(sparse.weight.grad[~sparse.mask] == 0)
    assert torch.allclose(sparse.weight.grad, gw * sparse.mask, atol=1e-5)
    assert torch.allclose(to_dense_out := sparse.to_dense()(x), ref, atol=1e-6) and to_dense_out.shape == ref.shape
    assert type(sparse.to_dense()) is nn.Conv2d and sparse.to_dense().padding_mode == sparse.padding_mode


def test_from_dense_copies_and_keeps_the_original() -> None:
    dense = nn.Conv2d(4, 8, 3)
    before = dense.weight.detach().clone()
    sparse = SparseConv2d.from_dense(dense, "block", sparsity=0.5)
    assert torch.equal(dense.weight, before)  # the dense conv is untouched
    assert sparse.scheme is get_scheme("block") and get_scheme("block").is_legal(sparse.mask)
    assert SparseConv2d.from_dense(dense, "irregular").sparsity == 0.0
    with pytest.raises(MestError, match="not both"):
        SparseConv2d.from_dense(dense, "irregular", mask=sparse.mask, sparsity=0.5)
    with pytest.raises(MestError, match="Linear"):
        SparseConv2d.from_dense(nn.Linear(3, 3), "irregular")  # type: ignore[arg-type]


def test_set_mask_checks_shape_and_legality_and_bumps_the_version() -> None:
    conv = SparseConv2d(4, 8, 3, scheme="block")
    version = conv.mask_version
    with pytest.raises(MestError, match=r"\(8, 4, 3\)"):
        conv.set_mask_(torch.ones(8, 4, 3, dtype=torch.bool))
    half_block = torch.ones(8, 4, 3, 3, dtype=torch.bool)
    half_block[0, 0, 0, 0] = False
    with pytest.raises(MestError, match="free_block_prune_column_4"):
        conv.set_mask_(half_block)
    legal = torch.ones(8, 4, 3, 3, dtype=torch.bool)
    legal[:4, 0, 0, 0] = False
    conv.set_mask_(legal.float())  # any dtype is read as bool
    assert conv.mask_version == version + 1 and conv.mask.dtype == torch.bool
    assert torch.all(conv.weight[:4, 0, 0, 0] == 0) and conv.sparsity == pytest.approx(4 / 288)
    # A dense mask is always legal, even for pattern (growth to sparsity 0 produces it).
    pattern = SparseConv2d(4, 4, 3, scheme="pattern+filter_balance")
    pattern.set_mask_(torch.ones(4, 4, 3, 3, dtype=torch.bool))


def test_apply_mask_zeroes_what_an_optimizer_step_wrote() -> None:
    conv = SparseConv2d.from_dense(nn.Conv2d(4, 4, 3), "irregular", sparsity=0.5)
    with torch.no_grad():
        conv.weight.add_(1.0)
    conv.apply_mask_()
    assert torch.equal(conv.weight.detach() != 0, conv.mask)
    assert conv.mask_version == 1  # applying is not a new mask


def test_state_dict_round_trip_restores_scheme_and_mask() -> None:
    src = SparseConv2d.from_dense(nn.Conv2d(4, 8, 3), "block", sparsity=0.75)
    dst = SparseConv2d(4, 8, 3, scheme="irregular")
    version = dst.mask_version
    dst.load_state_dict(src.state_dict())
    assert dst.scheme.name == "free_block_prune_column_4"
    assert torch.equal(dst.mask, src.mask) and torch.equal(dst.weight, src.weight)
    assert dst.mask_version > version  # a compiled backend must repack
    assert "scheme=free_block_prune_column_4" in repr(dst) and "sparsity=0.75" in repr(dst)
    # A checkpoint whose mask does not fit its scheme is refused.
    bad = src.state_dict()
    bad["mask"] = torch.rand(8, 4, 3, 3) > 0.5
    with pytest.raises(MestError, match="not legal"):
        dst.load_state_dict(bad)


def test_backend_swaps_the_forward_and_stays_out_of_the_state_dict() -> None:
    conv = SparseConv2d.from_dense(nn.Conv2d(2, 4, 3), "irregular", sparsity=0.5)
    calls: list[tuple] = []

    class Kernel(nn.Module):
        def forward(self, module: SparseConv2d, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape)
            return F.conv2d(x, module.weight * module.mask, module.bias)

    x = torch.randn(1, 2, 5, 5)
    expected = conv(x)
    keys = set(conv.state_dict())
    conv.backend = Kernel()
    assert torch.allclose(conv(x), expected) and calls == [x.shape]
    assert set(conv.state_dict()) == keys and "backend" not in dict(conv.named_children())
    conv.backend = None
    conv(x)
    assert len(calls) == 1


def test_dtype_moves_keep_the_mask_bool() -> None:
    conv = SparseConv2d.from_dense(nn.Conv2d(2, 4, 3), "irregular", sparsity=0.5).to(torch.float64)
    assert conv.mask.dtype == torch.bool and conv.weight.dtype == torch.float64
    assert conv(torch.randn(1, 2, 4, 4, dtype=torch.float64)).dtype == torch.float64


def test_sparsify_swaps_the_profiled_convs_in_model_order() -> None:
    model = small_model()
    x = torch.randn(2, 3, 6, 6)
    profile = Profile({"body.2.weight": 0.8, "body.0.weight": 0.5})
    layers = sparsify(model, "irregular", profile)
    assert list(layers) == ["body.0.weight", "body.2.weight"]  # model order, not profile order
    assert layers["body.0.weight"] is model.body[0] and isinstance(model.body[2], SparseConv2d)
    assert type(model.stem) is nn.Conv2d and type(model.short) is nn.Conv2d
    assert sparse_layers(model) == layers
    assert [round(layer.sparsity, 1) for layer in layers.values()] == [0.5, 0.8]
    model(x)
    assert sparse_layers(SparseConv2d(2, 2, 1)).keys() == {"weight"}


@pytest.mark.parametrize(
    ("scheme", "profile", "named"),
    [
        ("irregular", {"body.9.weight": 0.5}, "body.9.weight"),
        ("irregular", {"head.weight": 0.5}, "head.weight"),
        ("irregular", {"bn.weight": 0.5}, "bn.weight"),
        ("irregular", {"stem.bias": 0.5}, "stem.bias"),
        ("pattern", {"short.weight": 0.5}, "short.weight"),
        ("block", {"stem.weight": 0.5, "body.0.weight": 0.5}, None),
    ],
)
def test_sparsify_errors_name_the_layer(scheme: str, profile: dict, named: str | None) -> None:
    model = small_model()
    if named is None:  # block needs out-channels divisible by 4: every conv here qualifies
        sparsify(model, scheme, profile)
        return
    with pytest.raises(MestError, match=named.replace(".", r"\.")):
        sparsify(model, scheme, profile)
    assert not sparse_layers(model)  # nothing swapped on error


def test_kernel_space_profile_only_describes_3x3_convs() -> None:
    with pytest.raises(MestError, match="short.weight"):
        sparsify(small_model(), "irregular", Profile({"short.weight": 0.775}, ratio_space="kernel"))


def test_block_shape_error_names_the_layer() -> None:
    model = nn.Sequential(OrderedDict(odd=nn.Conv2d(3, 6, 3)))
    with pytest.raises(MestError, match="odd.weight.*divisible by 4"):
        sparsify(model, "block", {"odd.weight": 0.5})


def test_skip_nearly_dense_reproduces_the_reference() -> None:
    profile = {"body.0.weight": 0.05, "body.2.weight": 0.9}
    model = small_model()
    with pytest.warns(UserWarning, match="body.0.weight"):
        layers = sparsify(model, "irregular", profile, compat=Compat(skip_nearly_dense=True))
    assert list(layers) == ["body.2.weight"] and type(model.body[0]) is nn.Conv2d
    # Hardened weights are written back, as prune_harden does, but nothing masks them.
    assert float((model.body[0].weight == 0).float().mean()) == pytest.approx(0.05, abs=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corrected = sparsify(small_model(), "irregular", profile)
    assert list(corrected) == ["body.0.weight", "body.2.weight"]
