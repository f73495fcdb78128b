"""The in-memory dataset, the embedded synthetic generator, and training examples.

One form for every source: per-user time-ordered item ids (1..V-1; 0 is padding), item ->
category id (0 = none), and per-user profile ids (0 = unknown).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    sequences: list  # per user: [n_u] int64 item ids in time order
    item_cat: np.ndarray  # [V] category of each item; item_cat[0] = 0
    profiles: np.ndarray  # [U, P] profile ids
    profile_sizes: tuple  # rows of each profile field's table

    @property
    def num_items(self) -> int:
        return self.item_cat.shape[0]

    @property
    def num_categories(self) -> int:
        return int(self.item_cat.max()) + 1


def synthetic(num_users: int = 2000, num_clusters: int = 20, items_per_cluster: int = 50,
              interests: tuple = (2, 4), length: tuple = (10, 40), stay: float = 0.5,
              seed: int = 0) -> Dataset:
    """Users with planted interests: each user mixes 2 to 4 item clusters.

    Items 1 + c*n .. (c+1)*n form cluster c (category c + 1), Zipf-popular within it. A user
    draws its clusters, then a sequence: with probability `stay` the next item is from the same
    cluster as the last one, else from one of the user's clusters at random. Its profile field
    (5 segments) is its first cluster mod 5 plus 1. The next item comes from one of several
    interests, which a single user vector cannot cover: MIND with K > 1 should win here.
    """
    rng = np.random.default_rng(seed)
    n = items_per_cluster
    within = 1 / np.arange(1, n + 1) ** 0.8
    within /= within.sum()  # [n] popularity within a cluster
    sequences, profiles = [], []
    for _ in range(num_users):
        mine = rng.choice(num_clusters, size=rng.integers(interests[0], interests[1] + 1), replace=False)
        T = rng.integers(length[0], length[1] + 1)
        clusters = np.empty(T, dtype=np.int64)
        clusters[0] = rng.choice(mine)
        for t in range(1, T):
            clusters[t] = clusters[t - 1] if rng.random() < stay else rng.choice(mine)
        sequences.append(1 + clusters * n + rng.choice(n, size=T, p=within))
        profiles.append([1 + mine[0] % 5])
    item_cat = np.r_[0, np.repeat(np.arange(1, num_clusters + 1), n)].astype(np.int64)
    return Dataset(sequences, item_cat, np.array(profiles, dtype=np.int64), (6,))


class Examples(NamedTuple):
    users: np.ndarray  # [N]
    hist: np.ndarray  # [N, L] the last <= L items before the target, left-aligned, 0-padded
    target: np.ndarray  # [N]


def _pad(histories: list, L: int) -> np.ndarray:
    out = np.zeros((len(histories), L), dtype=np.int64)
    for r, h in enumerate(histories):
        h = h[-L:]
        out[r, : len(h)] = h
    return out


def leave_one_out(ds: Dataset, L: int) -> tuple[Examples, Examples]:
    """Training examples: every prefix of seq[:-1] (>= 1 item) predicting its next item.
    Test: seq[:-1] (its last L items) predicting the last item. Users need >= 3 items."""
    tr_u, tr_h, tr_t, te_u, te_h, te_t = [], [], [], [], [], []
    for u, seq in enumerate(ds.sequences):
        if len(seq) < 3:
            continue
        train = seq[:-1]
        for t in range(1, len(train)):
            tr_u.append(u), tr_h.append(train[:t]), tr_t.append(train[t])
        te_u.append(u), te_h.append(train), te_t.append(seq[-1])
    return (Examples(np.array(tr_u), _pad(tr_h, L), np.array(tr_t)),
            Examples(np.array(te_u), _pad(te_h, L), np.array(te_t)))
