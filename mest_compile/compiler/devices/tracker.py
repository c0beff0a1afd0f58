"""A TVM RPC tracker on the loopback, served by a daemon thread of this process.

TVM's `rpc.tracker.Tracker` runs in a separate worker process that outlives a test run killed
with SIGKILL; a thread of ours dies with us and starts without importing TVM a second time.
The wire protocol is TVM's own (`rpc.base`), so boards, `connect_tracker` and MetaSchedule's
`RPCRunner` cannot tell the difference.
"""

from __future__ import annotations

import socket
import struct
import threading

from tvm.rpc import base
from tvm.rpc import tracker as tvm_tracker

from mest_compile.errors import MestError

LOOPBACK = "127.0.0.1"


class LocalTracker:
    """An RPC tracker listening on 127.0.0.1 at a port the kernel picks (no race for ports).

    Example:
        >>> with LocalTracker() as tracker:                               # doctest: +SKIP
        ...     rpc.connect_tracker(tracker.host, tracker.port).summary()
    """

    host = LOOPBACK

    def __init__(self) -> None:
        self.port = 0
        self._stop_key = base.random_key("tracker")
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LocalTracker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Bind, listen and serve in a daemon thread."""
        if self._thread is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))
        sock.listen(16)
        self.port = int(sock.getsockname()[1])
        # `_tracker_server` is the loop TVM's own tracker process runs (a tornado IOLoop).
        self._thread = threading.Thread(
            target=tvm_tracker._tracker_server, args=(sock, self._stop_key), name="mest-rpc-tracker", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the loop to stop (TVM's STOP message with our key) and wait for the thread."""
        thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            return
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=timeout_s) as sock:
                sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
                if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                    raise MestError(f"port {self.port} is not our RPC tracker")
                base.sendjson(sock, [base.TrackerCode.STOP, self._stop_key])
                base.recvjson(sock)
        except OSError:
            pass  # already gone: the daemon thread ends with the process anyway
        thread.join(timeout_s)
