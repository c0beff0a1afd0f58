"""Reaching a device through a TVM RPC tracker before tuning on it (fail fast, with a clear message)."""

from __future__ import annotations

import socket

from mest_compile.compiler.tune.measurements import RpcTarget
from mest_compile.errors import MestError


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MestError(f"--rpc takes HOST:PORT (e.g. 192.168.1.5:9190), got {text!r}")
    return host, int(port)


def checked_tracker(address: str, key: str, timeout_s: float = 10.0) -> RpcTarget:
    """The tracker at `address`, after checking within `timeout_s` that it answers and knows `key`.

    Raises:
        MestError: the tracker is unreachable, is not a TVM tracker, or has no device under `key`.
    """
    from tvm import rpc

    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        raise MestError(f"cannot reach the RPC tracker at {host}:{port} within {timeout_s:g} s ({err}); "
                        "is `python -m tvm.exec.rpc_tracker` running there?") from None
    try:
        tracker = rpc.connect_tracker(host, port)
        tracker._sock.settimeout(timeout_s)
        summary = tracker.summary()
        tracker.close()
    except (OSError, RuntimeError, ValueError) as err:
        raise MestError(f"{host}:{port} did not answer as a TVM RPC tracker within {timeout_s:g} s ({err})") from None
    keys = sorted({str(q) for q in summary.get("queue_info", {})})
    if key not in keys:
        known = ", ".join(keys) or "none"
        raise MestError(f"no device is registered under key {key!r} at the tracker {host}:{port} (registered: {known})")
    return RpcTarget(host, port, key)
