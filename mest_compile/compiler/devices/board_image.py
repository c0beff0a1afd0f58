"""The emulated aarch64 board's disk: Debian's arm64 Python 3.11 plus the aarch64 TVM runtime.

Built once per machine and cached (`~/.cache/mest-compile/aarch64-board/<spec hash>/`):

* `root/`: Debian arm64 packages unpacked with `dpkg-deb -x` (libc, Python 3.11 and the few
  libraries its standard modules load). They are fetched with a *private* apt state that only
  knows arm64, so provisioning needs neither root nor `dpkg --add-architecture`, and leaves the
  machine's apt configuration alone. `qemu-aarch64 -L root` finds the loader and libraries there.
* `site/`: the aarch64 wheels, installed with `pip --platform ... --target`. TVM's compiler
  library (240 MB) is deleted: the board only runs kernels, and without it `import tvm` takes
  the runtime-only path that the real boards use.

`provision_board(with_torch=True)` builds a second image, cached apart (`aarch64-board-torch/`),
that also holds PyTorch (PyPI's aarch64 torch 2.9.1, a CPU build) for the PyTorch engine on the
board; the default image stays small.

The image is assembled in a scratch folder and renamed into place, under a file lock, so a
crashed or concurrent run never leaves a half-built image behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mest_compile.compiler.devices.toolchain import APT_GET, DPKG_DEB, QEMU_AARCH64, require
from mest_compile.errors import MestError
from mest_compile.io import exclusive_lock

log = logging.getLogger(__name__)

# Debian 12 (bookworm) arm64: Python 3.11 (the version the project's wheels are pinned for),
# libc, and the shared libraries of the standard modules that TVM, numpy and the RPC server use.
DEBIAN_PACKAGES = (
    "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libbz2-1.0",
    "liblzma5", "libssl3", "libuuid1", "python3.11-minimal", "libpython3.11-minimal",
    "libpython3.11-stdlib",
)  # fmt: skip
PYTHON_VERSION = "3.11"
# Exact pins: the image is cached by this list, and these are the versions the tests ran with.
WHEELS = (
    "apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy==2.4.6", "ml_dtypes==0.6.0",
    "psutil==7.2.2", "cloudpickle==3.1.2", "tornado==6.6.1", "typing_extensions==4.16.0",
)  # fmt: skip
# The PyTorch engine's extra wheels. PyPI's aarch64 torch 2.9.1 is a CPU build (2.13's carries
# CUDA 13, TVM_TRAINING.md §5). pip evaluates requirement markers for this machine, not for
# --platform, so resolving torch would pull its x86-64-only NVIDIA wheels: these go in with
# --no-deps, torch's own requirements pinned here (pure Python but MarkupSafe, which has aarch64
# wheels), plus pyyaml, which mest_compile imports.
TORCH_WHEELS = (
    "torch==2.9.1", "filelock==4.3.1", "sympy==1.14.0", "mpmath==1.3.0", "networkx==3.6.1", "jinja2==3.1.6",
    "MarkupSafe==3.0.4", "fsspec==2026.9.0", "pyyaml==6.0.4",
)  # fmt: skip
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# Bump when the layout or the provisioning steps change, so old caches are rebuilt.
LAYOUT = 1

# Generous: a cold pip download of the 94 MB TVM wheel on a slow link, qemu on a loaded machine.
_STEP_TIMEOUT_S = 900
_SMOKE_TIMEOUT_S = 180
# `import torch` alone takes ~20 s under qemu on a loaded 2-core machine.
_TORCH_SMOKE_TIMEOUT_S = 600


@dataclass(frozen=True)
class BoardImage:
    """A provisioned board image.

    Example:
        >>> image = provision_board()                                     # doctest: +SKIP
        >>> subprocess.run(image.command("-c", "import tvm"), env=image.environment())  # doctest: +SKIP
    """

    path: Path

    @property
    def root(self) -> Path:
        """The arm64 sysroot (`qemu-aarch64 -L`)."""
        return self.path / "root"

    @property
    def site(self) -> Path:
        """Where the aarch64 wheels are installed (the board's `PYTHONPATH`)."""
        return self.path / "site"

    @property
    def python(self) -> Path:
        """The arm64 Python interpreter inside the sysroot."""
        return self.root / "usr" / "bin" / f"python{PYTHON_VERSION}"

    def command(self, *args: str) -> list[str]:
        """Argument list running the board's Python with `args` under qemu."""
        return [require(QEMU_AARCH64), "-L", str(self.root), str(self.python), *args]

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for the board's Python: its own packages only, TVM's runtime library."""
        env = dict(os.environ if base is None else base)
        for leak in ("PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(leak, None)
        # PYTHONSAFEPATH: a script's own folder must not shadow modules (board_server.py sits
        # beside our cuda.py, which tvm_ffi's `import cuda` probe would otherwise pick up).
        env.update(PYTHONPATH=str(self.site), PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1", TVM_USE_RUNTIME_LIB="1")
        # A host TVM library path would point the board's Python at x86-64 libraries.
        env.pop("TVM_LIBRARY_PATH", None)
        return env


def default_cache_dir() -> Path:
    """`$MEST_COMPILE_CACHE`, else `$XDG_CACHE_HOME/mest-compile`, else `~/.cache/mest-compile`."""
    if os.environ.get("MEST_COMPILE_CACHE"):
        return Path(os.environ["MEST_COMPILE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mest-compile"


def image_key(with_torch: bool = False) -> str:
    """Hash of everything that decides the image's contents."""
    spec = {"layout": LAYOUT, "debian": DEBIAN_PACKAGES, "wheels": WHEELS, "platform": WHEEL_PLATFORM}
    if with_torch:
        spec["torch"] = TORCH_WHEELS
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def provision_board(cache_dir: Path | None = None, with_torch: bool = False) -> BoardImage:
    """The cached board image, built first if needed (15-60 s: ~120 MB from the package registries).

    Args:
        cache_dir: where images live; default `default_cache_dir() / "aarch64-board"`, or
            `"aarch64-board-torch"` with `with_torch` (each folder keeps only its newest image).
        with_torch: the image that also holds PyTorch and its requirements (`TORCH_WHEELS`,
            ~220 MB more; a few minutes more to build, mostly the board's first `import torch`).

    Raises:
        MissingToolError: qemu-user, apt-get or dpkg-deb is missing (names what to install).
        MestError: a download or the board's first `import tvm` failed (with the tool's output).
    """
    require(QEMU_AARCH64)
    folder = "aarch64-board-torch" if with_torch else "aarch64-board"
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir() / folder
    image = BoardImage(base / image_key(with_torch))
    if _complete(image):
        return image
    base.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(base / ".lock"):
        if _complete(image):  # another process built it while we waited for the lock
            return image
        require(APT_GET)
        require(DPKG_DEB)
        _remove_stale(base, keep=image.path.name)
        scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=base))
        try:
            log.warning("provisioning the emulated aarch64 board once under %s", image.path)
            _unpack_debian(scratch / "root", scratch / "apt")
            _install_wheels(scratch / "site", with_torch)
            _smoke_test(BoardImage(scratch), with_torch)
            wheels = WHEELS + TORCH_WHEELS if with_torch else WHEELS
            (scratch / "image.json").write_text(json.dumps({"debian": DEBIAN_PACKAGES, "wheels": wheels}))
            scratch.rename(image.path)  # atomic: the image appears complete or not at all
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return image


def _complete(image: BoardImage) -> bool:
    return (image.path / "image.json").is_file()


def _remove_stale(base: Path, keep: str) -> None:
    """Drop images of older specs and scratch folders of crashed runs (we hold the lock)."""
    for entry in base.iterdir():
        if entry.is_dir() and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)


def _run(step: str, cmd: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run one provisioning step; a failure becomes a `MestError` quoting the tool's last words."""
    try:
        done = subprocess.run(
            list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=_STEP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise MestError(f"provisioning the aarch64 board: {step} timed out after {err.timeout:.0f} s") from err
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise MestError(f"provisioning the aarch64 board: {step} failed: {tail}")
    return done.stdout


def _unpack_debian(root: Path, apt_dir: Path) -> None:
    """Download the arm64 packages with a private apt state and unpack them into `root`."""
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "status").touch()
    options = [
        f"-oDir::State={apt_dir}", f"-oDir::State::Lists={apt_dir / 'lists'}",
        f"-oDir::State::status={apt_dir / 'status'}", f"-oDir::Cache={apt_dir / 'cache'}",
        "-oAPT::Architecture=arm64", "-oAPT::Architectures::=arm64", "-oDebug::NoLocking=1",
        "-oAcquire::Languages=none", "-q",
    ]  # fmt: skip
    if os.geteuid() == 0:
        # apt drops to the `_apt` user to download, which cannot write into our private folders.
        options.append("-oAPT::Sandbox::User=root")
    _run("apt-get update (arm64 package lists)", ["apt-get", *options, "update"])
    debs = apt_dir / "debs"
    _run("apt-get download (arm64 Python 3.11)", ["apt-get", *options, "download", *DEBIAN_PACKAGES], cwd=debs)
    root.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(f"dpkg-deb -x {deb.name}", ["dpkg-deb", "-x", str(deb), str(root)])
    shutil.rmtree(apt_dir)


def _install_wheels(site: Path, with_torch: bool = False) -> None:
    """Install the aarch64 wheels for the board's Python into `site`."""
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
        "--platform", WHEEL_PLATFORM, "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--abi", f"cp{PYTHON_VERSION.replace('.', '')}", "--only-binary=:all:", "--target", str(site),
    ]  # fmt: skip
    _run("pip install (aarch64 wheels)", [*cmd, *WHEELS])
    if with_torch:
        _run("pip install (aarch64 torch)", [*cmd, "--no-deps", "--upgrade", *TORCH_WHEELS])
    (site / "tvm" / "lib" / "libtvm_compiler.so").unlink(missing_ok=True)
    # Launchers in bin/ carry the host interpreter's path: meaningless on the board.
    shutil.rmtree(site / "bin", ignore_errors=True)


def _smoke_test(image: BoardImage, with_torch: bool = False) -> None:
    """The board's first `import tvm` (and `import torch`): cheap insurance, a broken image is never cached."""
    probe = "import numpy, tvm, tvm.rpc.server; print(tvm.__version__)"
    what, timeout = "tvm", _SMOKE_TIMEOUT_S
    if with_torch:
        probe, what, timeout = f"import torch, yaml; {probe}", "torch and tvm", _TORCH_SMOKE_TIMEOUT_S
    try:
        done = subprocess.run(
            image.command("-c", probe), env=image.environment(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise MestError(f"the emulated board's Python did not import {what} within {timeout} s") from err
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise MestError(f"the emulated board's Python cannot import {what}: {tail}")
