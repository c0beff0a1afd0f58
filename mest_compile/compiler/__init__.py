"""Compiler side: packed formats, TIR kernels, schedules, builds and the torch ops that call them.

The only part of mest-compile that imports TVM. Importing it sets TVM's thread-pool defaults
(before TVM starts the pool): `TVM_NUM_THREADS` to the visible CPUs, because TVM counts physical
cores and may start one thread on a VM, and `TVM_THREAD_POOL_SPIN_COUNT` to 0, because
training interleaves TVM kernels with PyTorch ops and a spinning pool starves PyTorch's threads.
Both can be overridden in the environment.
"""

import os

os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
