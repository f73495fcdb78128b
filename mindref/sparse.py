"""Row-sparse gradients of embedding tables.

An embedding table has |V| rows but a batch touches only a few of them, so every backward pass
that reaches a table returns the rows it touched and their gradients, never a dense |V| x d
array. Optimisers (Adam's "lazy" update) consume this form directly.

The summation of duplicate rows is one sparse-matrix product: with the occurrences sorted by
row id, M[r, n] = weight of occurrence n in row r, and the row gradients are M @ grads (scipy's
CSR product; an argsort plus np.add.reduceat was 7x slower on a training batch).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp


class RowSparseGrad(NamedTuple):
    """Gradient of a table restricted to the rows it touched.

    rows:   [n] int64, unique and sorted ascending
    values: [n, d] the summed gradient of each row
    """

    rows: np.ndarray
    values: np.ndarray

    def to_dense(self, num_rows: int) -> np.ndarray:
        """The same gradient as a dense [num_rows, ...] array (for tests and small tables)."""
        dense = np.zeros((num_rows, *self.values.shape[1:]), dtype=self.values.dtype)
        dense[self.rows] = self.values
        return dense


def scatter_rows(ids: np.ndarray, grads: np.ndarray, skip_padding: bool = True) -> RowSparseGrad:
    """Sum per-occurrence gradients into one gradient per distinct row id.

    ids:   [...] integer row ids (0 is padding)
    grads: [..., d] gradient of each occurrence
    skip_padding: drop id 0, whose embedding never reaches an output.
    """
    d = grads.shape[-1]
    flat = grads.reshape(-1, d)  # [N, d]
    return scatter_weighted(ids.reshape(-1, 1), np.ones((flat.shape[0], 1), grads.dtype), flat,
                            skip_padding)


def scatter_weighted(ids: np.ndarray, weights: np.ndarray, grads: np.ndarray,
                     skip_padding: bool = True) -> RowSparseGrad:
    """Row gradients of sum_n sum_f weights[n, f] * T[ids[n, f]] given its gradient per n.

    ids, weights: [N, F] (F ids per position, e.g. a movie's genres);  grads: [N, d].
    Returns row r's gradient sum over (n, f) with ids[n, f] = r of weights[n, f] * grads[n].
    """
    N, F = ids.shape
    flat_ids = ids.reshape(-1)  # [N F]
    cols = np.repeat(np.arange(N), F)  # [N F] position of each occurrence
    data = weights.reshape(-1).astype(grads.dtype)
    keep = (flat_ids != 0) & (data != 0) if skip_padding else np.ones(flat_ids.shape, bool)
    flat_ids, cols, data = flat_ids[keep], cols[keep], data[keep]
    if flat_ids.size == 0:
        return RowSparseGrad(np.zeros(0, np.int64), np.zeros((0, grads.shape[1]), grads.dtype))
    order = np.argsort(flat_ids, kind="stable")
    sorted_ids = flat_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # [n]
    M = sp.csr_matrix((data[order], cols[order], np.r_[starts, sorted_ids.size]),
                      shape=(starts.size, N))  # [n, N]
    return RowSparseGrad(sorted_ids[starts].astype(np.int64), np.asarray(M @ grads))


def unique_ids(ids: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct sorted ids, index of each id among them) for ids in [0, num_rows), in
    O(num_rows + ids.size) by a presence table instead of np.unique's sort."""
    present = np.zeros(num_rows, dtype=bool)
    present[ids] = True
    distinct = np.flatnonzero(present)  # [n]
    position = np.cumsum(present) - 1  # [num_rows]
    return distinct, position[ids]


def segment_sum(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """out[r] = sum of values[k] over k with index[k] = r.  index [N] in [0, n), values [N, d]."""
    N = index.shape[0]
    M = sp.csr_matrix((np.ones(N, values.dtype), (index, np.arange(N))), shape=(n, N))  # [n, N]
    return np.asarray(M @ values)
