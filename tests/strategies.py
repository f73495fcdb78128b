"""Hypothesis strategies shared by the layer tests: shapes, masks, scales, arrays."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# tiny, ordinary and large magnitudes
SCALES = st.sampled_from([1e-3, 1.0, 10.0])


def floats(shape: tuple, scale: float = 1.0, dtype=np.float64) -> st.SearchStrategy:
    """Arrays with entries in [-scale, scale] (zeros and repeats included)."""
    elements = st.floats(-1, 1, allow_nan=False, allow_subnormal=False)
    return hnp.arrays(dtype, shape, elements=elements).map(lambda a: (a * scale).astype(dtype))


def lengths(batch: int, max_len: int) -> st.SearchStrategy:
    """Per-row valid lengths: every length from 1 to max_len can appear."""
    return st.lists(st.integers(1, max_len), min_size=batch, max_size=batch).map(np.array)


def mask_from_lengths(lens: np.ndarray, max_len: int) -> np.ndarray:
    """[B, L] bool, True on the first lens[b] positions."""
    return np.arange(max_len)[None, :] < np.asarray(lens)[:, None]
