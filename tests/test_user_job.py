"""A user's job, start to finish (issue 25): no success that was not earned, no two writers of one
output, a full disk that names the path and loses nothing, and each smaller surprise a newcomer
met, one test each (docs/reliability.md lists them)."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import INTERRUPTIBLE, SMALL, require

from mindref import checkpoint
from mindref.cli import main
from mindref.outputs import OutputError, OutputLock

pa = require("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

require("onnx"), require("onnxruntime"), require("annoy")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained with early stopping, its bundle, and a file of requests."""
    root = tmp_path_factory.mktemp("job")
    assert main(["train", *SMALL, "--epochs", "3", "--early-stop", "HR@50", "--patience", "3",
                 "--out", str(root / "model")]) == 0
    assert main(["export", "--model", str(root / "model"), "--out", str(root / "bundle"),
                 "--trees", "2"]) == 0
    rows = [{"user": f"u{k}", "history": [str(1 + (3 * k + t) % 90) for t in range(4)]} for k in range(40)]
    (root / "users.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"user": [r["user"] for r in rows], "history": [r["history"] for r in rows]}),
                   root / "users.parquet")
    return root


def err(capsys) -> str:
    return capsys.readouterr().err


# --- the run's result is its best epoch ----------------------------------------------------------

def test_evaluate_and_export_of_a_run_use_its_best_epoch(run, capsys):
    model = run / "model"
    best = checkpoint.read_manifest(model)["train"]["best"]
    assert main(["evaluate", "--model", str(model), "--split", "valid", "--json"]) == 0
    out = capsys.readouterr()
    assert f"using its best epoch {best['epoch']}" in out.err
    assert json.loads(out.out)["metrics"][best["metric"]] == pytest.approx(best["value"])
    assert main(["export", "--model", str(model), "--out", str(run / "b2"), "--trees", "2"]) == 0
    assert f"using its best epoch {best['epoch']}" in err(capsys)


def test_train_prints_the_best_epochs_validation_and_plot_reads_run_best(run, tmp_path, capsys):
    require("matplotlib")
    out = tmp_path / "r"
    assert main(["train", *SMALL, "--epochs", "3", "--early-stop", "HR@50", "--patience", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    train = checkpoint.read_manifest(out)["train"]
    at_best = next(p for p in train["curve"] if p["epoch"] == train["best"]["epoch"])
    assert json.loads(printed[printed.index("{"):])["valid"] == at_best["valid"]
    assert main(["plot", str(out / "best"), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0


# --- notes and refusals at the command line ------------------------------------------------------

def test_a_history_longer_than_L_is_said(run, capsys):
    history = ",".join(str(k) for k in range(1, 30))  # L = 20
    assert main(["retrieve", "--bundle", str(run / "bundle"), "--history", history, "-n", "3"]) == 0
    assert "29 behaviours given; the tower reads the latest 20" in err(capsys)


def test_K_beyond_what_L_allows_is_said(tmp_path, capsys):
    assert main(["train", *SMALL, "--K", "9", "--max-len", "5", "--out", str(tmp_path / "r"),
                 "--epochs", "1"]) == 0
    assert "K'_u = max(1, min(K, floor(log2 n))) is at most 2" in err(capsys)


def test_a_formats_own_flag_is_recorded_only_for_its_format(run, tmp_path, capsys):
    """config.json records the synthetic format's --users, never a --comirec-name it did not read."""
    assert main(["train", *SMALL, "--comirec-name", "taobao", "--out", str(tmp_path / "r"),
                 "--epochs", "1"]) == 0
    assert "--comirec-name applies to --data-format comirec only; ignored with synthetic" in err(capsys)
    data = json.loads((tmp_path / "r" / "config.json").read_text())["data"]
    assert data["users"] == 150 and "name" not in data and "category" not in data


def test_threads_beyond_the_cores_and_counts_below_one_name_the_flag_as_typed(run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["batch", "--bundle", str(run / "bundle"), "--users", str(run / "users.jsonl"),
              "--out", str(tmp_path / "o"), "--threads", str(10 * (os.cpu_count() or 1))])
    assert "cores; more threads than cores only wait" in err(capsys)
    with pytest.raises(SystemExit):
        main(["retrieve", "--bundle", str(run / "bundle"), "--history", "1", "-n", "0"])
    text = err(capsys)
    assert "usage: mindref retrieve" in text and "-n must be >= 1, got 0" in text


def test_a_csv_data_path_that_is_a_folder_is_named(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["train", "--data-format", "csv", "--data-path", str(tmp_path / "data"), "--out",
                 str(tmp_path / "r")]) == 2
    assert "is a folder; the csv format reads one file" in err(capsys)


def test_a_flipped_byte_in_the_manifest_is_blamed_on_the_manifest(run, tmp_path, capsys):
    bundle = tmp_path / "b"
    shutil.copytree(run / "bundle", bundle)
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"n_trees": 2', '"n_trees": 3'))
    assert main(["retrieve", "--bundle", str(bundle), "--history", "1,2"]) == 2
    assert "manifest.json: corrupt" in err(capsys)


def test_every_finished_output_is_replaced_only_with_force(run, tmp_path, capsys):
    require("matplotlib")
    png = tmp_path / "c.png"
    png.write_bytes(b"mine")
    assert main(["plot", str(run / "model"), "--out", str(png)]) == 2
    assert "exists; pass --force" in err(capsys) and png.read_bytes() == b"mine"
    assert main(["plot", str(run / "model"), "--out", str(png), "--force"]) == 0
    res = tmp_path / "r.jsonl"
    res.write_text("mine")
    args = ["retrieve", "--bundle", str(run / "bundle"), "--users", str(run / "users.jsonl"),
            "--out", str(res)]
    assert main(args) == 2 and res.read_text() == "mine"
    assert main([*args, "--force"]) == 0
    out = tmp_path / "recs"
    batch = ["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
             str(run / "users.parquet"), "--out", str(out)]
    assert main(batch) == 0
    assert main(batch) == 2 and "holds a finished batch output; pass --force" in err(capsys)
    assert main([*batch, "--force"]) == 0


# --- one rule for requests that cannot be served -------------------------------------------------

def test_retrieve_records_a_bad_line_and_serves_the_others_as_batch_does(run, tmp_path, capsys):
    users, out = tmp_path / "u.jsonl", tmp_path / "r.jsonl"
    good = [json.dumps({"user": f"u{k}", "history": ["1", "2"]}) for k in range(3)]
    users.write_text("\n".join([good[0], json.dumps({"user": "ann", "history": []}), "{not json", *good[1:]])
                     + "\n")
    assert main(["retrieve", "--bundle", str(run / "bundle"), "--users", str(users), "--out", str(out)]) == 0
    lines = [json.loads(t) for t in out.read_text().splitlines()]
    assert [r["user"] for r in lines] == ["u0", "ann", None, "u1", "u2"]  # the input's order
    assert lines[1]["line"] == 2 and "history: empty" in lines[1]["error"]
    assert lines[2]["line"] == 3 and "not JSON" in lines[2]["error"]
    assert all(len(r["items"]) == 50 for r in (lines[0], lines[3], lines[4]))
    assert "2 of 5 requests could not be served" in err(capsys)
    users.write_text(json.dumps({"user": "ann", "history": []}) + "\n")  # nothing served: not a success
    assert main(["retrieve", "--bundle", str(run / "bundle"), "--users", str(users), "--out", str(out),
                 "--force"]) == 1


def test_batch_refuses_a_parquet_of_the_wrong_shape_and_a_csv(run, tmp_path, capsys):
    out = tmp_path / "o"
    cases = [(pa.table({"uid": ["a"], "history": [["1"]]}), "no column 'user'"),
             (pa.table({"user": ["a"], "items": [["1"]]}), "no column 'history'"),
             (pa.table({"user": ["a"], "history": ["1,2"]}),
              "column 'history' is string, expected list of strings")]
    for table, message in cases:
        pq.write_table(table, tmp_path / "u.parquet")
        assert main(["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
                     str(tmp_path / "u.parquet"), "--out", str(out)]) == 2
        text = err(capsys)
        assert message in text and str(tmp_path / "u.parquet") in text, text
        assert not out.exists()
    (tmp_path / "u.csv").write_text("user,history\na,1\n")
    assert main(["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
                 str(tmp_path / "u.csv"), "--out", str(out)]) == 2
    text = err(capsys)
    assert f"--users {tmp_path / 'u.csv'}: not a Parquet file (a CSV or JSON file?" in text
    # integer ids are ids: served
    pq.write_table(pa.table({"user": [1, 2], "history": [[1, 2], [3]]}), tmp_path / "u.parquet")
    assert main(["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
                 str(tmp_path / "u.parquet"), "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == 2


def test_a_batch_that_served_nobody_is_not_a_success(run, tmp_path, capsys):
    pq.write_table(pa.table({"user": ["a", "b"], "history": [["no-such"], []]}), tmp_path / "u.parquet")
    out = tmp_path / "o"
    assert main(["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
                 str(tmp_path / "u.parquet"), "--out", str(out)]) == 1
    assert "none of the 2 requests could be served" in err(capsys)
    assert not (out / "_SUCCESS.json").exists()
    assert pq.read_table(out / "_errors").num_rows == 2
    # an unfinished output is replaced without --force; a clean run writes no empty part
    assert main(["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
                 str(run / "users.parquet"), "--out", str(out)]) == 0
    assert not (out / "_errors").exists() and (out / "_SUCCESS.json").exists()


# --- two writers, one output -----------------------------------------------------------------------

def _mindref(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "mindref", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_second_train_of_one_folder_is_refused_and_a_killed_ones_lock_recovered(tmp_path):
    out = tmp_path / "r"
    first = _mindref("train", *SMALL, "--users", "2000", "--epochs", "50", "--out", str(out), **INTERRUPTIBLE)
    lock = tmp_path / ".r.lock"
    deadline = time.time() + 60
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    second = _mindref("train", *SMALL, "--users", "2000", "--epochs", "50", "--out", str(out))
    _, text = second.communicate(timeout=120)
    assert second.returncode == 2
    assert f"--out {out}: in use by mindref train (pid {first.pid}" in text
    first.send_signal(signal.SIGKILL)
    first.wait()
    with OutputLock(out, "train"):  # the dead holder's lock is free at once
        pass
    assert not lock.exists()


def test_a_second_batch_into_one_folder_is_refused(run, tmp_path, capsys):
    out = tmp_path / "o"
    hold = ("import sys, time\nfrom mindref.outputs import OutputLock\n"
            "with OutputLock(sys.argv[1], 'batch'):\n    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
                     str(run / "users.parquet"), "--out", str(out)]) == 2
        assert f"in use by mindref batch (pid {holder.pid}" in err(capsys)
        with pytest.raises(OutputError):
            with OutputLock(out, "export"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert main(["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
                 str(run / "users.parquet"), "--out", str(out)]) == 0


# --- full disks ----------------------------------------------------------------------------------

def _disk_full_after(monkeypatch, module, name: str, allowed: int):
    """Make module.name (a writer) fail with ENOSPC after `allowed` successful calls."""
    real, calls = getattr(module, name), []

    def writer(*args, **kw):
        calls.append(1)
        if len(calls) > allowed:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)
    monkeypatch.setattr(module, name, writer)


def test_a_full_disk_during_train_names_the_path_keeps_the_last_epoch_and_resumes(tmp_path, capsys,
                                                                                 monkeypatch):
    from mindref import checkpoint as ck
    out = tmp_path / "r"
    args = ["train", *SMALL, "--epochs", "3", "--out", str(out)]
    _disk_full_after(monkeypatch, ck.os, "fsync", 2)  # epoch 1's params and config; epoch 2's fail
    assert main(args) == 2
    text = err(capsys)
    assert "no space left writing" in text and str(out) in text and "MiB free on" in text
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temporary file left
    assert checkpoint.read_manifest(out)["train"]["epoch"] == 1
    monkeypatch.undo()
    assert main(args) == 0  # the rerun resumes from epoch 1
    assert checkpoint.read_manifest(out)["train"]["epoch"] == 3
    fresh = tmp_path / "f"
    _disk_full_after(monkeypatch, ck.os, "fsync", 0)  # nothing fits: no half run is left behind
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(fresh)]) == 2
    assert not fresh.exists()


def test_a_full_disk_during_batch_names_the_path_and_leaves_nothing(run, tmp_path, capsys, monkeypatch):
    from mindref.export import batch
    out = tmp_path / "o"
    _disk_full_after(monkeypatch, batch.pq, "write_table", 0)
    assert main(["batch", "--engine", "local", "--bundle", str(run / "bundle"), "--users",
                 str(run / "users.parquet"), "--out", str(out)]) == 2
    text = err(capsys)
    assert "no space left writing" in text and "part-000000.parquet" in text and "MiB free on" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary folder, no lock


# every process of the job (Ray's workers too) imports this: writing a Parquet file fails with ENOSPC
DISK_FULL_HOOK = """
import errno
import pyarrow.parquet as pq
def write_table(*args, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")
pq.write_table = write_table
"""


def test_a_full_disk_under_ray_is_one_line_naming_the_path(run, tmp_path):
    """Ray Data logged the failed task's whole traceback (161 lines) before the one line of cause."""
    pytest.importorskip("ray")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(DISK_FULL_HOOK)
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "mindref", "batch", "--engine", "ray", "--workers", "1",
                           "--bundle", str(run / "bundle"), "--users", str(run / "users.parquet"),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "no space left writing" in proc.stderr and "MiB free on" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hooks"]  # no output, temporary folder or lock


# --- what auto promises, and waits that say so ---------------------------------------------------

def test_auto_chooses_annoy_only_on_a_recall_bound_over_enough_users(run):
    from mindref.export import bundle as B
    loaded = B.load_bundle(run / "bundle", "cpu")
    recorded = loaded.manifest["search"]
    assert recorded["recall_users"] == B.RECALL_USERS >= 400
    assert recorded["annoy_recall_lower95"] <= recorded["annoy_recall"]
    # a bound above the mean: Annoy is never chosen, however fast
    strict = B.measure_search(loaded.retriever, loaded.cfg.K, users=8,
                              min_recall=recorded["annoy_recall"] + 1e-3)
    assert strict["auto"] != "annoy" and strict["recall_users"] == B.RECALL_USERS


def test_working_says_it_is_still_working(capsys, monkeypatch):
    from mindref import progress
    monkeypatch.setenv("MINDREF_PROGRESS", "lines")
    with progress.Working("export: Annoy index", interval=0.05):
        time.sleep(0.3)
    text = capsys.readouterr().err
    assert text.count("mindref: export: Annoy index: still working") >= 2


def test_every_option_says_what_it_does_and_its_default():
    import argparse

    from mindref.cli import parser
    ap = parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) <= {line.split()[1] for line in (ap.description or "").splitlines()
                                if line.strip().startswith("mindref ")}  # the examples list every command
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help, (name, action.option_strings)
            if action.default not in (None, False, (), []) and not action.required:
                assert "default" in action.help, (name, action.option_strings, action.default)
    batch = sub.choices["batch"].format_help()
    assert "raw item ids as strings" in " ".join(batch.split())


def test_a_learning_rate_that_blows_up_says_what_was_kept(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *SMALL, "--epochs", "1", "--lr", "1e30", "--out", str(out)]) == 2
    assert "no epoch had finished, so nothing was saved" in err(capsys) and not out.exists()
