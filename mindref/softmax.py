"""Softmax over boolean-masked entries, shared by routing (Eq. 5), attention (3.4) and the loss.

Masked entries get probability exactly 0 and no gradient. A slice with no valid entry gets all
zeros (never the uniform distribution that -1e9 masking silently produces); the layers that call
this guarantee a valid entry wherever an output needs one.
"""
from __future__ import annotations

import numpy as np


def masked_log_softmax(x: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """log p over the valid entries of `axis` (log-sum-exp, never log of a softmax); -inf elsewhere
    and on all-masked slices."""
    out = np.where(np.broadcast_to(mask, x.shape), x, -np.inf)
    m = out.max(axis=axis, keepdims=True)
    m[~np.isfinite(m)] = 0  # all-masked slice: stays -inf
    out -= m
    denom = np.exp(out).sum(axis=axis, keepdims=True)
    out -= np.log(np.where(denom > 0, denom, 1))
    return out


def masked_softmax(x: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """p = exp(x - max) / sum exp(x - max) over the valid entries of `axis`; 0 elsewhere."""
    p = np.where(np.broadcast_to(mask, x.shape), x, -np.inf)
    m = p.max(axis=axis, keepdims=True)
    m[~np.isfinite(m)] = 0  # all-masked slice: exp(-inf) = 0 everywhere
    np.subtract(p, m, out=p)
    np.exp(p, out=p)
    denom = p.sum(axis=axis, keepdims=True)
    denom[denom == 0] = 1
    p /= denom
    return p


def masked_softmax_backward(dp: np.ndarray, p: np.ndarray, axis: int) -> np.ndarray:
    """dx = p * (dp - sum(p * dp)); zero where p is zero (masked entries)."""
    return p * (dp - np.sum(p * dp, axis=axis, keepdims=True))
