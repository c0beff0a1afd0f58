"""Schedules per scheme x target family: the hand-written host schedules with their tile knobs
(`<scheme>_host.py`), the GPU thread binding (`gpu.py`) and the tuner's design spaces (`host_space.py`).

Compiler-side code, shipped inside the package as `mest_compile.schedules`: modules here may
import tvm. They are loaded by the tuner and the kernel builder, never by the training side.
"""
