"""The README's commands run as written after the two set-up commands: every `mindref ...` line
parses with the CLI as it is (subcommand and flags), every `python bench/...` script exists and
takes the flags the README gives it, and the quick lines are run (the users file it writes, the
conformance one-liner and the diagnosis it prints)."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mindref.cli import parser

ROOT = Path(__file__).resolve().parents[1]


def commands() -> list[str]:
    """The README's shell lines: 4-space-indented blocks, comments dropped."""
    lines = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("    ") and not line.strip().startswith("#"):
            lines.append(line.strip())
    return lines


def words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def test_the_readme_has_the_commands_this_test_reads():
    found = commands()
    assert any(c.startswith("mindref train") for c in found) and any(c.startswith(". .venv") for c in found)
    assert sum(c.startswith("mindref ") for c in found) >= 8


@pytest.mark.parametrize("line", [c for c in commands() if c.startswith("mindref ")])
def test_every_mindref_command_parses(line):
    try:
        args = parser().parse_args(words(line)[1:])
    except SystemExit as stop:
        pytest.fail(f"README: `{line}` does not parse (exit {stop.code})")
    assert callable(args.func)


@pytest.mark.parametrize("line", [c for c in commands() if c.startswith("python bench/")])
def test_every_bench_command_takes_its_flags(line):
    argv = words(line)
    script = ROOT / argv[1]
    assert script.is_file(), line
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
    assert usage.returncode == 0, usage.stderr[-500:]
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", usage.stdout), f"README: {line}: {flag} unknown"


def test_the_quick_lines_run(tmp_path):
    printf = next(c for c in commands() if c.startswith("printf "))
    subprocess.run(["bash", "-c", printf], cwd=tmp_path, check=True)
    rows = [json.loads(x) for x in (tmp_path / "users.jsonl").read_text().splitlines()]
    assert [r["user"] for r in rows] == ["a", "b"]
    one_liner = next(c for c in commands() if c.startswith('python -c "from mindref import conformance'))
    run = subprocess.run(["bash", "-c", one_liner.replace("python", sys.executable, 1)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert run.returncode != 0 and "misprinted squash" in run.stderr  # the diagnosis the README shows


def test_the_readme_times_are_those_bench_readme_times_measured():
    """Every wall time the README states is within 1.5x of docs/logs/readme_times.log (written by
    `python bench/readme_times.py --log docs/logs/readme_times.log`, which names the machine; the
    two `--tune 10m` lines in readme_times_tune.log, from `--only compare-tune train-tune`)."""
    measured = {}
    for name in ("readme_times.log", "readme_times_tune.log"):  # the --tune lines timed on their own
        log = (ROOT / "docs" / "logs" / name).read_text()
        assert log.startswith("# python bench/readme_times.py") and "CPUs" in log.splitlines()[0]
        for name, value, unit in re.findall(r"^\| ([\w-]+) \| ([\d.]+) (s|min) \|", log, re.M):
            measured[name] = float(value) * (60 if unit == "min" else 1)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    claims = {"demo": r"about (\d+) seconds on two cores", "train": r"`train` about (\d+) s",
              "train-early-stop": r"early-stopping run about (\d+) minutes",
              "compare-beauty": r"`compare` on Beauty about (\d+) minutes",
              "quality-short": r"in the short form below (\d+) s",
              "compare-tune": r"`compare --tune 10m` about (\d+) minutes",
              "train-tune": r"`train --tune 10m` about (\d+) minutes"}
    assert "bench/readme_times.py" in readme
    for name, pattern in claims.items():
        found = re.search(pattern, readme)
        assert found, f"README: no time stated for {name} ({pattern})"
        stated = float(found.group(1)) * (60 if "minutes" in pattern else 1)
        assert measured[name] / 1.5 <= stated <= measured[name] * 1.5, (name, stated, measured[name])
