"""The PyTorch engine on the emulated aarch64 board: compiled SGD steps on kernels cross-built here.

The board has TVM's runtime only, so the kernels are built on this machine for `arm` (NEON) with
`prebuild`; the board's Python (torch 2.9.1 aarch64 under qemu) loads them with `load_prebuilt`,
gates them, and trains a small model on them next to the same model in masked dense.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mest_compile
import mest_compile.schedules
import mest_compile.targets
from mest_compile.compiler.devices import BoardImage, MissingToolError, provision_board
from mest_compile.compiler.devices.toolchain import AARCH64_GCC, require
from mest_compile.compiler.prebuilt import prebuild
from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.models import build_model

pytestmark = pytest.mark.emulated

STEPS, BATCH, WIDTHS, SCHEME, SPARSITY = 3, 8, (8, 8, 8), "block", 0.6
# Generous: qemu imports torch in ~20 s on an idle machine, several times that on a loaded one.
BOARD_TIMEOUT_S = 600

BOARD_SCRIPT = """
import copy, json, sys, time
start = time.perf_counter()
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
from mest_compile.compiler.api import compile_model
from mest_compile.compiler.prebuilt import load_prebuilt
from mest_compile.compiler.runtime.cache import CACHE
from mest_compile.sparsity.module import sparse_layers, sparsify
from mest_compile.sparsity.profile import uniform_profile
from mest_compile.train.models import build_model
import tvm
imported = time.perf_counter()

torch.manual_seed(0)
model = build_model("small_cnn", num_classes=10, in_channels=3, widths={widths})
sparsify(model, "{scheme}", uniform_profile(model, {sparsity}, layers="all"))
dense = copy.deepcopy(model)
loaded = load_prebuilt(sys.argv[1])
calls = {{}}

def counted(kernels, which):
    inner = getattr(kernels, which)
    def call(*args):
        calls[kernels.handle + ":" + which] = calls.get(kernels.handle + ":" + which, 0) + 1
        return inner(*args)
    return call

for kernels in loaded.kernels:
    for which in ("forward", "dgrad", "wgrad"):
        setattr(kernels, which, counted(kernels, which))
report = compile_model(model, loaded.target, fallback="never")
loaded_at = time.perf_counter()

x, y = torch.randn({steps}, {batch}, 3, 8, 8), torch.randint(0, 10, ({steps}, {batch}))
optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, dense)]
steps = []
for i in range({steps}):
    losses = []
    for m, opt in zip((model, dense), optimizers):
        opt.zero_grad()
        loss = F.cross_entropy(m(x[i]), y[i])
        loss.backward()
        opt.step()
        losses.append(float(loss))
    params = dict(dense.named_parameters())
    error = max(float((p - params[n]).abs().max()) / max(1.0, float(params[n].abs().max()))
                for n, p in model.named_parameters())
    steps.append({{"loss": losses, "param_error": error}})
layers = sparse_layers(model)
print("RESULT " + json.dumps({{
    "torch": torch.__version__, "tvm": tvm.__version__, "report": report, "steps": steps, "calls": calls,
    "cache": CACHE.stats.to_dict(), "gate": [k.gate_errors for k in loaded.kernels],
    "handles": [k.handle for k in loaded.kernels],
    "backends": {{n: l.backend.stats.to_dict() for n, l in layers.items()}},
    "seconds": {{"imports": imported - start, "load_and_gate": loaded_at - imported,
                "steps": time.perf_counter() - loaded_at}},
}}))
"""


@pytest.fixture(scope="module")
def torch_board(require_tool: Callable[[str], None]) -> BoardImage:
    """The board image with torch; skipped (failed under CI) without qemu-user, the cross compiler or the wheels."""
    try:
        require(AARCH64_GCC)
        return provision_board(with_torch=True)
    except MestError as err:  # MissingToolError included
        offline = "pip install" in str(err) or "apt-get" in str(err)  # a download failed
        if not (offline or isinstance(err, MissingToolError)):
            raise
        require_tool(f"the board with torch cannot be provisioned here: {err}")
        raise


def copy_package(dest: Path) -> Path:
    """The mest_compile source as the board imports it: the package with its mapped `schedules` and `targets`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    package = dest / "mest_compile"
    shutil.copytree(Path(mest_compile.__file__).parent, package, ignore=ignore)
    for mapped in (mest_compile.schedules, mest_compile.targets):
        target = package / mapped.__name__.rsplit(".", 1)[1]
        if not (target / "__init__.py").is_file():  # an editable install keeps them outside the package
            shutil.copytree(Path(mapped.__file__).parent, target, ignore=ignore, dirs_exist_ok=True)
    return dest


def test_compiled_sgd_steps_on_prebuilt_neon_kernels_follow_masked_dense(torch_board: BoardImage,
                                                                          tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=3, widths=WIDTHS)
    sparsify(model, SCHEME, uniform_profile(model, SPARSITY, layers="all"))
    manifest = prebuild(model, torch.randn(BATCH, 3, 8, 8), "arm", tmp_path / "kernels")
    entries = json.loads(manifest.read_text())["kernels"]
    assert len(entries) == 3  # three distinct conv geometries, three kernels each
    for entry in entries:
        for name in entry["files"].values():
            header = (manifest.parent / name).read_bytes()[:20]
            assert header[:4] == b"\x7fELF" and header[18] == 0xB7  # e_machine 183: AArch64
    objdump = shutil.which("aarch64-linux-gnu-objdump")  # comes with the cross compiler's binutils
    if objdump is not None:  # NEON: 4-lane float multiply-adds, not scalar code
        listing = subprocess.run([objdump, "-d", str(manifest.parent / entries[1]["files"]["forward"])],
                                 capture_output=True, text=True, check=True).stdout
        assert re.search(r"fmla\s+v\d+\.4s", listing)

    script = tmp_path / "board_steps.py"
    script.write_text(BOARD_SCRIPT.format(widths=WIDTHS, scheme=SCHEME, sparsity=SPARSITY, steps=STEPS, batch=BATCH))
    env = torch_board.environment()
    env.update(
        PYTHONPATH=f"{copy_package(tmp_path / 'src')}{os.pathsep}{torch_board.site}",
        # One thread each: the 2-core host runs qemu; the FFI's torch extension would JIT-compile.
        TVM_NUM_THREADS="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TVM_FFI_DISABLE_TORCH_C_DLPACK="1",
    )  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(torch_board.command(str(script), str(manifest.parent)), env=env, capture_output=True,
                          text=True, timeout=BOARD_TIMEOUT_S, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"board: {time.perf_counter() - start:.1f} s under qemu, {json.dumps(result['seconds'])}, "
          f"steps {json.dumps(result['steps'])}, gate {json.dumps(result['gate'])}")

    assert result["torch"].startswith("2.9.1") and all(r["status"] == "compiled" for r in result["report"].values())
    # Nothing was built on the board: the three loaded sets, gated there, served every layer.
    assert result["cache"]["builds"] == 0 and result["cache"]["loads"] == 3 and result["cache"]["gate_failures"] == 0
    assert all(s["dense_calls"] == 0 and s["packs"] == 1 for s in result["backends"].values())
    # Each prebuilt kernel ran once per step for its layer (counted after the gate), but the input
    # gradient of the first conv, whose input needs none.
    calls = result["calls"]
    for entry, handle in zip(entries, result["handles"], strict=True):
        first = entry["layers"] == ["features.conv1.weight"]
        expected = {"forward": STEPS, "dgrad": 0 if first else STEPS, "wgrad": STEPS}
        assert {which: calls.get(f"{handle}:{which}", 0) for which in expected} == expected, calls
    for step in result["steps"]:
        compiled, dense = step["loss"]
        assert abs(compiled - dense) <= 1e-5 * max(1.0, abs(dense))
        assert step["param_error"] <= 1e-5
