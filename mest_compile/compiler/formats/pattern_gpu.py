"""What the pattern scheme's GPU gradient kernels read besides the packed format's buffers.

`code[j] = (o * C + c) * 8 + pattern` names kept kernel `j`'s filter, input channel and pattern
(0..7), so a GPU kernel needs no search of `fwd_ptr` for the filter and pattern of a kernel
(`x_off[j]` holds only its channel). The input gradient walks the format's own transposed CSR
(`dx_ptr` over `c * 8 + pattern`, `dx_ker`). `code` follows from the packed `PatternFormat`, is
sized by its capacity, stays int32 whatever the format's index dtype (it reaches `O * C * 8`), and
is rebuilt in torch whenever it is repacked.
"""

from __future__ import annotations

import torch

from mest_compile.compiler.formats.pattern import NUM_PATTERNS, PatternFormat


def gpu_gradient_buffers(fmt: PatternFormat) -> dict[str, torch.Tensor]:
    """`{"code"}` (int32, `(capacity,)`) for `fmt`'s kept kernels, in the rows of `values`."""
    runs = fmt.fwd_ptr[1:] - fmt.fwd_ptr[:-1]  # kernels per (o, pattern), in the order of `values` rows
    key = torch.repeat_interleave(torch.arange(runs.numel()), runs.to(torch.int64))  # o * 8 + pattern
    channel = fmt.x_off[: fmt.nnz].to(torch.int64)
    code = torch.zeros(fmt.capacity, dtype=torch.int32)
    filt, pattern = key // NUM_PATTERNS, key % NUM_PATTERNS
    code[: fmt.nnz] = ((filt * fmt.geometry.in_channels + channel) * NUM_PATTERNS + pattern).to(torch.int32)
    return {"code": code}
