"""Compiler side: packed formats, TIR kernels, schedules, builds and the torch ops that call them.

The only part of mest-compile that imports TVM. Importing it sets TVM's thread-pool defaults
(before TVM starts the pool): `TVM_NUM_THREADS` to the visible CPUs, because TVM counts physical
cores and may start one thread on a VM, and `TVM_THREAD_POOL_SPIN_COUNT` to 2000 (TVM spins
~300k iterations by default): training interleaves TVM kernels with PyTorch ops, and a pool
still spinning after a kernel halved the speed of the oneDNN conv that followed it. Both can be
overridden in the environment.
"""

import os

from mest_compile import default_environment

default_environment("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
default_environment("TVM_THREAD_POOL_SPIN_COUNT", "2000")
