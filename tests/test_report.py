"""bench/report.py --plot: the HR@N curves of a quality or curves run (mean and standard error over
seeds, one panel per dataset); bench/curves.py's configuration names, which are mindref train flags."""
import argparse
import importlib.util
import json
import pathlib

import pytest
from conftest import require


def report(name="report"):
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(data, model, seed, hr10):
    return {"data": data, "model": model, "seed": seed,
            "test": {"HR@10": hr10, "HR@20": 0.2, "HR@50": 0.5, "HR@100": 0.9}}


def test_hr_curves_mean_and_standard_error():
    rows = [run("a", "MIND", 0, 0.1), run("a", "MIND", 1, 0.3), run("a", "WALS", 0, 0.2),
            run("b", "MIND", 0, 0.4)]
    curves = report().hr_curves(rows, None)
    assert list(curves) == ["a", "b"] and list(curves["a"]) == ["MIND", "WALS"]
    (mean, se), *rest = curves["a"]["MIND"]
    assert mean == pytest.approx(0.2) and se == pytest.approx(0.1)  # stdev 0.1414 / sqrt 2
    assert rest == [(0.2, 0.0), (0.5, 0.0), (0.9, 0.0)]
    assert curves["a"]["WALS"][0] == (0.2, 0.0)  # one seed: no bar
    assert list(report().hr_curves(rows, ["WALS"])) == ["a"]


def test_plot_writes_a_png(tmp_path, monkeypatch, capsys):
    require("matplotlib")
    lines = tmp_path / "runs.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in (run("a", "MIND", 0, 0.1), run("b", "WALS", 0, 0.2))))
    module = report()
    monkeypatch.setattr("sys.argv", ["report.py", str(lines), "--plot", str(tmp_path / "hr.png")])
    module.main()
    assert (tmp_path / "hr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    argv = ["report.py", str(lines), "--plot", str(tmp_path / "hr.png"), "--only", "X"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit):
        module.main()
    assert "no runs to draw" in capsys.readouterr().err


def test_curves_names_are_train_flags(monkeypatch):
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    curves = report("curves")
    assert curves.flags("default") == []
    want = ["--negatives", "2048", "--max-len", "20", "--K", "1"]
    assert curves.flags("negatives=2048, max_len=20, K=1") == want
    assert curves.flags("negatives=all, hidden=none") == ["--negatives", "all", "--hidden"]
    for name in [*curves.GRID, *curves.BASELINES]:
        assert curves.configuration(name) == name
    with pytest.raises(argparse.ArgumentTypeError, match="not a set of mindref train flags"):
        curves.configuration("max_len=twenty")
