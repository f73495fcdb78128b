"""Load a dataset and its evaluation protocol from a small spec (what the CLI and checkpoints
record): {"format": ..., "path": ..., "protocol": "loo" | "strong", "max_len": L, "seed": s}."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from . import readers
from .data import Dataset, leave_one_out, strong_generalisation, synthetic

FORMATS = ("synthetic", "ml-100k", "ml-1m", "sequences", "comirec", "csv")
PROTOCOLS = ("loo", "strong")
# a format's own settings: setting -> (its format, its flag)
OWN_SETTING = {"category": ("sequences", "--category"), "name": ("comirec", "--comirec-name"),
               "users": ("synthetic", "--users")}


def foreign_settings(fmt: str, given) -> list[str]:
    """A note for each setting typed (`given`) that belongs to another format than `fmt`."""
    return [f"{flag} applies to --data-format {owner} only; ignored with {fmt}"
            for key, (owner, flag) in OWN_SETTING.items() if key in given and owner != fmt]


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
    if path.is_dir():
        raise IsADirectoryError(f"--data-path {path}: is a folder; the csv format reads one file of "
                                "user,item,timestamp rows (give the file)")
    return readers.read_interactions_csv(path), {}


def resolved_path(fmt: str, data_path: str | Path | None) -> str | None:
    """The absolute path a new run records: --data-path, else the default under the data root."""
    path = Path(data_path) if data_path else default_path(fmt)
    return None if path is None else str(path.resolve())


def locate(spec: dict, data_path: str | Path | None = None) -> dict:
    """The spec with the data's path as found now: data_path (--data-path) if given, else the
    recorded path, else (the data moved, or a run recorded no path) the format's default under
    $MINDREF_DATA. FileNotFoundError saying how to point at the data."""
    fmt = spec.get("format", "synthetic")
    if data_path is not None:
        return {**spec, "path": str(Path(data_path).resolve())}
    recorded = spec.get("path")
    if fmt == "synthetic" or (recorded and Path(recorded).exists()):
        return spec
    default = default_path(fmt)
    if default is not None and default.exists() and (not recorded or Path(recorded).name == default.name):
        return {**spec, "path": str(default.resolve())}
    raise FileNotFoundError(f"{recorded or default}: the run's {fmt} data is not there; give --data-path "
                            "or set MINDREF_DATA")


def fingerprint(ds: Dataset) -> dict:
    """Sizes and a SHA-256 of the interactions, side fields, profiles and raw ids: equal only for
    the same data, wherever it lies (so a moved file passes and an edited one does not)."""
    h = hashlib.sha256()
    for a in (np.array([len(s) for s in ds.sequences]), np.concatenate(ds.sequences), *ds.item_fields,
              ds.profiles):
        h.update(np.ascontiguousarray(a, np.int64).tobytes())
    h.update(json.dumps([ds.raw_item_ids, ds.raw_user_ids], default=str).encode())
    return {"users": len(ds.sequences), "items": ds.num_items - 1,
            "interactions": int(sum(len(s) for s in ds.sequences)), "sha256": h.hexdigest()}


def check_fingerprint(spec: dict, ds: Dataset) -> None:
    """ValueError when ds is not the data the spec's run was trained on (runs that recorded a
    fingerprint)."""
    expected = spec.get("fingerprint")
    if not expected:
        return
    got = fingerprint(ds)
    if got != expected:
        sizes = ", ".join(f"{k} {got[k]:,} (was {expected.get(k, 0):,})" for k in ("users", "items",
                                                                                   "interactions"))
        raise ValueError(f"{spec.get('path')}: not the data this run was trained on ({sizes}; checksum "
                         f"{got['sha256'][:12]} vs {expected.get('sha256', '?')[:12]}); point --data-path at "
                         "the run's data, or train a new run")


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
