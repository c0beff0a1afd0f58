"""An emulated aarch64 board: a TVM RPC tracker on 127.0.0.1 and an RPC server under qemu-user.

The board looks to TVM exactly like a real one registered with a tracker, so everything written
for real boards (`rpc.connect_tracker(...).request(key)`, MetaSchedule's `RPCRunner`, the
`--rpc HOST:PORT --rpc-key KEY` flags) is exercised for real. Emulated timings are qemu's, not a
Cortex-A's: they prove the path works, they do not rank kernels.

Example:
    >>> with EmulatedBoard() as board:                                   # doctest: +SKIP
    ...     remote = board.session()
    ...     remote.upload("kernel.so")
    ...     lib = remote.load_module("kernel.so")
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tvm import rpc

from mest_compile.compiler.devices import board_server
from mest_compile.compiler.devices.board_image import BoardImage, provision_board
from mest_compile.compiler.devices.toolchain import QEMU_AARCH64, require
from mest_compile.compiler.devices.tracker import LOOPBACK, LocalTracker
from mest_compile.errors import MestError, last_output_line

DEFAULT_KEY = "qemu-aarch64"


class EmulatedBoard:
    """Context manager owning the tracker and the emulated board's RPC server.

    Args:
        image: a provisioned board image (default: `provision_board()`, cached).
        key: the device key the server registers under.
        start_timeout_s: how long the server may take to register (qemu imports TVM in ~5 s
            on an idle machine; a loaded 2-core machine is several times slower).
        session_timeout_s: the server ends a session after this long (so a stuck kernel
            cannot hold the board forever).
    """

    def __init__(
        self,
        image: BoardImage | None = None,
        key: str = DEFAULT_KEY,
        start_timeout_s: float = 180.0,
        session_timeout_s: float = 300.0,
    ) -> None:
        self.image = image
        self.key = key
        self.start_timeout_s = start_timeout_s
        self.session_timeout_s = session_timeout_s
        self._tracker: LocalTracker | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> EmulatedBoard:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the tracker and the server; return once the server is registered.

        Raises:
            MestError: the server exited or did not register in time (with its log's tail).
        """
        if self._server is not None:
            return
        qemu = require(QEMU_AARCH64)
        image = self.image = self.image or provision_board()
        try:
            self._workdir = Path(tempfile.mkdtemp(prefix="mest-board-"))
            self._tracker = LocalTracker()
            self._tracker.start()
            self._server = self._launch(image, qemu, self._workdir)
            self._wait_registered()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the server's whole process group and the tracker (safe to call twice)."""
        server, self._server = self._server, None
        if server is not None:
            _stop_group(server)
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.stop()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    # ---- what users of the board need --------------------------------------------------------
    @property
    def tracker_host(self) -> str:
        """The tracker's address (always the loopback)."""
        return LOOPBACK

    @property
    def tracker_port(self) -> int:
        """The tracker's port."""
        if self._tracker is None:
            raise MestError("the emulated board is not running (use it as a context manager)")
        return int(self._tracker.port)

    def session(self, timeout_s: float = 60.0) -> rpc.RPCSession:
        """A new RPC session on the board, through the tracker like any remote device.

        Raises:
            MestError: the board stayed busy (another session holds it) or did not answer.
        """
        tracker = self._wait_free(timeout_s)
        # TVM's tracker client blocks forever when no server answers; a socket timeout (on its
        # private socket: there is no public knob) and a single try turn that into an error.
        tracker._sock.settimeout(timeout_s)  # noqa: SLF001
        try:
            return tracker.request(self.key, session_timeout=self.session_timeout_s, max_retry=1)
        except (RuntimeError, OSError) as err:
            raise MestError(f"the emulated board did not accept a session: {err}") from err
        finally:
            tracker.close()

    def rpc_config(self, session_timeout_s: float | None = None) -> Any:
        """MetaSchedule's `RPCConfig` for this board (for `ms.runner.RPCRunner`)."""
        from tvm.s_tir import meta_schedule as ms  # heavy: only when tuning

        timeout = self.session_timeout_s if session_timeout_s is None else session_timeout_s
        return ms.runner.RPCConfig(
            tracker_host=self.tracker_host, tracker_port=self.tracker_port, tracker_key=self.key,
            session_priority=1, session_timeout_sec=int(timeout),
        )  # fmt: skip

    def wait_until_free(self, timeout_s: float = 60.0) -> None:
        """Block until no session holds the board (e.g. before a MetaSchedule runner asks for it).

        Raises:
            MestError: still busy after `timeout_s` (a session object is still alive somewhere).
        """
        self._wait_free(timeout_s).close()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the board's server printed (for error messages)."""
        path = self._workdir / "server.log" if self._workdir else None
        if path is None or not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ---- internals ---------------------------------------------------------------------------
    def _launch(self, image: BoardImage, qemu: str, workdir: Path) -> subprocess.Popen[bytes]:
        # The server's own children (TVM's PopenWorker) are started through this host script,
        # see board_server.py; it carries absolute paths, so it is written per run.
        wrapper = workdir / "board-python"
        wrapper.write_text(f'#!/bin/sh\nexec "{qemu}" -L "{image.root}" "{image.python}" "$@"\n')
        wrapper.chmod(0o755)
        env = image.environment()
        # Uploaded kernels land in the server's temporary folders: keep them in our workdir.
        env.update(MEST_BOARD_PYTHON=str(wrapper), TMPDIR=str(workdir))
        port = _free_port()
        args = [
            str(Path(board_server.__file__)), "--host", LOOPBACK, "--port", str(port),
            "--port-end", str(port + 100), "--tracker", f"{LOOPBACK}:{self.tracker_port}", "--key", self.key,
        ]  # fmt: skip
        with open(workdir / "server.log", "wb") as log:
            # Its own session (process group): close() ends the server and every child at once.
            return subprocess.Popen(
                image.command(*args), env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def _wait_registered(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._server is not None and self._server.poll() is not None:
                raise MestError(f"the emulated board's RPC server exited: {self._last_log_line()}")
            if self._free_slots() > 0:
                return
            time.sleep(0.5)
        raise MestError(
            f"the emulated board did not register with the tracker within {self.start_timeout_s:.0f} s: "
            f"{self._last_log_line()}"
        )

    def _wait_free(self, timeout_s: float) -> rpc.client.TrackerSession:
        deadline = time.monotonic() + timeout_s
        if self._free_slots() < 1:
            # An RPC session has no close(): the board frees when the last object referring to it
            # (the session, a remote module or function) is collected, which cycles can delay.
            gc.collect()
        while self._free_slots() < 1:
            if time.monotonic() > deadline:
                raise MestError(f"the emulated board stayed busy for {timeout_s:.0f} s (a session still open?)")
            time.sleep(0.2)
        return rpc.connect_tracker(LOOPBACK, self.tracker_port)

    def _free_slots(self) -> int:
        tracker = rpc.connect_tracker(LOOPBACK, self.tracker_port)
        try:
            return int(tracker.summary()["queue_info"].get(self.key, {}).get("free", 0))
        finally:
            tracker.close()

    def _last_log_line(self) -> str:
        return last_output_line(self.log_tail(5))


def _free_port() -> int:
    """A port free right now on the loopback (TVM then searches upward from it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _stop_group(server: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of the group is left."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        # The group outlives its leader while a child (a forked session) is still there.
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(timeout=grace_s)
