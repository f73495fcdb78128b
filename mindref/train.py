"""Training (MIND 3.5: sampled softmax and Adam) and full-ranking evaluation of a model."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import model as M
from .adam import Adam
from .data import Dataset, Examples
from .evaluate import max_scores, metrics, target_ranks
from .samplers import LogUniformSampler


def fit(cfg: M.MINDConfig, ds: Dataset, train: Examples, epochs: int = 5, batch_size: int = 256,
        num_neg: int = 64, lr: float = 3e-3, dtype=np.float32,
        progress: Callable | None = None) -> tuple[dict, list[float]]:
    """Train MIND; returns the parameters and the mean loss of each epoch.

    Seeded by cfg.seed: the same inputs give bit-identical parameters on one machine.
    progress(epoch, step, steps, loss) is called after every step when given.
    """
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
            loss, cache = M.loss_forward(params, cfg, ds.item_cat, batch, b0, neg, log_q)
            if not np.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}")
            opt.step(params, M.loss_backward(cache))
            total += loss
            if progress is not None:
                progress(epoch, step, steps, loss)
        history.append(total / steps)
    return params, history


def evaluate(params: dict, cfg: M.MINDConfig, ds: Dataset, test: Examples, batch_size: int = 512,
             exclude_history: bool = True) -> dict[str, float]:
    """HitRate@N and NDCG@N by full ranking of every item with Eq. (3)."""
    E, _ = M.item_forward(params, ds.item_cat, np.arange(cfg.num_items))  # [V, d]
    ranks = []
    for start in range(0, len(test.target), batch_size):
        sl = slice(start, start + batch_size)
        V, cmask = M.user_vectors(params, cfg, ds.item_cat, test.hist[sl], ds.profiles[test.users[sl]])
        ranks.append(target_ranks(max_scores(V, cmask, E), test.target[sl], test.hist[sl],
                                  exclude_history))
    return metrics(np.concatenate(ranks))
