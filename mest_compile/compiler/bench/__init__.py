"""Side-by-side speed of compiled sparse kernels against dense PyTorch (`mest-compile bench`).

Dense and compiled calls are timed interleaved in one process and compared as the ratio of
medians, so load from other processes on a shared machine hits both sides alike.
"""
