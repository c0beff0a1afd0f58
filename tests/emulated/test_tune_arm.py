"""`mest-compile tune --target arm --rpc ...` end to end on the emulated board (qemu timings: plumbing only).

Every candidate is cross-compiled on the host, uploaded through the tracker, run on the board
with real index buffers and checked against PyTorch before its time counts; the records then
replay into the graph the `arm` export builds.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mest_compile.cli import cli
from mest_compile.compiler.devices import EmulatedBoard


def test_tune_for_arm_over_rpc(board: EmulatedBoard, tmp_path: Path) -> None:
    from mest_compile.cli import tune  # noqa: F401  (registers the command)

    board.wait_until_free()
    work_dir = tmp_path / "arm"
    args = ["tune", "--target", "arm", "--rpc", f"{board.tracker_host}:{board.tracker_port}", "--rpc-key", board.key,
            "--scheme", "block", "--shape", "8,8,3,3", "--input", "2,8,6,6", "--padding", "1", "--sparsity", "0.6",
            "--kernels", "forward,wgrad", "--trials", "6", "--variants", "2", "--work-dir", str(work_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((work_dir / "manifest.json").read_text())
    assert "aarch64" in manifest["target"]
    entries = list(manifest["kernels"].values())
    assert {e["which"] for e in entries} == {"forward", "wgrad"}
    assert all(e["untuned_s"] and e["tuned_s"] and e["trials"] >= 1 for e in entries)
    assert "candidate rejected" not in result.output  # every candidate matched PyTorch on the board


def test_unknown_device_key_is_one_line(board: EmulatedBoard, tmp_path: Path) -> None:
    from mest_compile.cli import tune  # noqa: F401

    args = ["tune", "--target", "arm", "--rpc", f"{board.tracker_host}:{board.tracker_port}", "--rpc-key", "no-such-board",
            "--scheme", "block", "--shape", "8,8,3,3", "--padding", "1", "--work-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "no device is registered under key 'no-such-board'" in result.output and board.key in result.output
