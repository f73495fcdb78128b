"""Validation at the public boundaries: every error names the argument and the fix."""
from __future__ import annotations

import numpy as np


def check_ids(name: str, ids: np.ndarray, num_rows: int) -> np.ndarray:
    """Integer ids in [0, num_rows), 0 being padding. Returns ids as a NumPy array."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name}: ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_rows):
        bad = ids[(ids < 0) | (ids >= num_rows)].reshape(-1)[0]
        raise ValueError(
            f"{name}: id {int(bad)} is outside the table's range [0, {num_rows}) "
            "(0 is padding; remap ids before lookup)"
        )
    return ids


def check_float(name: str, x: np.ndarray, ndim: int | None = None) -> np.ndarray:
    """A finite floating-point array, optionally of a given rank."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def check_shape(name: str, x: np.ndarray, shape: tuple) -> None:
    """x.shape must equal shape (None matches any size)."""
    ok = x.ndim == len(shape) and all(s is None or s == t for s, t in zip(shape, x.shape))
    if not ok:
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(x.shape)}")
