"""TIR templates of the sparse conv kernels, one module per scheme x phase.

`<scheme>_fwd.py`, `<scheme>_dgrad.py` and `<scheme>_wgrad.py` build the host forward,
input-gradient and weight-gradient PrimFuncs of a layer geometry (`<scheme>_fwd_gpu.py`,
`block_grad_gpu.py`: the GPU variants); `fill.py`, `pattern_taps.py` and `channel_tiles.py` are
the pieces they share. Schedules live in `mest_compile.schedules`, the families that build and
call these kernels in `mest_compile.compiler.families`.
"""
