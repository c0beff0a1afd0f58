"""The compiled training step cross-compiled for the ARM board runs on the emulated board (TVM runtime
and numpy only) and follows PyTorch; its guest instructions are counted against the dense pipeline."""

from __future__ import annotations

import copy
import pathlib

import pytest
import torch
import torch.nn.functional as F

from mest_compile.compiler.step.board import count_step_instructions, densified, export_step, run_on_board, write_batch
from mest_compile.compiler.step.build import Sgd
from mest_compile.compiler.target import as_target
from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparsify
from mest_compile.train.models import build_model

pytestmark = pytest.mark.emulated

SGD = Sgd(momentum=0.9, weight_decay=1e-4)
LR = 0.1


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    sparsify(model, "free_block_prune_column_4", {"features.conv2.weight": 0.75, "features.conv3.weight": 0.75})
    return model


def test_step_trains_on_the_board_and_counts(tmp_path: pathlib.Path) -> None:
    model = _model()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    exported = export_step(model, (8, 1, 8, 8), 10, as_target("arm"), SGD, tmp_path / "sparse")
    assert (exported.path / "step.so").read_bytes()[:4] == b"\x7fELF"
    write_batch(exported, x, y, LR)
    loss, logits, *rest = run_on_board(exported)
    reference = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=LR, momentum=SGD.momentum, weight_decay=SGD.weight_decay)
    ref_logits = reference(x)
    ref_loss = F.cross_entropy(ref_logits, y)
    ref_loss.backward()
    optimizer.step()
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    assert torch.allclose(torch.from_numpy(logits), ref_logits.detach(), atol=1e-5)
    # The first trainable is the dense first conv's weight, updated by the board's SGD.
    assert torch.allclose(torch.from_numpy(rest[0]), reference.features.conv1.weight.detach(), atol=1e-5)

    sparse = count_step_instructions(exported)
    dense_step = export_step(densified(model), (8, 1, 8, 8), 10, as_target("arm"), SGD, tmp_path / "dense")
    write_batch(dense_step, x, y, LR)
    dense = count_step_instructions(dense_step)
    assert 0 < sparse < dense


def test_wrong_batch_and_host_target_are_refused(tmp_path: pathlib.Path) -> None:
    model = _model()
    with pytest.raises(MestError, match="builds for this machine"):
        export_step(model, (8, 1, 8, 8), 10, as_target("host"), SGD, tmp_path)
    exported = export_step(model, (8, 1, 8, 8), 10, as_target("arm"), SGD, tmp_path / "arm")
    with pytest.raises(MestError, match="built for batches of"):
        write_batch(exported, torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), LR)
