"""Full-ranking evaluation (MIND 4, Eq. (12)): never sampled metrics.

Every item is scored by Eq. (3), f(V_u, e_i) = max over the user's valid interests of e_i . v_k;
items of the user's whole known history are excluded by default, not only the latest L the model
reads (a target repeating an earlier item then counts as a miss: unmasking it would tell the
ranking where the answer is). The top N items (ties broken
by the lower id) are compared with the case's targets T:

    HitRate@N = share of cases with at least one target in the top N           Eq. (12)
    Recall@N  = mean of |top N & T| / |T|
    NDCG@N    = mean of DCG / ideal DCG, DCG = sum over hits at rank r (0-based) of 1/log2(r + 2)

With one target per case (leave-one-out) Recall@N equals HitRate@N.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .data import pad

CUTOFFS = (10, 20, 50, 100)
METRICS = tuple(f"{m}@{n}" for m in ("HR", "Recall", "NDCG") for n in CUTOFFS)  # metrics()'s keys


def max_scores(V: np.ndarray, capsule_mask: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Eq. (3): [B, K, d], [B, K], [N, d] -> [B, N] = max_k over valid k of V[b, k] . E[n]."""
    B, K, d = V.shape
    s = (V.reshape(B * K, d) @ E.T).reshape(B, K, -1)  # [B, K, N]: one GEMM reads E once, not once per user
    return np.where(capsule_mask[:, :, None], s, -np.inf).max(axis=1)


def top_n(scores: np.ndarray, hist: np.ndarray, n: int, exclude_history: bool = True) -> np.ndarray:
    """[B, n] item ids by descending score (ties: lower id first), padding and (by default)
    the history excluded. scores [B, V] over all ids. Where fewer than n items remain, the
    slots left over hold 0 (the padding id, which is never a target)."""
    scores = scores.copy()
    scores[:, 0] = -np.inf  # padding is no item
    if exclude_history:
        scores[np.arange(scores.shape[0])[:, None], hist] = -np.inf
    n = min(n, scores.shape[1] - 1)
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]  # [B, n] unordered
    key = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)
    top = np.take_along_axis(part, key, 1)
    top[np.take_along_axis(scores, top, 1) == -np.inf] = 0  # fewer items left than n: padding, never a hit
    return top


def hits(top: np.ndarray, targets: list, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, n] bool whether each retrieved item is a target, and [B] target counts."""
    is_target = np.zeros((top.shape[0], num_items), dtype=bool)
    rows = np.repeat(np.arange(len(targets)), [len(t) for t in targets])
    is_target[rows, np.concatenate(targets)] = True
    counts = is_target.sum(1)
    return np.take_along_axis(is_target, top, 1), counts


def metrics(hit: np.ndarray, counts: np.ndarray, cutoffs=CUTOFFS) -> dict[str, float]:
    """HitRate@N, Recall@N and NDCG@N from hit [B, n_max] (rank order) and target counts [B]."""
    gains = 1 / np.log2(np.arange(hit.shape[1]) + 2)  # [n_max]
    out = {}
    for n in cutoffs:
        h = hit[:, :n]  # fewer than n columns when the catalog is smaller than n
        ideal = np.cumsum(gains[:n])[np.minimum(counts, h.shape[1]) - 1]
        out[f"HR@{n}"] = float(h.any(1).mean())  # Eq. (12)
        out[f"Recall@{n}"] = float((h.sum(1) / counts).mean())
        out[f"NDCG@{n}"] = float(((h * gains[:n]).sum(1) / ideal).mean())
    return out


def evaluate(score: Callable[[np.ndarray, np.ndarray], np.ndarray], cases, num_items: int,
             exclude_history: bool = True, batch_size: int = 512, cutoffs=CUTOFFS) -> dict[str, float]:
    """Full-ranking metrics of a scorer over evaluation cases (data.EvalSet).

    score(users [b], hist [b, L]) -> [b, V] scores of every item id (column 0 ignored).
    """
    if len(cases.users) == 0:
        raise ValueError("no evaluation cases (leave-one-out needs users with >= 3 behaviours, "
                         "strong generalisation held-out users with >= 2)")
    all_hits, all_counts = [], []
    for start in range(0, len(cases.users), batch_size):
        sl = slice(start, start + batch_size)
        scores = score(cases.users[sl], cases.hist[sl])  # [b, V]
        seen = cases.hist[sl] if cases.seen is None else pad(cases.seen[sl], max(map(len, cases.seen[sl])))
        top = top_n(scores, seen, max(cutoffs), exclude_history)  # seen [b, n_max]: the whole history
        h, c = hits(top, cases.targets[sl], num_items)
        all_hits.append(h), all_counts.append(c)
    return metrics(np.concatenate(all_hits), np.concatenate(all_counts), cutoffs)
