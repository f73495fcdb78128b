"""bench/gpu_check.py runs on a CPU-only machine too: its table, and the line saying the CUDA parity
part is skipped (the figures themselves belong to a machine with a GPU)."""
import importlib.util
import pathlib

from conftest import require

require("onnxruntime")


def test_gpu_check_runs_without_cuda(capsys):
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--items", "3000", "--batches", "32", "64"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("cpu ")]
    assert [int(r[1]) for r in rows] == [32, 64]
    assert all(float(x.replace(",", "")) > 0 for r in rows for x in r[2:])
    if "cuda " not in out:
        assert "cuda: not available here" in out and "parity check is skipped" in out
    else:
        assert out.count("PASS") == 2
