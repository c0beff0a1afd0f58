"""Runs ON the emulated board: TVM's RPC server, made to work under qemu-user.

This file is executed by the board's aarch64 Python (`qemu-aarch64 ... python3.11 board_server.py
--tracker ... --key ...`), so it imports only the standard library and the board's TVM, never
mest_compile.

Two fixes over `python -m tvm.exec.rpc_server`:

* TVM's server runs in a `PopenWorker`, a child started as `sys.executable -m
  tvm.exec.popen_worker`. Under qemu-user `sys.executable` is the aarch64 interpreter, which the
  host kernel cannot exec without binfmt_misc (ENOEXEC). `MEST_BOARD_PYTHON` names a host shell
  script that runs the same interpreter through qemu; it replaces `sys.executable`.
* When the host process that started the board dies without cleaning up (killed test run), the
  server would live on. A watchdog thread notices the new parent and ends the whole process
  group (the host starts the server as the leader of its own group).
"""

import os
import runpy
import signal
import sys
import threading
import time


def _watch_parent(parent: int, period_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(period_s)
    os.killpg(os.getpgid(0), signal.SIGTERM)


def main() -> None:
    """Start TVM's RPC server with the arguments of `tvm.exec.rpc_server`."""
    sys.executable = os.environ["MEST_BOARD_PYTHON"]
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    sys.argv = ["tvm.exec.rpc_server", *sys.argv[1:]]
    runpy.run_module("tvm.exec.rpc_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
