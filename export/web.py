"""A web-sized bundle (`mindref export --web`): the user tower and the top-n graph with their
initializers inside (no .npy beside them), and the catalogue as JSON, for onnxruntime-web in a
browser (docs/try.md, the docs site's "Try MIND" page) or any runtime that takes one file per graph.

    OUT/tower.onnx   item_ids [1, L] (+ profile [1, P]) -> interests [1, K, d], interest_mask [1, K],
                     routing_weights [1, K, L]: the same graph `mindref export` writes (items='table'),
                     with S e_i inside
    OUT/topn.onnx    interests, interest_mask, history [1, H], n [1] -> items, scores, interest [1, n]:
                     the CPU's form of the exact top-n (Eq. 3) with E inside
    OUT/items.json   per item: raw id, title, side-field labels (genres); K, L (max_len), d, the
                     profile's width; the files' sizes and SHA-256
    OUT/model.js     the same bytes as base64 in one script (a page opened from a file cannot fetch)

The graphs are those the Python runtime serves (export/tower.py: build_tower and export/topn.py:
build_topn, the same functions), so a browser that answers differently has found a runtime
difference, not a re-implementation's. The page never computes the model's math in JavaScript.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from mindref.checkpoint import atomic_write
from mindref.data import Dataset
from mindref.model import MINDConfig, item_forward
from mindref.outputs import move_into_place

from .topn import build_topn, layout_for
from .tower import build_tower

WEB_FILES = ("tower.onnx", "topn.onnx", "items.json", "model.js")
INLINE = 2**62  # external_above for build_topn: every initializer inside the graph


def export_web(out: str | Path, params: dict, cfg: MINDConfig, ds: Dataset, force: bool = False) -> dict:
    """Write the web bundle of a trained model to `out` (replaced only with force, and only a web
    bundle); returns the items.json record (with each file's size)."""
    out = Path(out)
    if out.exists():
        if not out.is_dir() or not force or {p.name for p in out.iterdir()} - set(WEB_FILES):
            raise FileExistsError(f"--out {out}: exists; pass --force to replace a web bundle (never another "
                                  "folder)")
    if ds.num_items != cfg.num_items:
        raise ValueError(f"the dataset has {ds.num_items} items, the model {cfg.num_items}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        record = _write(tmp, params, cfg, ds)
        move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _write(folder: Path, params: dict, cfg: MINDConfig, ds: Dataset) -> dict:
    params = {k: np.asarray(v, np.float32) for k, v in params.items()}
    E, _ = item_forward(params, ds.item_fields, np.arange(cfg.num_items))  # [V, d]
    graphs = {"tower.onnx": build_tower(params, cfg, ds.item_fields, "table").SerializeToString(),
              "topn.onnx": build_topn(np.ascontiguousarray(E, np.float32), cfg.K, external_above=INLINE,
                                      **layout_for("cpu", cfg.num_items)).SerializeToString()}
    for name, data in graphs.items():
        atomic_write(folder / name, data)
    record = {"format": "mindref-web-bundle", "K": cfg.K, "max_len": cfg.max_len, "dim": cfg.dim,
              "num_items": cfg.num_items, "profile_width": len(cfg.profile_sizes),
              "items": catalogue(ds),
              "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                        for name, data in graphs.items()}}
    text = json.dumps(record, separators=(",", ":"))
    atomic_write(folder / "items.json", text.encode())
    script = ("window.MINDREF_MODEL = {" + ", ".join(f'"{name}": "{base64.b64encode(data).decode()}"'
                                                    for name, data in graphs.items())
              + f', "items.json": {text}}};\n')
    atomic_write(folder / "model.js", script.encode())
    record["files"].update({name: {"bytes": (folder / name).stat().st_size}
                            for name in ("items.json", "model.js")})
    return record


def catalogue(ds: Dataset) -> list:
    """[raw id, title, [side-field labels]] per item id (id 0, the padding, included as empty)."""
    rows = []
    for item in range(ds.num_items):
        raw = ds.raw_item_ids[item] if ds.raw_item_ids else item
        title = ds.item_labels[item] if ds.item_labels else str(item)
        labels = [str(vocab[i]) for f, vocab in enumerate(ds.field_labels) if len(vocab)
                  for i in ds.item_fields[f][item] if i != 0]
        rows.append(["" if raw is None else str(raw), "" if title is None else str(title), labels])
    return rows
