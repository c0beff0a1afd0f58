"""Guest instruction counts under qemu-user with our TCG plugin: deterministic, linear, per call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from mest_compile.compiler.devices import BoardImage, MissingToolError, export_for_board, load_preset, provision_board
from mest_compile.compiler.devices.insn_count import count_instructions, count_per_call, plugin_path
from mest_compile.errors import MestError

pytestmark = pytest.mark.emulated


@I.ir_module
class Axpy:
    @R.function
    def main(x: R.Tensor(("n",), "float32"), y: R.Tensor(("n",), "float32")) -> R.Tensor(("n",), "float32"):
        with R.dataflow():
            z = R.add(R.multiply(x, R.const(2.0, "float32")), y)
            R.output(z)
        return z


# count_per_call's contract: everything but the N calls is the same in both runs.
VM_SNIPPET = """
import numpy as np, tvm
from tvm.runtime.vm import VirtualMachine
vm = VirtualMachine(tvm.runtime.load_module("axpy.so"), tvm.cpu())
inputs = np.load("{inputs}")
args = [tvm.runtime.tensor(inputs[name]) for name in inputs.files]
main = vm["main"]
for _ in range(N):
    main(*args)
"""


@pytest.fixture(scope="module")
def image(require_tool: Callable[[str], None]) -> BoardImage:
    try:
        image = provision_board()
        plugin_path()
    except MissingToolError as err:
        require_tool(str(err))
    return image


def test_plugin_is_cached_by_source(image: BoardImage, tmp_path: Path) -> None:
    built = plugin_path(tmp_path)
    assert built.parent == tmp_path and built.read_bytes()[:4] == b"\x7fELF"
    assert plugin_path(tmp_path) == built and [p.name for p in tmp_path.iterdir()] == [built.name]  # no leftovers


def test_python_loop_counts_scale_linearly(image: BoardImage) -> None:
    counts = [count_instructions(["-c", f"for i in range({n}):\n    pass"], image=image) for n in (0, 20_000, 200_000)]
    base, small, large = counts
    assert base > 10_000_000  # Python's start-up alone is tens of millions of instructions
    per_iteration = (small - base) / 20_000
    assert 5 < per_iteration < 1_000
    assert (large - base) / (small - base) == pytest.approx(10, rel=0.02)


def test_vm_call_counts_are_stable_and_grow_with_the_work(image: BoardImage, tmp_path: Path) -> None:
    executable = tvm.compile(Axpy, target=load_preset("arm").tvm_target())
    export_for_board(executable, tmp_path / "axpy.so", "arm")
    rng = np.random.default_rng(0)
    sizes = {"small": 64, "large": 8_192}
    for name, n in sizes.items():
        np.savez(tmp_path / f"{name}.npz", *(rng.standard_normal(n).astype("float32") for _ in range(2)))

    def per_call(name: str, calls: tuple[int, int]) -> float:
        return count_per_call(VM_SNIPPET.format(inputs=f"{name}.npz"), calls=calls, cwd=tmp_path, image=image)

    small, small_again, large = per_call("small", (20, 40)), per_call("small", (30, 60)), per_call("large", (20, 40))
    assert small > 1_000  # measured: 21550 per call of the VM function from Python
    assert small_again == pytest.approx(small, rel=0.01)  # measured: equal to the instruction
    # Measured: 2.25 per element; the call's own overhead cancels out.
    per_element = (large - small) / (sizes["large"] - sizes["small"])
    assert 0.5 < per_element < 50


def test_a_failing_program_raises_with_its_message(image: BoardImage) -> None:
    with pytest.raises(MestError, match=r"failed \(exit 1\): .*ValueError: no such board$"):
        count_instructions(["-c", "raise ValueError('no such board')"], image=image)
    second_thread = "import threading; t = threading.Thread(target=print); t.start(); t.join()"
    with pytest.raises(MestError, match="2 threads"):
        count_instructions(["-c", second_thread], image=image)
    with pytest.raises(MestError, match="increasing"):
        count_per_call("pass", calls=(3, 3), image=image)
