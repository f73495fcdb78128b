"""Multi-interest retrieval (MIND 3.5 and 5): each valid interest queries an ANN index, the
candidates are merged and re-scored exactly by Eq. (3),

    f(V_u, e_i) = max_k e_i . v_k      over the user's valid interests k < K'_u,

and the top N are returned with their scores and the interest that won each item. The exact mode
scores every item (NumPy brute force) and is what the approximate mode is measured against.

ItemIndex (Annoy) holds the item vectors of ids 1..V-1 at its positions 0..V-2: the padding id 0
is never in the index, so it can never be retrieved.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from annoy import AnnoyIndex

from mindref.evaluate import max_scores, top_n


class Retrieved(NamedTuple):
    items: np.ndarray  # [n] item ids, best first (ties: lower id first)
    scores: np.ndarray  # [n] Eq. (3) scores
    interests: np.ndarray  # [n] the interest k whose v_k . e_i is the max


METRICS = ("angular", "dot")
ANNOY_INT_MAX = 2**31 - 1  # Annoy takes n and search_k as C ints
EXACT_BUDGET = 2**28  # bytes of [users, K, V] scores the exact search holds at once


class ItemIndex:
    """Annoy over the item vectors E[1:] for maximum inner product search; position j holds item
    id j + 1 (the padding id 0 is never indexed, so it is never retrieved).

    metric 'angular' (default, measured better: docs/results.md): every item gets one more
    coordinate sqrt(M^2 - ||e_i||^2), M the largest norm, so all items have norm M; a query gets 0
    there, and the angular nearest neighbours are then exactly the largest inner products
    (Bachrach et al. 2014, the "Xbox" transform). metric 'dot': Annoy's own inner-product index.
    Either way the Retriever re-scores candidates exactly, so the metric decides recall only."""

    def __init__(self, annoy: AnnoyIndex, metric: str):
        self.annoy, self.metric = annoy, metric

    @classmethod
    def build(cls, E: np.ndarray, n_trees: int = 50, seed: int = 0, metric: str = "angular",
              n_jobs: int = 1) -> ItemIndex:
        """Seeded (set_seed before adding): the same vectors, settings and n_jobs give the same bytes."""
        if n_trees < 1:
            raise ValueError(f"n_trees must be >= 1, got {n_trees}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        X = E[1:].astype(np.float64)
        if metric == "angular":
            norms2 = np.einsum("ij,ij->i", X, X)
            X = np.hstack([X, np.sqrt(norms2.max() - norms2)[:, None]])  # [V - 1, d + 1], all of norm M
        annoy = AnnoyIndex(X.shape[1], metric)
        annoy.set_seed(seed)
        for j, x in enumerate(X):
            annoy.add_item(j, x)
        annoy.build(n_trees, n_jobs=n_jobs)
        return cls(annoy, metric)

    @classmethod
    def load(cls, path: str | Path, dim: int, metric: str) -> ItemIndex:
        """An index saved by save(); dim is the item vectors' size d."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        annoy = AnnoyIndex(dim + (metric == "angular"), metric)
        annoy.load(str(path))
        return cls(annoy, metric)

    def save(self, path: str | Path) -> None:
        self.annoy.save(str(path))

    def __len__(self) -> int:
        return self.annoy.get_n_items()

    def query(self, v: np.ndarray, n: int, search_k: int = -1) -> np.ndarray:
        """Item ids (>= 1) of about the n largest v . e_i."""
        q = np.append(v, 0.0) if self.metric == "angular" else v
        return np.asarray(self.annoy.get_nns_by_vector(q, n, search_k), dtype=np.int64) + 1


def eq3(V: np.ndarray, mask: np.ndarray, E_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. (3) for one user: V [K, d], mask [K], candidates E_c [n, d] -> scores [n], winner [n]."""
    s = np.where(mask[:, None], V @ E_c.T, -np.inf)  # [K, n]
    return s.max(0), s.argmax(0)


SEARCHES = ("auto", "exact", "onnx", "annoy")  # exact: NumPy; onnx: the top-n graph (export/topn.py)


class Retriever:
    """Top-N items of users given their interests V [B, K, d] and interest masks [B, K].

    Three ways to search: 'exact' (NumPy: Eq. 3 over every item, then a partial sort), 'onnx' (the
    same inside the top-n graph, onnxruntime; needs topn) and 'annoy' (each interest queries the
    ANN index, candidates merged and re-scored exactly by Eq. 3; needs index). 'auto' is the
    bundle's measured choice (auto=...), else exact up to exact_below items (docs/results.md).
    index: an ItemIndex over E; oversample: each interest asks the index for oversample * n
    candidates (plus the history's length, which is excluded afterwards); search_k: Annoy's nodes
    inspected per query (-1: n_trees * n, Annoy's default)."""

    def __init__(self, E: np.ndarray, index: ItemIndex | None = None, oversample: int = 2,
                 search_k: int = -1, exact_below: int = 200_000, topn=None, auto: str | None = None):
        if oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        if search_k != -1 and not 1 <= search_k <= ANNOY_INT_MAX:
            raise ValueError(f"search_k must be -1 (Annoy's default: trees * n) or 1..{ANNOY_INT_MAX:,}, "
                             f"got {search_k}")
        self.E, self.index, self.oversample, self.search_k = E, index, oversample, search_k
        self.exact_below, self.topn, self.auto = exact_below, topn, auto

    def method(self, search: str | bool | None) -> str:
        """'exact', 'onnx' or 'annoy' for a search mode (True: 'exact', False: 'annoy', None: 'auto')."""
        search = {True: "exact", False: "annoy", None: "auto"}.get(search, search)
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        if search == "auto":
            search = self.auto or ("exact" if self.index is None or len(self.E) - 1 <= self.exact_below
                                   else "annoy")
        if search == "annoy" and self.index is None:
            raise ValueError("no ANN index: build one or ask for exact retrieval")
        if search == "onnx" and self.topn is None:
            raise ValueError("no top-n graph in this bundle (export it again with this mindref)")
        return search

    def retrieve(self, V: np.ndarray, mask: np.ndarray, hist: np.ndarray | None = None, n: int = 50,
                 exact: str | bool | None = None) -> list[Retrieved]:
        """One Retrieved per user. hist [B, H] (0 = padding): those items are excluded; None keeps
        them. exact: the search mode (SEARCHES; True is 'exact', False 'annoy', None 'auto')."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if V.ndim != 3 or mask.shape != V.shape[:2] or V.shape[2] != self.E.shape[1]:
            raise ValueError(f"interests {list(V.shape)} and mask {list(mask.shape)} do not fit item vectors "
                             f"{list(self.E.shape)}")
        method = self.method(exact)
        hist = np.zeros((V.shape[0], 1), np.int64) if hist is None else np.asarray(hist)
        if method == "exact":
            return self._exact(V, mask, hist, n)
        if method == "onnx":
            return self._onnx(V, mask, hist, n)
        return [self._approximate(V[b], mask[b], hist[b], n) for b in range(V.shape[0])]

    def _exact(self, V: np.ndarray, mask: np.ndarray, hist: np.ndarray, n: int) -> list[Retrieved]:
        chunk = max(1, EXACT_BUDGET // (4 * V.shape[1] * len(self.E)))  # users whose [K, V] scores fit
        out = []
        for s in range(0, V.shape[0], chunk):
            top = top_n(max_scores(V[s:s + chunk], mask[s:s + chunk], self.E), hist[s:s + chunk], n)  # [b, n]
            out += [self._result(V[s + b], mask[s + b], t[t != 0]) for b, t in enumerate(top)]
        return out

    def _onnx(self, V: np.ndarray, mask: np.ndarray, hist: np.ndarray, n: int) -> list[Retrieved]:
        items, scores, interest = self.topn.run(V, mask, hist, n)  # [B, n] each, -inf: nothing left
        keep = scores != -np.inf
        return [Retrieved(items[b][keep[b]], scores[b][keep[b]], interest[b][keep[b]])
                for b in range(V.shape[0])]

    def _approximate(self, V: np.ndarray, mask: np.ndarray, hist: np.ndarray, n: int) -> Retrieved:
        ask = min(self.oversample * n + int((hist != 0).sum()), len(self.index))  # never past the catalogue
        found = [self.index.query(V[k], ask, self.search_k) for k in np.flatnonzero(mask)]
        cand = np.unique(np.concatenate(found))
        cand = cand[~np.isin(cand, hist)]
        scores, _ = eq3(V, mask, self.E[cand])
        order = np.lexsort((cand, -scores))[:n]  # by score, ties: lower id first
        return self._result(V, mask, cand[order])

    def _result(self, V: np.ndarray, mask: np.ndarray, items: np.ndarray) -> Retrieved:
        scores, winner = eq3(V, mask, self.E[items])
        return Retrieved(items, scores.astype(np.float32), winner)
