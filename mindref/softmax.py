"""Softmax over boolean-masked entries, shared by routing (Eq. 5) and attention (3.4).

Masked entries get probability exactly 0 and no gradient. A slice with no valid entry gets all
zeros (never the uniform distribution that -1e9 masking silently produces); the layers that call
this guarantee a valid entry wherever an output needs one.
"""
from __future__ import annotations

import numpy as np


def masked_softmax(x: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """p = exp(x - max) / sum exp(x - max) over the valid entries of `axis`; 0 elsewhere."""
    mask = np.broadcast_to(mask, x.shape)
    x_max = np.max(np.where(mask, x, -np.inf), axis=axis, keepdims=True)
    x_max = np.where(np.isfinite(x_max), x_max, 0)  # all-masked slice
    ex = np.where(mask, np.exp(np.where(mask, x - x_max, 0)), 0)
    denom = np.sum(ex, axis=axis, keepdims=True)
    return ex / np.where(denom > 0, denom, 1)


def masked_softmax_backward(dp: np.ndarray, p: np.ndarray, axis: int) -> np.ndarray:
    """dx = p * (dp - sum(p * dp)); zero where p is zero (masked entries)."""
    return p * (dp - np.sum(p * dp, axis=axis, keepdims=True))
