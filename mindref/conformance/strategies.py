"""Building blocks of the checks' generated inputs (Hypothesis strategies and helpers)."""
from __future__ import annotations

import numpy as np


def floats(st, shape: tuple, scale: float = 2.0):
    """float64 arrays with entries in [-scale, scale], zeros and repeats likely (small shapes)."""
    from hypothesis.extra import numpy as hnp
    return hnp.arrays(np.float64, shape, elements=st.floats(-scale, scale, allow_subnormal=False))


def array(draw, st, shape: tuple, scale: float) -> np.ndarray:
    """float64 [shape], Gaussian times scale from a drawn seed, optionally with a row of zeros:
    cheap to draw at the ranges' largest shapes, and a failure shrinks to the smallest shape and
    the lowest seed (entry-by-entry drawing at these sizes neither fits Hypothesis' budget nor
    shrinks across sizes)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = rng.standard_normal(shape) * scale
    if a.ndim >= 2 and draw(st.booleans()):
        a[..., 0, :] = 0  # a zero vector among the others
    return a


def prefix_mask(lengths, size: int) -> np.ndarray:
    """[len(lengths), size] bool: the first lengths[b] entries of row b."""
    return np.arange(size)[None, :] < np.asarray(lengths)[:, None]
