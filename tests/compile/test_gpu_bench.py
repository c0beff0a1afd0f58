"""`mest-compile bench --target cuda` and the GPU check's scripts, as far as a machine without a GPU goes.

On a GPU the benchmark itself runs in `benchmarks/gpu_check.sh`; here: its refusal, its plan,
its timing loop on the host clock, its JSON file (rewritten as it goes), and the scripts' syntax.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import mest_compile.cli.bench  # noqa: F401  (registers the command)
from mest_compile.cli import cli
from mest_compile.compiler.bench import gpu
from mest_compile.compiler.bench.gpu_timing import interleaved_ms, summary

ROOT = pathlib.Path(__file__).resolve().parents[2]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@no_gpu
def test_refuses_without_a_gpu_in_one_line(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gpu_bench.json"
    result = CliRunner().invoke(cli, ["bench", "--target", "cuda", "--json", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: no CUDA GPU") and result.stderr.count("\n") == 1
    assert not out.exists()


def test_refuses_bad_arguments_before_asking_for_a_gpu() -> None:
    runner = CliRunner()
    for args, message in ((["--scheme", "nonsense"], "unknown sparsity scheme 'nonsense'"),
                          (["--step-engine", "tvm"], "drop --step-engine tvm"),
                          (["--against", "untuned"], "drop --against"),
                          (["--rounds", "0"], "--rounds")):
        result = runner.invoke(cli, ["bench", "--target", "cuda", *args])
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)


def test_host_bench_still_takes_one_scheme() -> None:
    result = CliRunner().invoke(cli, ["bench", "--scheme", "block", "--scheme", "channel"])
    assert result.exit_code == 2 and "takes one --scheme" in result.stderr


def test_plan_is_every_gpu_scheme_on_resnet32s_distinct_layers() -> None:
    plan = gpu.gpu_plan(())
    assert [entry["scheme"] for entry in plan] == ["free_block_prune_column_4", "pattern+filter_balance",
                                                   "channel", "irregular"]
    for entry in plan:
        assert entry["phases"] == ["fwd", "dgrad", "wgrad", "autograd"]
        cases = entry["cases"]
        assert [c["name"] for c in cases] == ["layer1.0.conv1", "layer2.0.conv1", "layer2.0.conv2",
                                              "layer3.0.conv1", "layer3.0.conv2"]
        assert sum(c["count"] for c in cases) == 30  # ResNet-32's sparse convs
        assert {c["in_h"] for c in cases} == {32, 16, 8} and {c["stride"] for c in cases} == {1, 2}
    assert [c["name"] for c in gpu.gpu_plan(("channel",), "small_cnn", 4)[0]["cases"]] == ["features.conv2",
                                                                                           "features.conv3"]


def test_timing_takes_turns_and_reports_medians() -> None:
    calls: list[str] = []
    pairs = {"a": (lambda: calls.append("dense"), lambda: calls.append("compiled")), "b": (lambda: 0, lambda: 0)}
    samples = interleaved_ms(pairs, reps=3, rounds=2, device=torch.device("cpu"), warmup=1)
    assert {key: tuple(len(s) for s in sides) for key, sides in samples.items()} == {"a": (6, 6), "b": (6, 6)}
    assert calls[:2] == ["dense", "compiled"]  # the warm-up
    assert calls[2:6] == ["dense", "compiled", "compiled", "dense"]  # who goes first alternates
    row = summary([2.0, 4.0, 3.0], [1.0, 1.0, 2.0])
    assert row == {"dense_ms": 3.0, "sparse_ms": 1.0, "speedup": 3.0, "speedup_min": 2.0, "samples": 3}


def test_json_file_is_rewritten_after_each_scheme(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gpu_bench.json"
    seen: list[dict[str, Any]] = []

    def layer_rows(entry: dict[str, Any], *args: Any) -> dict[str, Any]:
        if seen:  # the second scheme: what the first measured is on disk, marked incomplete
            on_disk = json.loads(out.read_text())
            assert on_disk["complete"] is False and on_disk["schemes"]["channel"]["sparse_convs"]["count"] == 2
            raise RuntimeError("cut short")
        seen.append(entry)
        return {"layers": [], "sparse_convs": {"count": 2, "dense_ms": 2.0, "sparse_ms": 1.0, "speedup": 2.0}}

    monkeypatch.setattr(gpu, "require_cuda", lambda: None)
    monkeypatch.setattr(gpu, "layer_rows", layer_rows)
    with pytest.raises(RuntimeError, match="cut short"):
        gpu.run_gpu_bench(("channel", "irregular"), model="small_cnn", batch=4, step=False, json_path=str(out))
    report = json.loads(out.read_text())
    assert report["complete"] is False and list(report["schemes"]) == ["channel", "irregular"]
    assert report["environment"]["tvm"] and report["settings"]["cudnn_benchmark"] is True
    assert report["settings"]["cudnn_allow_tf32"] is False and report["settings"]["matmul_allow_tf32"] is False
    assert sorted(tmp_path.iterdir()) == [out]  # written atomically: no scratch file left

    monkeypatch.setattr(gpu, "layer_rows", lambda entry, *args: {"layers": [], "sparse_convs": {"count": 2}})
    gpu.run_gpu_bench(("channel",), model="small_cnn", batch=4, step=False, json_path=str(out))
    assert json.loads(out.read_text())["complete"] is True


def test_scripts_parse() -> None:
    scripts = [str(ROOT / "benchmarks" / name) for name in ("gpu_check.sh", "gpu_wheels.sh")]
    subprocess.run(["bash", "-n", *scripts], check=True)


def test_check_stops_at_once_without_every_wheel_part(tmp_path: pathlib.Path) -> None:
    """A second call that lands on a fresh machine says so (exit 3) instead of failing later."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "gpu_check.sh", tmp_path / "benchmarks")
    part = tmp_path / ".whl" / "part2"
    part.mkdir(parents=True)
    (part / "wheels.tar.2").write_bytes(b"half")
    (part / "wheels.tar.parts").write_text("2\n")
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "GPU_CHECK_STASH": str(tmp_path / "stash")}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 3 and "make call 1 then call 2 again" in run.stdout
    assert (tmp_path / "stash" / "wheels.tar.2").exists()  # what this call carried is kept for the next
    stash = subprocess.run(["bash", "benchmarks/gpu_check.sh", "stash"], cwd=tmp_path, env=env, capture_output=True,
                           text=True)
    assert stash.returncode == 0 and "wheels.tar.2" in stash.stdout


def test_json_option_prints_or_writes_a_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mest_compile.cli.bench import _emit

    _emit({"a": 1}, "-", lambda r: "table")
    assert json.loads(capsys.readouterr().out) == {"a": 1}
    _emit({"a": 1}, str(tmp_path / "r.json"), lambda r: "table")
    assert capsys.readouterr().out == "table\n" and json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
