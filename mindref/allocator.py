"""Keep large NumPy temporaries in the heap during training (glibc only; a measured speed-up).

glibc serves every allocation above 128 KiB with a fresh mmap and returns it on free, so each
training step page-faults on every [B, K, L] or [B, L, d] temporary it creates. Raising the mmap
and trim thresholds with mallopt keeps those pages mapped between steps: +50% samples/s on the
benchmark step (docs/results.md). Elsewhere (macOS, Windows, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_temporaries_mapped(threshold: int = 256 * 2**20) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes and its trim threshold to 4x that.
    Returns whether it took effect. Idempotent."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, 4 * threshold))
