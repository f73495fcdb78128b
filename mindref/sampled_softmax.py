"""Sampled softmax loss (MIND 3.5, Eqs. (10)-(11)).

    Pr(i | u) = exp(v_u^T e_i) / sum_{j in I} exp(v_u^T e_j)          Eq. (10)
    L = - sum_{(u, i) in D} log Pr(i | u)                              Eq. (11)

The sum over all items I is replaced by the positive plus N negatives y_1..y_N drawn once per
batch from a sampler Q (samplers.py):

    o_pos = v_u^T e_i   - log Q(i)          (logQ correction, optional)
    o_s   = v_u^T e_y_s - log Q(y_s)        o_s = -inf where y_s == i (accidental hit removed)
    loss  = mean over the batch of  -o_pos + logsumexp(o_pos, o_1..o_N)

The mean (not Eq. (11)'s sum) keeps the step size independent of the batch size.
full_softmax_* is Eq. (10) exactly, for small catalogs and as the oracle in tests.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .softmax import masked_log_softmax


class SampledSoftmaxCache(NamedTuple):
    v: np.ndarray  # [B, d]
    e_pos: np.ndarray  # [B, d]
    e_neg: np.ndarray  # [N, d]
    prob_pos: np.ndarray  # [B]     softmax mass of the positive
    prob_neg: np.ndarray  # [B, N]  of each negative; 0 on removed hits


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
    """Mean sampled-softmax loss.  v, e_pos [B, d]; e_neg [N, d]; pos_ids [B]; neg_ids [N];
    log_q_pos [B], log_q_neg [N]: log expected counts (None: no logQ correction)."""
    B, d = v.shape
    if e_pos.shape != (B, d) or e_neg.ndim != 2 or e_neg.shape[1] != d:
        raise ValueError(f"sampled softmax: v {v.shape}, e_pos {e_pos.shape}, e_neg {e_neg.shape}")
    if pos_ids.shape != (B,) or neg_ids.shape != (e_neg.shape[0],):
        raise ValueError(f"sampled softmax: pos_ids {pos_ids.shape}, neg_ids {neg_ids.shape}")
    if (log_q_pos is None) != (log_q_neg is None):
        raise ValueError("sampled softmax: give both log_q_pos and log_q_neg, or neither")
    o_pos = np.sum(v * e_pos, axis=1)  # [B]
    o_neg = v @ e_neg.T  # [B, N]
    loss, prob_pos, prob_neg = candidate_softmax(o_pos, o_neg, pos_ids, neg_ids, log_q_pos, log_q_neg,
                                                 remove_accidental_hits)
    return loss, SampledSoftmaxCache(v, e_pos, e_neg, prob_pos, prob_neg)


def candidate_softmax(o_pos: np.ndarray, o_neg: np.ndarray, pos_ids: np.ndarray, neg_ids: np.ndarray,
                      log_q_pos: np.ndarray | None = None, log_q_neg: np.ndarray | None = None,
                      remove_accidental_hits: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean -log softmax of the positive among (positive, N negatives), given their scores.

    o_pos [B], o_neg [B, N] (o_neg is overwritten). Returns (loss, prob_pos [B], prob_neg [B, N]).
    """
    if log_q_pos is not None:
        o_pos = o_pos - log_q_pos  # logQ correction
        o_neg -= log_q_neg[None, :]
    if remove_accidental_hits:
        np.putmask(o_neg, neg_ids[None, :] == pos_ids[:, None], -np.inf)  # hit: no mass
    m = np.maximum(o_pos, o_neg.max(axis=1))  # [B], finite: the positive is always kept
    ex_neg = np.exp(np.subtract(o_neg, m[:, None], out=o_neg), out=o_neg)  # [B, N], in place
    ex_pos = np.exp(o_pos - m)  # [B]
    Z = ex_pos + ex_neg.sum(axis=1)  # [B]
    loss = np.mean(np.log(Z) - (o_pos - m))  # Eq. (11) as a mean of -log Pr(i|u), Eq. (10)
    ex_neg /= Z[:, None]
    return float(loss), ex_pos / Z, ex_neg


def sampled_softmax_backward(
    dloss: float, cache: SampledSoftmaxCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (dv, de_pos, de_neg). Rows of de_pos/de_neg belong to pos_ids/neg_ids; fold them
    into table gradients with sparse.scatter_rows (duplicates are summed there)."""
    v, e_pos, e_neg, prob_pos, prob_neg = cache
    scale = dloss / v.shape[0]
    d_pos = (prob_pos - 1) * scale  # [B]     d(-log p_pos)/d o_pos = p_pos - 1
    d_neg = prob_neg * scale  # [B, N]  d(-log p_pos)/d o_s = p_s
    dv = d_pos[:, None] * e_pos + d_neg @ e_neg  # [B, d]
    de_pos = d_pos[:, None] * v  # [B, d]
    de_neg = d_neg.T @ v  # [N, d]
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
    log_prob = masked_log_softmax(logits, keep, axis=1)  # [B, V]
    loss = float(-np.mean(log_prob[rows, pos_ids]))  # Eq. (11)
    dlogits = np.exp(log_prob)  # [B, V]
    dlogits[rows, pos_ids] -= 1  # p - onehot(pos)
    return loss, FullSoftmaxCache(v, E, dlogits)


def full_softmax_backward(dloss: float, cache: FullSoftmaxCache) -> tuple[np.ndarray, np.ndarray]:
    """Returns (dv, dE) with dE dense [V, d]: meant for small catalogs only."""
    v, E, dlogits = cache
    g = dlogits * (dloss / v.shape[0])  # [B, V]
    return g @ E, g.T @ v
