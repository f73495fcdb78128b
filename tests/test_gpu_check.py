"""bench/gpu_check.py runs on a CPU-only machine too: its tables, the line saying the CUDA parts
are skipped, and its last line; rehearsed, every CUDA code path of it (run sizing, IOBinding, the
PyTorch formulations, the parity check) runs on the CPU provider. The figures themselves belong to
a machine with a GPU (docs/results.md)."""
import importlib.util
import pathlib

import pytest
from conftest import require

require("onnxruntime")


def gpu_check():
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_without_cuda(capsys):
    gpu_check().main(["--items", "3000", "--users", "64", "--cpu-users", "32", "--parity-users", "32"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("cpu ")]
    assert [r[2] for r in rows] == ["256", "blocked"]  # the tower's run size, the CPU's top-n form
    assert all(float(r[-2].replace(",", "")) > 0 for r in rows)
    if "cuda " not in out:
        assert "cuda: not available here" in out and "parity check are skipped" in out
        assert out.splitlines()[-1].startswith("gpu: topn fp32 users/s=0 ") and out.endswith("parity=SKIP\n")


def test_every_cuda_code_path_rehearses_on_the_cpu(capsys):
    pytest.importorskip("torch")
    gpu_check().main(["--items", "3000", "--users", "128", "--cpu-users", "32", "--parity-users", "64",
                      "--small", "2000", "--rehearse"])
    out = capsys.readouterr().out
    assert "failed" not in out
    # the towers (cpu, cuda fp32, tf32), the top-n (cpu, cuda fp32, tf32), the small catalogue's choice
    assert out.count("  default") == 7
    for form in ("einsum-mask", "einsum", "pruned", "pruned-grid"):
        assert f" {form} " in out
    assert "ids identical apart from exact ties: True" in out and "parity: PASS" in out
    last = out.splitlines()[-1]
    assert last.startswith("gpu: topn fp32 users/s=") and last.endswith("parity=PASS")
