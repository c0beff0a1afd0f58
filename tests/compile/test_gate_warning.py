"""A kernel failing the correctness gate fails the test that ran it (pyproject.toml's filterwarnings).

`sparse_conv2d` then falls back to the masked dense conv with only a warning, so without the
filter a kernel test would compare dense with dense and pass.
"""

from __future__ import annotations

import pytest
import torch

import mest_compile
from mest_compile.compiler.runtime import gate


def test_a_gate_failure_is_an_error_under_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "_RTOL", -1.0)  # every kernel now disagrees with PyTorch
    # A geometry no other test builds: the failed kernel set stays cached, as failed, for it alone.
    x, w = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    mask = torch.ones_like(w)
    with pytest.raises(UserWarning, match="failed the correctness gate"):
        mest_compile.sparse_conv2d(x, w, mask, scheme="block", padding=1)
