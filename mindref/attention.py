"""Label-aware attention layer (MIND 3.4).

During training the target item e is the query over the user's interest capsules V = [v_1..v_K]:

    v_u = V softmax(pow(V^T e, p))                        (3.4)

where pow is element-wise and the softmax runs over the valid capsules (k < K'_u) only.
p tunes the attention: p = 0 gives every valid capsule the same weight (the mean), larger p
sharpens it, p -> infinity is hard attention (the best-matching capsule alone).

Modes:
- 'pow'    the paper's formula. For a negative score s, s**p is defined for integer p only:
           odd p keeps the sign, even p makes a bad match (s << 0) look like a good one (a large
           positive logit). Non-integer p with a negative score, and p < 1 at s = 0 (the
           derivative is infinite), are undefined: we raise ValueError. p must be >= 0.
- 'hard'   p -> infinity: one-hot at the argmax score (ties to the lowest index). No gradient
           reaches e through the weights (argmax is piecewise constant).
- 'scaled' softmax(p * V^T e): the numerically safe variant for any real p and any sign.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .softmax import masked_softmax, masked_softmax_backward

MODES = ("pow", "hard", "scaled")


class AttentionCache(NamedTuple):
    V: np.ndarray  # [B, K, d]
    e: np.ndarray  # [B, d]
    s: np.ndarray  # [B, K] scores V^T e
    a: np.ndarray  # [B, K] attention weights
    mode: str
    p: float


def _logits(s: np.ndarray, mode: str, p: float, mask: np.ndarray) -> np.ndarray:
    """The softmax input: pow(s, p) or p * s."""
    if mode == "scaled":
        return p * s
    is_int = float(p).is_integer()
    valid_s = s[mask]
    if not is_int and np.any(valid_s < 0):
        raise ValueError(f"attention: pow(score, p={p}) is undefined for a negative score with a "
                         "non-integer p; use an integer p or mode='scaled'")
    if 0 < p < 1 and np.any(valid_s == 0):
        raise ValueError(f"attention: pow(score, p={p}) has an infinite derivative at score 0; "
                         "use p = 0, p >= 1 or mode='scaled'")
    return np.where(mask, s, 1) ** p  # Sec. 3.4 pow(V^T e, p); 1 where masked (ignored)


def attention_forward(
    V: np.ndarray, e: np.ndarray, capsule_mask: np.ndarray, p: float = 1.0, mode: str = "pow"
) -> tuple[np.ndarray, AttentionCache]:
    """v_u = V softmax(pow(V^T e, p)) over valid capsules.  V [B, K, d], e [B, d] -> [B, d]."""
    if mode not in MODES:
        raise ValueError(f"attention mode must be one of {MODES}, got {mode!r}")
    if mode == "pow" and p < 0:
        raise ValueError(f"attention: p must be >= 0 in mode 'pow', got {p}")
    if V.ndim != 3 or e.shape != (V.shape[0], V.shape[2]) or capsule_mask.shape != V.shape[:2]:
        raise ValueError(f"attention: V {V.shape}, e {e.shape}, capsule_mask "
                         f"{capsule_mask.shape} do not fit")
    if not capsule_mask.any(-1).all():
        raise ValueError("attention: a user has no valid capsule")
    s = np.einsum("bkd,bd->bk", V, e)  # [B, K]
    if mode == "hard":
        best = np.argmax(np.where(capsule_mask, s, -np.inf), axis=-1)  # [B]
        a = (np.arange(V.shape[1])[None, :] == best[:, None]).astype(V.dtype)  # [B, K]
    else:
        a = masked_softmax(_logits(s, mode, p, capsule_mask), capsule_mask, axis=-1)  # [B, K]
    v = np.einsum("bk,bkd->bd", a, V)  # [B, d]
    return v, AttentionCache(V, e, s, a, mode, p)


def attention_backward(dv: np.ndarray, cache: AttentionCache) -> tuple[np.ndarray, np.ndarray]:
    """Returns (dV, de)."""
    V, e, s, a, mode, p = cache
    dV = a[:, :, None] * dv[:, None, :]  # [B, K, d]  through v = V a
    if mode == "hard":
        return dV, np.zeros_like(e)
    da = np.einsum("bkd,bd->bk", V, dv)  # [B, K]
    dlogit = masked_softmax_backward(da, a, axis=-1)  # [B, K]; 0 on masked capsules
    if mode == "scaled":
        ds = p * dlogit
    elif p == 0:
        ds = np.zeros_like(s)
    else:
        ds = dlogit * p * np.where(a > 0, s, 1) ** (p - 1)  # d s^p / ds = p s^(p-1)
    dV += ds[:, :, None] * e[:, None, :]  # through s = V^T e
    de = np.einsum("bk,bkd->bd", ds, V)  # [B, d]
    return dV, de
