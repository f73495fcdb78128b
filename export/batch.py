"""The batch job's pieces (mindref/export/job.py runs it): the per-batch function, the format of
its input and outputs, reading requests and writing outcomes.

    users:  Parquet (a file or a folder of them) or JSON lines, with `user`, `history` (raw item
            ids, oldest first) and optionally `profile` (raw values in the bundle's order)
    OUT/part-*.parquet         user, items (list<string>), scores (list<float32>), interest (list<int8>)
    OUT/_errors/part-*.parquet user, reason: every row that cannot be served (empty history, only
                               unknown items, malformed ids or profile, a line that is not JSON)
    OUT/_SUCCESS.json          input and output row counts, the bundle's checksum, engine, seconds

Every input row is in exactly one of the two outputs, and one bad row never stops the job. The job
writes into a temporary sibling folder and renames it onto OUT only after _SUCCESS.json is written
(last), so a folder without _SUCCESS.json is never a finished result, and a rerun replaces OUT
(never appends). Each part file is named by its input batch, so a retried batch rewrites its own
file instead of adding a duplicate.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mindref.outputs import write_failed
from mindref.readers import decoded_lines

from .bundle import load_bundle
from .serve import encoded, request_ids, retrieve_encoded

RESULTS = pa.schema([("user", pa.string()), ("items", pa.list_(pa.string())),
                     ("scores", pa.list_(pa.float32())), ("interest", pa.list_(pa.int8()))])
ERRORS = pa.schema([("user", pa.string()), ("reason", pa.string())])
SERVED = RESULTS.append(pa.field("reason", pa.string()))  # what the per-batch function returns
ENGINES = ("local", "ray")
SUCCESS = "_SUCCESS.json"
# '_' like _SUCCESS: Parquet readers (pyarrow, Ray, Spark) skip it, so OUT reads as the results alone
ERRORS_DIR = "_errors"


class BatchServer:
    """The per-batch function: a requests table (user, history[, profile]) -> SERVED rows, one per
    request, `reason` null where served. Loads and verifies the bundle once (one Ray actor each)."""

    def __init__(self, bundle: str | Path, n: int = 50, search: str = "auto", threads: int | None = None,
                 provider: str = "cpu", precision: str | None = None, users_per_run: int | None = None):
        self.bundle = load_bundle(bundle, provider, threads, precision=precision, users=users_per_run)
        self.n, self.exact = n, search
        self.raw = np.array([self.bundle.raw_id(i) for i in range(self.bundle.cfg.num_items)], dtype=object)

    def __call__(self, table: pa.Table) -> pa.Table:
        users = [None if u is None else str(u) for u in _column(table, "user")]
        histories, profiles = _strings(_column(table, "history")), _strings(_column(table, "profile"))
        reasons = _column(table, "reason")  # set by the reader for lines that were not JSON
        ids, reasons = _validate(self.bundle, users, histories, profiles, reasons)
        ok = [r for r, reason in enumerate(reasons) if reason is None]
        rows = {"items": [None] * len(users), "scores": [None] * len(users), "interest": [None] * len(users)}
        if ok:
            found, _ = retrieve_encoded(self.bundle, *encoded(self.bundle, [ids[r] for r in ok]), self.n,
                                           self.exact)
            for r, res in zip(ok, found):
                rows["items"][r] = self.raw[res.items].tolist()
                rows["scores"][r] = res.scores.astype(np.float32)
                rows["interest"][r] = res.interests.astype(np.int8)
        return pa.table({"user": users, **rows, "reason": reasons}, schema=SERVED)


def _strings(lists: list) -> list:
    """Raw ids as strings (a Parquet input may hold integer ids)."""
    return [None if v is None else [None if x is None else str(x) for x in v] for v in lists]


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _validate(bundle, users: list, histories: list, profiles: list, reasons: list) -> tuple[list, list]:
    """Model ids of each request, and the reason it cannot be served (None where it can)."""
    ids, out = [None] * len(users), list(reasons)
    for r, (user, history, profile) in enumerate(zip(users, histories, profiles)):
        if out[r] is not None:
            continue
        try:
            if user is None:
                raise ValueError("user: missing")
            ids[r] = request_ids(bundle, history if history is not None else [], profile)
        except ValueError as err:
            out[r] = str(err)
    return ids, out


def split_outcomes(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """SERVED rows -> (RESULTS rows, ERRORS rows)."""
    failed = pc.is_valid(table.column("reason"))
    served = table.filter(pc.invert(failed)).select(RESULTS.names).cast(RESULTS)
    return served, table.filter(failed).select(ERRORS.names).cast(ERRORS)


def write_outcomes(folder: Path, name: str, table: pa.Table) -> tuple[int, int]:
    """folder/name.parquet (served) and folder/_errors/name.parquet (failed), each written aside and
    renamed, an empty one not at all; (served rows, failed rows). A failed write (a full disk)
    removes its temporary file and names the path and the free space."""
    counts = []
    for sub, part in zip((folder, folder / ERRORS_DIR), split_outcomes(table)):
        counts.append(part.num_rows)
        if not part.num_rows:
            continue
        tmp, final = sub / f".{name}.parquet.tmp", sub / f"{name}.parquet"
        try:
            sub.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, tmp)
            os.replace(tmp, final)
        except OSError as err:
            raise write_failed(final, err, tmp) from None
    return counts[0], counts[1]


# --- reading requests --------------------------------------------------------------------------

def is_jsonl(path: Path) -> bool:
    return path.is_file() and path.suffix in (".jsonl", ".json", ".ndjson")


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the Parquet files of a folder (sorted), or FileNotFoundError; each one's
    schema checked (check_schema)."""
    files = [path] if path.is_file() else sorted(path.glob("*.parquet")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"--users {path}: no Parquet file or JSON lines (.jsonl) there")
    for file in files:
        check_schema(file)
    return files


def check_schema(file: Path) -> None:
    """A requests file must be Parquet with `user` (string or integer) and `history` (a list of
    strings or integers), `profile` (such a list) optional: anything else is refused before any row
    is read, naming the file, the columns it has and the ones expected (a file of the wrong shape
    would otherwise put every row in _errors/)."""
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as err:
        hint = " (a CSV or JSON file? give JSON lines a .jsonl name)" if "magic bytes" in str(err) else ""
        raise ValueError(f"--users {file}: not a Parquet file{hint}: {str(err).splitlines()[0]}") from None
    problems = []
    for name, need in (("user", "string or integer"), ("history", "list of strings or integers"),
                       ("profile", "list of strings or integers")):
        if name not in schema.names:
            if name != "profile":
                problems.append(f"no column {name!r} ({need})")
            continue
        typ = schema.field(name).type
        ok = (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_integer(typ)
              if name == "user" else
              (pa.types.is_list(typ) or pa.types.is_large_list(typ))
              and (pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type)
                   or pa.types.is_integer(typ.value_type)))
        if not ok:
            problems.append(f"column {name!r} is {typ}, expected {need}")
    if problems:
        columns = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise ValueError(f"--users {file}: {'; '.join(problems)} (its columns: {columns}); see "
                         "`mindref batch --help` for the request format")


def parse_lines(lines: list[str], first: int | None = None) -> pa.Table:
    """JSON-line requests -> a requests table; a line that is not a request keeps its row, with
    `reason` saying why (so it lands in _errors/ and every input row is accounted for)."""
    users, histories, profiles, reasons = [], [], [], []
    for k, text in enumerate(lines):
        where = f"line {first + k}: " if first is not None else ""
        try:
            req = json.loads(text)
            if not isinstance(req, dict):
                raise ValueError("expected an object")
        except ValueError as err:
            users.append(None), histories.append(None), profiles.append(None)
            reasons.append(f"{where}not a JSON request ({err}): {text[:60]!r}")
            continue
        users.append(None if req.get("user") is None else str(req.get("user")))
        h, p = req.get("history"), req.get("profile")
        bad = [f for f, v in (("history", h), ("profile", p)) if v is not None and not isinstance(v, list)]
        histories.append([str(x) for x in h] if isinstance(h, list) else None)
        profiles.append([str(x) for x in p] if isinstance(p, list) else None)
        reasons.append(f"{where}{bad[0]}: expected a list, got {req.get(bad[0])!r:.40}" if bad else None)
    return pa.table({"user": users, "history": histories, "profile": profiles, "reason": reasons},
                    schema=pa.schema([("user", pa.string()), ("history", pa.list_(pa.string())),
                                      ("profile", pa.list_(pa.string())), ("reason", pa.string())]))


def count_requests(path: Path) -> int:
    """Rows of the input, counted apart from the job (so the job's outputs can be checked against it)."""
    if is_jsonl(path):
        return sum(1 for _, text in decoded_lines(path) if text.strip())
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


def local_batches(path: Path, batch_size: int) -> Iterator[pa.Table]:
    """Requests tables of at most batch_size rows, in input order."""
    if is_jsonl(path):
        chunk, first = [], None
        for number, text in decoded_lines(path):
            if text.strip():
                first = number if first is None else first
                chunk.append(text)
            if len(chunk) == batch_size:
                yield parse_lines(chunk, first)
                chunk, first = [], None
        if chunk:
            yield parse_lines(chunk, first)
        return
    for file in parquet_files(path):
        for batch in pq.ParquetFile(file).iter_batches(batch_size):
            yield pa.Table.from_batches([batch])
