"""Load a dataset and its evaluation protocol from a small spec (what the CLI and checkpoints
record): {"format": ..., "path": ..., "protocol": "loo" | "strong", "max_len": L, "seed": s}."""
from __future__ import annotations

import os
from pathlib import Path

from . import readers
from .data import Dataset, leave_one_out, strong_generalisation, synthetic

FORMATS = ("synthetic", "ml-100k", "ml-1m", "sequences", "comirec", "csv")
PROTOCOLS = ("loo", "strong")


def default_data_root() -> Path:
    """$MINDREF_DATA, else ../shared/data beside the current folder."""
    return Path(os.environ.get("MINDREF_DATA", Path.cwd().parent / "shared" / "data"))


def default_path(fmt: str) -> Path | None:
    root = default_data_root()
    return {"ml-100k": root / "ml-100k", "sequences": root / "amazon-beauty" / "Beauty.txt"}.get(fmt)


def load_dataset(spec: dict) -> tuple[Dataset, dict]:
    """(Dataset, ComiRec user splits or {}) for spec["format"] and spec["path"]."""
    fmt = spec.get("format", "synthetic")
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "synthetic":
        return synthetic(num_users=spec.get("users", 2000), seed=spec.get("seed", 0)), {}
    path = Path(spec["path"]) if spec.get("path") else default_path(fmt)
    if path is None:
        raise ValueError(f"--data-path is required for the {fmt!r} format")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (set --data-path or MINDREF_DATA)")
    if fmt == "ml-100k":
        return readers.read_movielens_100k(path), {}
    if fmt == "ml-1m":
        return readers.read_movielens_1m(path), {}
    if fmt == "sequences":
        attributes = spec.get("attributes") or _sibling_json(path)
        return readers.read_sequences(path, attributes, spec.get("category", "all")), {}
    if fmt == "comirec":
        return readers.read_comirec(path, spec.get("name", "book"))
    return readers.read_interactions_csv(path), {}


def _sibling_json(path: Path) -> Path | None:
    """Beauty.txt -> Beauty_item2attributes.json beside it, if present."""
    candidate = path.with_name(f"{path.stem}_item2attributes.json")
    return candidate if candidate.is_file() else None


def split(ds: Dataset, spec: dict, splits: dict):
    """(train examples, validation cases, test cases) by the spec's protocol."""
    protocol = spec.get("protocol", "loo")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    L = spec.get("max_len", 50)
    if protocol == "loo":
        return leave_one_out(ds, L)
    return strong_generalisation(ds, L, spec.get("seed", 0), splits or None)
