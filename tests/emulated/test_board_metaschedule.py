"""MetaSchedule's own measuring path (`RPCRunner` through the tracker) reaches the emulated board.

Only the runner is exercised: a full `tune_tir` pays ~20 s per builder worker start on this
machine (TVM_NOTES §0 E3), which belongs to the tuning tests, not to the device tier.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tvm.s_tir import meta_schedule as ms

from mest_compile.compiler.devices import EmulatedBoard, build_for_board
from mest_compile.compiler.devices.remote import fixed_arguments


def test_rpc_runner_measures_a_sparse_kernel_on_the_board(
    board: EmulatedBoard, csr: SimpleNamespace, tmp_path: Path
) -> None:
    problem = csr.problem(2, 0.3, 0)
    args = problem.args()
    library = build_for_board(csr.kernel(*csr.shape), tmp_path / "csr_conv.so", "arm")
    runner = ms.runner.RPCRunner(
        rpc_config=board.rpc_config(session_timeout_s=120),
        evaluator_config=ms.runner.EvaluatorConfig(number=2, repeat=2, min_repeat_ms=0),
        f_alloc_argument=fixed_arguments(args),
    )
    info = [ms.arg_info.TensorInfo(str(a.dtype).replace("torch.", ""), list(a.shape)) for a in args]
    board.wait_until_free()
    (future,) = runner.run([ms.runner.RunnerInput(str(library), "cpu", info)])
    result = future.result()
    assert result.error_msg is None, result.error_msg
    assert len(result.run_secs) == 2
    assert all(0 < float(s) < 1.0 for s in result.run_secs)
