"""The batch job on Ray Data (`mindref batch --engine ray`): read -> map_batches -> write.

    requests (read_parquet, or read_text of JSON lines)
      -> map_batches(BatchServer): an actor pool; each actor loads and verifies the bundle once
      -> write_datasink(OutcomeSink): served rows to OUT/part-*.parquet, failed rows to OUT/_errors/

With no address a local Ray starts on this machine (nothing to set up); an address joins an
existing cluster (OUT must then be on storage every node can write). The actors' CPU share is
sized from the cluster so that read and write tasks always find a CPU: on a 2-CPU machine a pool
of 2 actors of 1 CPU each leaves none, and Ray Data stalls (measured). Each actor runs its model
single-threaded by default (onnxruntime intra-op threads and the BLAS), so N actors use N cores.

With gpus=N the pool is N actors of one GPU each (Ray sets each actor's CUDA_VISIBLE_DEVICES, so
its session's device 0 is its own GPU), each loading the bundle once on CUDA (provider 'cuda': an
actor whose CUDA provider does not load fails the job, never falls back to the CPU silently); a
cluster with fewer than N GPUs is refused before any actor starts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from pathlib import Path

import pyarrow as pa
import ray
import ray.data
from ray.data import Datasink

from .batch import BatchServer, is_jsonl, parquet_files, parse_lines, write_outcomes

BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
READ_WRITE_CPUS = 1.0  # kept free of actors for the read and write tasks (0.5 stalled on 2 CPUs)
TASK_CPUS = 0.25  # a read, parse or write task (Ray's default of 1 CPU would not fit)


class OutcomeSink(Datasink):
    """Writes each block's served and failed rows (batch.write_outcomes). A file is named by the
    write task and the block's place in it, so a retried task rewrites its files, never adds."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder, self.counts = folder, (0, 0)

    def write(self, blocks, ctx) -> tuple[int, int]:
        served = failed = 0
        for i, block in enumerate(blocks):
            a, b = write_outcomes(self.folder, f"part-{ctx.task_idx:06d}-{i:04d}", pa.table(block))
            served, failed = served + a, failed + b
        return served, failed

    def on_write_complete(self, write_result) -> None:
        returns = list(write_result.write_returns)
        self.counts = (sum(a for a, _ in returns), sum(b for _, b in returns))


def check_gpus(gpus: int | None, available: float) -> None:
    """--gpus N needs N GPUs in the Ray cluster (Ray counts the GPUs it can see: none where CUDA
    has no device, or CUDA_VISIBLE_DEVICES hides them)."""
    if gpus is not None and available < gpus:
        raise RuntimeError(f"--gpus {gpus}: the Ray cluster has {available:g} GPU(s); run on machines with "
                           "CUDA GPUs (and onnxruntime-gpu: pip install 'mindref[export-gpu]'), or leave "
                           "out --gpus to serve on CPUs")


@contextlib.contextmanager
def quiet_fd2():
    """File descriptor 2 sent to /dev/null for the block (C++ writes it directly, bypassing
    sys.stderr), then put back."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


CONNECT_TIMEOUT_S = 10.0  # an --address that does not answer in this time is refused


def check_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """An --address (host:port or ray://host:port) must accept a connection within `timeout` seconds;
    Ray's own join retries for minutes with a warning a line (measured). 'auto' and None are Ray's."""
    if address in (None, "auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address}: expected HOST:PORT or ray://HOST:PORT (the address "
                         "`ray start --head` prints)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"--address {address}: no Ray cluster answered within {timeout:g} s ({err}); "
                              "check the address (`ray status` on the head node prints it), that the head "
                              "is running, and that this machine can reach the port") from None


def check_workers(workers: int | None, cpus: float) -> None:
    """--workers N: at most one actor per CPU of the cluster (more cannot all start, and Ray Data
    waits for them without a word: measured, a hang)."""
    if workers is not None and workers > max(1, int(cpus)):
        raise ValueError(f"--workers {workers}: the Ray cluster has {cpus:g} CPUs, so at most "
                         f"{max(1, int(cpus))} workers (one per CPU; leave out --workers for that)")


def actor_share(cpus: float, workers: int) -> float:
    """CPUs per actor: the cluster's CPUs less READ_WRITE_CPUS, shared by the actors, at most 1."""
    return max(0.05, min(1.0, (cpus - READ_WRITE_CPUS) / workers))


def quiet_ray_data_console() -> None:
    """Ray Data logs a failed task's whole traceback to the console (161 lines for one full disk,
    measured) before raising it; the job reports the cause in one line itself. The console hears
    nothing below CRITICAL from Ray Data; its session log file (ray-data.log) keeps everything."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL)


def run_ray(bundle: Path, users: Path, folder: Path, batch_size: int, n: int, search: str,
            address: str | None = None, workers: int | None = None, server: type = BatchServer,
            threads: int = 1, gpus: int | None = None, precision: str | None = None,
            users_per_run: int | None = None) -> tuple[int, int, int]:
    """(served rows, failed rows, actors) written under folder by a Ray Data job. The input is cut into
    blocks of batch_size rows as it streams (a Parquet file of one row group is read as one block,
    which one actor alone would serve); threads: each actor's onnxruntime and BLAS threads; gpus:
    actors of one GPU each (CUDA sessions) instead of CPU actors."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ log lines are not the user's
    started = not ray.is_initialized()
    if started:
        check_address(address)
        with quiet_fd2():  # Ray's processes inherit this stderr; their C++ log lines are not the user's
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True)
    quiet_ray_data_console()
    try:
        return _job(bundle, users, folder, batch_size, n, search, workers, server, threads, gpus, precision,
                    users_per_run)
    except KeyboardInterrupt:  # stop the cluster this job started now, not ~90 s later (measured)
        if started:
            ray.shutdown()
        raise


def _job(bundle, users, folder, batch_size, n, search, workers, server, threads, gpus, precision,
         users_per_run) -> tuple[int, int, int]:
    context = ray.data.DataContext.get_current()
    context.enable_operator_progress_bars = False  # one progress bar for the job
    cpus = float(ray.cluster_resources().get("CPU", 1))
    check_gpus(gpus, float(ray.cluster_resources().get("GPU", 0)))
    if not gpus:
        check_workers(workers, cpus)
    workers = gpus or workers or max(1, int(cpus))
    if is_jsonl(users):
        requests = ray.data.read_text(str(users), num_cpus=TASK_CPUS).map_batches(
            _parse_text, batch_format="pyarrow", num_cpus=TASK_CPUS)
    else:
        requests = ray.data.read_parquet([str(f) for f in parquet_files(users)], num_cpus=TASK_CPUS)
    served = requests.repartition(target_num_rows_per_block=batch_size).map_batches(
        server, fn_constructor_kwargs={"bundle": str(bundle), "n": n, "search": search, "threads": threads,
                                       "provider": "cuda" if gpus else "cpu", "precision": precision,
                                       "users_per_run": users_per_run},
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=actor_share(cpus, workers),
        num_gpus=1 if gpus else None, batch_size=batch_size, batch_format="pyarrow",
        runtime_env={"env_vars": {v: str(threads) for v in BLAS_THREADS}})
    sink = OutcomeSink(folder)
    served.write_datasink(sink, ray_remote_args={"num_cpus": TASK_CPUS})
    return (*sink.counts, workers)


def _parse_text(table: pa.Table) -> pa.Table:
    lines = [t for t in table.column("text").to_pylist() if t.strip()]
    return parse_lines(lines)
