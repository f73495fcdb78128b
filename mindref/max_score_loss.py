"""Sampled softmax with every candidate scored by Eq. (3): an option, not the paper's training.

The paper trains through label-aware attention (3.4): the target picks the user vector
v_u = V softmax(pow(V^T e_t, p)), and the negatives are scored against that same v_u. Serving,
though, scores every item by its best interest, f(V_u, e_i) = max_k e_i . v_k (Eq. (3)). A negative
that lies close to an interest other than the target's is therefore never penalised in training
but retrieved at serving. This loss removes the mismatch: the positive and each negative are
scored by their own max over the valid interests,

    o_pos = max_k v_k . e_t,   o_s = max_k v_k . e_{y_s}    (then logQ, hits, softmax as in 3.5)

and the gradient of each max reaches its winning interest only (as MaxMF's, Weston et al. 2013).
docs/results.md measures it against label-aware attention (model.MINDConfig(attention="max")).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .sampled_softmax import candidate_softmax


class MaxScoreCache(NamedTuple):
    V: np.ndarray  # [B, K, d]
    e_pos: np.ndarray  # [B, d]
    e_neg: np.ndarray  # [N, d]
    k_pos: np.ndarray  # [B]     the positive's winning interest
    k_neg: np.ndarray  # [B, N]  each negative's winning interest
    prob_pos: np.ndarray  # [B]
    prob_neg: np.ndarray  # [B, N]


def max_score_forward(V: np.ndarray, capsule_mask: np.ndarray, e_pos: np.ndarray, e_neg: np.ndarray,
                      pos_ids: np.ndarray, neg_ids: np.ndarray, log_q_pos: np.ndarray | None = None,
                      log_q_neg: np.ndarray | None = None) -> tuple[float, MaxScoreCache]:
    """Mean loss.  V [B, K, d], capsule_mask [B, K], e_pos [B, d], e_neg [N, d]."""
    if not capsule_mask.any(-1).all():
        raise ValueError("max-score loss: a user has no valid interest")
    s_pos = np.where(capsule_mask, np.einsum("bkd,bd->bk", V, e_pos), -np.inf)  # [B, K]
    k_pos = s_pos.argmax(1)  # [B]  Eq. (3)'s arg max
    o_pos = np.take_along_axis(s_pos, k_pos[:, None], 1)[:, 0]  # [B]
    o_neg, k_neg = _max_over_interests(V, capsule_mask, e_neg)  # [B, N], [B, N]
    loss, prob_pos, prob_neg = candidate_softmax(o_pos, o_neg, pos_ids, neg_ids, log_q_pos, log_q_neg)
    return loss, MaxScoreCache(V, e_pos, e_neg, k_pos, k_neg, prob_pos, prob_neg)


def _max_over_interests(V: np.ndarray, capsule_mask: np.ndarray, e_neg: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """max_k and arg max_k of v_k . e_s over the valid interests: [B, N] each.

    Running maxima m_k = max(s_0..s_k) over the K slices (K is small): the max is m_{K-1}, and the
    arg max (the first k reaching it, as argmax) is the number of m_k still below it. This avoids
    an argmax along the strided middle axis of [B, K, N], once the slowest part of the step."""
    B, K, d = V.shape
    scores = (V.reshape(B * K, d) @ e_neg.T).reshape(B, K, -1)  # [B, K, N], one GEMM
    scores[~capsule_mask] = -np.inf  # masked interests never win
    running = [scores[:, 0]]
    for k in range(1, K):
        running.append(np.maximum(running[-1], scores[:, k]))  # [B, N]
    best = running[-1]
    winner = np.zeros(best.shape, dtype=np.int64)
    for m in running[:-1]:
        winner += m < best
    return best, winner


def max_score_backward(dloss: float, cache: MaxScoreCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (dV, de_pos, de_neg); each max passes its gradient to the winning interest."""
    V, e_pos, e_neg, k_pos, k_neg, prob_pos, prob_neg = cache
    B, K, _ = V.shape
    scale = dloss / B
    d_pos, d_neg = (prob_pos - 1) * scale, prob_neg * scale  # [B], [B, N]
    rows = np.arange(B)
    dV = np.zeros_like(V)  # [B, K, d]
    dV[rows, k_pos] += d_pos[:, None] * e_pos
    de_neg = np.zeros_like(e_neg)  # [N, d]
    for k in range(K):  # interest k takes the negatives it won
        won = d_neg * (k_neg == k)  # [B, N]
        dV[:, k] += won @ e_neg
        de_neg += won.T @ V[:, k]
    de_pos = d_pos[:, None] * V[rows, k_pos]  # [B, d]
    return dV, de_pos, de_neg
