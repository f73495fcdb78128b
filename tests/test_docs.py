"""The docs cannot rot: their Python examples run, and every code reference they make exists."""
import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
# `mindref/routing.py: route`, `export/tower.py: _capsule_mask`, `tests/test_squash.py: test_...`
CITED = re.compile(r"`((?:mindref|export|tests|bench)/[\w/]+\.py)(?:: ?(\w+))?")
TEST_NAME = re.compile(r"`(test_\w+)`")


def blocks(path):
    return BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)], ids=lambda p: p.name)
def test_examples_run(path):
    namespace: dict = {}
    for code in blocks(path):
        needs = re.findall(r"^# requires: (\w+)", code, re.M)
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"{path.name}: an example needs {', '.join(missing)}")
        exec(compile(code, str(path), "exec"), namespace)  # noqa: S102 - our own docs


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_cited_code_exists(path):
    text = path.read_text(encoding="utf-8")
    missing = []
    for file, name in CITED.findall(text):
        source = ROOT / file
        if not source.is_file():
            missing.append(file)
        elif name and not re.search(rf"^\s*(def|class) {name}\b|^{name}\s*[:=]", source.read_text(), re.M):
            missing.append(f"{file}: {name}")
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    missing += [t for t in TEST_NAME.findall(text) if not re.search(rf"def {t}\b", tests)]
    assert not missing, f"{path.name} cites code that does not exist: {missing}"
