"""Side-by-side speed of compiled sparse kernels against dense PyTorch (`mest-compile bench`).

Each side runs in a process of its own (the dense one never loads TVM and keeps the user's
settings); the two take turns, round by round, and are compared as the ratio of medians
(`run.py`), so load from other processes on a shared machine hits both sides alike.
"""
