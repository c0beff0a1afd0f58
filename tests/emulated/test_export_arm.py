"""The rewritten forward graph, cross-compiled for `arm`, runs on the emulated aarch64 board."""

from __future__ import annotations

from pathlib import Path

import torch

from mest_compile.compiler.devices import EmulatedBoard
from mest_compile.compiler.graph.export import export, run
from mest_compile.compiler.graph.rewrite import rewrite
from mest_compile.compiler.graph.trace import model_tensors, trace
from mest_compile.sparsity.module import sparse_layers, sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.sparsity.schemes import mask_for
from mest_compile.train.models import build_model


def test_rewritten_model_runs_on_the_board(board: EmulatedBoard, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=3)
    sparsify(model, "block", uniform_profile(model, 0.7, layers="all"))
    rewritten = rewrite(trace(model, torch.randn(2, 3, 8, 8)), "arm")
    assert len(rewritten.replaced) == 3
    library = export(rewritten, tmp_path / "small_cnn.so")
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[18] == 0xB7  # e_machine 183: AArch64

    session = board.session()
    session.upload(str(library))
    loaded = session.load_module(library.name)
    x = torch.randn(3, 3, 8, 8)  # another batch size than traced: the batch is symbolic
    gen = torch.Generator().manual_seed(1)
    for remask in (False, True):  # the traced masks, then new ones on the same library
        if remask:
            for layer in sparse_layers(model).values():
                layer.set_mask_(mask_for(torch.randn(layer.weight.shape, generator=gen), "block", 0.4))
        with torch.no_grad():
            expected = model.eval()(x)
        got = run(loaded, x, rewritten.arguments(model_tensors(model)), session.cpu(0))
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max()) + 1e-6
