"""The Relax pass: which call_tir replaced which conv2d, and the compiled graph equals PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mest_compile.compiler.graph.export import build, run
from mest_compile.compiler.families import family_for
from mest_compile.compiler.graph.rewrite import rewrite
from mest_compile.compiler.graph.result import Rewritten
from mest_compile.compiler.graph.trace import Traced, model_tensors, trace
from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparse_layers, sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.sparsity.schemes import mask_for
from mest_compile.train.models import build_model

BLOCK = "free_block_prune_column_4"


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    # Logits of these randomly initialised models are small: compare relative to their scale.
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 1e-4 * scale + 1e-6, (got, expected)


def _remask_(model: nn.Module, sparsity: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for layer in sparse_layers(model).values():
        layer.set_mask_(mask_for(torch.randn(layer.weight.shape, generator=gen), BLOCK, sparsity))


def _check(model: nn.Module, rewritten: Rewritten, image: tuple[int, ...], batches: tuple[int, ...] = (2, 3)) -> None:
    """The compiled graph equals the model at several batch sizes (the batch is symbolic)."""
    executable = build(rewritten)
    for batch in batches:
        x = torch.randn(batch, *image)
        with torch.no_grad():
            _close(run(executable, x, rewritten.arguments(model_tensors(model))), model.eval()(x))


@pytest.fixture(scope="module")
def small() -> tuple[nn.Module, Traced]:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=3)
    sparsify(model, "block", uniform_profile(model, 0.7, layers="all"))
    return model, trace(model, torch.randn(2, 3, 8, 8))


def test_every_masked_conv_becomes_a_kernel_call(small: tuple[nn.Module, Traced]) -> None:
    model, traced = small
    out = rewrite(traced, "host")
    assert [(r.layer, r.conv, r.kernel) for r in out.replaced] == [
        ("features.conv1.weight", "lv2", "block_fwd_c3h8w8_o16k3x3s1p1"),
        ("features.conv2.weight", "lv8", "block_fwd_c16h8w8_o32k3x3s2p1"),
        ("features.conv3.weight", "lv14", "block_fwd_c32h4w4_o32k3x3s1p1"),
    ]
    main = out.module["main"].script()
    assert "R.nn.conv2d" in traced.module["main"].script() and "R.nn.conv2d" not in main
    assert main.count("R.call_tir(block_fwd_") == 3
    # The weights became packed buffers with symbolic sizes; nothing else changed.
    names = [p.name for p in out.module["main"].params]
    assert "p_features_conv1_weight" not in names
    assert names[1:4] == ["p_features_conv1_weight_values", "p_features_conv1_weight_group_ptr",
                          "p_features_conv1_weight_x_off"]  # fmt: skip
    assert "p_features_conv1_weight_nnz, 4" in main and "p_features_bn1_weight" in names
    assert out.skipped == [] and "lv2: conv2d(features.conv1.weight) -> call_tir(" in out.report()


def test_runtime_buffers_serve_a_new_mask_without_recompiling(small: tuple[nn.Module, Traced]) -> None:
    model, traced = small
    out = rewrite(traced, "host")
    executable = build(out)
    x = torch.randn(3, 3, 8, 8)
    for sparsity, seed in [(None, 0), (0.3, 1)]:  # the traced masks, then denser ones (more nonzeros)
        if sparsity is not None:
            _remask_(model, sparsity, seed)
        args = out.arguments(model_tensors(model))
        with torch.no_grad():
            _close(run(executable, x, args), model.eval()(x))
    assert args[0].shape[0] > out.replaced[0].traced_mask.sum() // 4  # nnz really changed


def test_constant_mode_bakes_the_traced_structure(small: tuple[nn.Module, Traced]) -> None:
    model, _ = small
    traced = trace(model, torch.randn(2, 3, 8, 8))  # the masks now in the model
    out = rewrite(traced, "host", mode="constant")
    assert {r.mode for r in out.replaced} == {"constant"} and all(not r.params for r in out.replaced)
    assert not any(p.name.endswith("_values") for p in out.module["main"].params)
    _check(model, out, (3, 8, 8))


def test_resnet32_block_profile_both_modes() -> None:
    torch.manual_seed(1)
    model = build_model("resnet32", num_classes=10, in_channels=3)
    sparsify(model, "block", uniform_profile(model, 0.8))
    # resnet32 pools globally: 16x16 images keep the test quick.
    traced = trace(model, torch.randn(2, 3, 16, 16))
    runtime = rewrite(traced, "host")
    assert len(runtime.replaced) == len(sparse_layers(model)) == 30 and not runtime.skipped
    assert len({r.kernel for r in runtime.replaced}) == 5  # layers of one geometry share a kernel
    _check(model, rewrite(traced, "host", mode="constant"), (3, 16, 16), batches=(2,))
    executable = build(runtime)
    x = torch.randn(2, 3, 16, 16)
    for seed in (None, 3):
        if seed is not None:
            _remask_(model, 0.5, seed)
        with torch.no_grad():
            _close(run(executable, x, runtime.arguments(model_tensors(model))), model.eval()(x))


@pytest.mark.parametrize("scheme", ["irregular", "pattern+filter_balance", "channel"])
def test_every_compiled_scheme_rewrites_and_matches(scheme: str) -> None:
    torch.manual_seed(2)
    model = build_model("small_cnn", num_classes=10, in_channels=3)
    sparsify(model, scheme, uniform_profile(model, 0.8, layers="all"))
    out = rewrite(trace(model, torch.randn(2, 3, 8, 8)), "host")
    assert len(out.replaced) == 3 and not out.skipped
    _check(model, out, (3, 8, 8))
    gen = torch.Generator().manual_seed(1)  # a new mask, same executable
    for layer in sparse_layers(model).values():
        layer.set_mask_(mask_for(torch.randn(layer.weight.shape, generator=gen), scheme, 0.6))
    _check(model, out, (3, 8, 8), batches=(2,))


class _PlainMasked(nn.Module):
    """No SparseConv2d: `conv2d(x, mask * weight)` spelled by hand, a dilated one, and a dense one."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3, generator=gen))
        self.m1 = nn.Parameter(mask_for(self.w1.detach(), BLOCK, 0.5).float(), requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(8, 8, 3, 3, generator=gen))
        self.register_buffer("m2", mask_for(self.w2.detach(), BLOCK, 0.5))
        self.w3 = nn.Parameter(torch.randn(4, 8, 1, 1, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(F.conv2d(x, self.m1 * self.w1, padding=1))  # mask first, a float parameter
        y = F.conv2d(y, self.w2 * self.m2, padding=2, dilation=2)  # dilated: stays dense
        return F.conv2d(y, self.w3)


def test_plain_graph_pattern_and_unsupported_convs_stay() -> None:
    model = _PlainMasked()
    out = rewrite(trace(model, torch.randn(2, 3, 6, 6)), "host", schemes=BLOCK)
    assert [(r.layer, r.mask_name) for r in out.replaced] == [("w1", "m1")]
    assert [(s.layer, s.reason) for s in out.skipped] == [("w2", "grouped or dilated conv")]
    main = out.module["main"].script()
    assert main.count("R.nn.conv2d") == 2 and main.count("R.call_tir") == 1
    assert not any(p.name in ("p_w1", "p_m1") for p in out.module["main"].params)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        _close(run(build(out), x, out.arguments(model_tensors(model))), model(x))


def test_a_scheme_without_a_graph_kernel_is_reported(small: tuple[nn.Module, Traced],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, traced = small
    family = family_for("irregular")
    # A family with no forward kernel for this kind of target (the CPU here): its layers stay dense.
    monkeypatch.setattr(type(family), "templates", {})
    # A bare module: only the scheme given here is known; the other masked convs have none.
    out = rewrite(traced.module, "host", schemes={"p_features_conv1_weight": "irregular"})
    assert out.replaced == []
    assert [(s.layer, s.reason) for s in out.skipped] == [
        ("p_features_conv1_weight", "scheme 'irregular' has no CPU forward kernel yet"),
        ("p_features_conv2_weight", "no scheme is known for this weight"),
        ("p_features_conv3_weight", "no scheme is known for this weight"),
    ]
    assert out.module["main"].script().count("R.nn.conv2d") == 3


def test_bad_mode_and_target() -> None:
    module = trace(_PlainMasked(), torch.randn(2, 3, 6, 6)).module
    with pytest.raises(MestError, match="unknown rewrite mode 'frozen'"):
        rewrite(module, mode="frozen")
    with pytest.raises(MestError, match="unknown target 'tpu'"):
        rewrite(module, "tpu")
