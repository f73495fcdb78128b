"""Training (MIND 3.5: sampled softmax and Adam) and full-ranking evaluation of a model."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from . import checkpoint
from . import model as M
from .adam import Adam
from .allocator import keep_temporaries_mapped
from .data import Dataset, EvalSet, Examples
from .evaluate import evaluate, max_scores
from .samplers import LogUniformSampler, negatives_count


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained: the one home of these defaults (the command line, the benches and
    the docs read them from here; chosen on validation: docs/results.md, "Defaults")."""

    epochs: int = 10
    batch_size: int = 256
    num_neg: int | str = 2048  # shared sampled negatives per batch, or samplers.ALL_ITEMS (Eq. 10)
    lr: float = 3e-3  # Adam's step size
    early_stop: str | None = None  # a validation metric (evaluate.METRICS): stop when it stalls
    patience: int = 3  # epochs without a gain in early_stop before stopping

    def fit_args(self) -> dict:
        """fit()'s keyword arguments."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "num_neg": self.num_neg, "lr": self.lr}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped."""

    params: dict
    opt: Adam
    rng: np.random.Generator
    epoch: int = 0  # epochs completed
    losses: list = field(default_factory=list)  # mean loss of each completed epoch
    step: int = 0  # steps done in the current epoch (0 between epochs)
    order: np.ndarray | None = None  # the current epoch's example order (None between epochs)
    total: float = 0.0  # the current epoch's loss sum so far
    curve: list = field(default_factory=list)  # per completed epoch: its loss and validation metrics
    best: dict | None = None  # early stopping: the best epoch so far, its metric and value


class TrainingInterrupted(Exception):
    """fit() stopped between two steps because stop() said so; .state resumes exactly."""

    def __init__(self, state: TrainState):
        super().__init__(f"training interrupted at epoch {state.epoch + 1}, step {state.step}")
        self.state = state


def start(cfg: M.MINDConfig, lr: float = TrainConfig.lr, dtype=np.float32) -> TrainState:
    """A fresh run seeded by cfg.seed."""
    params = M.init_params(cfg, dtype)
    return TrainState(params, Adam(params, lr=lr, frozen=("serving_logits",)),
                      np.random.default_rng(cfg.seed + 1))


def fit(cfg: M.MINDConfig, ds: Dataset, train: Examples, epochs: int = TrainConfig.epochs,
        batch_size: int = TrainConfig.batch_size, num_neg: int | str = TrainConfig.num_neg,
        lr: float = TrainConfig.lr, dtype=np.float32, progress: Callable | None = None,
        state: TrainState | None = None, on_epoch: Callable | None = None,
        stop: Callable | None = None) -> TrainState:
    """Train MIND for `epochs` epochs in all (a resumed state continues where it stopped).

    Seeded by cfg.seed: the same inputs give bit-identical parameters on one machine, whether or
    not the run was stopped and resumed, between epochs or within one. progress(epoch, step,
    steps, loss) is called after every step, on_epoch(state) after every epoch (to write a
    checkpoint, to validate; when it returns True, training ends there: early stopping); when
    stop() turns true (checked after every step, e.g. set by Ctrl-C), fit raises
    TrainingInterrupted carrying the state, which save_state writes and fit(state=...) resumes.
    """
    if len(train.target) == 0:
        raise ValueError("no training examples: every training user has fewer than 2 behaviours")
    if state is None:
        check_memory(cfg, batch_size, num_neg, np.dtype(dtype).itemsize)
    keep_temporaries_mapped()
    state = state or start(cfg, lr, dtype)
    M.check_params(state.params, cfg)
    sampler = LogUniformSampler.from_counts(np.bincount(train.target, minlength=cfg.num_items))
    profiles = ds.profiles[train.users]  # [N, P]
    steps = -(-len(train.target) // batch_size)
    if state.order is not None and len(state.order) != len(train.target):
        raise ValueError(f"the resumed epoch orders {len(state.order)} examples, this data has "
                         f"{len(train.target)} (resume with the data the run started with)")
    while state.epoch < epochs:
        if state.order is None:  # a new epoch
            state.order, state.step, state.total = state.rng.permutation(len(train.target)), 0, 0.0
        while state.step < steps:
            idx = state.order[state.step * batch_size:(state.step + 1) * batch_size]
            batch = M.Batch(train.hist[idx], profiles[idx], train.target[idx])
            b0, neg, log_q = M.train_draws(state.rng, cfg, batch, sampler, num_neg, dtype)
            loss, cache = M.loss_forward(state.params, cfg, ds.item_fields, batch, b0, neg, log_q)
            if not np.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {state.epoch + 1}, step {state.step}; "
                                         "lower the learning rate (the last checkpoint is kept)")
            state.opt.step(state.params, M.loss_backward(cache))
            state.total += loss
            state.step += 1
            if progress is not None:
                progress(state.epoch, state.step - 1, steps, loss)
            if stop is not None and stop() and state.step < steps:
                raise TrainingInterrupted(state)
        bad = next((k for k, v in state.params.items() if not np.isfinite(v).all()), None)
        if bad is not None:  # e.g. a step that overflowed: never checkpoint what cannot be loaded
            raise FloatingPointError(f"non-finite parameter {bad} after epoch {state.epoch + 1}; lower the "
                                     "learning rate (the last checkpoint is kept)")
        state.losses.append(state.total / steps)
        state.epoch, state.order, state.step, state.total = state.epoch + 1, None, 0, 0.0
        if on_epoch is not None and on_epoch(state):
            break
        if stop is not None and stop() and state.epoch < epochs:
            raise TrainingInterrupted(state)
    return state


def training_bytes(cfg: M.MINDConfig, batch_size: int, num_neg: int | str, itemsize: int = 4) -> int:
    """About how much memory training takes: each parameter four times (itself, its gradient and
    Adam's two moments) and a step's largest activations ([B, K, L, d] routing, [B, K, N] scores)."""
    params = sum(int(np.prod(s)) for s in M.param_shapes(cfg).values())
    B, K, L, d = batch_size, cfg.K, cfg.max_len, cfg.dim
    activations = 8 * B * K * L * d + 6 * B * K * (negatives_count(cfg.num_items, num_neg) + B)
    return (4 * params + activations) * itemsize


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux, else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: M.MINDConfig, batch_size: int, num_neg: int | str, itemsize: int = 4) -> None:
    """MemoryError before any allocation when training cannot fit in the memory available."""
    need, have = training_bytes(cfg, batch_size, num_neg, itemsize), available_memory()
    if need > have:
        shapes = M.param_shapes(cfg)
        big = max(shapes, key=lambda k: np.prod(shapes[k]))
        raise MemoryError(f"training needs about {need / 2**30:,.1f} GiB, {have / 2**30:,.1f} GiB is "
                          "available "
                          f"(the largest parameter, {big} {list(shapes[big])}, takes "
                          f"{np.prod(shapes[big]) * itemsize / 2**30:,.1f} GiB); lower --dim, --batch-size, "
                          "--max-len or --negatives")


def scorer(params: dict, cfg: M.MINDConfig, ds: Dataset) -> Callable:
    """score(users, hist) -> [b, V] by Eq. (3) with the serving user tower (no randomness)."""
    M.check_params(params, cfg)
    E, E_hat = M.catalog(params, ds.item_fields, cfg.num_items)  # [V, d] each: e_i and S e_i, once

    def score(users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        V, cmask = M.serving_tower(params, cfg, E_hat[hist], hist, ds.profiles[users])
        return max_scores(V, cmask, E)

    return score


def evaluate_model(params: dict, cfg: M.MINDConfig, ds: Dataset, cases: EvalSet,
                   exclude_history: bool = True) -> dict[str, float]:
    """HitRate, Recall and NDCG at 10/20/50/100 by full ranking of every item with Eq. (3)."""
    return evaluate(scorer(params, cfg, ds), cases, cfg.num_items, exclude_history)


def save_state(folder, state: TrainState, cfg: M.MINDConfig, data: dict, fit_args: dict) -> None:
    """A resumable checkpoint: parameters, Adam moments and step, RNG state, losses, and within an
    epoch the example order, the steps done and the loss sum so far."""
    train = {"epoch": state.epoch, "losses": state.losses, "adam_step": state.opt.t,
             "lr": state.opt.lr, "rng": state.rng.bit_generator.state, "fit": fit_args,
             "step": state.step, "total": state.total, "curve": state.curve, "best": state.best}
    extra = {"order": state.order} if state.order is not None else {}
    checkpoint.save(folder, state.params, cfg, data, train, {"m": state.opt.m, "v": state.opt.v}, extra)


def load_state(folder) -> tuple[TrainState, M.MINDConfig, dict]:
    """The TrainState of a checkpoint written by save_state, its config and manifest."""
    params, cfg, manifest, moments, extra = checkpoint.load_training(folder)
    train = manifest.get("train") or {}
    order = extra.get("order")
    if moments is None or "rng" not in train:
        raise checkpoint.CheckpointError(f"{folder}: holds parameters only, not a resumable training state")
    opt = Adam(params, lr=train["lr"], frozen=("serving_logits",))
    opt.m, opt.v, opt.t = moments["m"], moments["v"], train["adam_step"]
    rng = np.random.default_rng()
    rng.bit_generator.state = train["rng"]
    state = TrainState(params, opt, rng, train["epoch"], list(train["losses"]), train.get("step", 0), order,
                       train.get("total", 0.0), list(train.get("curve", [])), train.get("best"))
    return state, cfg, manifest
