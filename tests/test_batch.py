"""mindref batch (issue 12): the same rows as `mindref retrieve --users` from the local engine and
from Ray Data (local mode, 2 CPUs), every input row in exactly one output, _SUCCESS.json last,
reruns that replace, and a worker that dies mid-job."""
import json
import os
import sys

import numpy as np
import pytest
from conftest import INTERRUPTIBLE, require

from mindref.cli import main

require("onnx"), require("onnxruntime"), require("annoy")
pa = require("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from mindref.export import batch, job  # noqa: E402

SMALL = ["--data-format", "synthetic", "--users", "300", "--dim", "8", "--K", "3", "--hidden", "16",
         "--max-len", "20", "--batch-size", "64", "--negatives", "16", "--epochs", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A bundle and a users file with good and bad rows (JSON lines and the same as Parquet)."""
    root = tmp_path_factory.mktemp("batch")
    assert main(["train", *SMALL, "--out", str(root / "model")]) == 0
    assert main(["export", "--model", str(root / "model"), "--out", str(root / "bundle"),
                 "--trees", "4"]) == 0
    rows = [{"user": f"u{u}", "history": [str(1 + (7 * u + t) % 1900) for t in range(3 + u % 30)]}
            for u in range(600)]
    rows[10]["history"] = []  # empty
    rows[20]["history"] = ["no-such-item"]  # only unknown items
    rows[30]["history"] = ["1", "2", None]  # a malformed id
    rows[40]["profile"] = ["not-a-segment"]  # a malformed profile
    lines = [json.dumps(r) for r in rows]
    lines.insert(50, "{this is not JSON")
    (root / "users.jsonl").write_text("\n".join(lines) + "\n")
    good = [r for k, r in enumerate(rows) if k not in (10, 20, 30, 40)]
    pq.write_table(pa.table({"user": [r["user"] for r in good], "history": [r["history"] for r in good]}),
                   root / "users.parquet")
    (root / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    return root


def results(folder):
    table = pq.read_table(folder)  # _errors/ and _SUCCESS.json are skipped by Parquet readers
    return {r["user"]: r for r in table.to_pylist()}


def errors(folder):
    """The _errors/ rows (a job with none writes no _errors/ part)."""
    return pq.read_table(folder / "_errors").to_pylist() if (folder / "_errors").exists() else []


def same_rows(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for user in a:
        assert a[user]["items"] == b[user]["items"], user
        np.testing.assert_allclose(a[user]["scores"], b[user]["scores"], rtol=0, atol=1e-6)
        assert list(a[user]["interest"]) == list(b[user]["interest"])


@pytest.fixture(scope="module")
def reference(world):
    """mindref retrieve --users over the good rows: what both engines must reproduce."""
    out = world / "retrieved.jsonl"
    assert main(["retrieve", "--bundle", str(world / "bundle"), "--users", str(world / "good.jsonl"),
                 "--out", str(out), "-n", "20"]) == 0
    return {str(r["user"]): r for r in map(json.loads, out.read_text().splitlines())}


def test_local_engine_matches_retrieve_and_accounts_for_every_row(world, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["batch", "--bundle", str(world / "bundle"), "--users", str(world / "users.jsonl"),
                 "--out", str(out), "--engine", "local", "-n", "20", "--batch-size", "64"]) == 0
    same_rows(results(out), reference)
    bad = {r["user"]: r["reason"] for r in errors(out)}
    assert bad == {"u10": "history: empty (a user needs at least one behaviour)",
                   "u20": "item 'no-such-item' is not in this bundle's catalog (2000 items)",
                   "u30": "item 'None' is not in this bundle's catalog (2000 items)",
                   "u40": "profile segment: unknown value 'not-a-segment'; expected an integer id",
                   None: bad[None]}
    assert bad[None].startswith("line 51: not a JSON request")
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert success["input_rows"] == 601 and success["output_rows"] == 596 and success["error_rows"] == 5
    assert "596 served, 5 in _errors/" in capsys.readouterr().err
    # a rerun replaces a finished output only with --force, and then wholly: no duplicates
    rerun = ["batch", "--bundle", str(world / "bundle"), "--users", str(world / "users.parquet"),
             "--out", str(out), "--engine", "local", "-n", "20", "--batch-size", "100"]
    assert main(rerun) == 2 and "pass --force" in capsys.readouterr().err
    assert main([*rerun, "--force"]) == 0
    assert pq.read_table(out).num_rows == 596 and not errors(out)
    same_rows(results(out), reference)


def test_outputs_never_replace_inputs_or_foreign_folders(world, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for out, message in ((world / "bundle", "would overwrite the input --bundle"),
                         (world / "users.parquet", "would overwrite the input --users"),
                         (mine, "not a batch output")):
        assert main(["batch", "--bundle", str(world / "bundle"), "--users", str(world / "users.parquet"),
                     "--out", str(out), "--engine", "local"]) == 2
        assert message in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep"


def test_an_interrupted_job_leaves_no_finished_looking_output(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    calls = []
    real = batch.BatchServer.__call__

    def interrupt_on_third(self, table):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, table)

    monkeypatch.setattr(batch.BatchServer, "__call__", interrupt_on_third)
    assert main(["batch", "--bundle", str(world / "bundle"), "--users", str(world / "users.jsonl"),
                 "--out", str(out), "--engine", "local", "--batch-size", "50"]) == 130
    assert not out.exists() and not list(tmp_path.iterdir())  # no OUT, no temporary folder
    monkeypatch.setattr(batch.BatchServer, "__call__", real)
    assert main(["batch", "--bundle", str(world / "bundle"), "--users", str(world / "users.jsonl"),
                 "--out", str(out), "--engine", "local", "--batch-size", "50"]) == 0
    assert (out / "_SUCCESS.json").is_file() and pq.read_table(out).num_rows == 596


# --- Ray Data, local mode ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = require("ray")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_same_rows_on_two_cpus(world, reference, ray_local, tmp_path):
    """Two actors on a 2-CPU cluster: the pool leaves CPU for the read and write tasks (a pool of
    2 x 1 CPU deadlocks), and the rows are those of the local engine and of retrieve."""
    for users in ("users.jsonl", "users.parquet"):
        out = tmp_path / users
        record = job.run_batch(world / "bundle", world / users, out, "ray", workers=2, batch_size=64, n=20)
        assert record["engine"] == "ray" and record["output_rows"] == 596 and record["workers"] == 2
        same_rows(results(out), reference)
        assert len(errors(out)) == record["error_rows"] == (5 if users == "users.jsonl" else 0)
        parts = list((out / "_errors").glob("*.parquet")) if (out / "_errors").exists() else []
        assert all(pq.read_metadata(p).num_rows for p in parts)  # no empty part per task


def test_ray_refuses_more_workers_than_cpus_and_an_address_that_does_not_answer(world, ray_local, tmp_path):
    with pytest.raises(ValueError, match="--workers 1000: the Ray cluster has 2 CPUs, so at most 2"):
        job.run_batch(world / "bundle", world / "users.parquet", tmp_path / "o", "ray", workers=1000)
    assert not (tmp_path / "o").exists()
    import time

    from mindref.export.distributed import check_address
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="--address 127.0.0.1:9: no Ray cluster answered"):
        check_address("127.0.0.1:9", timeout=2)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        check_address("nowhere")


class DiesOnce(batch.BatchServer):
    """A worker that exits hard (no cleanup, as a killed process) on its first call of a chosen
    batch; a marker file makes the retry, in a restarted actor, go through."""

    marker = ""  # set by the test; shipped with the class (pickled by value)

    def __call__(self, table):
        if "u300" in table.column("user").to_pylist() and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(table)


def test_a_worker_that_dies_mid_job_still_gives_a_complete_output(world, reference, ray_local, tmp_path):
    from ray import cloudpickle

    from mindref.export.distributed import run_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    marker = tmp_path / "died"
    DiesOnce.marker = str(marker)
    folder = tmp_path / "out"
    folder.mkdir()
    try:
        served, failed, _ = run_ray(world / "bundle", world / "users.parquet", folder, 64, 20, "auto",
                                    workers=2, server=DiesOnce)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists()  # the worker did die
    assert (served, failed) == (596, 0)
    same_rows(results(folder), reference)  # complete, no duplicates


def test_ctrl_c_of_a_ray_driver_leaves_nothing_and_a_rerun_completes(world, tmp_path):
    """A real SIGINT to `mindref batch --engine ray` while the job runs: exit 130 with one line, no
    OUT and no temporary folder; the same command then completes."""
    import signal
    import subprocess
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mindref", "batch", "--bundle", str(world / "bundle"), "--users",
           str(world / "users.parquet"), "--out", str(out), "--engine", "ray", "--workers", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, **INTERRUPTIBLE)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)  # the job has verified the bundle and is starting Ray
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "mindref batch: interrupted" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "_SUCCESS.json").read_text())["output_rows"] == 596


def test_gpus_are_refused_where_the_cluster_has_none(world, ray_local, tmp_path):
    """`--gpus N` asks Ray for N actors of one GPU each; a cluster without them (this 2-CPU test
    cluster) is refused before any actor starts, with what to do, and no output is left behind."""
    out = tmp_path / "gpu-out"
    with pytest.raises(RuntimeError, match=r"--gpus 1: the Ray cluster has 0 GPU\(s\).*leave out --gpus"):
        job.run_batch(world / "bundle", world / "users.jsonl", out, "ray", gpus=1)
    assert not out.exists() and not list(tmp_path.glob(".gpu-out*"))


def test_gpus_belong_to_the_ray_engine(world, tmp_path, capsys):
    """The local engine takes --provider; --gpus with it, or beside --workers, is a usage error."""
    base = ["batch", "--bundle", str(world / "bundle"), "--users", str(world / "users.jsonl")]
    assert main([*base, "--out", str(tmp_path / "a"), "--engine", "local", "--gpus", "1"]) == 2
    assert "--gpus N (N >= 1) is for --engine ray" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--engine", "ray", "--gpus", "1", "--workers", "2"]) \
        == 2
    assert "leave out --workers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "c"), "--engine", "ray", "--gpus", "0"])
    assert "--gpus must be >= 1" in capsys.readouterr().err


def test_the_local_engine_records_where_it_ran(world, tmp_path):
    record = job.run_batch(world / "bundle", world / "users.jsonl", tmp_path / "out", "local", n=5,
                             provider="cpu", precision="tf32", users_per_run=7)
    assert record["provider"] == "cpu" and record["precision"] == "tf32" and record["gpus"] is None
    assert json.loads((tmp_path / "out" / "_SUCCESS.json").read_text())["provider"] == "cpu"
