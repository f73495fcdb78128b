"""Checkpoints: one folder with the parameters (params-<hash>.npz) and a JSON manifest (config.json).

config.json holds the schema version, the mindref version, the model config, the data spec and,
for a resumable training checkpoint, the optimizer step, the RNG state and the losses so far; it
names the parameter file and records its SHA-256, so a folder whose files do not belong together
is refused. Each save writes a new parameter file named by its hash, then replaces config.json
(write to a temporary name, flush, os.replace: atomic), then deletes the old parameter file. A
crash at any moment leaves a config.json whose parameter file exists and matches: the previous
checkpoint or the new one, never a mix (a fixed file name would be torn between the two renames).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from . import __version__
from .model import MINDConfig, param_shapes
from .outputs import write_failed

SCHEMA_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which file and what is wrong."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write data to path via a temporary file and a rename: readers never see half a file. A
    failed write (a full disk) removes the temporary file and names the path and the free space."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise write_failed(path, err, tmp) from None


def save(folder: str | Path, params: dict, cfg: MINDConfig, data: dict | None = None,
         train: dict | None = None, optimizer: dict | None = None, extra: dict | None = None) -> Path:
    """Write params (+ optimizer moments, + extra training arrays) and the manifest.
    optimizer: {"m": {...}, "v": {...}};  extra: {"order": ...} (load_training reads them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = dict(params)
    for kind, moments in (optimizer or {}).items():
        arrays.update({f"adam.{kind}.{k}": v for k, v in moments.items()})
    arrays.update({f"train.{k}": v for k, v in (extra or {}).items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    name = f"params-{digest[:16]}.npz"
    atomic_write(folder / name, blob)
    manifest = {"schema_version": SCHEMA_VERSION, "mindref_version": __version__, "params_file": name,
                "params_sha256": digest, "config": cfg.to_dict(), "data": data or {},
                "train": train or {}}
    atomic_write(folder / "config.json", json.dumps(manifest, indent=2).encode())
    for old in folder.glob("params*.npz"):  # only now is the previous checkpoint superseded
        if old.name != name:
            old.unlink()
    return folder


def load(folder: str | Path) -> tuple[dict, MINDConfig, dict, dict | None]:
    """(params, config, manifest, optimizer moments or None), every array checked against the
    config's expected names, shapes and dtypes."""
    return load_training(folder)[:4]


def load_training(folder: str | Path) -> tuple[dict, MINDConfig, dict, dict | None, dict]:
    """load() plus the extra training arrays ({"order": ...}), all from one verified read."""
    folder = Path(folder)
    manifest = _read_manifest(folder / "config.json")
    path = params_path(folder, manifest)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != manifest.get("params_sha256"):
        raise CheckpointError(f"{path}: checksum differs from config.json "
                              "(the file was changed, truncated or comes from another checkpoint)")
    cfg = config_from_json(manifest.get("config"), folder / "config.json", CheckpointError)
    try:
        with np.load(io.BytesIO(raw)) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # a corrupt zip or array header
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    dtype = _dtype(arrays)
    expected = {k: (shape, dtype) for k, shape in param_shapes(cfg).items()}  # names, shapes, dtype
    params = {k: v for k, v in arrays.items() if not k.startswith(("adam.", "train."))}
    _compare(path, params, expected)
    optimizer = None
    if any(k.startswith("adam.") for k in arrays):
        optimizer = {kind: {k[len(f"adam.{kind}."):]: v for k, v in arrays.items()
                            if k.startswith(f"adam.{kind}.")} for kind in ("m", "v")}
        trainable = {k: v for k, v in expected.items() if k != "serving_logits"}
        for kind, moments in optimizer.items():
            _compare(path, moments, trainable, f"Adam {kind} of ")
    extra = {k[len("train."):]: v for k, v in arrays.items() if k.startswith("train.")}
    return params, cfg, manifest, optimizer, extra


def read_manifest(folder: str | Path) -> dict:
    """A checkpoint's config.json (its config, data and training record), checked for its schema."""
    return _read_manifest(Path(folder) / "config.json")


def params_path(folder: str | Path, manifest: dict | None = None) -> Path:
    """The parameter file config.json names (params.npz for checkpoints written before names)."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else _read_manifest(folder / "config.json")
    name = manifest.get("params_file", "params.npz")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".npz"):
        raise CheckpointError(f"{folder / 'config.json'}: bad params_file {name!r}")
    return folder / name


def read_json_object(path: Path, error: type[ValueError], missing_hint: str) -> dict:
    """The JSON object in path, or `error` naming the file: missing, not JSON, not an object."""
    if not path.is_file():
        raise error(f"{path}: missing ({missing_hint})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def _read_manifest(path: Path) -> dict:
    manifest = read_json_object(path, CheckpointError, f"is {path.parent} a mindref checkpoint?")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: schema version {version!r}, this mindref reads version "
                              f"{SCHEMA_VERSION} (written by mindref {manifest.get('mindref_version', '?')})")
    return manifest


def config_from_json(raw, path: Path, error: type[ValueError]) -> MINDConfig:
    """The MINDConfig of a manifest's "config" object (JSON lists back to tuples); `error`
    naming path when it is not one."""
    try:
        return MINDConfig.from_dict(raw)
    except (TypeError, AttributeError, ValueError) as err:
        raise error(f"{path}: bad model config ({err})") from None


def _dtype(arrays: dict):
    return arrays["item_emb"].dtype if "item_emb" in arrays else np.float32


def _compare(path: Path, got: dict, expected: dict, what: str = "") -> None:
    """Every expected array (name -> (shape, dtype)) present with its shape and dtype, finite."""
    problems = [f"missing {what}{k}" for k in expected if k not in got]
    problems += [f"unexpected {what}{k}" for k in got if k not in expected]
    problems += [f"{what}{k}: shape {list(got[k].shape)} {got[k].dtype}, expected "
                 f"{list(shape)} {np.dtype(dtype)}" for k, (shape, dtype) in expected.items()
                 if k in got and (got[k].shape != tuple(shape) or got[k].dtype != dtype)]
    problems += [f"{what}{k}: contains NaN or inf" for k in expected
                 if k in got and not np.all(np.isfinite(got[k]))]
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
