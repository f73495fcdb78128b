"""The batch job (`mindref batch`): recommendations for every user of a file, in one process
(`local`) or on Ray Data (`ray`, mindref/export/distributed.py), Parquet in and out; the formats
and the per-batch function are in mindref/export/batch.py.

The job writes into a temporary sibling folder and renames it onto OUT only after _SUCCESS.json is
written (last), so a folder without _SUCCESS.json is never a finished result. A finished OUT is
replaced only with --force (an unfinished one always); never appended to. One job writes an OUT at
a time (mindref.outputs.OutputLock). A job none of whose rows could be served has not succeeded:
its OUT holds _errors/ and no _SUCCESS.json, and it raises NothingServed (exit status 1).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from mindref.outputs import OutputLock, check_output, move_into_place

from .batch import ENGINES, ERRORS_DIR, SUCCESS, BatchServer, count_requests, local_batches, write_outcomes


def run_batch(bundle: str | Path, users: str | Path, out: str | Path, engine: str = "local",
              address: str | None = None, workers: int | None = None, batch_size: int = 1024, n: int = 50,
              search: str = "auto", threads: int | None = None, progress=None,
              rows: int | None = None, provider: str = "auto", gpus: int | None = None,
              precision: str | None = None, users_per_run: int | None = None, force: bool = False) -> dict:
    """Recommend for every user of `users` into the folder `out`; returns the _SUCCESS.json record.
    rows: the input's row count when the caller has it (counted here otherwise). provider: where
    the local engine runs the graphs; gpus: the Ray engine's actors, one per GPU (CUDA), instead of
    CPU actors; precision and users_per_run: load_bundle's."""
    bundle, users, out = Path(bundle), Path(users), Path(out)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if batch_size < 1 or n < 1 or (workers is not None and workers < 1):
        raise ValueError("--batch-size, -n and --workers must be >= 1")
    if gpus is not None and (engine != "ray" or gpus < 1):
        raise ValueError("--gpus N (N >= 1) is for --engine ray: one actor per GPU; the local engine "
                         "takes --provider cuda")
    if gpus is not None and workers is not None:
        raise ValueError("--gpus sets the actors (one per GPU); leave out --workers")
    check_output(out, {"--users": users, "--bundle": bundle})
    with OutputLock(out, "batch"):
        check_replaceable_output(out, force)
        return _run(bundle, users, out, engine, address, workers, batch_size, n, search, threads, progress,
                    rows, provider, gpus, precision, users_per_run)


class NothingServed(RuntimeError):
    """A batch job that served no row: not a success (no _SUCCESS.json)."""


def _run(bundle, users, out, engine, address, workers, batch_size, n, search, threads, progress, rows,
         provider, gpus, precision, users_per_run) -> dict:
    # verify the bundle once, here, before any worker starts; the local engine serves with it (the
    # driver of a Ray job checks it on the CPU: its GPUs belong to the actors)
    server = BatchServer(bundle, n, search, threads if engine == "local" else 1,
                         provider if engine == "local" else "cpu", precision, users_per_run)
    if engine != "local":
        del server  # the driver serves nothing: its copy of the bundle goes before the actors load theirs
    checksum = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        rows_in = count_requests(users) if rows is None else rows
        if engine == "local":
            served, failed = _run_local(server, users, tmp, batch_size, progress)
        else:
            from .distributed import run_ray
            served, failed, workers = run_ray(bundle, users, tmp, batch_size, n, search, address, workers,
                                              threads=threads or 1, gpus=gpus, precision=precision,
                                              users_per_run=users_per_run)
        if served + failed != rows_in:  # every input row in exactly one output
            raise RuntimeError(f"{rows_in} input rows but {served} results + {failed} errors were written")
        if rows_in and not served:  # every row failed: keep the reasons, claim no success
            first = _first_reason(tmp)
            move_into_place(tmp, out)
            raise NothingServed(f"none of the {rows_in:,} requests could be served; the reasons are in "
                                f"{out / ERRORS_DIR}/ (the first: {first}); no {SUCCESS} was written")
        record = {"input_rows": rows_in, "output_rows": served, "error_rows": failed, "engine": engine,
                  "workers": workers if engine == "ray" else 1, "threads": threads, "gpus": gpus,
                  "provider": server.bundle.tower.provider if engine == "local" else
                  ("cuda" if gpus else "cpu"), "precision": precision,
                  "bundle": str(bundle.resolve()), "bundle_manifest_sha256": checksum, "n": n,
                  "search": search, "seconds": round(time.perf_counter() - t0, 3)}
        (tmp / SUCCESS).write_text(json.dumps(record, indent=2))  # last: the job is complete
        move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _run_local(server: BatchServer, users: Path, folder: Path, batch_size: int, progress) -> tuple[int, int]:
    served = failed = 0
    for k, table in enumerate(local_batches(users, batch_size)):
        a, b = write_outcomes(folder, f"part-{k:06d}", server(table))
        served, failed = served + a, failed + b
        if progress is not None:
            progress(table.num_rows)
    return served, failed


def _first_reason(folder: Path) -> str:
    import pyarrow.parquet as pq

    parts = sorted((folder / ERRORS_DIR).glob("*.parquet"))
    return pq.read_table(parts[0]).column("reason")[0].as_py() if parts else "unknown"


def check_replaceable_output(out: Path, force: bool = False) -> None:
    """OUT may be new, empty, an unfinished batch output, or (with force) a finished one; never
    another folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"--out {out}: is a file; give a folder for the batch output")
    if (out / SUCCESS).exists() and not force:
        raise FileExistsError(f"--out {out}: holds a finished batch output; pass --force to replace it, or "
                              "choose another --out")
    foreign = [p.name for p in out.iterdir()
               if not (p.name == SUCCESS or p.name == ERRORS_DIR and p.is_dir() or p.suffix == ".parquet")]
    if foreign:
        raise FileExistsError(f"--out {out}: holds files that are not a batch output "
                              f"({', '.join(foreign[:5])}); a rerun replaces only a batch output. "
                              "Choose another --out")
