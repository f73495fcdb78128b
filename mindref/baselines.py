"""The paper's baselines (MIND 4.1.2) in the same harness: each is a scorer
score(users, hist) -> [b, V] for evaluate.evaluate.

- MostPopular: items by their number of training interactions.
- ItemCF: item-based collaborative filtering, cosine similarity of the items' user sets
  (scipy.sparse); score(i) = sum over the history of sim(i, j).
- WALS: weighted alternating least squares for implicit feedback (Hu, Koren & Volinsky 2008):
  minimise sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg (|x|^2 + |y|^2), p = 1 on interactions,
  c = 1 + alpha there and 1 elsewhere. A user is scored from the history it is evaluated with
  (fold-in: one least-squares solve against the item factors), so it serves both protocols.
- YouTube DNN is MIND with K = 1 (pooled behaviours + profile through the ReLU layers), trained
  by the same code (model.MINDConfig(K=1)).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .data import Examples


def interactions(train: Examples, num_users: int, num_items: int) -> sp.csr_matrix:
    """Binary user x item matrix [U, V] of the training data: targets and history items."""
    users = np.concatenate([train.users, np.repeat(train.users, train.hist.shape[1])])
    items = np.concatenate([train.target, train.hist.reshape(-1)])
    keep = items != 0
    R = sp.csr_matrix((np.ones(keep.sum()), (users[keep], items[keep])), shape=(num_users, num_items))
    R.data[:] = 1.0  # duplicates summed by the constructor count once
    return R


def history_matrix(hist: np.ndarray, num_items: int) -> sp.csr_matrix:
    """Multi-hot [b, V] of each row's (non-padding) history items."""
    rows = np.repeat(np.arange(hist.shape[0]), hist.shape[1])
    keep = hist.reshape(-1) != 0
    H = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], hist.reshape(-1)[keep])),
                      shape=(hist.shape[0], num_items))
    H.data[:] = 1.0
    return H


class MostPopular:
    def __init__(self, train: Examples, num_items: int):
        self.counts = np.bincount(train.target, minlength=num_items).astype(np.float64)  # [V]

    def __call__(self, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), self.counts.size))


class ItemCF:
    def __init__(self, R: sp.csr_matrix):
        norms = np.sqrt(np.asarray(R.sum(axis=0)).ravel())  # [V] sqrt(|users of i|)
        Rn = R @ sp.diags(1 / np.where(norms > 0, norms, 1))
        self.sim = (Rn.T @ Rn).tocsr()  # [V, V] cosine
        self.sim.setdiag(0)
        self.num_items = R.shape[1]

    def __call__(self, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        return (history_matrix(hist, self.num_items) @ self.sim).toarray()


class WALS:
    def __init__(self, R: sp.csr_matrix, dim: int = 64, alpha: float = 10.0, reg: float = 1.0,
                 iterations: int = 10, seed: int = 0, chunk: int = 2048):
        rng = np.random.default_rng(seed)
        self.alpha, self.reg, self.chunk = alpha, reg, chunk
        self.X = rng.normal(0, 0.01, (R.shape[0], dim))  # [U, d]
        self.Y = rng.normal(0, 0.01, (R.shape[1], dim))  # [V, d]
        Rt = R.T.tocsr()
        for _ in range(iterations):
            self.X = self._solve(R, self.Y)
            self.Y = self._solve(Rt, self.X)

    def _solve(self, R: sp.csr_matrix, Y: np.ndarray) -> np.ndarray:
        """Each row u: (Y^T Y + alpha Y_u^T Y_u + reg I) x_u = (1 + alpha) sum_{i in R_u} y_i."""
        d = Y.shape[1]
        YtY = Y.T @ Y + self.reg * np.eye(d)  # [d, d]
        YY = (Y[:, :, None] * Y[:, None, :]).reshape(len(Y), d * d)  # [V, d d] outer products
        out = np.empty((R.shape[0], d))
        for start in range(0, R.shape[0], self.chunk):
            Rc = R[start:start + self.chunk]
            A = YtY + self.alpha * np.asarray(Rc @ YY).reshape(-1, d, d)  # [c, d, d]
            b = (1 + self.alpha) * np.asarray(Rc @ Y)  # [c, d]
            out[start:start + len(b)] = np.linalg.solve(A, b[..., None])[..., 0]
        return out

    def __call__(self, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        X = self._solve(history_matrix(hist, self.Y.shape[0]), self.Y)  # fold-in [b, d]
        return X @ self.Y.T
