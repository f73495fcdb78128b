"""The paper's baselines (MIND 4.1.2) in the same harness: each is a scorer
score(users, hist) -> [b, V] for evaluate.evaluate.

- MostPopular: items by their number of training interactions.
- ItemCF: item-based collaborative filtering, cosine similarity of the items' user sets
  (scipy.sparse); score(i) = sum over the history of sim(i, j).
- WALS: weighted alternating least squares for implicit feedback (Hu, Koren & Volinsky 2008):
  minimise sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg (|x|^2 + |y|^2), p = 1 on interactions,
  c = 1 + alpha there and 1 elsewhere. A user is scored from the history it is evaluated with
  (fold-in: one least-squares solve against the item factors), so it serves both protocols.
- MaxMF (Weston et al. 2013): several free vectors per user, score max over them.
- YouTube DNN is MIND with K = 1 (pooled behaviours + profile through the ReLU layers), trained
  by the same code (model.MINDConfig(K=1)).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .adam import Adam
from .data import Examples
from .max_score_loss import max_score_backward, max_score_forward
from .samplers import LogUniformSampler, negatives
from .sparse import RowSparseGrad, scatter_rows


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
    def __init__(self, R: sp.csr_matrix, neighbours: int | None = None):
        """neighbours: keep each item's most similar `neighbours` items only (None: every one)."""
        norms = np.sqrt(np.asarray(R.sum(axis=0)).ravel())  # [V] sqrt(|users of i|)
        Rn = R @ sp.diags(1 / np.where(norms > 0, norms, 1))
        self.sim = (Rn.T @ Rn).tocsr()  # [V, V] cosine
        self.sim.setdiag(0)
        self.sim.eliminate_zeros()
        if neighbours is not None:
            self.sim = top_k_per_row(self.sim, neighbours)
        self.num_items = R.shape[1]

    def __call__(self, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        return (history_matrix(hist, self.num_items) @ self.sim).toarray()


def top_k_per_row(M: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """M with each row's k largest entries kept (ties: the lower column), the rest dropped."""
    rows, cols, vals = [], [], []
    for r in range(M.shape[0]):
        lo, hi = M.indptr[r], M.indptr[r + 1]
        if hi - lo > k:
            keep = lo + np.lexsort((M.indices[lo:hi], -M.data[lo:hi]))[:k]
        else:
            keep = np.arange(lo, hi)
        rows.append(np.full(len(keep), r)), cols.append(M.indices[keep]), vals.append(M.data[keep])
    if not rows:
        return M
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=M.shape)


class WALS:
    def __init__(self, R: sp.csr_matrix, dim: int = 64, alpha: float = 10.0, reg: float = 1.0,
                 iterations: int = 10, seed: int = 0, chunk: int = 2048, progress=None):
        """progress(1) after each alternating iteration (a progress bar's update), if given."""
        rng = np.random.default_rng(seed)
        self.alpha, self.reg, self.chunk = alpha, reg, chunk
        self.X = rng.normal(0, 0.01, (R.shape[0], dim))  # [U, d]
        self.Y = rng.normal(0, 0.01, (R.shape[1], dim))  # [V, d]
        Rt = R.T.tocsr()
        for _ in range(iterations):
            self.X = self._solve(R, self.Y)
            self.Y = self._solve(Rt, self.X)
            if progress is not None:
                progress(1)

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


class MaxMF:
    """MaxMF (Weston, Bengio & Hamel 2013): T free vectors per user, score max_t u_t . y_i.

    Trained here with the objective MIND uses (sampled softmax over shared log-uniform negatives
    with logQ correction and accidental-hit removal, lazy Adam) instead of the original WARP
    loss, so the comparison isolates the model. The gradient of the max reaches the winning
    vector only. A user needs learned vectors: held-out users (strong generalisation) are refused.
    """

    def __init__(self, train: Examples, num_users: int, num_items: int, T: int = 4, dim: int = 64,
                 epochs: int = 10, batch_size: int = 256, num_neg: int | str = 256, lr: float = 3e-3,
                 seed: int = 0, progress=None):
        """progress(1) after each step (a progress bar's update), if given."""
        rng = np.random.default_rng(seed)
        self.U = rng.normal(0, 0.1, (num_users, T, dim)).astype(np.float32)  # [users, T, d]
        self.Y = rng.normal(0, 0.1, (num_items, dim)).astype(np.float32)  # [V, d]
        self.Y[0] = 0
        self.known = np.zeros(num_users, dtype=bool)
        self.known[train.users] = True
        params = {"U": self.U, "Y": self.Y}
        opt = Adam(params, lr=lr)
        sampler = LogUniformSampler.from_counts(np.bincount(train.target, minlength=num_items))
        for _ in range(epochs):
            order = rng.permutation(len(train.target))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                neg, log_q = negatives(sampler, rng, num_neg, train.target[idx])
                lq_pos, lq_neg = log_q or (None, None)
                opt.step(params, self._grads(train.users[idx], train.target[idx], neg, lq_pos, lq_neg))
                if progress is not None:
                    progress(1)

    def _grads(self, users, pos, neg, lq_pos, lq_neg) -> dict:
        """The max-score sampled softmax (max_score_loss) of a batch, as table gradients."""
        Ub = self.U[users]  # [b, T, d]
        b, T, d = Ub.shape
        _, cache = max_score_forward(Ub, np.ones((b, T), bool), self.Y[pos], self.Y[neg], pos, neg,
                                     lq_pos, lq_neg)
        dUb, dY_pos, dY_neg = max_score_backward(1.0, cache)
        dU = scatter_rows(users, dUb.reshape(b, T * d), skip_padding=False)
        return {"U": RowSparseGrad(dU.rows, dU.values.reshape(-1, T, d)),
                "Y": scatter_rows(np.concatenate([pos, neg]), np.concatenate([dY_pos, dY_neg]))}

    def __call__(self, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        if not self.known[users].all():
            raise ValueError("MaxMF scores only users it was trained on (use the loo protocol); "
                             f"user {int(users[~self.known[users]][0])} has no learned vectors")
        return (self.U[users] @ self.Y.T).max(1)  # [b, V]  max_t u_t . y_i
