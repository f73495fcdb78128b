"""A bundle's large arrays: stored once, as .npy files the ONNX graphs point into (ONNX external
data), and memory-mapped when loaded, so that every worker on a machine shares one copy.

    item_vectors.npy   E [V, d]       NumPy's exact search, Annoy's source, topn.onnx `item_vectors`
    item_table.npy     S e_i [V, d]   the tower's table (items='table'), tower.onnx `item_S_e`

Checking and mapping are one step (map_verified): the SHA-256 is computed over the mapped pages
themselves, the arrays are views of that mapping, and onnxruntime is handed the same views
(SessionOptions.add_initializer), so it neither reads the files again nor copies them. The pages
belong to the operating system's file cache: N workers mapping one bundle hold one copy of the
vectors between them, where reading the files held one copy each (measured: docs/scaling.md).

What a mapping cannot guard: a file replaced after loading (mindref writes every file under a
temporary name and renames it) leaves the mapping on the old, verified file, but a program that
writes into a loaded file in place changes what the loaded bundle sees, unchecked.
"""
from __future__ import annotations

import hashlib
import io
import mmap
import os
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto

VECTORS_FILE, TABLE_FILE = "item_vectors.npy", "item_table.npy"
HASH_CHUNK = 2**26  # bytes hashed per update (hashlib releases the GIL over large buffers)


def npy_bytes(a: np.ndarray) -> bytes:
    """The .npy file of a (little-endian float32 [rows, cols], C order, as the graphs read it)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, "<f4"))
    return buf.getvalue()


def npy_data_offset(npy: bytes) -> int:
    """Where the array's bytes start in a .npy file (after its header)."""
    return _header(io.BytesIO(npy))[1]


def point_into(tensor: TensorProto, location: str, offset: int) -> None:
    """Make an initializer ONNX external data: its bytes at `offset` of the file `location`, beside
    the graph. Its dims and type stay in the graph; its raw bytes leave it."""
    length = int(np.prod(tensor.dims)) * 4  # float32
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in {"location": location, "offset": str(offset), "length": str(length)}.items():
        tensor.external_data.add(key=key, value=value)


def external_refs(model: ModelProto) -> dict[str, dict]:
    """Each external initializer's name -> location, offset, length, dims."""
    refs = {}
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            refs[t.name] = {"location": info.get("location"), "offset": int(info.get("offset", 0)),
                            "length": int(info.get("length", -1)), "dims": list(t.dims),
                            "float32": t.data_type == TensorProto.FLOAT}
    return refs


def map_verified(path: Path, size: int, sha256: str) -> tuple[mmap.mmap | bytes, os.stat_result]:
    """The file mapped read-only after its size and SHA-256 (computed over the mapping) are checked,
    and its stat (to tell later whether the path still names this file). ValueError names the
    difference; FileNotFoundError if it is missing."""
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        if stat.st_size != size:
            raise ValueError(f"{stat.st_size} bytes, the manifest says {size} (truncated or replaced)")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    if sha256_of(data) != sha256:
        raise ValueError("checksum differs from the manifest (the file was changed)")
    return data, stat


def file_stamp(path: Path) -> dict:
    """A file's size and SHA-256 as a manifest records them (hashed through a mapping, in chunks)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    return {"bytes": size, "sha256": sha256_of(data)}


def sha256_of(data: mmap.mmap | bytes) -> str:
    digest, view = hashlib.sha256(), memoryview(data)
    for start in range(0, len(view), HASH_CHUNK):
        digest.update(view[start:start + HASH_CHUNK])
    view.release()
    return digest.hexdigest()


def npy_view(data: mmap.mmap | bytes) -> tuple[np.ndarray, int]:
    """The array of a mapped .npy file, read-only, without a copy, and its data offset."""
    (shape, fortran, dtype), offset = _header(io.BytesIO(data[:4096]))
    if fortran:
        raise ValueError("a Fortran-order array; mindref writes C order")
    count = int(np.prod(shape))
    if offset + count * dtype.itemsize != len(data):
        raise ValueError(f"header says {list(shape)} {dtype}, which does not fill the file")
    return np.frombuffer(data, dtype, count, offset).reshape(shape), offset


def _header(f) -> tuple[tuple, int]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f), f.tell()
