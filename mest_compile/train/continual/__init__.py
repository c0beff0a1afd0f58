"""Continual learning: tasks as class splits of a dataset, a rehearsal buffer, the accuracy matrix.

The pieces the continual training algorithms (`mest_compile.algorithms.continual`, `rehearsal`,
and SparCL's `tdm`, `ddr`, `dgm`) are made of; torch only.
"""
