"""`inspect`: what the compiler makes of a sparse model, without the target's hardware.

For a model with a profile, or one sparse conv layer, at a target preset: the traced Relax graph
before and after the rewrite pass, each scheme kernel's TIR, its generated code (LLVM IR and
assembly for CPUs, OpenCL C for mali / adreno, CUDA C and PTX for cuda), and per-layer kernel
statistics; as text, or as files with an HTML report.

Example:
    >>> ins = inspect_subject(model_subject("resnet32", "block", sparsity=0.9), "arm")  # doctest: +SKIP
    >>> print(render_text(ins, ("stats",)))                                          # doctest: +SKIP
"""

from mest_compile.compiler.inspect.inspection import Inspection, KernelView, inspect_subject
from mest_compile.compiler.inspect.render import SHOW, parse_show, render_text, write_artifacts
from mest_compile.compiler.inspect.subject import Subject, layer_subject, model_subject

__all__ = [
    "SHOW", "Inspection", "KernelView", "Subject", "inspect_subject", "layer_subject", "model_subject",
    "parse_show", "render_text", "write_artifacts",
]  # fmt: skip
