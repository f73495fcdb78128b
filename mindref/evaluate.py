"""Full-ranking evaluation (MIND 4, Eq. (12)): never sampled metrics.

Every item is scored by Eq. (3), f(V_u, e_i) = max over the user's valid interests of e_i . v_k,
the user's history is excluded (a flag), and the target's rank is the number of items scoring
strictly higher. HitRate@N (Eq. (12)) = share of test cases with rank < N; with one target per
case Recall@N equals HitRate@N; NDCG@N = 1 / log2(rank + 2) when rank < N.
"""
from __future__ import annotations

import numpy as np


def max_scores(V: np.ndarray, capsule_mask: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Eq. (3): [B, K, d], [B, K], [N, d] -> [B, N] = max_k over valid k of V[b, k] . E[n]."""
    s = np.einsum("bkd,nd->bkn", V, E)  # [B, K, N]
    return np.where(capsule_mask[:, :, None], s, -np.inf).max(axis=1)


def target_ranks(scores: np.ndarray, target: np.ndarray, hist: np.ndarray,
                 exclude_history: bool = True) -> np.ndarray:
    """[B] rank of each target among items 1..N-1 (0 = best). scores [B, N] over all ids."""
    scores = scores.copy()
    scores[:, 0] = -np.inf  # padding is no item
    rows = np.arange(scores.shape[0])
    if exclude_history:
        keep_target = scores[rows, target].copy()
        scores[rows[:, None], hist] = -np.inf  # items already seen (padding included)
        scores[rows, target] = keep_target  # a re-consumed target still counts
    return (scores > scores[rows, target][:, None]).sum(axis=1)


def metrics(ranks: np.ndarray, cutoffs=(10, 20, 50, 100)) -> dict[str, float]:
    out = {}
    for n in cutoffs:
        hit = ranks < n
        out[f"HR@{n}"] = float(hit.mean())  # Eq. (12)
        out[f"NDCG@{n}"] = float(np.where(hit, 1 / np.log2(ranks + 2), 0).mean())
    return out
