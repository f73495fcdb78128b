"""Negative samplers for the sampled softmax (MIND 3.5, training).

A sampler draws S candidate items (with replacement) shared by the whole batch and reports
log Q(y) = log(expected count of y in the draw) = log(S * P(y)) for any item y, the term that
the logQ correction subtracts from the logits (Jean et al. 2015; TensorFlow's
sampled_softmax_loss with remove_accidental_hits=True and unique=False).

Items are ids 1..V-1 (0 is padding and is never drawn). `negatives` draws a batch's candidates:
S from a sampler, or with S = ALL_ITEMS every item once, the full softmax of Eq. (10).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Sampler(Protocol):
    num_items: int  # V, padding included

    def sample(self, rng: np.random.Generator, num_sampled: int) -> np.ndarray: ...

    def log_expected_count(self, ids: np.ndarray, num_sampled: int) -> np.ndarray: ...


class UniformSampler:
    """P(y) = 1 / (V - 1) for every real item y."""

    def __init__(self, num_items: int):
        if num_items < 2:
            raise ValueError(f"UniformSampler: need at least one real item, num_items={num_items}")
        self.num_items = num_items

    def sample(self, rng: np.random.Generator, num_sampled: int) -> np.ndarray:
        return rng.integers(1, self.num_items, size=num_sampled, dtype=np.int64)  # [N]

    def log_expected_count(self, ids: np.ndarray, num_sampled: int) -> np.ndarray:
        return np.full(np.shape(ids), np.log(num_sampled / (self.num_items - 1)))


class LogUniformSampler:
    """Zipfian over popularity rank, as TensorFlow's log_uniform_candidate_sampler:

        P(rank k) = (log(k + 2) - log(k + 1)) / log(n + 1),  k = 0..n-1,  n = V - 1

    item_by_rank: [n] the real item ids (1..V-1) from most to least popular.
    """

    def __init__(self, item_by_rank: np.ndarray):
        item_by_rank = np.asarray(item_by_rank, dtype=np.int64)
        n = item_by_rank.size
        if n == 0 or not np.array_equal(np.sort(item_by_rank), np.arange(1, n + 1)):
            raise ValueError("LogUniformSampler: item_by_rank must be a permutation of 1..n")
        self.num_items = n + 1
        self.item_by_rank = item_by_rank
        self.rank_of = np.empty(n + 1, dtype=np.int64)  # [V] rank of each item; padding unused
        self.rank_of[item_by_rank] = np.arange(n)
        self.rank_of[0] = 0
        k = np.arange(n)
        self.log_p = np.log(np.log1p(1 / (k + 1)) / np.log(n + 1))  # [n] log P(rank k)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> LogUniformSampler:
        """Rank items 1..V-1 by descending count (ties by id). counts: [V], counts[0] ignored."""
        counts = np.asarray(counts)
        return cls(1 + np.lexsort((np.arange(counts.size - 1), -counts[1:])))

    def sample(self, rng: np.random.Generator, num_sampled: int) -> np.ndarray:
        n = self.num_items - 1
        # inverse CDF: CDF(k) = log(k + 2) / log(n + 1) for rank k  =>  k = floor(exp(u log(n+1))) - 1
        ranks = np.floor(np.exp(rng.random(num_sampled) * np.log(n + 1))).astype(np.int64) - 1
        return self.item_by_rank[np.clip(ranks, 0, n - 1)]  # [N]

    def log_expected_count(self, ids: np.ndarray, num_sampled: int) -> np.ndarray:
        return np.log(num_sampled) + self.log_p[self.rank_of[ids]]


ALL_ITEMS = "all"  # num_sampled: every item a candidate, the full softmax of Eq. (10)


def negatives(sampler: Sampler, rng: np.random.Generator, num_sampled: int | str, targets: np.ndarray
              ) -> tuple[np.ndarray, tuple | None]:
    """A batch's shared negatives [N] and their log Q (log_q_pos [B], log_q_neg [N]).

    num_sampled = ALL_ITEMS is Eq. (10) exactly: every item 1..V-1, no logQ correction (a uniform
    Q shifts every logit alike; None), and the positive's own copy among them removed as an
    accidental hit by the loss, so the softmax runs over each item once. Nothing is drawn."""
    if num_sampled == ALL_ITEMS:
        return np.arange(1, sampler.num_items), None
    neg = sampler.sample(rng, num_sampled)
    log_q = sampler.log_expected_count(targets, num_sampled), sampler.log_expected_count(neg, num_sampled)
    return neg, log_q


def negatives_count(num_items: int, num_sampled: int | str) -> int:
    """Candidates besides the positive: num_sampled, or V - 1 for ALL_ITEMS."""
    return num_items - 1 if num_sampled == ALL_ITEMS else int(num_sampled)
