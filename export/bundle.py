"""A serving bundle: one folder with everything retrieval needs, verified when loaded.

    tower.onnx         the user tower (mindref.export.tower); its S e_i table in item_table.npy
    topn.onnx          exact retrieval: Eq. (3) over every item and the top n (mindref.export.topn),
                       in the form the CPU runs fastest; its item vectors in item_vectors.npy
    topn_cuda.onnx     the same function in the form CUDA runs fastest (export/topn.py:
                       layout_for), pointing into the same item_vectors.npy
    item_vectors.npy   E [V, d] float32, e_i = f_item(F_i); row 0 (padding) is 0
    item_table.npy     S e_i [V, d] float32 (items='table' towers only)
    items.ann          Annoy index of E[1:] for inner products (mindref.export.retrieval.ItemIndex)
    item_fields.npz    each item side field's ids [V, F_f]: the tower's field inputs
    items.json         raw item ids, labels, field and profile vocabularies (for people and the CLI)
    manifest.json      schema, versions, model config, ONNX and Annoy settings, the serving
                       precision, the measured choice of search for 'auto', and each file's size
                       and SHA-256

The bundle is written into a temporary sibling folder and renamed into place, so a crash never
leaves half a bundle under the final name. Loading checks every file's size and checksum before
using it and names the file that does not match. The two .npy files are ONNX external data of the
graphs: stored once, memory-mapped once for NumPy and onnxruntime, and shared by every process
that loads the bundle on a machine (mindref.export.arrays).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mindref import __version__
from mindref.checkpoint import atomic_write, config_from_json, read_json_object
from mindref.data import Dataset
from mindref.model import MINDConfig, item_forward
from mindref.outputs import move_into_place
from mindref.progress import Working

from .arrays import (
    TABLE_FILE,
    VECTORS_FILE,
    external_refs,
    file_stamp,
    map_verified,
    npy_bytes,
    npy_data_offset,
    npy_view,
    point_into,
)
from .providers import PRECISIONS
from .retrieval import ItemIndex, Retriever
from .runtime import TowerSession
from .topn import TopNSession, build_topn, layout_for
from .tower import IR_VERSION, OPSET, TABLE, build_tower

SCHEMA_VERSION = 1
FILES = ("tower.onnx", VECTORS_FILE, "items.ann", "item_fields.npz", "items.json")
# absent from older bundles: without topn.onnx they search with NumPy and Annoy; without
# topn_cuda.onnx CUDA runs topn.onnx; without item_table.npy the tower holds its table inline
TOPN, TOPN_CUDA = "topn.onnx", "topn_cuda.onnx"
TOPN_GRAPHS = {"cpu": TOPN, "cuda": TOPN_CUDA}
OPTIONAL = (TOPN, TOPN_CUDA, TABLE_FILE)


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and what is wrong."""


def export_bundle(out: str | Path, params: dict, cfg: MINDConfig, ds: Dataset, n_trees: int = 50,
                  seed: int = 0, overwrite: bool = False, items: str = "table",
                  metric: str = "angular", precision: str = "fp32") -> Path:
    """Write the bundle of a trained model (params, cfg) over the dataset's items to `out`.
    overwrite=True replaces an existing bundle, and only a bundle (check_replaceable).
    precision: the serving precision recorded for the bundle ('fp32', or 'tf32' to let CUDA use
    its tensor cores); retrieve and batch use it unless told otherwise."""
    out = Path(out)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_replaceable(out, overwrite)
    if ds.num_items != cfg.num_items or ds.field_sizes != tuple(cfg.field_sizes):
        raise ValueError(f"the dataset ({ds.num_items} items, fields {ds.field_sizes}) is not the model's "
                         f"({cfg.num_items} items, fields {tuple(cfg.field_sizes)})")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_files(tmp, params, cfg, ds, {"n_trees": n_trees, "seed": seed, "metric": metric}, items,
                     precision)
        move_into_place(tmp, out)  # an old bundle is set aside, and deleted only once the new one is in
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_replaceable(out: Path, overwrite: bool) -> None:
    """A bundle may be written to a new path, or over an existing mindref bundle with overwrite;
    never over a file, a folder that is not a bundle, or a bundle holding files of its own."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out}: exists (pass overwrite=True / --force to replace a bundle)")
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"{out}: is not a bundle folder; --force replaces only a mindref bundle")
    found = {p.name for p in out.iterdir()}
    if not found:
        return  # an empty folder holds nothing to lose
    try:
        _manifest(out / "manifest.json")
    except BundleError as err:
        raise FileExistsError(f"{out}: not a mindref bundle ({err}); --force replaces only a bundle "
                              "written by `mindref export`. Choose another --out") from None
    extra = sorted(found - {*FILES, *OPTIONAL, "manifest.json"})
    if extra:
        raise FileExistsError(f"{out}: holds files that are not part of a bundle ({', '.join(extra[:5])}); "
                              "--force would delete them. Move them away or choose another --out")


def _write_files(folder: Path, params: dict, cfg: MINDConfig, ds: Dataset, annoy: dict, items: str,
                 precision: str) -> None:
    E, _ = item_forward({k: np.asarray(v, np.float32) for k, v in params.items()}, ds.item_fields,
                        np.arange(cfg.num_items))  # [V, d]
    npy = npy_bytes(E)
    atomic_write(folder / VECTORS_FILE, npy)
    for provider, name in TOPN_GRAPHS.items():  # the same function, each in its provider's form
        graph = build_topn(E, cfg.K, external_above=0, npy_offset=npy_data_offset(npy),
                           **layout_for(provider, cfg.num_items))
        atomic_write(folder / name, graph.SerializeToString())
    tower = build_tower(params, cfg, ds.item_fields, items)
    table = next((t for t in tower.graph.initializer if t.name == TABLE), None)
    if table is not None:  # items='table': S e_i [V, d] into its own .npy, shared like E
        npy = npy_bytes(numpy_helper.to_array(table))
        atomic_write(folder / TABLE_FILE, npy)
        point_into(table, TABLE_FILE, npy_data_offset(npy))
    atomic_write(folder / "tower.onnx", tower.SerializeToString())
    for graph in ("tower.onnx", *TOPN_GRAPHS.values()):
        onnx.checker.check_model(str(folder / graph))  # by path: beside the .npy files they point into
    with Working(f"export: Annoy index of {len(E) - 1:,} items, {annoy.get('n_trees')} trees"):
        index = ItemIndex.build(E, **annoy)
    index.save(folder / "items.ann")
    buf = io.BytesIO()
    np.savez(buf, **{f"field_{f}": t for f, t in enumerate(ds.item_fields)})
    atomic_write(folder / "item_fields.npz", buf.getvalue())
    catalog = {"raw_item_ids": [None if r is None else str(r) for r in ds.raw_item_ids],
               "item_labels": list(ds.item_labels), "field_names": list(ds.field_names),
               "field_labels": [list(v) for v in ds.field_labels], "profile_names": list(ds.profile_names),
               "profile_labels": [list(v) for v in ds.profile_labels]}
    atomic_write(folder / "items.json", json.dumps(catalog).encode())
    cpu = (folder / TOPN).read_bytes()
    session = TopNSession(cpu, cfg.num_items, "cpu",
                          **_external(folder / TOPN, cpu, {VECTORS_FILE: (E, npy_data_offset(npy))}))
    with Working("export: timing the searches and Annoy's recall"):
        search = measure_search(Retriever(E, index, topn=session), cfg.K)
    written = [name for name in (*FILES, *OPTIONAL) if (folder / name).exists()]
    manifest = {"format": "mindref-bundle", "schema_version": SCHEMA_VERSION, "mindref_version": __version__,
                "config": cfg.to_dict(),
                "onnx": {"ir_version": IR_VERSION, "opset": OPSET, "items": items}, "search": search,
                "serving": {"precision": precision},
                "annoy": {**annoy, "dim": cfg.dim},
                "files": {name: file_stamp(folder / name) for name in written}}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    atomic_write(folder / "manifest.json", json.dumps(manifest, indent=2).encode())


def manifest_digest(manifest: dict) -> str:
    """The manifest's own checksum: SHA-256 of its canonical JSON without this field, so a changed
    byte in manifest.json is blamed on manifest.json, not on the file whose entry it altered."""
    rest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


RECALL_USERS = 400  # users Annoy's recall is measured on before auto may choose it
Z_95 = 1.645  # one-sided 95% normal quantile: auto's recall promise holds at this confidence


def measure_search(retriever: Retriever, K: int, users: int = 64, n: int = 50, seed: int = 0,
                   min_recall: float = 0.95, recall_users: int = RECALL_USERS) -> dict:
    """Users/s of each search over this catalogue (on `users` users), Annoy's recall@n against
    exact (on `recall_users` users, with a one-sided 95% lower bound), and 'auto': the faster exact
    search, unless Annoy is more than twice as fast and the lower bound of its recall@n is at least
    min_recall (on 64 users a recall of 0.966 became 0.818 on 2,000: one draw is no promise).
    Interests: item vectors drawn at random, K'_u = K (the costliest case)."""
    rng = np.random.default_rng(seed)
    E = retriever.E
    total = max(users, recall_users)
    V_u = E[rng.integers(1, len(E), (total, K))]  # [total, K, d]
    mask = np.ones((total, K), bool)
    hist = rng.integers(1, len(E), (total, 20))
    rates, found = {}, {}
    for method in ("exact", "onnx", "annoy"):
        retriever.retrieve(V_u[:2], mask[:2], hist[:2], n, method)  # warm-up: first-call allocations
        t0 = time.perf_counter()
        found[method] = retriever.retrieve(V_u[:users], mask[:users], hist[:users], n, method)
        rates[method] = round(users / max(time.perf_counter() - t0, 1e-9), 1)
    rest = slice(users, total)  # the recall sample: the timed users and more
    exact = found["exact"] + retriever.retrieve(V_u[rest], mask[rest], hist[rest], n, "exact")
    annoy = found["annoy"] + retriever.retrieve(V_u[rest], mask[rest], hist[rest], n, "annoy")
    per_user = np.array([len(set(a.items) & set(e.items)) / max(len(e.items), 1)
                         for a, e in zip(annoy, exact)])
    recall = float(per_user.mean())
    lower = recall - Z_95 * float(per_user.std(ddof=1)) / np.sqrt(len(per_user)) if len(per_user) > 1 else 0.0
    best_exact = max(("exact", "onnx"), key=rates.get)
    annoy_wins = rates["annoy"] > 2 * rates[best_exact] and lower >= min_recall
    return {"auto": "annoy" if annoy_wins else best_exact, "users_per_s": rates,
            "annoy_recall": round(recall, 4), "annoy_recall_lower95": round(lower, 4),
            "recall_users": len(per_user), "min_recall": min_recall, "users": users, "n": n}


@dataclass
class Bundle:
    """A loaded bundle: the tower session, the item vectors, the retriever and the item metadata."""

    path: Path
    cfg: MINDConfig
    tower: TowerSession
    E: np.ndarray  # [V, d]
    retriever: Retriever
    items: dict  # items.json
    manifest: dict

    def raw_id(self, item: int) -> str:
        raw = self.items["raw_item_ids"]
        return str(raw[item]) if raw and raw[item] is not None else str(item)

    @cached_property
    def _ids(self) -> dict:
        """raw id -> model id; the model's own ids when the bundle records no raw ids."""
        ids = {r: i for i, r in enumerate(self.items["raw_item_ids"]) if r is not None}
        return ids or {str(i): i for i in range(1, self.cfg.num_items)}

    def item_id(self, raw: str) -> int:
        """The model's id of a raw item id (as in the data files)."""
        if str(raw) not in self._ids:
            raise ValueError(f"item {raw!r} is not in this bundle's catalog ({len(self._ids)} items)")
        return self._ids[str(raw)]

    def profile_ids(self, values: list[str]) -> np.ndarray:
        """Profile ids [P] of raw profile values (as in the data files; '' or '?' = unknown)."""
        names, labels = self.items["profile_names"], self.items["profile_labels"]
        if len(values) != len(names):
            raise ValueError(f"profile: {len(names)} values expected ({', '.join(names) or 'none'}), "
                             f"got {len(values)}")
        out = []
        for p, (name, v) in enumerate(zip(names, values)):
            vocab = labels[p] if p < len(labels) else None  # None: the values are the model's ids
            if v in ("", "?"):
                out.append(0)
            elif vocab and v in vocab:
                out.append(vocab.index(v))
            elif not vocab and v.isdigit():
                out.append(int(v))
            else:
                known = f"one of {', '.join(vocab[1:])}" if vocab else "an integer id"
                raise ValueError(f"profile {name}: unknown value {v!r}; expected {known}")
        return np.array(out, np.int64)


def load_bundle(path: str | Path, provider: str = "auto", threads: int | None = None, oversample: int = 2,
                search_k: int = -1, precision: str | None = None, users: int | None = None) -> Bundle:
    """Verify and load a bundle; BundleError names the first file that is missing or differs.
    precision: 'fp32' or 'tf32' (None: the bundle's, as exported); users: users per run of the
    graphs (None: sized for the provider, export/providers.py)."""
    path = Path(path)
    manifest = _manifest(path / "manifest.json")
    cfg = config_from_json(manifest["config"], path / "manifest.json", BundleError)
    listed = manifest["files"]
    precision = precision or manifest.get("serving", {}).get("precision", "fp32")
    if precision not in PRECISIONS:
        raise BundleError(f"{path / 'manifest.json'}: serving precision {precision!r}, expected one of "
                          f"{PRECISIONS}")
    # each file is checked once and the checked bytes are the ones used: small files read, the
    # .npy arrays mapped (shared by every process on the machine); Annoy maps items.ann by path
    small = {name: _read_verified(path / name, listed.get(name))  # every graph: a bundle is whole or refused
             for name in ("tower.onnx", "item_fields.npz", "items.json", *(g for g in TOPN_GRAPHS.values()
                                                                           if g in listed))}
    arrays = {name: _array(path / name, listed.get(name), cfg)
              for name in (VECTORS_FILE, *([TABLE_FILE] if TABLE_FILE in listed else []))}
    E = arrays[VECTORS_FILE][0]
    with np.load(io.BytesIO(small["item_fields.npz"]), allow_pickle=False) as z:
        fields = tuple(z[f"field_{f}"] for f in range(len(cfg.field_sizes)))
    items = json.loads(small["items.json"].decode("utf-8"))
    tower = TowerSession(small["tower.onnx"], cfg, fields, provider, threads, users, precision,
                         **_external(path / "tower.onnx", small["tower.onnx"], arrays))
    index = _annoy(path / "items.ann", listed.get("items.ann"), cfg, manifest)
    topn = None
    graph = topn_graph(tower.provider, small)
    if graph is not None:
        topn = TopNSession(small[graph], cfg.num_items, tower.provider, threads, users, precision,
                           **_external(path / graph, small[graph], arrays))
    auto = manifest.get("search", {}).get("auto")  # the search measured fastest at export
    retriever = Retriever(E, index, oversample, search_k, topn=topn, auto=auto)
    return Bundle(path, cfg, tower, E, retriever, items, manifest)


def topn_graph(provider: str, available) -> str | None:
    """The top-n graph for the provider the tower really runs on: its own form, else topn.onnx
    (bundles before topn_cuda.onnx), else none (bundles before topn.onnx search with NumPy)."""
    return next((name for name in (TOPN_GRAPHS[provider], TOPN) if name in available), None)


def _array(path: Path, expected: dict | None, cfg: MINDConfig) -> tuple[np.ndarray, int]:
    """A verified .npy of [V, d] float32, mapped read-only, and its data offset."""
    data, _ = _map_verified(path, expected)
    try:
        array, offset = npy_view(data)
    except ValueError as err:
        raise BundleError(f"{path}: not a readable .npy array ({err})") from None
    if array.shape != (cfg.num_items, cfg.dim) or array.dtype != np.dtype("<f4"):
        raise BundleError(f"{path}: {list(array.shape)} {array.dtype}, expected [{cfg.num_items}, {cfg.dim}] "
                          "float32")
    return array, offset


def _external(graph_path: Path, graph: bytes, arrays: dict) -> dict:
    """make_session's `shared` and `folder` for a graph whose initializers point into the bundle's
    mapped .npy files (none for a graph that holds its data inline): each initializer is a run of
    whole rows of one array (the top-n graph's blocks) and gets a view of those rows."""
    refs = external_refs(onnx.load_model_from_string(graph))
    shared = {}
    for name, ref in refs.items():
        rows = _rows(ref, *arrays.get(ref["location"], (None, None)))
        if rows is None:
            raise BundleError(f"{graph_path}: initializer {name} points to {ref['location']!r} at offset "
                              f"{ref['offset']}, which is not a run of rows of a float32 array of this "
                              "bundle")
        shared[name] = rows
    return {"shared": shared, "folder": str(graph_path.parent)} if shared else {}


def _rows(ref: dict, array: np.ndarray | None, offset: int | None) -> np.ndarray | None:
    """The rows of array [V, d] (its data at `offset` in its file) that ref covers, or None."""
    if array is None or not ref["float32"] or len(ref["dims"]) != 2 or ref["dims"][1] != array.shape[1]:
        return None
    row_bytes = 4 * array.shape[1]
    first, rem = divmod(ref["offset"] - offset, row_bytes)
    count = ref["dims"][0]
    if rem or first < 0 or first + count > len(array) or ref["length"] != count * row_bytes:
        return None
    return array[first:first + count]


def _annoy(path: Path, expected: dict | None, cfg: MINDConfig, manifest: dict) -> ItemIndex:
    """The Annoy index, checked; Annoy maps the file by its path, so the path must still name the
    file that was checked once Annoy has it."""
    _, checked = _map_verified(path, expected)
    index = ItemIndex.load(path, cfg.dim, manifest.get("annoy", {}).get("metric", "dot"))
    now = path.stat()
    if (now.st_dev, now.st_ino, now.st_mtime_ns) != (checked.st_dev, checked.st_ino, checked.st_mtime_ns):
        raise BundleError(f"{path}: replaced while the bundle was loading; load it again")
    if len(index) != cfg.num_items - 1:
        raise BundleError(f"{path}: {len(index)} items, expected {cfg.num_items - 1}")
    return index


def _manifest(path: Path) -> dict:
    hint = f"is {path.parent} a mindref bundle? `mindref export` writes one"
    manifest = read_json_object(path, BundleError, hint)
    if manifest.get("format") != "mindref-bundle":
        raise BundleError(f"{path}: not a mindref bundle manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema version {manifest.get('schema_version')!r}, this mindref reads "
                          f"{SCHEMA_VERSION}")
    recorded = manifest.get("manifest_sha256")  # bundles before it carry none
    if recorded is not None and recorded != manifest_digest(manifest):
        raise BundleError(f"{path}: corrupt (its content does not match its own checksum): the manifest was "
                          "changed after export; export the bundle again")
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("config"), dict):
        raise BundleError(f"{path}: no file list or model config")
    return manifest


def _map_verified(path: Path, expected: dict | None):
    """The file mapped read-only after its size and SHA-256 match the manifest's entry, and its stat."""
    if expected is None:
        raise BundleError(f"{path.parent / 'manifest.json'}: does not list {path.name}")
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    try:
        return map_verified(path, expected.get("bytes"), expected.get("sha256"))
    except ValueError as err:
        raise BundleError(f"{path}: {err}") from None


def _read_verified(path: Path, expected: dict | None) -> bytes:
    """The file's bytes, after checking their size and SHA-256 against the manifest's entry."""
    return bytes(_map_verified(path, expected)[0])
