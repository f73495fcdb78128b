"""Dense + ReLU layers (MIND 3.3, Figure 2).

    "By concatenating interest capsules with user profile embedding and transforming the
     concatenated capsules by several ReLU layers, user representation vectors are obtained."

y = act(x W + b) with act = ReLU or identity. ReLU'(0) is taken as 0.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

ACTIVATIONS = ("relu", "linear")


class DenseCache(NamedTuple):
    x: np.ndarray  # [..., n_in]
    W: np.ndarray  # [n_in, n_out]
    active: np.ndarray | None  # [..., n_out] bool where ReLU passes, None for linear


def dense_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, activation: str = "relu"
) -> tuple[np.ndarray, DenseCache]:
    """y = act(x W + b).  x [..., n_in], W [n_in, n_out], b [n_out] -> y [..., n_out]."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.shape[-1] != W.shape[0] or b.shape != (W.shape[1],):
        raise ValueError(f"dense: x {x.shape}, W {W.shape}, b {b.shape} do not fit")
    h = (x.reshape(-1, W.shape[0]) @ W + b).reshape(*x.shape[:-1], W.shape[1])  # [..., n_out], 2-D GEMM
    if activation == "linear":
        return h, DenseCache(x, W, None)
    active = h > 0  # [..., n_out]
    return h * active, DenseCache(x, W, active)


def dense_backward(dy: np.ndarray, cache: DenseCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (dx, dW, db) in the forward's argument order."""
    dh = dy if cache.active is None else dy * cache.active  # [..., n_out]
    n_in, n_out = cache.W.shape
    dW = cache.x.reshape(-1, n_in).T @ dh.reshape(-1, n_out)  # [n_in, n_out]
    db = dh.reshape(-1, n_out).sum(0)  # [n_out]
    dx = (dh.reshape(-1, n_out) @ cache.W.T).reshape(cache.x.shape)  # [..., n_in]
    return dx, dW, db
