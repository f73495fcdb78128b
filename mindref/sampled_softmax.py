"""Sampled softmax loss (MIND 3.5, Eqs. (10)-(11)).

    Pr(i | u) = exp(v_u^T e_i) / sum_{j in I} exp(v_u^T e_j)          Eq. (10)
    L = - sum_{(u, i) in D} log Pr(i | u)                              Eq. (11)

The sum over all items I is replaced by the positive plus S negatives y_1..y_S drawn once per
batch from a sampler Q (samplers.py):

    o_pos = v_u^T e_i   - log Q(i)          (logQ correction, optional)
    o_s   = v_u^T e_y_s - log Q(y_s)        o_s = -inf where y_s == i (accidental hit removed)
    loss  = mean over the batch of  -o_pos + logsumexp(o_pos, o_1..o_S)

The mean (not Eq. (11)'s sum) keeps the step size independent of the batch size.
full_softmax_* is Eq. (10) exactly, for small catalogs and as the oracle in tests.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .softmax import masked_softmax


class SampledSoftmaxCache(NamedTuple):
    v: np.ndarray  # [B, d]
    e_pos: np.ndarray  # [B, d]
    e_neg: np.ndarray  # [S, d]
    prob: np.ndarray  # [B, 1 + S] softmax over (positive, negatives); 0 on removed hits


def sampled_softmax_forward(
    v: np.ndarray,
    e_pos: np.ndarray,
    e_neg: np.ndarray,
    pos_ids: np.ndarray,
    neg_ids: np.ndarray,
    log_q_pos: np.ndarray | None = None,
    log_q_neg: np.ndarray | None = None,
    remove_accidental_hits: bool = True,
) -> tuple[float, SampledSoftmaxCache]:
    """Mean sampled-softmax loss.  v, e_pos [B, d]; e_neg [S, d]; pos_ids [B]; neg_ids [S];
    log_q_pos [B], log_q_neg [S]: log expected counts (None: no logQ correction)."""
    B, d = v.shape
    if e_pos.shape != (B, d) or e_neg.ndim != 2 or e_neg.shape[1] != d:
        raise ValueError(f"sampled softmax: v {v.shape}, e_pos {e_pos.shape}, e_neg {e_neg.shape}")
    if pos_ids.shape != (B,) or neg_ids.shape != (e_neg.shape[0],):
        raise ValueError(f"sampled softmax: pos_ids {pos_ids.shape}, neg_ids {neg_ids.shape}")
    if (log_q_pos is None) != (log_q_neg is None):
        raise ValueError("sampled softmax: give both log_q_pos and log_q_neg, or neither")
    o_pos = np.einsum("bd,bd->b", v, e_pos)[:, None]  # [B, 1]
    o_neg = v @ e_neg.T  # [B, S]
    if log_q_pos is not None:
        o_pos = o_pos - log_q_pos[:, None]  # logQ correction
        o_neg = o_neg - log_q_neg[None, :]
    logits = np.concatenate([o_pos, o_neg], axis=1)  # [B, 1 + S]
    keep = np.ones(logits.shape, dtype=bool)
    if remove_accidental_hits:
        keep[:, 1:] = neg_ids[None, :] != pos_ids[:, None]
    prob = masked_softmax(logits, keep, axis=1)  # [B, 1 + S]
    log_pos = logits[:, 0] - _masked_logsumexp(logits, keep)  # [B]  log Pr(i|u), Eq. (10)
    loss = -np.mean(log_pos)  # Eq. (11), as a mean
    return float(loss), SampledSoftmaxCache(v, e_pos, e_neg, prob)


def _masked_logsumexp(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """log sum exp over the kept entries of each row (never the log of a softmax, which
    underflows). Every row must keep at least one entry."""
    masked = np.where(keep, logits, -np.inf)  # [B, N]
    m = masked.max(axis=1)  # [B]
    return m + np.log(np.exp(masked - m[:, None]).sum(axis=1))


def sampled_softmax_backward(
    dloss: float, cache: SampledSoftmaxCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (dv, de_pos, de_neg). Rows of de_pos/de_neg belong to pos_ids/neg_ids; fold them
    into table gradients with sparse.scatter_rows (duplicates are summed there)."""
    v, e_pos, e_neg, prob = cache
    B = v.shape[0]
    dlogits = prob.copy()  # [B, 1 + S]   d(-log p_0)/d logits = p - onehot(0)
    dlogits[:, 0] -= 1
    dlogits *= dloss / B
    d_pos, d_neg = dlogits[:, 0], dlogits[:, 1:]  # [B], [B, S]
    dv = d_pos[:, None] * e_pos + d_neg @ e_neg  # [B, d]
    de_pos = d_pos[:, None] * v  # [B, d]
    de_neg = d_neg.T @ v  # [S, d]
    return dv, de_pos, de_neg


class FullSoftmaxCache(NamedTuple):
    v: np.ndarray  # [B, d]
    E: np.ndarray  # [V, d] all item vectors (row 0 = padding, excluded)
    dlogits: np.ndarray  # [B, V]  p - onehot(pos), the per-example logit gradient


def full_softmax_forward(v: np.ndarray, E: np.ndarray, pos_ids: np.ndarray
                         ) -> tuple[float, FullSoftmaxCache]:
    """Eq. (10)-(11) exactly over items 1..V-1.  v [B, d], E [V, d], pos_ids [B] in 1..V-1."""
    if np.any(pos_ids < 1) or np.any(pos_ids >= E.shape[0]):
        raise ValueError(f"full softmax: positive ids must be in 1..{E.shape[0] - 1}")
    logits = v @ E.T  # [B, V]
    keep = np.ones(logits.shape, dtype=bool)
    keep[:, 0] = False  # padding is not an item
    rows = np.arange(v.shape[0])
    loss = float(np.mean(_masked_logsumexp(logits, keep) - logits[rows, pos_ids]))  # Eq. (11)
    dlogits = masked_softmax(logits, keep, axis=1)  # [B, V]
    dlogits[rows, pos_ids] -= 1  # p - onehot(pos)
    return loss, FullSoftmaxCache(v, E, dlogits)


def full_softmax_backward(dloss: float, cache: FullSoftmaxCache) -> tuple[np.ndarray, np.ndarray]:
    """Returns (dv, dE) with dE dense [V, d]: meant for small catalogs only."""
    v, E, dlogits = cache
    g = dlogits * (dloss / v.shape[0])  # [B, V]
    return g @ E, g.T @ v
