"""Settings chosen on validation within a budget (mindref/tuning.py, issue 23): never on test, never
below the defaults on validation, every trial logged, a search resumed from its log, and the CLI's
`train --tune` / `compare --tune` storing and showing what they chose."""
import json
import zlib

import numpy as np
import pytest
from conftest import SMALL

from mindref import checkpoint, tuning
from mindref.baselines import ItemCF, interactions, top_k_per_row
from mindref.cli import main
from mindref.data import synthetic
from mindref.train import TrainConfig

SPEC = {"format": "synthetic", "protocol": "loo", "max_len": 20, "seed": 0}
MODEL = {"dim": 8, "hidden": (16,), "K": 2, "max_len": 20, "seed": 0}
FIT = TrainConfig(epochs=3, batch_size=64, num_neg=16, lr=3e-3)
SPACE = {"max_len": (5, 20), "lr": (3e-3, 1e-2)}


class Poisoned:
    """Test cases that fail the test if anything reads them."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read while tuning (.{name})")

    def __iter__(self):
        raise AssertionError("the test split was read while tuning")


@pytest.fixture
def no_test_split(monkeypatch):
    real = tuning.split

    def split(ds, spec, splits):
        train, valid, _ = real(ds, spec, splits)
        return train, valid, Poisoned()
    monkeypatch.setattr(tuning, "split", split)


@pytest.fixture(scope="module")
def ds():
    return synthetic(num_users=150, seed=0)


def test_budgets_parse_and_bad_ones_are_named():
    assert tuning.parse_budget("90s") == 90 and tuning.parse_budget("20m") == 1200
    assert tuning.parse_budget("1h30m") == 5400 and tuning.parse_budget("45") == 45
    for bad in ("", "10x", "m", "0", "-5m", "1h 2m"):
        with pytest.raises(ValueError, match="budget"):
            tuning.parse_budget(bad)


def test_mind_is_tuned_on_validation_only_and_never_below_the_defaults(ds, no_test_split, tmp_path):
    log = tuning.TrialLog(tmp_path / "t.jsonl")
    best = tuning.tune_mind(ds, SPEC, {}, MODEL, FIT, 30, log, space=SPACE)
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert rows and all({"model", "settings", "rung", "epochs", "valid", "seconds"} <= r.keys() for r in rows)
    defaults = {"max_len": 20, "lr": 3e-3}
    last = [r for r in rows if r["rung"] == len(tuning.RUNGS) - 1]
    assert defaults in [r["settings"] for r in last]  # the defaults reach the last rung
    at_default = next(r for r in last if r["settings"] == defaults)
    assert best["valid"][tuning.METRIC] >= at_default["valid"][tuning.METRIC]
    assert best["cfg"].max_len == best["settings"]["max_len"] and 1 <= best["epochs"] <= FIT.epochs


@pytest.mark.parametrize("stay, chosen_L", [(0.0, 20), (0.95, 2)])
def test_data_of_another_character_gets_another_L(stay, chosen_L, tmp_path):
    """Long-term interests (the next item from any of the user's clusters, stay = 0) want a long
    history; strongly sequential data (stay = 0.95) the last items: the search finds each, on two
    seeds, where a default would be right for one of them only."""
    for seed in (0, 1):
        data = synthetic(num_users=200, num_clusters=30, stay=stay, seed=seed)
        best = tuning.tune_mind(data, {**SPEC, "seed": seed}, {}, {**MODEL, "seed": seed},
                                TrainConfig(epochs=3, batch_size=64, num_neg=16, lr=1e-2), 20,
                                tuning.TrialLog(tmp_path / f"{stay}-{seed}.jsonl"),
                                space={"max_len": (2, 20)})
        assert best["settings"]["max_len"] == chosen_L, (stay, seed, best["valid"])


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("budget", [200, 600, 2000])
def test_the_search_keeps_to_its_budget(budget, monkeypatch):
    """On a clock of its own (trials that cost L / 5 seconds an epoch, the longer L the better), the
    whole search, the last rung's ten epochs included, ends within the budget whenever the budget
    covers the defaults and the costliest challenger in every rung."""
    clock = FakeClock()
    monkeypatch.setattr(tuning.Budget, "clock", staticmethod(clock))

    def trial(ds, spec, splits, model, train_cfg, settings, epochs, last, seed, cache=None):
        seconds = epochs * settings["max_len"] / 5
        clock.now += seconds
        # the longer L, the better (the costly configurations go on), ties broken by a checksum
        score = settings["max_len"] + zlib.crc32(json.dumps(settings, sort_keys=True).encode()) / 2 ** 32
        return {"valid": {tuning.METRIC: score}, "epochs": epochs, "params": {}, "cfg": None, "fit": {},
                "seconds": seconds}
    monkeypatch.setattr(tuning, "_mind_trial", trial)
    fit_cfg = TrainConfig(epochs=10, num_neg=2048, lr=3e-3)
    least = sum(tuning.RUNGS) * (5 + 50) / 5  # the defaults (L = 5) and an L = 50 challenger, every rung
    best = tuning.tune_mind(None, SPEC, {}, {"max_len": 5, "K": 4}, fit_cfg, budget, tuning.TrialLog(None))
    assert budget >= least and clock.now <= budget, clock.now
    assert best["trials"] >= 6


def test_a_search_resumes_from_its_log(ds, tmp_path, monkeypatch):
    log_path = tmp_path / "t.jsonl"
    tuning.tune_baseline("ItemCF", ds, SPEC, {}, 60, tuning.TrialLog(log_path))
    first = log_path.read_text()
    assert len(first.splitlines()) == 12  # the whole grid: (5, 10, 20, 50) x (20, 100, 0)
    fitted = []
    monkeypatch.setattr(tuning, "make_baseline", lambda *a, **k: fitted.append(a) or pytest.fail("refit"))
    again = tuning.tune_baseline("ItemCF", ds, SPEC, {}, 60, tuning.TrialLog(log_path))
    assert log_path.read_text() == first and not fitted and again["trials"] == 0


def test_baselines_are_tuned_on_validation_only_and_never_below_their_defaults(ds, no_test_split, tmp_path):
    for name in ("ItemCF", "WALS"):
        log = tuning.TrialLog(tmp_path / f"{name}.jsonl")
        best = tuning.tune_baseline(name, ds, SPEC, {}, 3, log)
        assert log.rows[0]["settings"] == tuning.DEFAULTS[name]  # the defaults are tried first
        assert best["valid"][tuning.METRIC] == max(r["valid"][tuning.METRIC] for r in log.rows)
        assert best["valid"][tuning.METRIC] >= log.rows[0]["valid"][tuning.METRIC]


def test_item_cf_keeps_each_items_nearest_neighbours(ds):
    from mindref.data import leave_one_out
    train, _, _ = leave_one_out(ds, 20)
    R = interactions(train, len(ds.sequences), ds.num_items)
    full, near = ItemCF(R), ItemCF(R, neighbours=3)
    assert (np.diff(near.sim.indptr) <= 3).all()
    row = full.sim.getrow(5).toarray().ravel()
    kept = near.sim.getrow(5).toarray().ravel()
    assert set(np.flatnonzero(kept)) == set(np.argsort(-row, kind="stable")[:3]) - {5}
    np.testing.assert_array_equal(top_k_per_row(full.sim, 10**6).toarray(), full.sim.toarray())


def test_train_tune_stores_the_choice_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--data-format", "synthetic", "--users", "150", "--dim", "8", "--hidden", "16", "--batch-size",
             "64", "--negatives", "16"]  # L, K and lr left to the search; the rest typed, so fixed
    args = ["train", *flags, "--epochs", "2", "--tune", "20s", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "chose on validation" in err
    manifest = checkpoint.read_manifest(out)
    tuned = manifest["tuning"]
    assert set(tuned) >= {"settings", "valid", "epochs", "trials", "budget_s", "metric"}
    assert set(tuned["settings"]) == {"max_len", "K", "lr"}
    assert manifest["config"]["max_len"] == tuned["settings"]["max_len"]
    assert manifest["config"]["K"] == tuned["settings"]["K"]
    assert manifest["train"]["epoch"] == tuned["epochs"]
    # the run is the winning trial: the same seed, data and settings give its validation metrics
    curve = manifest["train"]["curve"]
    assert curve[-1]["valid"][tuned["metric"]] == pytest.approx(tuned["valid"][tuned["metric"]], abs=1e-12)
    trials = (out / "tuning.jsonl").read_text().splitlines()
    assert main(args) == 0  # a finished run: nothing searched or trained again
    assert (out / "tuning.jsonl").read_text().splitlines() == trials


def test_compare_tune_shows_each_models_settings(capsys, tmp_path):
    log = tmp_path / "c.jsonl"
    assert main(["compare", *SMALL, "--epochs", "2", "--skip", "WALS", "--tune", "20s", "--tune-log",
                 str(log), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["settings"]) == {"MostPopular", "ItemCF", "YouTube DNN (MIND K=1)", "MIND K=3"}
    assert "max_len" in out["settings"]["MIND K=3"] and "epochs" in out["settings"]["MIND K=3"]
    assert log.is_file() and all(json.loads(x)["valid"] for x in log.read_text().splitlines())


def test_compare_gives_the_time_a_model_left_to_those_after_it(ds, monkeypatch):
    """Each model's share is of what the models before it left: item-CF's quick grid leaves its
    time to MIND, and the shares never add up to more than the budget."""
    from mindref import compare
    asked = {}

    def baseline(name, ds, spec, splits, seconds, log, seed=0, fit_args=None):
        asked[name] = seconds
        return {"settings": {}, "valid": {}, "trials": 0}

    class Stop(Exception):
        pass

    def mind(ds, spec, splits, model, train_cfg, seconds, log, name="MIND", space=None, seed=0):
        asked[name] = seconds
        raise Stop
    monkeypatch.setattr(tuning, "tune_baseline", baseline)
    monkeypatch.setattr(tuning, "tune_mind", mind)
    with pytest.raises(Stop):
        compare.compare_tuned(ds, SPEC, {}, MODEL, FIT, ("WALS",), (), 1000, None, {})
    share = compare.TUNE_SHARE
    whole = share["ItemCF"] + share["MIND K=1"] + share["MIND"]
    assert asked["ItemCF"] == pytest.approx(1000 * share["ItemCF"] / whole, rel=1e-2)
    # item-CF's fit here took (almost) nothing: its time went to those after it
    assert asked["YouTube DNN (MIND K=1)"] == pytest.approx(
        1000 * share["MIND K=1"] / (share["MIND K=1"] + share["MIND"]), rel=2e-2)
