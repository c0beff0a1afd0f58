"""Compiled training does not depend on whether torch or mest_compile is imported first.

libgomp reads `OMP_WAIT_POLICY` once, when torch loads. `import mest_compile` sets PASSIVE when the
variable is unset, which reaches PyTorch only if nothing loaded torch before; otherwise PyTorch's
workers spin beside the kernels' pool, and `train --compiled` runs PyTorch's ops on one thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.compile

RUN = """
import json, sys, tempfile
{first}
from mest_compile import openmp_passive
from mest_compile.train.config import TrainConfig
from mest_compile.train.loop import Trainer
config = TrainConfig(dataset="digits", model="small_cnn", scheme="block", sparsity=0.75, epochs=1,
                     batch_size=256, compiled=True, fallback="never")
summary = Trainer(config, tempfile.mkdtemp() + "/run").fit()
print(json.dumps({{"passive": openmp_passive(), "torch_threads": summary["kernels"]["torch_threads"]}}))
"""


def _run(first: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", RUN.format(first=first)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_torch_imported_first_runs_torch_on_one_thread() -> None:
    assert _run("import torch; torch.set_num_threads(2)") == {"passive": False, "torch_threads": 1}


def test_mest_compile_imported_first_keeps_torch_threads() -> None:
    got = _run("import mest_compile, torch; torch.set_num_threads(2)")
    assert got == {"passive": True, "torch_threads": 2}
