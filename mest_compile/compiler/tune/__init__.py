"""Auto-tuning of the sparse kernels with MetaSchedule (`mest-compile tune`).

`workload.py` says what is measured (a kernel's template variants and their real inputs),
`measure.py` how (real inputs, a numeric check against PyTorch, checked database commits),
`session.py` runs the search, `records.py` keeps the results and replays them onto builds,
`extract.py` finds the kernels of a model.
"""
