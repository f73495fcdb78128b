"""Every model on one split (`mindref compare`, the paper's Table 2; `mindref demo`): the
baselines (MostPopular, item-CF, WALS, MaxMF), YouTube DNN (MIND with K = 1) and MIND with K
interests, each evaluated by full ranking on the test cases with the history excluded.

The demo is the same comparison on the embedded synthetic data, with the few settings it changes
named in DEMO (a smaller model for a quick run).
"""
from __future__ import annotations

import time

from . import baselines
from .data import Dataset
from .datasets import split
from .evaluate import evaluate
from .model import MINDConfig
from .progress import Progress, say
from .runs import fit_with_progress
from .train import TrainConfig, evaluate_model

BASELINES = ("MostPopular", "ItemCF", "WALS", "MaxMF")
# run only when asked (compare --include MaxMF): trained with MIND's epochs, negatives and learning
# rate rather than its own, it cost 770 s of a 33-minute compare on a dataset new to us and scored
# below MostPopular there (HR@50 0.0119 vs 0.0328; on Beauty level with it, 0.0335 vs 0.0333)
OPT_IN = ("MaxMF",)
WALS_ITERATIONS = 10
COLUMNS = ("HR@10", "HR@50", "HR@100", "Recall@50", "NDCG@50")  # the table's metrics
DEMO = {"dim": 16, "epochs": 5}  # the demo's changes to the defaults (and only these)
DEMO_SKIPS = ("ItemCF", "WALS", "MaxMF")  # the demo shows MostPopular, K = 1 and K


def mind_name(K: int) -> str:
    return "YouTube DNN (MIND K=1)" if K == 1 else f"MIND K={K}"


# compare --tune: each model's share of the budget (MostPopular has nothing to tune)
TUNE_SHARE = {"ItemCF": 0.1, "WALS": 0.15, "MaxMF": 0.1, "MIND K=1": 0.3, "MIND": 0.35}


def compare(ds: Dataset, spec: dict, splits: dict, model: dict, train_cfg: TrainConfig,
            skip: tuple = (), include: tuple = (), tune: float | None = None,
            tune_log: str | None = None, settings: dict | None = None) -> dict:
    """Test metrics of every model (name -> metrics): the baselines not in `skip` (those of OPT_IN
    only when in `include`), then MIND with K = 1 and with model["K"], trained with train_cfg
    (model: MINDConfig fields). tune: seconds for choosing every model's settings on validation
    first (mindref/tuning.py; the trials in the JSON-lines tune_log); `settings`, if given, is
    filled with what each model got."""
    if tune:
        return compare_tuned(ds, spec, splits, model, train_cfg, skip, include, tune, tune_log,
                             {} if settings is None else settings)
    train, _, test = split(ds, spec, splits)
    rows = {}
    R = baselines.interactions(train, len(ds.sequences), ds.num_items)
    dim, K, seed = model.get("dim", MINDConfig.dim), model.get("K", MINDConfig.K), model.get("seed", 0)
    steps = train_cfg.epochs * -(-len(train.target) // train_cfg.batch_size)
    makers = (("MostPopular", 0, lambda bar: baselines.MostPopular(train, ds.num_items)),
              ("ItemCF", 0, lambda bar: baselines.ItemCF(R)),
              ("WALS", WALS_ITERATIONS, lambda bar: baselines.WALS(
                  R, dim=dim, seed=seed, iterations=WALS_ITERATIONS, progress=bar.update)),
              ("MaxMF", steps, lambda bar: baselines.MaxMF(
                  train, len(ds.sequences), ds.num_items, T=K, dim=dim, epochs=train_cfg.epochs,
                  batch_size=train_cfg.batch_size, num_neg=train_cfg.num_neg, lr=train_cfg.lr, seed=seed,
                  progress=bar.update)))
    for name, total, make in makers:
        if name in skip or (name in OPT_IN and name not in include) or (
                name == "MaxMF" and spec["protocol"] != "loo"):
            continue  # MaxMF has no vectors for held-out users
        t0 = time.perf_counter()
        with Progress(total or None, name, "step" if name == "MaxMF" else "iteration") as bar:
            fitted = make(bar)
        rows[name] = evaluate(fitted, test, ds.num_items)
        say(f"{name}: {time.perf_counter() - t0:.0f}s")
    for k in (1, K):
        cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                         **{**model, "K": k})
        state, seconds = fit_with_progress(cfg, ds, train, train_cfg, f"MIND K={k}")
        rows[mind_name(k)] = evaluate_model(state.params, cfg, ds, test)
        say(f"{mind_name(k)}: loss {state.losses[0]:.3f} -> {state.losses[-1]:.3f}, {seconds:.0f}s "
            f"({train_cfg.epochs * len(train.target) / seconds:,.0f} samples/s)")
    return rows


def table(rows: dict) -> str:
    """The rows as the terminal table `compare` and `demo` print."""
    lines = [f"{'model':<26}" + "".join(f"{c:>11}" for c in COLUMNS)]
    lines += [f"{name:<26}" + "".join(f"{m[c]:>11.4f}" for c in COLUMNS) for name, m in rows.items()]
    return "\n".join(lines)


def compare_tuned(ds: Dataset, spec: dict, splits: dict, model: dict, train_cfg: TrainConfig, skip: tuple,
                  include: tuple, seconds: float, log_path, settings: dict) -> dict:
    """compare --tune: each model's settings chosen on validation within its share of the budget
    (TUNE_SHARE, of what the models before it left), then its test metrics, once."""
    from . import tuning
    log = tuning.TrialLog(log_path)
    names = [n for n in BASELINES if n not in skip and (n not in OPT_IN or n in include)
             and not (n == "MaxMF" and spec["protocol"] != "loo")]
    share = {n: TUNE_SHARE.get(n, 0.0) for n in names} | {"MIND K=1": TUNE_SHARE["MIND K=1"],
                                                          "MIND": TUNE_SHARE["MIND"]}
    budget = tuning.Budget(seconds, "compare")

    def seconds_for(name: str) -> float:
        """This model's share of what is left: time a model did not use goes to those after it."""
        later = list(share)[list(share).index(name):]
        return budget.left() * share[name] / sum(share[n] for n in later)
    rows, seed = {}, model.get("seed", 0)
    K = model.get("K", MINDConfig.K)
    for name in names:
        t0 = time.perf_counter()
        chosen = tuning.tune_baseline(name, ds, spec, splits, seconds_for(name), log, seed,
                                      train_cfg.fit_args()) if name in tuning.SPACES else {"settings": {}}
        L = chosen["settings"].get("max_len", spec.get("max_len", MINDConfig.max_len))
        train, _, test = split(ds, {**spec, "max_len": L}, splits)
        fitted = chosen.get("fitted") or tuning.make_baseline(  # the search's own fit, or again
            name, train, len(ds.sequences), ds.num_items, chosen["settings"], seed, train_cfg.fit_args())
        rows[name] = evaluate(fitted, test, ds.num_items)
        settings[name] = chosen["settings"]
        say(f"{name}: {time.perf_counter() - t0:.0f}s")
    for k in (1, K):
        space = {n: v for n, v in tuning.SPACES["MIND"].items() if n != "K"}  # the row's K is fixed
        best = tuning.tune_mind(ds, spec, splits, {**model, "K": k}, train_cfg,
                                seconds_for("MIND K=1" if k == 1 else "MIND"), log, name=mind_name(k),
                                space=space, seed=seed)
        L = best["cfg"].max_len
        _, _, test = split(ds, {**spec, "max_len": L}, splits)
        rows[mind_name(k)] = evaluate_model(best["params"], best["cfg"], ds, test)
        settings[mind_name(k)] = {**best["settings"], "epochs": best["epochs"]}
    return rows


def settings_table(settings: dict) -> str:
    """What `compare --tune` chose for each model, a line each."""
    return "\n".join(f"{name:<26}" + (", ".join(f"{k}={v}" for k, v in chosen.items()) or "(nothing to tune)")
                     for name, chosen in settings.items())
