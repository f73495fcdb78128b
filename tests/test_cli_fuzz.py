"""The whole command line under generated arguments and files (issue 11): for every case the exit
status is 0, 1 (a job that served nobody), 2 or 130, no traceback escapes, no input changes
(checksums of every file before and after), and an output is either complete or absent. Issue 25
adds three faults to the draw: a disk that fills after a few writes, a second writer holding the
output, and Parquet request files of the wrong shape."""
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindref import checkpoint
from mindref.cli import main
from mindref.outputs import OutputLock

CLI = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
               deadline=None)
NUMBERS = st.one_of(st.sampled_from(["1", "2", "3", "4"]),
                    st.sampled_from(["0", "-1", "-7", "1.5", "abc", "", "99999999999", "1e9"]))
FLOATS = st.sampled_from(["0.01", "0", "-1", "nan", "inf", "x", "1e308"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs a user has lying around: a data file, a trained run, its bundle, a users file and a
    folder of their own notes. The test checks that none of them ever changes."""
    require("onnx"), require("onnxruntime"), require("annoy"), require("pyarrow")
    root = tmp_path_factory.mktemp("world")
    rows = (f"u{u},i{(3 * u + t) % 20},{t}" for u in range(25) for t in range(6))
    (root / "data.csv").write_text("\n".join(rows))
    flags = ["--data-format", "csv", "--data-path", str(root / "data.csv"), "--dim", "4", "--K", "2",
             "--hidden", "4", "--negatives", "4", "--max-len", "6", "--epochs", "1"]
    assert main(["train", *flags, "--out", str(root / "model")]) == 0
    assert main(["export", "--model", str(root / "model"), "--out", str(root / "bundle"),
                 "--trees", "2"]) == 0
    (root / "users.jsonl").write_text("".join(json.dumps({"user": u, "history": ["i1", f"i{u}"]}) + "\n"
                                              for u in range(3)))
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("my notes")
    return root


def checksums(root: Path) -> dict:
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def path_choice(world: Path, scratch: Path):
    names = ["data.csv", "model", "bundle", "users.jsonl", "notes", "notes/notes.txt", "missing/x"]
    return st.one_of(st.sampled_from([str(world / n) for n in names]),
                     st.sampled_from([str(scratch / n) for n in ("out", "out.jsonl", "data.csv", "u.jsonl")]))


def csv_text():
    good = st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["i1", "i2", "i3", "i4"]),
                     st.integers(0, 9).map(str)).map(",".join)
    bad = st.lists(st.sampled_from(["", "x", "1", "nan", ",", "\ufeff", "user", "item", "timestamp"]),
                   max_size=5).map(",".join)
    return st.lists(st.one_of(good, good, good, bad), max_size=12).map("\n".join)


def users_text():
    good = st.builds(lambda u, h: json.dumps({"user": u, "history": h}), st.integers(0, 9),
                     st.lists(st.sampled_from(["i1", "i2", "i5", "zz", 3]), max_size=4))
    bad = st.sampled_from(["{", "[]", '{"history": 5}', '{"user": 1}', "null",
                           '{"history": ["i1"], "profile": 1}'])
    return st.lists(st.one_of(good, good, bad), max_size=6).map("\n".join)


def command(world: Path, scratch: Path):
    paths = path_choice(world, scratch)

    def mostly(right: str):  # the right kind of path three times in four, any path otherwise
        return st.one_of(st.just(right), st.just(right), st.just(right), paths)

    def opt(flag, values):
        return st.one_of(st.just([]), values.map(lambda v: [flag, v]))

    out = st.one_of(st.just(str(scratch / "out")), st.just(str(scratch / "out")), paths)
    results = st.one_of(st.just(str(scratch / "out.jsonl")), st.just(str(scratch / "out.jsonl")), paths)
    users = st.sampled_from([str(scratch / "u.jsonl"), str(world / "users.jsonl"),
                             str(scratch / "u.parquet")])
    common_train = st.tuples(opt("--dim", NUMBERS), opt("--K", NUMBERS), opt("--hidden", NUMBERS),
                             opt("--epochs", st.sampled_from(["1", "2", "0", "x"])), opt("--lr", FLOATS),
                             opt("--seed", NUMBERS), opt("--max-len", NUMBERS), opt("--negatives", NUMBERS),
                             opt("--sigma", FLOATS))
    train = st.tuples(st.just(["train", "--data-format", "csv", "--negatives", "4"]),
                      st.one_of(st.just(str(world / "data.csv")), mostly(str(scratch / "data.csv"))).map(
                          lambda p: ["--data-path", p]),
                      out.map(lambda p: ["--out", p]), common_train)
    evaluate = st.tuples(st.just(["evaluate"]), mostly(str(world / "model")).map(lambda p: ["--model", p]),
                         opt("--data-path", paths), opt("--split", st.sampled_from(["test", "valid", "x"])))
    export = st.tuples(st.just(["export"]), mostly(str(world / "model")).map(lambda p: ["--model", p]),
                       out.map(lambda p: ["--out", p]), opt("--trees", NUMBERS),
                       st.sampled_from([[], ["--force"]]), opt("--data-path", paths))
    bundle = mostly(str(world / "bundle")).map(lambda p: ["--bundle", p])
    retrieve = st.tuples(st.just(["retrieve"]), bundle,
                         st.one_of(opt("--history", st.sampled_from(["i1,i2", "", "zz", "i1,,i2", "i1"])),
                                   st.tuples(users.map(lambda p: ["--users", p]),
                                             results.map(lambda p: ["--out", p])).map(lambda t: t[0] + t[1])),
                         opt("-n", NUMBERS),
                         opt("--search", st.sampled_from(["auto", "exact", "annoy", "x"])),
                         opt("--search-k", NUMBERS), opt("--oversample", NUMBERS),
                         opt("--batch-size", NUMBERS))
    explain = st.tuples(st.just(["explain"]), bundle,
                        opt("--history", st.sampled_from(["i1,i2,i3", "", "zz"])), opt("-n", NUMBERS))
    batch = st.tuples(st.just(["batch", "--engine", "local"]), bundle, users.map(lambda p: ["--users", p]),
                      out.map(lambda p: ["--out", p]), opt("-n", NUMBERS), opt("--batch-size", NUMBERS),
                      opt("--search", st.sampled_from(["auto", "exact", "onnx", "annoy"])))

    def flat(parts):
        out = []
        for p in parts:
            out += flat(p) if isinstance(p, tuple) else p
        return out

    return st.one_of(train, evaluate, export, retrieve, explain, batch).map(flat)


def users_table():
    """A Parquet request table: the right shape, or a column missing, renamed or of the wrong type."""
    import pyarrow as pa
    history = st.lists(st.sampled_from(["i1", "i2", "zz"]), max_size=3)
    columns = st.fixed_dictionaries({"user": st.sampled_from([["a", "b"], [1, 2]]),
                                     "history": st.one_of(st.tuples(history, history).map(list),
                                                          st.just(["i1,i2", "i3"]))})
    drop = st.sampled_from([None, "user", "history"])
    return st.tuples(columns, drop).map(lambda t: pa.table({k: v for k, v in t[0].items() if k != t[1]}))


class DiskFull:
    """The disk fills after `allowed` more writes: os.fsync (every checkpoint and bundle file) and
    Parquet part writes raise ENOSPC from then on."""

    def __init__(self, monkeypatch, allowed: int):
        import pyarrow.parquet as pq
        self.left = allowed
        for module, name in ((os, "fsync"), (pq, "write_table")):
            monkeypatch.setattr(module, name, self.wrap(getattr(module, name)))

    def wrap(self, real):
        def write(*args, **kw):
            self.left -= 1
            if self.left < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kw)
        return write


@CLI
@given(data=st.data())
def test_the_cli_never_loses_data_or_prints_a_traceback(world, tmp_path_factory, capsys, data):
    import pyarrow.parquet as pq
    scratch = tmp_path_factory.mktemp("scratch")
    (scratch / "data.csv").write_text(data.draw(csv_text(), label="csv"))
    (scratch / "u.jsonl").write_text(data.draw(users_text(), label="users"))
    pq.write_table(data.draw(users_table(), label="parquet"), scratch / "u.parquet")
    argv = data.draw(command(world, scratch), label="argv")
    disk = data.draw(st.sampled_from([None, None, 0, 1, 3]), label="disk full after writes")
    held = data.draw(st.sampled_from([False, False, False, True]), label="a second writer holds out")
    before, scratch_inputs = checksums(world), checksums(scratch)
    with pytest.MonkeyPatch.context() as patch:
        if disk is not None:
            DiskFull(patch, disk)
        try:
            if held:
                with OutputLock(scratch / "out", "other"), OutputLock(scratch / "out.jsonl", "other"):
                    code = main(argv)
            else:
                code = main(argv)
        except SystemExit as exit_:  # argparse: a usage error
            code = exit_.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2, 130), (argv, err)
    own = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    if held and own is not None and own.name in ("out", "out.jsonl") and own.parent == scratch:
        assert code == 2, (argv, err)  # never two writers
    if disk is not None and code == 2 and "no space left" in err:
        assert "MiB free on" in err, err  # the path and the free space named
    assert "Traceback" not in err
    after = checksums(world)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    if code == 0 and own is not None:  # a command that succeeded may change its own output only
        changed = {k for k in changed if not (world / k).resolve().is_relative_to(own.resolve())}
    assert not changed, (argv, changed)  # no input changed
    assert {k: v for k, v in checksums(scratch).items() if k in scratch_inputs} == scratch_inputs, argv
    leftovers = [p.name for p in scratch.iterdir() if p.name.startswith(".")]
    assert not leftovers, (argv, leftovers)  # no .part, .tmp-PID or .old-PID
    out = scratch / "out"
    if out.exists() and argv[0] == "batch" and code == 1:  # served nobody: reasons, no _SUCCESS.json
        assert not (out / "_SUCCESS.json").exists() and (out / "_errors").is_dir()
    elif out.exists() and argv[0] == "batch":  # complete: _SUCCESS.json, every input row accounted for
        record = json.loads((out / "_SUCCESS.json").read_text())
        assert code == 0 and record["input_rows"] == record["output_rows"] + record["error_rows"]
    if out.exists() and argv[0] == "export":
        assert code == 0 and (out / "manifest.json").is_file()
    if out.exists() and argv[0] == "train":
        checkpoint.load(out)  # complete: it loads
    if argv[0] == "retrieve" and "--users" in argv and code in (0, 1):  # complete: a line per user
        users = Path(argv[argv.index("--users") + 1]).read_text().splitlines()
        results = Path(argv[argv.index("--out") + 1]).read_text().splitlines()
        assert len(results) == len([x for x in users if x.strip()])
    elif argv[0] == "retrieve" and "--users" in argv:  # absent
        assert not (scratch / "out.jsonl").exists() and not (scratch / "out").exists()
    shutil.rmtree(scratch)
