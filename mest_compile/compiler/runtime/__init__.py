"""The compiler runtime: what turns a kernel family into kernels a PyTorch layer calls.

One way down: `backend` (a `SparseConv2d` backend and its recompile `policy`) -> `cache` (build once
per process, gate, count) -> `compiled` (schedule, replay tuned traces, compile) and `gate` (the
masked-dense oracle) -> `ops` (the differentiable `torch.library` ops) -> the families, formats,
kernels and schedules below. Tuning records are handed in (`records.using`), never looked up
from here, and nothing below imports this package.
"""
