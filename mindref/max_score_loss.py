"""Sampled softmax with every candidate scored by Eq. (3): an option, not the paper's training.

The paper trains through label-aware attention (3.4): the target picks the user vector
v_u = V softmax(pow(V^T e_t, p)), and the negatives are scored against that same v_u. Serving,
though, scores every item by its best interest, f(V_u, e_i) = max_k e_i . v_k (Eq. (3)). A negative
that lies close to an interest other than the target's is therefore never penalised in training
but retrieved at serving. This loss removes the mismatch: the positive and each negative are
scored by their own max over the valid interests,

    o_pos = max_k v_k . e_t,   o_s = max_k v_k . e_{y_s}    (then logQ, hits, softmax as in 3.5)

and the gradient of each max reaches its winning interest only (as MaxMF's, Weston et al. 2013).
docs/results.md measures it against label-aware attention (MINDConfig(objective="eq3-max"): the default).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .sampled_softmax import candidate_softmax


class MaxScoreCache(NamedTuple):
    V_k: np.ndarray  # [K, B, d]  V interest-major (contiguous: each interest's rows together)
    e_pos: np.ndarray  # [B, d]
    e_neg: np.ndarray  # [N, d]
    k_pos: np.ndarray  # [B]     the positive's winning interest
    k_neg: np.ndarray  # [B, N]  uint8: each negative's winning interest
    prob_pos: np.ndarray  # [B]
    prob_neg: np.ndarray  # [B, N]
    work: np.ndarray  # [K, B, N]  the forward's scores buffer, reused by the backward


def max_score_forward(V: np.ndarray, capsule_mask: np.ndarray, e_pos: np.ndarray, e_neg: np.ndarray,
                      pos_ids: np.ndarray, neg_ids: np.ndarray, log_q_pos: np.ndarray | None = None,
                      log_q_neg: np.ndarray | None = None) -> tuple[float, MaxScoreCache]:
    """Mean loss.  V [B, K, d], capsule_mask [B, K], e_pos [B, d], e_neg [N, d]."""
    if not capsule_mask.any(-1).all():
        raise ValueError("max-score loss: a user has no valid interest")
    s_pos = np.where(capsule_mask, np.einsum("bkd,bd->bk", V, e_pos), -np.inf)  # [B, K]
    k_pos = s_pos.argmax(1)  # [B]  Eq. (3)'s arg max
    o_pos = np.take_along_axis(s_pos, k_pos[:, None], 1)[:, 0]  # [B]
    V_k = np.ascontiguousarray(V.transpose(1, 0, 2))  # [K, B, d]
    o_neg, k_neg, work = _max_over_interests(V_k, capsule_mask, e_neg)  # [B, N], [B, N], [K, B, N]
    loss, prob_pos, prob_neg = candidate_softmax(o_pos, o_neg, pos_ids, neg_ids, log_q_pos, log_q_neg)
    return loss, MaxScoreCache(V_k, e_pos, e_neg, k_pos, k_neg, prob_pos, prob_neg, work)


def _max_over_interests(V_k: np.ndarray, capsule_mask: np.ndarray, e_neg: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """max_k and arg max_k of v_k . e_s over the valid interests: [B, N] each (the arg max uint8),
    and the [K, B, N] buffer that held the scores.

    The scores of all interests are one GEMM into an interest-major buffer [K, B, N], so that each
    interest's scores are one contiguous [B, N] slice. The buffer is turned in place into running
    maxima m_k = max(s_0..s_k): the max is m_{K-1}, and the arg max (the first k reaching it, as
    argmax) is the number of m_k still below it. (An argmax along the strided middle axis of
    [B, K, N] was once the slowest part of the step.)"""
    K, B, d = V_k.shape
    run = (V_k.reshape(K * B, d) @ e_neg.T).reshape(K, B, -1)  # [K, B, N]  scores, one GEMM
    run[~capsule_mask.T] = -np.inf  # masked interests never win
    for k in range(1, K):
        np.maximum(run[k - 1], run[k], out=run[k])  # m_k
    best = run[K - 1].copy()  # [B, N]
    winner = np.zeros(best.shape, dtype=np.uint8)  # K <= 255 (routing's K is small)
    below = np.empty(best.shape, dtype=bool)
    for k in range(K - 1):
        winner += np.less(run[k], best, out=below)
    return best, winner, run


def max_score_backward(dloss: float, cache: MaxScoreCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (dV, de_pos, de_neg); each max passes its gradient to the winning interest.

    The negatives' part is two GEMMs over G [K, B, N], G[k] = p_s where interest k won and 0
    elsewhere (built in the forward's scores buffer): dV[:, k] = G[k] e_neg, de_neg = sum_k G[k]^T
    V[:, k]. The factor dloss / B of every d o_s is applied to the [.., d] results, not to G."""
    V_k, e_pos, e_neg, k_pos, k_neg, prob_pos, prob_neg, G = cache
    K, B, d = V_k.shape
    scale = dloss / B
    d_pos = (prob_pos - 1) * scale  # [B]
    won = np.empty(k_neg.shape, dtype=bool)  # [B, N]
    for k in range(K):  # interest k takes the negatives it won
        np.multiply(prob_neg, np.equal(k_neg, k, out=won), out=G[k])
    G2 = G.reshape(K * B, -1)  # [K B, N]
    dV = (G2 @ e_neg).reshape(K, B, d).transpose(1, 0, 2)  # [B, K, d]
    dV *= scale
    rows = np.arange(B)
    dV[rows, k_pos] += d_pos[:, None] * e_pos
    de_neg = G2.T @ V_k.reshape(K * B, d)  # [N, d]
    de_neg *= scale
    de_pos = d_pos[:, None] * V_k[k_pos, rows]  # [B, d]  each user's winning interest
    return dV, de_pos, de_neg
