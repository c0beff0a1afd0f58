"""Whole-model graphs in TVM Relax: trace a model, rewrite its masked convs into scheme kernels, export.

`trace.py` turns a PyTorch model into Relax, `match.py` finds the masked convs in it,
`rewrite.py` replaces them with `call_tir`s of the compiled kernels (`result.py` says what it
did and builds the new argument list), `export.py` builds and links the result for a target.
"""
