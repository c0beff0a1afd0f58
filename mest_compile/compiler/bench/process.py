"""Process settings a fair CPU benchmark (and fast training) needs, applied before timing."""

from __future__ import annotations

import ctypes


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed activations to the OS after every op.

    Both sides allocate multi-megabyte outputs per call; by default glibc unmaps or trims them on
    free, so every call page-faults its output back in (measured: +0.3 ms per 8 MB output, and
    dense oneDNN convs 1.5x slower). A training process wants the same; it speeds up both sides.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) and libc.mallopt(m_trim_threshold, 1 << 30))
