"""Every model's settings chosen on the validation split of the data at hand, within a time budget
(`mindref train --tune 20m`, `mindref compare --tune 1h`).

The defaults (MINDConfig, TrainConfig) were chosen on the validation splits of two datasets; on a
third they are a guess (issue 23 measured four datasets new to us: a classic baseline beat MIND's
defaults on two). The fair protocol, the one papers use, chooses each model's settings on the
validation split of the data at hand and reports test once.

The search (no library: a few lines, and the grids are small):

- MIND: successive halving (Jamieson & Talwalkar 2016) over configurations drawn in a seeded random
  order from SPACES: every configuration trains RUNGS[0] epochs, the best 1/ETA continue to RUNGS[1]
  epochs, their best 1/ETA to RUNGS[2], each rung given its share of the budget (RUNG_SHARE; a
  rung launches no trial once its share is spent). At the last rung the validation metric is read
  after every epoch and the best epoch kept (early stopping): the winner's parameters are that
  epoch's, so nothing is retrained.
- The baselines are cheap to fit: their grid in the same seeded order, one fit per configuration,
  until the budget is spent.

Validation only: a trial sees the training examples and the validation cases of `split`, never the
test cases (tests/test_tuning.py fails if the test split is read while tuning). Every trial is one
line of a JSON-lines log (model, settings, rung, epochs, validation metrics, seconds); a search
started again with the same log reuses the trials it holds. Each rung trains its configurations
from the start (1 + 3 + 10 epochs for one that reaches the last rung, not 10): the log alone then
resumes a search, and only the last rung's parameters are kept, in memory.

The defaults always take part: they are the first configuration of every rung, so a search can
only match or beat them on validation (tests/test_tuning.py). Time left is shown as the search goes.

The budget bounds the search's time: a trial is launched only when its estimated cost (its own
seconds an epoch once timed, else the mean of those timed) fits what is left of its rung's share,
less a reserve for what must still run (the defaults and one challenger, at the costliest epoch
timed, in every later rung, in full). Every rung runs the defaults and one challenger, so a budget
smaller than that is exceeded, and the search says so when it knows.
"""
from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

from . import baselines
from .data import Dataset
from .datasets import split
from .evaluate import evaluate
from .model import MINDConfig
from .progress import Progress, duration, say
from .train import TrainConfig, evaluate_model, fit

METRIC = "HR@50"  # what the search maximises on validation
# the grids; the defaults are in every grid, so a search can always keep them
SPACES = {
    "MIND": {"max_len": (5, 10, 20, 50), "num_neg": (256, 1024, 2048), "lr": (1e-3, 3e-3, 1e-2),
             "K": (2, 4, 8)},
    "ItemCF": {"max_len": (5, 10, 20, 50), "neighbours": (20, 100, 0)},  # 0: every neighbour
    "WALS": {"max_len": (5, 20, 50), "dim": (32, 64, 128), "reg": (0.1, 1.0, 10.0),
             "alpha": (1.0, 10.0, 40.0)},
    "MaxMF": {"T": (2, 4), "lr": (3e-3, 1e-2), "num_neg": (256, 2048)},
}
# the baselines' settings without --tune (compare's, and mindref.baselines' defaults)
DEFAULTS = {"ItemCF": {"max_len": MINDConfig.max_len, "neighbours": 0},
            "WALS": {"max_len": MINDConfig.max_len, "dim": MINDConfig.dim, "reg": 1.0, "alpha": 10.0},
            "MaxMF": {"T": MINDConfig.K, "lr": TrainConfig.lr, "num_neg": TrainConfig.num_neg}}
RUNGS = (1, 3, 10)  # epochs of MIND at each rung of successive halving (the last: TrainConfig.epochs)
ETA = 3  # the best 1/ETA of a rung go on to the next
RUNG_SHARE = (0.4, 0.3, 0.3)  # of MIND's budget, per rung


def parse_budget(text: str) -> float:
    """'90s', '20m', '1h', '1h30m' or plain seconds -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"--tune {text!r}: a time budget such as 90s, 20m, 1h or 1h30m")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"--tune {text!r}: the budget must be positive")
    return seconds


def configurations(space: dict, seed: int = 0) -> list[dict]:
    """Every configuration of a grid, in a seeded random order."""
    grid = [{}]
    for name, values in space.items():
        grid = [{**g, name: v} for g in grid for v in values]
    random.Random(seed).shuffle(grid)
    return grid


class TrialLog:
    """The JSON-lines record of a search; lines already there are reused (resume)."""

    def __init__(self, path: Path | None):
        self.path, self.rows = path, []
        if path is not None and Path(path).exists():
            self.rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def find(self, model: str, settings: dict, rung: int) -> dict | None:
        return next((r for r in self.rows if r["model"] == model and r["settings"] == settings
                     and r["rung"] == rung), None)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class Budget:
    """Seconds to spend, with what is left and the progress line."""

    clock = staticmethod(time.perf_counter)  # tests run a search on a clock of their own

    def __init__(self, seconds: float, label: str):
        self.seconds, self.t0, self.label = seconds, self.clock(), label

    def used(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        return max(0.0, self.seconds - self.used())


def tune_mind(ds: Dataset, spec: dict, splits: dict, model: dict, train_cfg: TrainConfig, seconds: float,
              log: TrialLog, name: str = "MIND", space: dict | None = None, seed: int = 0) -> dict:
    """Successive halving of MIND's settings on validation (module docstring). model: fixed
    MINDConfig fields (those in `space` are searched over). Returns {"settings", "valid", "params",
    "cfg", "epochs", "trials"}: the winner, its best epoch's parameters and validation metrics."""
    space = dict(SPACES["MIND"] if space is None else space)  # the caller leaves out what it fixes
    budget = Budget(seconds, name)
    # the defaults (the caller's settings) go first and always reach the last rung: the search can
    # only match or beat them on validation
    now = {"max_len": MINDConfig.max_len, "K": MINDConfig.K, **model, "num_neg": train_cfg.num_neg,
           "lr": train_cfg.lr}
    incumbent = {k: now[k] for k in space}
    candidates = [incumbent] + [c for c in configurations(space, seed) if c != incumbent]
    survivors, trials, best, splits_at = candidates, 0, None, {}
    rung_epochs = [min(e, train_cfg.epochs) for e in RUNGS[:-1]] + [train_cfg.epochs]
    cost = PerEpoch()
    warned = False
    for rung, epochs in enumerate(rung_epochs):
        if len(survivors) <= 2 and rung < len(RUNGS) - 1 and rung > 0:
            continue  # the defaults and one challenger left: straight to the last rung
        scored = []
        bar = Progress(len(survivors), f"tune {name}: rung {rung + 1}/{len(RUNGS)} ({epochs} epochs)",
                       "trial")
        for settings in survivors:
            # what must still run after this rung: the defaults and one challenger in each later
            # rung, the challenger at the costliest epoch timed so far
            reserve = (cost.of(incumbent) + cost.most()) * sum(rung_epochs[rung + 1:])
            until = min(budget.seconds * sum(RUNG_SHARE[:rung + 1]), budget.seconds - reserve)
            if len(scored) >= 2 and budget.used() + cost.of(settings) * epochs > until:
                break  # this rung's share is spent (the defaults and one challenger always run)
            if not warned and reserve and reserve > budget.left():
                say(f"tune {name}: the budget is below what the defaults and one challenger need "
                    f"to finish (about {duration(budget.used() + reserve)}): it will be exceeded")
                warned = True
            row = log.find(name, settings, rung)
            outcome = None
            if row is None or rung == len(RUNGS) - 1:  # the last rung's parameters are needed
                outcome = _mind_trial(ds, spec, splits, model, train_cfg, settings, epochs,
                                      last=rung == len(RUNGS) - 1, seed=seed, cache=splits_at)
                row = {"model": name, "settings": settings, "rung": rung, "epochs": outcome["epochs"],
                       "valid": outcome["valid"], "seconds": outcome["seconds"]}
                if log.find(name, settings, rung) is None:
                    log.add(row)
                trials += 1
            cost.add(settings, row["seconds"], epochs)  # the epochs trained (a row keeps the best one)
            scored.append((row["valid"][METRIC], settings, outcome, row))
            bar.update(1)
            bar.note(best=f"{max(s[0] for s in scored):.4f}", **{"budget left": duration(budget.left())})
        bar.close()
        scored.sort(key=lambda s: -s[0])
        if rung == len(RUNGS) - 1:
            top = scored[0]
            best = {"settings": top[1], **top[2], "trials": trials}
            break
        # the best 1/ETA go on (at least one challenger), and the defaults always
        challengers = [s for _, s, _, _ in scored if s != incumbent]
        survivors = [incumbent] + challengers[:max(1, len(scored) // ETA)]
    say(f"tune {name}: {best['settings']} (validation {METRIC} {best['valid'][METRIC]:.4f}, best epoch "
        f"{best['epochs']}), {trials} trials in {duration(budget.used())}")
    return best


class PerEpoch:
    """Seconds an epoch of a configuration takes: its own, once timed, else the mean of those timed
    (0 before any)."""

    def __init__(self):
        self.seconds = {}

    def add(self, settings: dict, seconds: float, epochs: int | None) -> None:
        self.seconds[json.dumps(settings, sort_keys=True)] = seconds / max(1, epochs or 1)

    def of(self, settings: dict) -> float:
        known = self.seconds.get(json.dumps(settings, sort_keys=True))
        if known is not None:
            return known
        return sum(self.seconds.values()) / len(self.seconds) if self.seconds else 0.0

    def most(self) -> float:
        return max(self.seconds.values(), default=0.0)


def _mind_trial(ds, spec, splits, model, train_cfg, settings, epochs, last, seed, cache=None) -> dict:
    """Train one configuration for `epochs` epochs on the training split; validation metrics of
    the final epoch, or (last rung) of the best epoch, whose parameters are kept. cache: the
    splits already made, by L."""
    t0 = time.perf_counter()
    L = settings.get("max_len", model.get("max_len", MINDConfig.max_len))
    cache = {} if cache is None else cache
    if L not in cache:
        train, valid, _ = split(ds, {**spec, "max_len": L}, splits)  # never the test cases
        cache[L] = (train, valid)
    train, valid = cache[L]
    fields = {**model, **{k: v for k, v in settings.items() if k in MINDConfig.__dataclass_fields__}}
    cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                     **{**fields, "seed": seed})
    fit_args = {**train_cfg.fit_args(), **{k: v for k, v in settings.items() if k in ("num_neg", "lr")}}
    kept = {}

    def on_epoch(state):
        if last:
            metrics = evaluate_model(state.params, cfg, ds, valid)
            if not kept or metrics[METRIC] > kept["valid"][METRIC]:
                kept.update(valid=metrics, epochs=state.epoch,
                            params={k: v.copy() for k, v in state.params.items()})
    state = fit(cfg, ds, train, **{**fit_args, "epochs": epochs}, on_epoch=on_epoch)
    if not last:
        kept = {"valid": evaluate_model(state.params, cfg, ds, valid), "epochs": state.epoch,
                "params": state.params}
    return {**kept, "cfg": cfg, "fit": {**fit_args, "epochs": kept["epochs"]},
            "seconds": round(time.perf_counter() - t0, 2)}


def make_baseline(name: str, train, num_users: int, num_items: int, settings: dict, seed: int = 0,
                  fit_args: dict | None = None):
    """A baseline fitted with the given settings (the grid's names)."""
    if name == "MostPopular":
        return baselines.MostPopular(train, num_items)
    R = baselines.interactions(train, num_users, num_items)
    if name == "ItemCF":
        return baselines.ItemCF(R, neighbours=settings.get("neighbours") or None)
    if name == "WALS":
        return baselines.WALS(R, dim=settings.get("dim", 64), reg=settings.get("reg", 1.0),
                              alpha=settings.get("alpha", 10.0), seed=seed)
    if name == "MaxMF":
        args = {**(fit_args or {}), **{k: v for k, v in settings.items() if k in ("lr", "num_neg")}}
        return baselines.MaxMF(train, num_users, num_items, T=settings.get("T", 4), seed=seed, **args)
    raise ValueError(f"unknown baseline {name!r}")


def estimate(settings: dict, timed: list) -> float:
    """Seconds a baseline trial will take, from those timed so far: the cost grows with the square
    of the factors (WALS's d x d solves) and with L; 0 before any was timed."""
    if not timed:
        return 0.0

    def size(s: dict) -> float:
        return (s.get("dim", 64) / 64) ** 2 * max(s.get("max_len", 5), 5) ** 0.5
    return max(seconds / size(done) for done, seconds in timed) * size(settings)


def tune_baseline(name: str, ds: Dataset, spec: dict, splits: dict, seconds: float, log: TrialLog,
                  seed: int = 0, fit_args: dict | None = None) -> dict:
    """The baseline's grid in a seeded order, one fit each, on validation, until `seconds` are
    spent; returns {"settings", "valid", "trials"} of the best, and "fitted", the fitted model,
    when this search fitted it (not when the log held it)."""
    budget = Budget(seconds, name)
    grid = configurations(SPACES.get(name, {}), seed) or [{}]
    incumbent = {k: v for k, v in DEFAULTS.get(name, {}).items() if k in SPACES.get(name, {})}
    grid = [incumbent] + [g for g in grid if g != incumbent] if incumbent else grid  # the defaults first
    best, trials, timed = None, 0, []
    bar = Progress(len(grid), f"tune {name}", "trial")
    for settings in grid:
        if budget.left() <= 0 and best is not None:
            break
        row = log.find(name, settings, 0)
        if row is None and best is not None and estimate(settings, timed) > budget.left():
            continue  # would overrun the budget (e.g. WALS at d = 128 on a large catalogue)
        if row is None:
            t0 = time.perf_counter()
            L = settings.get("max_len", spec.get("max_len", MINDConfig.max_len))
            train, valid, _ = split(ds, {**spec, "max_len": L}, splits)  # never the test cases
            fitted = make_baseline(name, train, len(ds.sequences), ds.num_items, settings, seed,
                                   fit_args)
            row = {"model": name, "settings": settings, "rung": 0, "epochs": None,
                   "valid": evaluate(fitted, valid, ds.num_items),
                   "seconds": round(time.perf_counter() - t0, 2)}
            log.add(row)
            trials += 1
        else:
            fitted = None  # the log's: fitted again if chosen
        timed.append((settings, row["seconds"]))
        if best is None or row["valid"][METRIC] > best["valid"][METRIC]:
            best = {"settings": settings, "valid": row["valid"], "fitted": fitted}
        fitted = None  # only the best is kept
        bar.update(1)
        bar.note(best=f"{best['valid'][METRIC]:.4f}", **{"budget left": duration(budget.left())})
    bar.close()
    say(f"tune {name}: {best['settings']} (validation {METRIC} {best['valid'][METRIC]:.4f}), {trials} trials")
    return {**best, "trials": trials}
