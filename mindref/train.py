"""Training (MIND 3.5: sampled softmax and Adam) and full-ranking evaluation of a model."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import model as M
from .adam import Adam
from .allocator import keep_temporaries_mapped
from .data import Dataset, EvalSet, Examples
from .evaluate import evaluate, max_scores
from .samplers import LogUniformSampler


def fit(cfg: M.MINDConfig, ds: Dataset, train: Examples, epochs: int = 5, batch_size: int = 256,
        num_neg: int = 64, lr: float = 3e-3, dtype=np.float32,
        progress: Callable | None = None) -> tuple[dict, list[float]]:
    """Train MIND; returns the parameters and the mean loss of each epoch.

    Seeded by cfg.seed: the same inputs give bit-identical parameters on one machine.
    progress(epoch, step, steps, loss) is called after every step when given.
    """
    keep_temporaries_mapped()
    params = M.init_params(cfg, dtype)
    opt = Adam(params, lr=lr, frozen=("serving_logits",))
    sampler = LogUniformSampler.from_counts(np.bincount(train.target, minlength=cfg.num_items))
    rng = np.random.default_rng(cfg.seed + 1)
    profiles = ds.profiles[train.users]  # [N, P]
    steps = -(-len(train.target) // batch_size)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(train.target))
        total = 0.0
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            batch = M.Batch(train.hist[idx], profiles[idx], train.target[idx])
            b0, neg, log_q = M.train_draws(rng, cfg, batch, sampler, num_neg, dtype)
            loss, cache = M.loss_forward(params, cfg, ds.item_fields, batch, b0, neg, log_q)
            if not np.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}")
            opt.step(params, M.loss_backward(cache))
            total += loss
            if progress is not None:
                progress(epoch, step, steps, loss)
        history.append(total / steps)
    return params, history


def scorer(params: dict, cfg: M.MINDConfig, ds: Dataset) -> Callable:
    """score(users, hist) -> [b, V] by Eq. (3) with the serving user tower (no randomness)."""
    E, _ = M.item_forward(params, ds.item_fields, np.arange(cfg.num_items))  # [V, d]

    def score(users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        V, cmask = M.user_vectors(params, cfg, ds.item_fields, hist, ds.profiles[users])
        return max_scores(V, cmask, E)

    return score


def evaluate_model(params: dict, cfg: M.MINDConfig, ds: Dataset, cases: EvalSet,
                   exclude_history: bool = True) -> dict[str, float]:
    """HitRate, Recall and NDCG at 10/20/50/100 by full ranking of every item with Eq. (3)."""
    return evaluate(scorer(params, cfg, ds), cases, cfg.num_items, exclude_history)
