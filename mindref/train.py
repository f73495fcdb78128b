"""Training (MIND 3.5: sampled softmax and Adam) and full-ranking evaluation of a model."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint
from . import model as M
from .adam import Adam
from .allocator import keep_temporaries_mapped
from .data import Dataset, EvalSet, Examples
from .evaluate import evaluate, max_scores
from .samplers import LogUniformSampler


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped."""

    params: dict
    opt: Adam
    rng: np.random.Generator
    epoch: int = 0  # epochs completed
    losses: list = field(default_factory=list)  # mean loss of each completed epoch


def start(cfg: M.MINDConfig, lr: float = 3e-3, dtype=np.float32) -> TrainState:
    """A fresh run seeded by cfg.seed."""
    params = M.init_params(cfg, dtype)
    return TrainState(params, Adam(params, lr=lr, frozen=("serving_logits",)),
                      np.random.default_rng(cfg.seed + 1))


def fit(cfg: M.MINDConfig, ds: Dataset, train: Examples, epochs: int = 5, batch_size: int = 256,
        num_neg: int = 64, lr: float = 3e-3, dtype=np.float32, progress: Callable | None = None,
        state: TrainState | None = None, on_epoch: Callable | None = None) -> TrainState:
    """Train MIND for `epochs` epochs in all (a resumed state continues from state.epoch).

    Seeded by cfg.seed: the same inputs give bit-identical parameters on one machine, whether or
    not the run was stopped and resumed between epochs. progress(epoch, step, steps, loss) is
    called after every step, on_epoch(state) after every epoch (to write a checkpoint).
    """
    keep_temporaries_mapped()
    state = state or start(cfg, lr, dtype)
    sampler = LogUniformSampler.from_counts(np.bincount(train.target, minlength=cfg.num_items))
    profiles = ds.profiles[train.users]  # [N, P]
    steps = -(-len(train.target) // batch_size)
    while state.epoch < epochs:
        order = state.rng.permutation(len(train.target))
        total = 0.0
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            batch = M.Batch(train.hist[idx], profiles[idx], train.target[idx])
            b0, neg, log_q = M.train_draws(state.rng, cfg, batch, sampler, num_neg, dtype)
            loss, cache = M.loss_forward(state.params, cfg, ds.item_fields, batch, b0, neg, log_q)
            if not np.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {state.epoch}, step {step}; "
                                         "lower the learning rate (the last checkpoint is kept)")
            state.opt.step(state.params, M.loss_backward(cache))
            total += loss
            if progress is not None:
                progress(state.epoch, step, steps, loss)
        state.losses.append(total / steps)
        state.epoch += 1
        if on_epoch is not None:
            on_epoch(state)
    return state


def scorer(params: dict, cfg: M.MINDConfig, ds: Dataset) -> Callable:
    """score(users, hist) -> [b, V] by Eq. (3) with the serving user tower (no randomness)."""
    E, _ = M.item_forward(params, ds.item_fields, np.arange(cfg.num_items))  # [V, d]
    E_hat = E @ params["S"].T  # [V, d]  S e_i of every item, once (row 0: padding, 0)

    def score(users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        V, cmask = M.serving_tower(params, cfg, E_hat[hist], hist, ds.profiles[users])
        return max_scores(V, cmask, E)

    return score


def evaluate_model(params: dict, cfg: M.MINDConfig, ds: Dataset, cases: EvalSet,
                   exclude_history: bool = True) -> dict[str, float]:
    """HitRate, Recall and NDCG at 10/20/50/100 by full ranking of every item with Eq. (3)."""
    return evaluate(scorer(params, cfg, ds), cases, cfg.num_items, exclude_history)


def save_state(folder, state: TrainState, cfg: M.MINDConfig, data: dict, fit_args: dict) -> None:
    """A resumable checkpoint: parameters, Adam moments and step, RNG state, losses."""
    train = {"epoch": state.epoch, "losses": state.losses, "adam_step": state.opt.t,
             "lr": state.opt.lr, "rng": state.rng.bit_generator.state, "fit": fit_args}
    checkpoint.save(folder, state.params, cfg, data, train, {"m": state.opt.m, "v": state.opt.v})


def load_state(folder) -> tuple[TrainState, M.MINDConfig, dict]:
    """The TrainState of a checkpoint written by save_state, its config and manifest."""
    params, cfg, manifest, moments = checkpoint.load(folder)
    train = manifest.get("train") or {}
    if moments is None or "rng" not in train:
        raise checkpoint.CheckpointError(f"{folder}: holds parameters only, not a resumable training state")
    opt = Adam(params, lr=train["lr"], frozen=("serving_logits",))
    opt.m, opt.v, opt.t = moments["m"], moments["v"], train["adam_step"]
    rng = np.random.default_rng()
    rng.bit_generator.state = train["rng"]
    return TrainState(params, opt, rng, train["epoch"], list(train["losses"])), cfg, manifest
