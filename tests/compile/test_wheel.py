"""What `pip install` ships: the wheel, built from what the Dockerfile copies, installed outside the checkout.

The editable install maps `mest_compile` onto the checkout, so a module missing from the wheel
(a package folder without `__init__.py`) goes unnoticed by every other test. Here the wheel is
installed into a fresh environment that sees torch and tvm from this one but not its editable
finder, and a script run from elsewhere compiles and runs a block-scheme kernel with it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Source folder -> where its files land in the wheel (setup.py maps targets/ and schedules/ into the package).
SHIPPED = {"mest_compile": "mest_compile", "targets": "mest_compile/targets", "schedules": "mest_compile/schedules"}
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc")

# Runs in the fresh environment, from a folder outside the checkout: argv = [checkout, site-packages].
CHECK = '''
import pathlib, sys, warnings

checkout, site = (pathlib.Path(p).resolve() for p in sys.argv[1:3])
# A kernel failing the gate falls back to the masked dense conv with only this warning.
warnings.filterwarnings("error", message=".*failed the correctness gate")

import torch
import torch.nn.functional as F

import mest_compile
import mest_compile.schedules
import mest_compile.targets

gen = torch.Generator().manual_seed(0)
x = torch.randn(2, 8, 6, 6, generator=gen, requires_grad=True)
w = torch.randn(8, 8, 3, 3, generator=gen, requires_grad=True)
dy = torch.randn(2, 8, 6, 6, generator=gen)
# Block scheme: 4 consecutive filters at one input position (channel, kh, kw), kept or pruned together.
kept = torch.rand(2, 1, 8 * 3 * 3, generator=gen) < 0.3
mask = kept.expand(2, 4, 8 * 3 * 3).reshape(8, 8, 3, 3).float()
assert mest_compile.get_scheme("block").is_legal(mask.bool())

y = mest_compile.sparse_conv2d(x, w, mask, scheme="block", padding=1)
y.backward(dy)
xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
dense = (wr * mask).detach().requires_grad_()
F.conv2d(xr, dense, padding=1).backward(dy)
yr = F.conv2d(x.detach(), w.detach() * mask, padding=1)
torch.testing.assert_close(y.detach(), yr, rtol=1e-4, atol=1e-4)
torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)
torch.testing.assert_close(w.grad, dense.grad * mask, rtol=1e-4, atol=1e-4)

assert "mest_compile.compiler.kernels.block_fwd" in sys.modules, "no block kernel was built"
for name, module in sorted(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if name.startswith("mest_compile") and path:
        assert pathlib.Path(path).resolve().is_relative_to(site), f"{name} imported from {path}, not {site}"
assert not pathlib.Path(mest_compile.__file__).resolve().is_relative_to(checkout)
print("compiled block kernels from", pathlib.Path(mest_compile.__file__).parent)
'''


def dockerfile_sources() -> list[str]:
    """What the Dockerfile copies before `pip install .`: the wheel here is built from exactly that."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    # A copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    copy = tmp_path_factory.mktemp("src")
    for name in dockerfile_sources():
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, copy / name, ignore=JUNK)
        else:
            shutil.copy(ROOT / name, copy / name)
    return copy


@pytest.fixture(scope="module")
def wheel(source: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    # Offline: the setuptools of this environment (the `test` extra) builds it.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    return next(out.glob("mest_compile-*.whl"))


def test_wheel_ships_every_source_file(source: pathlib.Path, wheel: pathlib.Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{SHIPPED[folder]}/{path.relative_to(source / folder).as_posix()}"
                for folder in SHIPPED for path in (source / folder).rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}
    assert sorted(expected - names) == [], "source files the wheel leaves out (a package folder without __init__.py?)"
    assert {n.split("/")[0] for n in names} == {"mest_compile", wheel.name.split("-py3")[0] + ".dist-info"}


@pytest.mark.slow
def test_installed_wheel_compiles_a_kernel(wheel: pathlib.Path, tmp_path: pathlib.Path) -> None:
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = pathlib.Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                       check=True, capture_output=True, text=True).stdout.strip())
    # This environment's site-packages as plain paths, for torch and tvm: a path added by a .pth line
    # does not get its own .pth files run, so the editable finder that maps mest_compile to the
    # checkout stays off.
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "main-environment.pth").write_text("".join(f"{path}\n" for path in ours))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "check.py").write_text(CHECK)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    done = subprocess.run([python, "check.py", str(ROOT), str(site)], cwd=work, env=clean, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compiled block kernels from" in done.stdout
