"""The command line end to end on small synthetic data, checkpoints and resume."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import INTERRUPTIBLE, SMALL

from mindref import checkpoint
from mindref.cli import main
from mindref.data import leave_one_out, synthetic
from mindref.model import MINDConfig
from mindref.train import TrainingInterrupted, fit, load_state, save_state


def small_run():
    ds = synthetic(num_users=120, num_clusters=6, items_per_cluster=10, length=(8, 16), seed=1)
    train, _, _ = leave_one_out(ds, 20)
    cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                     dim=8, K=3, hidden=(16,), max_len=20, seed=2)
    return ds, train, cfg


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    ds, train, cfg = small_run()
    straight = fit(cfg, ds, train, epochs=4, batch_size=32, num_neg=8)
    fit(cfg, ds, train, epochs=2, batch_size=32, num_neg=8,
        on_epoch=lambda s: save_state(tmp_path, s, cfg, {}, {}))
    state, cfg2, _ = load_state(tmp_path)
    assert state.epoch == 2 and cfg2 == cfg
    resumed = fit(cfg2, ds, train, epochs=4, batch_size=32, num_neg=8, state=state)
    assert resumed.losses == straight.losses
    for name, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], value)


def test_resume_within_an_epoch_is_exact(tmp_path):
    """Stopped after step 3 of epoch 2 (stop() as Ctrl-C sets it), saved, loaded, resumed."""
    ds, train, cfg = small_run()
    straight = fit(cfg, ds, train, epochs=3, batch_size=32, num_neg=8)
    calls = iter(range(10**6))
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(cfg, ds, train, epochs=3, batch_size=32, num_neg=8, stop=lambda: next(calls) == 2 + 50)
    assert stopped.value.state.step > 0 and stopped.value.state.order is not None
    save_state(tmp_path, stopped.value.state, cfg, {}, {})
    state, _, _ = load_state(tmp_path)
    assert (state.epoch, state.step) == (stopped.value.state.epoch, stopped.value.state.step)
    resumed = fit(cfg, ds, train, epochs=3, batch_size=32, num_neg=8, state=state)
    assert resumed.losses == straight.losses
    for name, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], value)


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    """A real SIGINT to a training process: it exits 130 with a checkpoint; rerunning the same
    command finishes with the parameters of a run that was never interrupted."""
    args = [*SMALL, "--users", "400", "--epochs", "6", "--batch-size", "16"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mindref", "train", *args, "--out", str(tmp_path / "a")],
                            stderr=subprocess.PIPE, text=True, env=env, **INTERRUPTIBLE)
    deadline = time.time() + 120
    while not (tmp_path / "a" / "config.json").exists() and time.time() < deadline:
        time.sleep(0.05)  # the first epoch's checkpoint: training is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Run the same command to resume" in err
    _, _, manifest, _ = checkpoint.load(tmp_path / "a")
    assert manifest["train"]["epoch"] < 6
    assert main(["train", *args, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *args, "--out", str(tmp_path / "b")]) == 0
    a, b = checkpoint.load(tmp_path / "a")[0], checkpoint.load(tmp_path / "b")[0]
    for name in b:
        np.testing.assert_array_equal(a[name], b[name])


def test_a_killed_run_never_leaves_a_corrupt_checkpoint(tmp_path):
    """SIGKILL (no handler can run) at several moments of a run that checkpoints every epoch:
    what is on disk always loads, because every file is written aside and renamed."""
    args = [sys.executable, "-m", "mindref", "train", *SMALL, "--users", "60", "--epochs", "400",
            "--batch-size", "64", "--out", str(tmp_path / "run")]
    for delay in (0.5, 1.3, 2.1):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (tmp_path / "run" / "config.json").exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        state, _, manifest = load_state(tmp_path / "run")  # raises CheckpointError if torn
        assert manifest["train"]["epoch"] == state.epoch >= 1


def test_a_crash_between_the_two_writes_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The window a fixed file name would tear: new parameters on disk, config.json not yet
    replaced. The folder still loads, as the previous checkpoint."""
    ds, train, cfg = small_run()
    state = fit(cfg, ds, train, epochs=1, batch_size=64, num_neg=8)
    save_state(tmp_path, state, cfg, {}, {})
    first = checkpoint.load(tmp_path)[0]
    state = fit(cfg, ds, train, epochs=2, batch_size=64, num_neg=8, state=state)
    real_write = checkpoint.atomic_write

    def crash_on_manifest(path, data):
        if path.name == "config.json":
            raise OSError("simulated crash")
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", crash_on_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        save_state(tmp_path, state, cfg, {}, {})
    assert len(list(tmp_path.glob("params-*.npz"))) == 2  # the new file was written
    params, _, manifest, _ = checkpoint.load(tmp_path)
    assert manifest["train"]["epoch"] == 1
    for name, value in first.items():
        np.testing.assert_array_equal(params[name], value)
    monkeypatch.setattr(checkpoint, "atomic_write", real_write)
    save_state(tmp_path, state, cfg, {}, {})  # the next save cleans up
    assert len(list(tmp_path.glob("params-*.npz"))) == 1
    assert checkpoint.load(tmp_path)[2]["train"]["epoch"] == 2


def test_unwritable_output_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", *SMALL, "--out", str(blocker / "run")]) == 2
    assert "mindref train: error:" in capsys.readouterr().err


def test_checkpoint_problems_are_named(tmp_path):
    ds, train, cfg = small_run()
    state = fit(cfg, ds, train, epochs=1, batch_size=64, num_neg=8)
    save_state(tmp_path / "ok", state, cfg, {}, {})
    params, cfg2, manifest, moments = checkpoint.load(tmp_path / "ok")
    assert cfg2 == cfg and set(moments["m"]) == set(params) - {"serving_logits"}

    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "ok", bad)
    arrays = checkpoint.params_path(bad)
    arrays.write_bytes(arrays.read_bytes()[:-100])  # truncated
    with pytest.raises(checkpoint.CheckpointError, match=r"params-\w+\.npz: checksum differs"):
        checkpoint.load(bad)

    manifest_path = bad / "config.json"
    shutil.copy(checkpoint.params_path(tmp_path / "ok"), arrays)
    m = json.loads(manifest_path.read_text())
    m["schema_version"] = 99
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(checkpoint.CheckpointError, match="schema version 99"):
        checkpoint.load(bad)

    m["schema_version"] = 1
    m["config"]["dim"] = 9  # parameters no longer fit the config
    manifest_path.write_text(json.dumps(m))
    wrong_shape = r"item_emb: shape \[\d+, 8\] float32, expected \[\d+, 9\]"
    with pytest.raises(checkpoint.CheckpointError, match=wrong_shape):
        checkpoint.load(bad)
    with pytest.raises(checkpoint.CheckpointError, match="config.json: missing"):
        checkpoint.load(tmp_path / "nothing")


def test_nan_parameters_are_refused(tmp_path):
    ds, train, cfg = small_run()
    state = fit(cfg, ds, train, epochs=1, batch_size=64, num_neg=8)
    state.params["S"][0, 0] = np.nan
    save_state(tmp_path, state, cfg, {}, {})
    with pytest.raises(checkpoint.CheckpointError, match="S: contains NaN or inf"):
        checkpoint.load(tmp_path)


def test_train_then_evaluate_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["valid"]["HR@50"] > 0
    assert main(["evaluate", "--model", str(out), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert 0 <= m["NDCG@50"] <= m["HR@50"] <= m["HR@100"] <= 1
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(out)]) == 0
    assert "resuming" in capsys.readouterr().err
    _, _, manifest, _ = checkpoint.load(out)
    assert manifest["train"]["epoch"] == 3


def test_compare_prints_every_model(capsys):
    assert main(["compare", *SMALL, "--epochs", "1", "--json", "--include", "MaxMF"]) == 0
    rows = json.loads(capsys.readouterr().out)["test"]
    assert set(rows) == {"MostPopular", "ItemCF", "WALS", "MaxMF", "YouTube DNN (MIND K=1)", "MIND K=3"}
    assert main(["compare", *SMALL, "--epochs", "1", "--json", "--skip", "ItemCF", "WALS"]) == 0
    rows = json.loads(capsys.readouterr().out)["test"]  # MaxMF only when asked (compare.OPT_IN says why)
    assert set(rows) == {"MostPopular", "YouTube DNN (MIND K=1)", "MIND K=3"}


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path)]) == 2
    assert "config.json: missing" in capsys.readouterr().err
    assert main(["train", "--data-format", "ml-100k", "--data-path", str(tmp_path / "x"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", *SMALL, "--K", "0", "--out", str(tmp_path)])


def test_non_finite_loss_stops_with_the_last_checkpoint_kept(tmp_path):
    ds, train, cfg = small_run()
    def keep(s):
        save_state(tmp_path, s, cfg, {}, {})

    fit(cfg, ds, train, epochs=1, batch_size=32, num_neg=8, on_epoch=keep)
    before = checkpoint.params_path(tmp_path).read_bytes()
    state, _, _ = load_state(tmp_path)
    state.params["dense_W_1"][:] = 3e38  # finite, but the scores overflow: what a diverging run produces
    message = "non-finite loss at epoch 2, step 0.*checkpoint is kept"
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=message):
        fit(cfg, ds, train, epochs=2, batch_size=32, num_neg=8, state=state, on_epoch=keep)
    assert checkpoint.params_path(tmp_path).read_bytes() == before


def test_the_objective_has_its_own_name(tmp_path, capsys):
    """The default objective is named for what it is (eq3-max), not an attention mode: the old
    spelling is refused with the new one in the message, the attention's own flags need the
    paper's objective, and a checkpoint written with attention='max' loads as eq3-max."""
    import json

    import pytest

    from mindref.checkpoint import load
    from mindref.model import MINDConfig
    with pytest.raises(SystemExit):
        main(["train", "--data-format", "synthetic", "--attention", "max", "--out", str(tmp_path / "a")])
    assert "--attention max is now --objective eq3-max" in capsys.readouterr().err
    for flags in (["--attention", "hard"], ["--p", "3"]):
        with pytest.raises(SystemExit):
            main(["train", "--data-format", "synthetic", *flags, "--out", str(tmp_path / "b")])
        assert "give --objective label-aware too" in capsys.readouterr().err
    ds = synthetic(num_users=60, seed=2)
    train, _, _ = leave_one_out(ds, 10)
    for written, objective, attention in (("max", "eq3-max", "pow"), ("hard", "label-aware", "hard")):
        cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                         dim=4, hidden=(4,), max_len=10)
        folder = tmp_path / f"old-{written}"
        checkpoint.save(folder, fit(cfg, ds, train, epochs=1, batch_size=64, num_neg=8).params, cfg)
        manifest = json.loads((folder / "config.json").read_text())
        del manifest["config"]["objective"]
        manifest["config"]["attention"] = written  # as mindref wrote it before the objective was named
        (folder / "config.json").write_text(json.dumps(manifest))
        loaded = load(folder)[1]
        assert (loaded.objective, loaded.attention) == (objective, attention)


def test_every_default_has_one_home():
    """The command line's defaults are MINDConfig's and TrainConfig's (the demo changes only
    compare.DEMO's); a default changed in one place is changed everywhere."""
    from dataclasses import fields

    from mindref import cli
    from mindref.compare import DEMO
    from mindref.model import MINDConfig
    from mindref.train import TrainConfig
    ap = cli.parser()
    for command, changes in (("train", {}), ("compare", {}), ("demo", DEMO)):
        args = ap.parse_args([command, "--out", "x"] if command == "train" else [command])
        chosen = cli.plan(args)
        model_fields = {f.name for f in fields(MINDConfig)} - {"num_items", "field_sizes", "profile_sizes"}
        assert set(chosen.model) == model_fields - {"profile_dim"}  # every model setting but profile_dim
        for name in chosen.model:
            want = changes.get(name, cli.default(MINDConfig, name))
            got = chosen.model[name]
            assert (list(got) if isinstance(got, tuple) else got) == want, (command, name)
        for f in fields(TrainConfig):
            if f.name in ("early_stop", "patience") and command != "train":
                continue
            assert getattr(chosen.train_cfg, f.name) == changes.get(f.name, f.default), (command, f.name)
