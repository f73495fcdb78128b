"""The in-memory dataset, the embedded synthetic generator, and training examples.

One form for every source: per-user time-ordered item ids (1..V-1; 0 is padding), item side
fields (category, genres, brand, ...: each an [V, F_f] id array, 0 = none), and per-user profile
ids (0 = unknown). Readers of real files are in readers.py.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A recommendation dataset as MIND reads it (3.1): each user's behaviour sequence I_u (item
    ids in time order), each item's side features F_i (one [V, F_f] id table per field: 3.2 pools
    them), each user's profile P_u, and the labels that make ids readable. Id 0 is padding in every
    table. Built by mindref/readers.py (MovieLens, sequences, ComiRec, CSV) and data.synthetic."""

    sequences: list  # per user: [n_u] int64 item ids in time order
    item_fields: tuple  # per side field: [V, F_f] ids (row 0 = padding item: all 0)
    field_names: tuple  # e.g. ("category",), ("genre",)
    profiles: np.ndarray  # [U, P] profile ids
    profile_names: tuple  # e.g. ("age", "gender", "occupation")
    item_labels: tuple = ()  # optional human-readable name of each item id (titles)
    raw_item_ids: tuple = ()  # optional original id of each item id
    raw_user_ids: tuple = ()  # optional original id of each user index
    field_labels: tuple = ()  # optional, per side field: the name of each id (0: "")
    profile_labels: tuple = ()  # optional, per profile field: the raw value of each id (0: "")

    @property
    def num_items(self) -> int:
        """V, the padding id 0 included."""
        return self.item_fields[0].shape[0] if self.item_fields else 1 + max(int(s.max()) for s in
                                                                            self.sequences)

    @property
    def field_sizes(self) -> tuple:
        """Rows of each side field's table (max id + 1)."""
        return tuple(int(f.max()) + 1 for f in self.item_fields)

    @property
    def profile_sizes(self) -> tuple:
        return tuple(int(c.max()) + 1 for c in self.profiles.T)


def synthetic(num_users: int = 2000, num_clusters: int = 100, items_per_cluster: int = 20,
              interests: tuple = (2, 4), length: tuple = (10, 40), stay: float = 0.5,
              seed: int = 0) -> Dataset:
    """Users with planted interests: each user mixes 2 to 4 item clusters.

    Items 1 + c*n .. (c+1)*n form cluster c (category c + 1), Zipf-popular within it. A user
    draws its clusters, then a sequence of distinct items: with probability `stay` the next item
    is from the same cluster as the last one, else from one of the user's clusters at random. Its
    profile field (5 segments) is its first cluster mod 5 plus 1. The next item comes from one of
    several interests. With more clusters than a user vector has dimensions (100 clusters, d = 16
    in the demo) one vector cannot point at all of a user's clusters at once, and MIND with K > 1
    wins (docs/results.md); with few clusters in many dimensions a single vector can.
    """
    rng = np.random.default_rng(seed)
    n = items_per_cluster
    if length[1] > interests[0] * n:
        raise ValueError("synthetic: sequences longer than the users' clusters can fill")
    popularity = 1 / np.arange(1, n + 1) ** 0.8  # [n] within a cluster
    sequences, profiles = [], []
    for _ in range(num_users):
        mine = rng.choice(num_clusters, size=rng.integers(interests[0], interests[1] + 1), replace=False)
        unseen = {c: popularity.copy() for c in mine}
        c = rng.choice(mine)
        seq = []
        for _ in range(rng.integers(length[0], length[1] + 1)):
            if rng.random() >= stay or not unseen[c].any():
                c = rng.choice([k for k in mine if unseen[k].any()])
            j = rng.choice(n, p=unseen[c] / unseen[c].sum())
            unseen[c][j] = 0  # no item twice
            seq.append(1 + c * n + j)
        sequences.append(np.array(seq, dtype=np.int64))
        profiles.append([1 + mine[0] % 5])
    category = np.r_[0, np.repeat(np.arange(1, num_clusters + 1), n)].astype(np.int64)
    return Dataset(sequences, (category[:, None],), ("category",), np.array(profiles, dtype=np.int64),
                   ("segment",))


class Examples(NamedTuple):
    """Training examples: a history predicting its next item."""

    users: np.ndarray  # [N]
    hist: np.ndarray  # [N, L] the last <= L items before the target, left-aligned, 0-padded
    target: np.ndarray  # [N]


class EvalSet(NamedTuple):
    """Evaluation cases: a history and the set of items that followed it."""

    users: np.ndarray  # [N]
    hist: np.ndarray  # [N, L] the model's input: the latest L items before the targets
    targets: list  # per case: [T_n] item ids
    seen: list | None = None  # per case: every item before the targets (excluded from the ranking)


def pad(histories: list, L: int) -> np.ndarray:
    """[N, L] ids: the last L items of each history, left-aligned, 0-padded."""
    out = np.zeros((len(histories), L), dtype=np.int64)
    for r, h in enumerate(histories):
        h = h[-L:]
        out[r, : len(h)] = h
    return out


def prefixes(ds: Dataset, users, L: int, cut=lambda seq: seq) -> Examples:
    """Every prefix (>= 1 item) of cut(sequence) predicting its next item, for the given users."""
    us, hs, ts = [], [], []
    for u in users:
        seq = cut(ds.sequences[u])
        for t in range(1, len(seq)):
            us.append(u), hs.append(seq[:t]), ts.append(seq[t])
    return Examples(np.array(us, dtype=np.int64), pad(hs, L), np.array(ts, dtype=np.int64))


def leave_one_out(ds: Dataset, L: int) -> tuple[Examples, EvalSet, EvalSet]:
    """Next-item protocol: the last item is the test target (history: all before it), the second
    last the validation target (history: all before it); training examples are the prefixes of
    seq[:-2]. Users with fewer than 3 items only contribute training examples."""
    long = [u for u, s in enumerate(ds.sequences) if len(s) >= 3]
    short = [u for u, s in enumerate(ds.sequences) if len(s) < 3]
    a = prefixes(ds, long, L, cut=lambda s: s[:-2])
    b = prefixes(ds, short, L)
    train = Examples(*(np.concatenate([x, y]) for x, y in zip(a, b)))

    def held_out(back: int) -> EvalSet:
        seqs = [ds.sequences[u] for u in long]
        return EvalSet(np.array(long, dtype=np.int64), pad([s[:-back] for s in seqs], L),
                       [s[len(s) - back: len(s) - back + 1] for s in seqs], [s[:-back] for s in seqs])

    return train, held_out(2), held_out(1)


def strong_generalisation(ds: Dataset, L: int, seed: int = 0, splits: dict | None = None,
                          history_share: float = 0.8) -> tuple[Examples, EvalSet, EvalSet]:
    """ComiRec's protocol: users split 8:1:1 (or the given splits); training users' whole
    sequences give prefixes; a held-out user's first 80% is the history, the rest the targets."""
    if splits is None:
        order = np.random.default_rng(seed).permutation(len(ds.sequences))
        n = len(order)
        splits = {"train": order[: int(0.8 * n)], "valid": order[int(0.8 * n): int(0.9 * n)],
                  "test": order[int(0.9 * n):]}

    def held_out(users) -> EvalSet:
        users = [u for u in users if len(ds.sequences[u]) >= 2]
        cuts = [min(len(ds.sequences[u]) - 1, max(1, int(history_share * len(ds.sequences[u]))))
                for u in users]
        seen = [ds.sequences[u][:c] for u, c in zip(users, cuts)]
        return EvalSet(np.array(users, dtype=np.int64), pad(seen, L),
                       [ds.sequences[u][c:] for u, c in zip(users, cuts)], seen)

    return prefixes(ds, splits["train"], L), held_out(splits["valid"]), held_out(splits["test"])
