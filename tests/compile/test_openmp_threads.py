"""Compiled training gets the cores whatever the import order and the user's OpenMP settings.

libgomp reads `OMP_WAIT_POLICY` once, when torch loads, and mest_compile leaves it alone (PASSIVE
slows dense PyTorch). Where PyTorch's workers would spin beside the kernels' pool, `train
--compiled` runs PyTorch's ops on one thread for the run and gives the program its count back.
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
import torch
print(json.dumps({{"passive": openmp_passive(), "torch_threads": summary["kernels"]["torch_threads"],
                   "after": torch.get_num_threads()}}))
"""


def _run(first: str, policy: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, "-c", RUN.format(first=first)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("first", ["import torch; torch.set_num_threads(2)",
                                   "import mest_compile, torch; torch.set_num_threads(2)"])
def test_spinning_workers_leave_the_cores_to_the_kernels_for_the_run(first: str) -> None:
    assert _run(first) == {"passive": False, "torch_threads": 1, "after": 2}


def test_a_passive_policy_keeps_torch_threads() -> None:
    got = _run("import torch; torch.set_num_threads(2)", policy="PASSIVE")
    assert got == {"passive": True, "torch_threads": 2, "after": 2}


def test_importing_mest_compile_leaves_openmp_alone() -> None:
    code = "import os, mest_compile; print(os.environ.get('OMP_WAIT_POLICY'), mest_compile.SET_ON_IMPORT)"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "TVM_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "None []"
