"""Adam (Kingma & Ba 2015), the optimizer of MIND 3.5, with lazy row-sparse updates.

Dense parameters get the standard update. Embedding tables receive RowSparseGrad: only the
rows touched in this step have their moments and values updated (TensorFlow's LazyAdam), so a
step costs O(rows touched x d), never O(|V| x d). Bias correction uses the global step.
"""
from __future__ import annotations

import numpy as np

from .sparse import RowSparseGrad


class Adam:
    """Adam over a dict of parameters: m, v (the moments, one array per parameter not frozen), t
    (the global step). step(params, grads) updates params in place: dense arrays by the standard
    rule, RowSparseGrad only at the rows it holds (lazy). frozen: names that are never updated."""

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8, frozen: tuple = ()):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.frozen = set(frozen)
        self.m = {k: np.zeros_like(v) for k, v in params.items() if k not in self.frozen}
        self.v = {k: np.zeros_like(v) for k, v in params.items() if k not in self.frozen}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: dict) -> None:
        """Update params in place from grads (dense arrays or RowSparseGrad)."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        lr_t = self.lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)  # bias correction
        for name, g in grads.items():
            if name in self.frozen:
                continue
            p, m, v = params[name], self.m[name], self.v[name]
            rows = g.rows if isinstance(g, RowSparseGrad) else slice(None)
            g = g.values if isinstance(g, RowSparseGrad) else g
            m_new = b1 * m[rows] + (1 - b1) * g  # each row gathered once
            v_new = b2 * v[rows] + (1 - b2) * g * g
            m[rows], v[rows] = m_new, v_new
            p[rows] -= (lr_t * m_new / (np.sqrt(v_new) + self.eps)).astype(p.dtype)
