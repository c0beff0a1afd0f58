"""The training bundle's numpy driver, the parts that need neither TVM nor a board."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import numpy as np

from mest_compile.compiler.step import driver
from mest_compile.compiler.step.driver.loop import _augment


def test_augmentation_crops_a_padded_image_and_flips_it() -> None:
    x = np.arange(2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6)
    fill = np.array([-1.0, -2.0, -3.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    out = _augment(x, rng, fill, padding=2)
    replay = np.random.default_rng(0)  # the same draws: rows, columns, flips
    dy, dx, flip = replay.integers(0, 5, 2), replay.integers(0, 5, 2), replay.random(2) < 0.5
    for i in range(2):
        padded = np.concatenate([np.full((1, 10, 10), f, np.float32) for f in fill])
        padded[:, 2:8, 2:8] = x[i]
        crop = padded[:, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6]
        np.testing.assert_array_equal(out[i], crop[:, :, ::-1] if flip[i] else crop)
    assert out.shape == x.shape and out.dtype == np.float32


def test_the_driver_imports_without_torch_tvm_or_mest_compile(tmp_path: pathlib.Path) -> None:
    """What the board runs: a copy of the package beside the bundle, numpy and the standard library
    (TVM's runtime is imported only when training starts)."""
    shutil.copytree(pathlib.Path(driver.__file__).parent, tmp_path / "mest_driver",
                    ignore=shutil.ignore_patterns("__pycache__"))
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in ("torch", "tvm", "mest_compile"))
    code = f"import sys; {blocked}; import mest_driver.loop, mest_driver.formats, mest_driver.schemes"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    help_text = subprocess.run([sys.executable, "-m", "mest_driver", "--help"], cwd=tmp_path, capture_output=True,
                               text=True, check=False)
    assert help_text.returncode == 0 and "--resume" in help_text.stdout
