"""Guest instruction counts on the emulated aarch64 board: ARM evidence without a board.

A TCG plugin of our own (`insn_count.c`, built once with the host C compiler and cached next to
the board image) counts every aarch64 instruction qemu-user executes. `count_instructions` runs
the board's Python under it; `count_per_call` runs a snippet twice, with two numbers of repetitions
of the measured call, so that start-up (Python, `import tvm`, loading the module) cancels out.

Counts are instructions, not cycles: they compare code paths (a sparse kernel against the dense
one, a schedule against another), they do not time a Cortex-A.

Example:
    >>> count_instructions(["-c", "sum(range(1000))"])                    # doctest: +SKIP
    46249488
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from mest_compile.compiler.devices.board_image import BoardImage, default_cache_dir, provision_board
from mest_compile.compiler.devices.toolchain import Tool, require
from mest_compile.errors import MestError

PLUGIN_SOURCE = Path(__file__).with_name("insn_count.c")
_COMPILERS = (
    Tool("gcc", "the Debian package gcc", "to build the qemu instruction-count plugin"),
    Tool("cc", "the Debian package gcc", "to build the qemu instruction-count plugin"),
)
# The plugin's inline counter is exact for one guest thread only (see insn_count.c), and a
# waiting pool's spinning is not work: TVM's, OpenMP's and numpy's OpenBLAS pools get one thread.
SINGLE_THREADED = {"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# Two runs must do the same start-up work: one hash seed, and no .pyc written by the first run
# for the second to skip compiling (a module's compile is millions of instructions).
REPEATABLE = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
# Runs a `count_per_call` snippet with the global N set, as `python script.py` would run it. The
# cyclic collector is off: it runs every 700 allocations, so how many of its passes fall between
# the two runs' repetitions is an accident; the measured call's own work is what we want.
_RUNNER = "import gc, runpy, sys; gc.disable(); runpy.run_path(sys.argv[1], {'N': int(sys.argv[2])}, '__main__')"


def plugin_path(cache_dir: Path | None = None) -> Path:
    """The plugin's shared library, built first if this source has not been built yet.

    Args:
        cache_dir: where plugins live; default `default_cache_dir() / "qemu-plugins"`, beside
            the board images. The file is named by the source's hash, so an edited source is
            rebuilt, and it appears by an atomic rename, so a concurrent run never loads half of it.

    Raises:
        MissingToolError: no host C compiler (`gcc` or `cc`); names what to install.
        MestError: the compiler failed (with its last words).
    """
    source = PLUGIN_SOURCE.read_bytes()
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "qemu-plugins"
    library = base / f"libinsncount-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if library.is_file():
        return library
    compiler = next(filter(None, (tool.find() for tool in _COMPILERS)), None) or require(_COMPILERS[0])
    base.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=".partial-", suffix=".so", dir=base)
    os.close(fd)
    try:
        cmd = [compiler, "-O2", "-shared", "-fPIC", "-o", scratch, str(PLUGIN_SOURCE)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise MestError(f"building the instruction-count plugin failed: {_tail(done.stderr or done.stdout)}")
        os.replace(scratch, library)
    finally:
        Path(scratch).unlink(missing_ok=True)
    return library


def count_instructions(
    argv: Sequence[str],
    *,
    image: BoardImage | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float = 600,
) -> int:
    """Guest instructions the board's Python executes for `python <argv>`, start-up included.

    The program runs as `image.command(*argv)` does, under the board's environment with the
    thread pools pinned (`SINGLE_THREADED`) and start-up made repeatable (`REPEATABLE`); `env`
    adds to or overrides those. Its output is discarded: the plugin writes the count to a file.

    Args:
        argv: the board Python's arguments: `["script.py", ...]`, `["-c", "..."]`.
        image: the board image; default `provision_board()` (cached).
        env: extra environment variables for the program.
        cwd: the program's working directory (files it names relatively are read from there).
        timeout_s: the whole run's limit.

    Raises:
        MissingToolError: qemu-user or a host C compiler is missing.
        MestError: the program failed (with the last lines of its stderr), timed out, ran more
            than one thread (the count would be inexact), or no count was written.
    """
    board = image or provision_board()
    with tempfile.TemporaryDirectory(prefix="mest-insn-") as scratch:
        count_file = Path(scratch) / "count.txt"
        spec = f"{_qemu_opt(plugin_path())},out={_qemu_opt(count_file)}"
        qemu, *rest = board.command(*argv)
        run_env = board.environment()
        run_env.update({**SINGLE_THREADED, **REPEATABLE, **(env or {})})
        try:
            done = subprocess.run(
                [qemu, "-plugin", spec, "-d", "plugin", *rest], env=run_env, cwd=cwd, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, errors="replace", timeout=timeout_s, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as err:
            raise MestError(f"counting instructions: the program ran past {timeout_s:.0f} s under qemu") from err
        if done.returncode != 0:
            raise MestError(f"counting instructions: the program failed (exit {done.returncode}): {_tail(done.stderr)}")
        if not count_file.is_file():
            raise MestError(f"counting instructions: qemu wrote no count ({_tail(done.stderr) or 'no output'})")
        fields = dict(line.split() for line in count_file.read_text().splitlines())
    if int(fields["threads"]) > 1:
        raise MestError(
            f"counting instructions: the program ran {fields['threads']} threads, so the count is inexact; "
            f"keep its thread pools at one thread ({', '.join(f'{k}=1' for k in SINGLE_THREADED)})"
        )
    return int(fields["instructions"])


def count_per_call(
    script: str,
    *,
    calls: tuple[int, int] = (20, 40),
    cwd: str | Path | None = None,
    image: BoardImage | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600,
) -> float:
    """Guest instructions per repetition of the call that a board-side snippet repeats `N` times.

    The contract: `script` is Python source run on the board as `python script.py` would run it
    (`__name__ == "__main__"`), with one global set beforehand, `N`, the number of times to repeat
    the measured call. It runs twice, with `N = calls[0]` and `N = calls[1]`, and everything but
    the repetitions (imports, loading the module and the inputs) must be the same in both runs, so
    the difference of the two counts divided by the difference of the `N`s is the cost of one
    call. Files it names relatively are read from `cwd`; it must stay on one thread (see
    `count_instructions`); Python's cyclic garbage collector is off while it runs.

    Both `N`s are 20 or more by default: the count per call settles after about ten calls
    (CPython 3.11 specialises the bytecode of the loop and of the Python functions it calls after
    their first runs: ~130k instructions, once), and that must happen in both runs. Past it, the
    same call costs the same count exactly (a Relax VM call on 64 floats: 21550 in every run).

    Example: a Relax VM function of a library exported for the `arm` preset, and its inputs saved
    with `np.savez(workdir / "inputs.npz", *arrays)`:

        >>> script = '''
        ... import numpy as np, tvm
        ... from tvm.runtime.vm import VirtualMachine
        ... vm = VirtualMachine(tvm.runtime.load_module("model.so"), tvm.cpu())
        ... inputs = np.load("inputs.npz")
        ... args = [tvm.runtime.tensor(inputs[name]) for name in inputs.files]
        ... step = vm["train_step"]
        ... for _ in range(N):
        ...     step(*args)
        ... '''
        >>> per_step = count_per_call(script, cwd=workdir)                # doctest: +SKIP

    Args:
        script: the snippet's source.
        calls: the two repetition counts (`0 <= calls[0] < calls[1]`).
        cwd, image, env, timeout_s: as for `count_instructions` (the limit is per run).

    Raises:
        MestError: `calls` is not increasing, or a run failed (see `count_instructions`).
    """
    low, high = calls
    if not 0 <= low < high:
        raise MestError(f"count_per_call: calls must be two increasing counts from 0, got {calls}")
    with tempfile.TemporaryDirectory(prefix="mest-insn-") as scratch:
        path = Path(scratch) / "snippet.py"
        path.write_text(script)
        counts = [
            count_instructions(["-c", _RUNNER, str(path), str(n)], image=image, env=env, cwd=cwd, timeout_s=timeout_s)
            for n in calls
        ]
    return (counts[1] - counts[0]) / (high - low)


def _qemu_opt(path: Path) -> str:
    """`path` as a value in qemu's option syntax, which splits at commas (a doubled one is literal)."""
    return str(path).replace(",", ",,")


def _tail(text: str, lines: int = 3) -> str:
    """A tool's last words on one line."""
    return " | ".join(text.strip().splitlines()[-lines:])
