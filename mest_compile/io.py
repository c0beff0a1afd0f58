"""Atomic file writes (a crash or a full disk never leaves a half-written file in place), and a file lock."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    On an exception the temporary file is removed and `path` keeps its previous content.
    """
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO], object], mode: str = "wb") -> None:
    """Call `write(handle)` on a temporary file and move it onto `path` when it succeeds."""
    with atomic_open(path, mode) as handle:
        write(handle)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda handle: handle.write(text), mode="w")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """A temporary directory beside `path` to fill; on success it becomes `path` in one rename.

    `path` must not exist or be an empty directory (checked first). On an exception the
    temporary directory is removed and nothing appears at `path`.

    Raises:
        MestError: `path` exists and is not an empty directory.
    """
    import shutil

    from mest_compile.errors import MestError

    target = pathlib.Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MestError(f"{str(target)!r} already exists and is not an empty directory: choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield work
        if target.exists():
            target.rmdir()
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive lock on the file `path` across processes, held for the block (created if missing)."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
