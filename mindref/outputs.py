"""Where a command may write: never over its own inputs, never over what it does not own.

Every command that writes (train --out, export --out, retrieve --out, batch --out) checks its
output path against every input path first. Paths are compared after resolving links (`..`,
symlinks) and, when both exist, by the file system's identity (hard links), so no spelling of a
path lets an output replace an input. The error names both paths and what to do instead.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


class OutputError(ValueError):
    """An output path that would destroy data; the message says which and what to do."""


def same(a: str | Path, b: str | Path) -> bool:
    """Whether a and b name one file or folder (through links, `..` and hard links)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def within(inner: str | Path, outer: str | Path) -> bool:
    """Whether inner is outer or lies somewhere below it (links resolved)."""
    inner, outer = Path(inner).resolve(), Path(outer).resolve()
    return inner == outer or outer in inner.parents


def check_output(out: str | Path, inputs: dict[str, str | Path], flag: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside an input. inputs: {what: path}, e.g.
    {"--users": "u.jsonl", "--bundle": "bundles/b"}."""
    for what, path in inputs.items():
        if path is None:
            continue
        if same(out, path) or within(path, out) or (Path(path).is_dir() and within(out, path)):
            raise OutputError(f"{flag} {out} would overwrite the input {what} {path}; "
                              f"write the output somewhere else")


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder tmp onto out. An existing out is set aside first and deleted only
    once tmp is in place; if the rename fails, it is put back. Readers see the old or the new."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
