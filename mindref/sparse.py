"""Row-sparse gradients of embedding tables.

An embedding table has |V| rows but a batch touches only a few of them, so every backward pass
that reaches a table returns the rows it touched and their gradients, never a dense |V| x d
array. Optimisers (Adam's "lazy" update) consume this form directly.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RowSparseGrad(NamedTuple):
    """Gradient of a table restricted to the rows it touched.

    rows:   [n] int64, unique and sorted ascending
    values: [n, d] the summed gradient of each row
    """

    rows: np.ndarray
    values: np.ndarray

    def to_dense(self, num_rows: int) -> np.ndarray:
        """The same gradient as a dense [num_rows, d] array (for tests and small tables)."""
        dense = np.zeros((num_rows, self.values.shape[-1]), dtype=self.values.dtype)
        dense[self.rows] = self.values
        return dense


def scatter_rows(ids: np.ndarray, grads: np.ndarray, skip_padding: bool = True) -> RowSparseGrad:
    """Sum per-occurrence gradients into one gradient per distinct row id.

    ids:   [...] integer row ids (0 is padding)
    grads: [..., d] gradient of each occurrence
    skip_padding: drop id 0, whose embedding never reaches an output.
    """
    d = grads.shape[-1]
    flat_ids = ids.reshape(-1)  # [N]
    flat_grads = grads.reshape(-1, d)  # [N, d]
    if skip_padding:
        keep = flat_ids != 0
        flat_ids, flat_grads = flat_ids[keep], flat_grads[keep]
    if flat_ids.size == 0:
        return RowSparseGrad(np.zeros(0, dtype=np.int64), np.zeros((0, d), dtype=grads.dtype))
    order = np.argsort(flat_ids, kind="stable")  # [N]
    sorted_ids = flat_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # [n]
    values = np.add.reduceat(flat_grads[order], starts, axis=0)  # [n, d]
    return RowSparseGrad(sorted_ids[starts].astype(np.int64), values)
