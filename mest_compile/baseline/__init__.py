"""The dense baseline of every benchmark ratio: PyTorch as a user runs it, in a process of its own.

Torch only, and never TVM: `dense.py` times the dense conv phases and the masked-dense training
step, `worker.py` serves timing rounds to a benchmark that alternates this process with the
compiled side's (`mest_compile.compiler.bench.worker`), so neither side's thread pools, caches or
settings touch the other's numbers.
"""
