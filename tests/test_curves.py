"""Learning curves, early stopping on a validation metric, the full softmax (--negatives all) and
`mindref plot`: issue 15's training knobs."""
import itertools
import json

import numpy as np
import pytest
from conftest import SMALL, require
from scipy.special import logsumexp

from mindref import checkpoint
from mindref import model as M
from mindref.cli import main
from mindref.data import leave_one_out, synthetic
from mindref.evaluate import max_scores
from mindref.samplers import ALL_ITEMS, LogUniformSampler


@pytest.fixture
def scripted(monkeypatch):
    """Validation metrics that follow a script, epoch by epoch: early stopping's decisions are then
    known in advance (the parameters still train for real)."""
    def script(values):
        it = itertools.chain(values, itertools.repeat(0.0))
        monkeypatch.setattr("mindref.runs.evaluate_model", lambda *a, **k: {"NDCG@50": next(it), "HR@10": 0.0,
                                                                           "HR@50": 0.0})
    return script


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(tmp_path, scripted, capsys):
    scripted([0.1, 0.3, 0.2, 0.25, 0.9])
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "8", "--early-stop", "NDCG@50", "--patience", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    train = checkpoint.read_manifest(out)["train"]
    assert [p["valid"]["NDCG@50"] for p in train["curve"]] == [0.1, 0.3, 0.2, 0.25]  # epoch 5 never ran
    assert train["best"] == {"epoch": 2, "metric": "NDCG@50", "value": 0.3} and train["epoch"] == 4
    assert "stopped early: no gain in NDCG@50 for 2 epochs; best epoch 2" in printed.out
    assert "epoch 2: loss" in printed.err and "(best)" in printed.err
    # OUT/best holds epoch 2's parameters: those of a run of 2 epochs
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(tmp_path / "two")]) == 0
    best, _, _, _ = checkpoint.load(out / "best")
    two, _, _, _ = checkpoint.load(tmp_path / "two")
    for name, value in two.items():
        np.testing.assert_array_equal(best[name], value)


def test_early_stopping_resumes_with_its_record(tmp_path, scripted, capsys):
    """Resumed, the run keeps its curve and best epoch and counts patience from them."""
    out = tmp_path / "run"
    scripted([0.5, 0.4])
    assert main(["train", *SMALL, "--epochs", "2", "--early-stop", "NDCG@50", "--patience", "2",
                 "--out", str(out)]) == 0
    scripted([0.3, 0.9])
    assert main(["train", *SMALL, "--epochs", "6", "--out", str(out)]) == 0  # flags come from the run
    train = checkpoint.read_manifest(out)["train"]
    assert [p["epoch"] for p in train["curve"]] == [1, 2, 3] and train["best"]["epoch"] == 1
    capsys.readouterr()
    assert main(["train", *SMALL, "--epochs", "6", "--patience", "5", "--out", str(out)]) == 2
    assert "--patience 5 (the run has 2)" in capsys.readouterr().err


def test_every_epoch_is_validated_and_plotted(tmp_path, capsys):
    require("matplotlib")
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(out)]) == 0
    curve = checkpoint.read_manifest(out)["train"]["curve"]
    assert [p["epoch"] for p in curve] == [1, 2, 3]
    assert all(0 <= p["valid"]["NDCG@50"] <= p["valid"]["HR@50"] <= 1 for p in curve)
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["valid"] == curve[-1]["valid"]
    assert main(["plot", str(out), "--out", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(out), "--out", str(out / "curve.png")]) == 2  # never into the run
    assert "would overwrite the input the run" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    for bad, message in ((tmp_path / "folder", "is a folder"), (tmp_path / "curve", "ending in .png"),
                         (tmp_path / "curve.txt", "ending in .png")):
        assert main(["plot", str(out), "--out", str(bad)]) == 2  # matplotlib would write curve.png
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "folder", "run"]  # nothing else


def test_full_softmax_is_eq_10_over_every_item():
    """--negatives all: the loss is the softmax over items 1..V-1 of the Eq. (3) scores, each item
    once (the positive's second copy among the negatives removed), no logQ."""
    ds = synthetic(num_users=60, num_clusters=4, items_per_cluster=6, length=(5, 10), seed=3)
    train, _, _ = leave_one_out(ds, 12)
    cfg = M.MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                       dim=6, K=3, hidden=(8,), max_len=12, seed=1)
    params = M.init_params(cfg, np.float64)
    batch = M.Batch(train.hist[:20], ds.profiles[train.users[:20]], train.target[:20])
    sampler = LogUniformSampler.from_counts(np.bincount(train.target, minlength=cfg.num_items))
    b0, neg, log_q = M.train_draws(np.random.default_rng(0), cfg, batch, sampler, ALL_ITEMS, np.float64)
    assert neg.tolist() == list(range(1, cfg.num_items)) and log_q is None
    loss, _ = M.loss_forward(params, cfg, ds.item_fields, batch, b0, neg, log_q)
    E, E_hat = M.catalog(params, ds.item_fields, cfg.num_items)
    V, cache = M.user_tower_forward(params, cfg, E_hat[batch.hist], batch.hist != 0, batch.profile, b0)
    s = max_scores(V, cache.capsule_mask, E)[:, 1:]  # [B, V - 1]
    want = np.mean(logsumexp(s, axis=1) - s[np.arange(20), batch.target - 1])
    np.testing.assert_allclose(loss, want, rtol=1e-12)


def test_negatives_flag_takes_a_count_or_all(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", *SMALL, "--negatives", "0", "--out", str(tmp_path / "a")])
    assert "expected a count of at least 1 or 'all', got '0'" in capsys.readouterr().err
    assert main(["train", *SMALL, "--negatives", "all", "--epochs", "1", "--out", str(tmp_path / "b")]) == 0
    assert checkpoint.read_manifest(tmp_path / "b")["train"]["fit"]["num_neg"] == "all"


def test_patience_alone_is_refused(tmp_path, capsys):
    assert main(["train", *SMALL, "--patience", "2", "--out", str(tmp_path / "a")]) == 2
    assert "give --early-stop METRIC too" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
