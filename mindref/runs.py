"""A training run in a folder (`mindref train --out RUN`): started or resumed, validated after
every epoch, its best epoch kept, stopped early or cleanly on Ctrl-C.

    RUN/config.json, RUN/params-*.npz   the latest epoch: a resumable training state (checkpoint.py)
    RUN/best/                           with early stopping: the best epoch's parameters

A run resumes only with the settings it was started with (each differing one named); the data
is checked by fingerprint. After every epoch: the validation metrics join the run's curve, the
best epoch so far is saved to RUN/best (before the state that names it), then the state. Ctrl-C
or SIGTERM finishes the current step and saves a state the same command resumes exactly. One
command trains a folder at a time (outputs.OutputLock). A run's result is its best epoch when it
has one (`result`): `evaluate --model RUN` and `export --model RUN` use RUN/best then.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

from . import checkpoint
from .data import Dataset, Examples
from .datasets import check_fingerprint, fingerprint, load_dataset, locate, split
from .model import MINDConfig
from .outputs import OutputLock, check_output
from .progress import Progress, say
from .train import TrainConfig, TrainingInterrupted, TrainState, evaluate_model, fit, load_state, save_state

TUNING_LOG = "tuning.jsonl"  # train --tune's trials, in the run's folder
BEST = "best"  # RUN/best: the best epoch's parameters (early stopping)
SHOWN = ("HR@10", "NDCG@50", "HR@50")  # the validation metrics an epoch's line shows
# the command line's names of the settings a run records, for messages that name what differs
FLAGS = {"num_neg": "negatives", "dynamic_k": "no-dynamic-k", "format": "data-format", "name": "comirec-name"}


class StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the current step, then stop cleanly;
    a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.raised = False

    def __enter__(self) -> StopFlag:
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.raised:  # a second Ctrl-C: the user insists
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.raised


def fit_with_progress(cfg: MINDConfig, ds: Dataset, train: Examples, train_cfg: TrainConfig, desc: str,
                      state: TrainState | None = None, on_epoch=None, stop=None) -> tuple[TrainState, float]:
    """fit() with a progress bar (steps, loss, samples/s, time left): (state, seconds)."""
    per_epoch = -(-len(train.target) // train_cfg.batch_size)
    steps = (train_cfg.epochs - (state.epoch if state else 0)) * per_epoch - (state.step if state else 0)
    t0 = time.perf_counter()
    with Progress(steps, desc, "step") as bar:
        def update(epoch, step, steps, loss):
            bar.update(1)
            rate = bar.n * train_cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
            bar.note(epoch=epoch + 1, loss=f"{loss:.3f}", samples_s=f"{rate:,.0f}")

        state = fit(cfg, ds, train, **train_cfg.fit_args(), progress=update, state=state, on_epoch=on_epoch,
                    stop=stop)
    return state, time.perf_counter() - t0


class Outcome(NamedTuple):
    """What a run ended with: its state, config, training settings, examples and how it ended."""

    state: TrainState
    cfg: MINDConfig
    train_cfg: TrainConfig
    examples: int
    interrupted: bool  # Ctrl-C or SIGTERM: the state is saved, the same command resumes


class Plan(NamedTuple):
    """What `mindref train` asks for: the data, the model settings and the training settings, and
    which of them were given explicitly (checked against a run that is resumed)."""

    spec: dict  # the data (datasets.locate)
    model: dict  # MINDConfig fields other than the dataset's sizes
    train_cfg: TrainConfig
    given: frozenset = frozenset()  # the names of the settings given explicitly

    def config(self, ds: Dataset, **changes) -> MINDConfig:
        """The MINDConfig of these model settings over the dataset's items and fields."""
        return MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                          **{**self.model, **changes})


def train(out: Path, plan: Plan, data_path=None) -> Outcome:
    """Train (or resume) the run in `out` as `plan` asks; see the module docstring. A second
    command training the same folder is refused while this one holds it."""
    with OutputLock(out, "train"):
        return _train(Path(out), plan, data_path)


def result(folder: Path) -> tuple[Path, str | None]:
    """The checkpoint that is a run's result, and a note saying which: RUN/best when the run
    recorded a best epoch (early stopping), else the folder itself."""
    folder = Path(folder)
    try:
        best = (checkpoint.read_manifest(folder).get("train") or {}).get("best")
    except checkpoint.CheckpointError:
        return folder, None
    if best and (folder / BEST / "config.json").exists():
        return folder / BEST, (f"{folder}: using its best epoch {best['epoch']} ({best['metric']} "
                               f"{best['value']:.4f} on validation), {folder / BEST}")
    return folder, None


def interests_note(K: int, max_len: int, dynamic_k: bool = True) -> str | None:
    """A note when K'_u (Eq. 9) cannot reach K with this L: interests that are never used."""
    most = max(1, int(max(max_len, 1)).bit_length() - 1)  # floor(log2 L)
    if dynamic_k and K > most:
        return (f"with max_len L = {max_len}, K'_u = max(1, min(K, floor(log2 n))) is at most "
                f"{most} (Eq. 9): interests {most + 1}..{K} of K = {K} are never used; raise "
                "--max-len or lower --K")
    return None


def _train(out: Path, plan: Plan, data_path=None) -> Outcome:
    if (out / "config.json").exists():  # resume: the run's own config, data and training settings
        state, cfg, manifest = load_state(out)
        spec = locate(manifest["data"], data_path)
        recorded_fit = manifest["train"]["fit"]
        train_cfg = TrainConfig(**{f.name: recorded_fit[f.name] for f in fields(TrainConfig)
                                   if f.name in recorded_fit})
        check_resume(out, plan, cfg, manifest["data"], train_cfg, state.epoch)
        if "epochs" in plan.given:
            train_cfg = TrainConfig(**{**train_cfg.to_dict(), "epochs": plan.train_cfg.epochs})
        say(f"resuming {out} at epoch {state.epoch + 1}, step {state.step}")
    else:
        state, spec, train_cfg = None, plan.spec, plan.train_cfg
        check_output(out, {"--data-path": spec["path"]})
        if out.exists() and (not out.is_dir() or any(p.name != TUNING_LOG for p in out.iterdir())):
            raise FileExistsError(f"--out {out}: exists and is not a mindref run (no config.json); "
                                  "give a new or empty folder")
    ds, splits = load_dataset(spec)
    if state is None:
        cfg, spec = plan.config(ds), {**spec, "fingerprint": fingerprint(ds)}
    else:  # a run from before fingerprints adopts the data it resumes on
        check_fingerprint(spec, ds)
        spec = {**spec, "fingerprint": spec.get("fingerprint") or fingerprint(ds)}
    examples, valid, _ = split(ds, spec, splits)
    if "patience" in plan.given and not train_cfg.early_stop:
        raise ValueError("--patience counts epochs without gain in the --early-stop metric; give "
                         "--early-stop METRIC too")
    if train_cfg.early_stop and not len(valid.users):
        raise ValueError("--early-stop needs validation cases (users with >= 3 behaviours); this data has "
                         "none")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):  # fail now, not after the first epoch
        raise PermissionError(f"{out}: not writable")
    try:
        with StopFlag() as stop:
            state, _ = fit_with_progress(cfg, ds, examples, train_cfg, f"train K={cfg.K}", state,
                                         on_epoch=epoch_hook(out, cfg, ds, valid, spec, train_cfg), stop=stop)
    except TrainingInterrupted as stopped:
        save_state(out, stopped.state, cfg, spec, train_cfg.to_dict())
        return Outcome(stopped.state, cfg, train_cfg, len(examples.target), True)
    except FloatingPointError as err:  # say what is kept: the last checkpoint, or nothing yet
        saved = (out / "config.json").exists()
        kept = checkpoint.read_manifest(out).get("train", {}).get("epoch") if saved else None
        where = (f"the checkpoint of epoch {kept} is kept" if kept else
                 "no epoch had finished, so nothing was saved")
        _discard_if_empty(out, created)
        raise FloatingPointError(str(err).replace("the last checkpoint is kept", where)) from None
    except BaseException:
        _discard_if_empty(out, created)
        raise
    return Outcome(state, cfg, train_cfg, len(examples.target), False)


def _discard_if_empty(out: Path, created: bool) -> None:
    """A folder this command created, with no epoch saved (and no tuning trials to keep), is
    removed: no half run is left behind (e.g. RUN/best written before a full disk)."""
    if created and not (out / "config.json").exists() and not (out / TUNING_LOG).exists():
        shutil.rmtree(out, ignore_errors=True)


def epoch_hook(out: Path, cfg: MINDConfig, ds: Dataset, valid, spec: dict, train_cfg: TrainConfig):
    """After each epoch: validation metrics into the run's curve, the best epoch's parameters to
    RUN/best (with early stopping), the checkpoint; True (stop) when the metric has not improved
    for `patience` epochs."""
    metric, patience = train_cfg.early_stop, train_cfg.patience

    def on_epoch(state: TrainState) -> bool:
        point = {"epoch": state.epoch, "loss": state.losses[-1]}
        if len(valid.users):
            point["valid"] = evaluate_model(state.params, cfg, ds, valid)
        state.curve.append(point)
        shown = "" if "valid" not in point else ", valid " + " ".join(
            f"{k} {point['valid'][k]:.4f}" for k in dict.fromkeys((*SHOWN, metric)) if k)
        stop = False
        if metric:
            value = point["valid"][metric]
            if state.best is None or value > state.best["value"]:
                state.best = {"epoch": state.epoch, "metric": metric, "value": value}
                # before the state that names it; with the curve, so that `mindref plot RUN/best` works
                record = {"curve": state.curve, "best": state.best, "fit": train_cfg.to_dict()}
                checkpoint.save(out / BEST, state.params, cfg, spec, record)
                shown += " (best)"
            stop = state.epoch - state.best["epoch"] >= patience
        save_state(out, state, cfg, spec, train_cfg.to_dict())
        say(f"epoch {state.epoch}: loss {point['loss']:.4f}{shown}")
        return stop

    return on_epoch


def recorded(cfg: MINDConfig, spec: dict, train_cfg: TrainConfig) -> dict:
    """A run's settings by name, as a Plan names them (model fields, training fields, data)."""
    data = {k: spec[k] for k in ("format", "protocol", "category", "name", "users") if k in spec}
    model = {f.name: getattr(cfg, f.name) for f in fields(cfg)
             if f.name not in ("num_items", "field_sizes", "profile_sizes")}
    return {**model, **train_cfg.to_dict(), **data}


def check_resume(out: Path, plan: Plan, cfg: MINDConfig, spec: dict, train_cfg: TrainConfig,
                 done: int) -> None:
    """Refuse to resume a run with settings other than its own (each differing one named, as the
    command line spells it), or with fewer epochs than it has done. The data's path may differ
    when it holds the same data (checked by fingerprint once loaded)."""
    have = recorded(cfg, spec, train_cfg)
    asked = {**plan.model, **plan.train_cfg.to_dict(), **plan.spec}
    differ = [f"--{FLAGS.get(k, k).replace('_', '-')} {_shown(asked[k], k)} (the run has {_shown(v, k)})"
              for k, v in have.items()
              if k in plan.given and k in asked and k != "epochs" and _shown(asked[k], k) != _shown(v, k)]
    if differ:
        raise ValueError(f"{out} holds a run started with other settings: " + "; ".join(differ)
                         + ". Rerun without these flags to resume it, or give a new --out for a fresh run")
    if "epochs" in plan.given and plan.train_cfg.epochs < done:
        raise ValueError(f"{out} has trained {done} epochs already; --epochs {plan.train_cfg.epochs} is "
                         "fewer. "
                         f"Give --epochs > {done} to train on, or a new --out for a fresh run")


def _shown(value, name: str = "") -> str:
    """A setting's value as the command line spells it (lists space-separated, bools lower)."""
    if name == "dynamic_k":
        value = not value  # --no-dynamic-k
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)
