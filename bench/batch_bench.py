"""The batch job at scale: a 1,000,000-item catalogue and 100,000 users (issue 12).

    python bench/batch_bench.py --work /tmp/batch-bench                 # build, then measure all
    python bench/batch_bench.py --work /tmp/batch-bench --users 20000   # fewer users
    python bench/batch_bench.py --work /tmp/batch-bench --skip-build --engine-users 20000 --rounds 3

1. A catalogue with trained-like vectors: MIND trained on the embedded planted data (d = 64), then
   each of the 1M items is one trained item's embedding plus Gaussian noise (10% of its norm), in
   that item's category; every other parameter is the trained model's. Exported as a bundle (tower,
   item vectors, topn.onnx, Annoy with 10 trees).
2. Users: planted-interest histories (2-4 clusters each, 5-40 items) over the big catalogue, in a
   Parquet file of 1,024-row row groups.
3. Measured, each as `mindref batch` in its own process (so thread settings hold from the start):
   searches (NumPy exact, ONNX exact, Annoy) on a slice of users with the local engine on 2
   threads, Annoy's recall@50 against exact; engines with ONNX exact over every user: local on 1
   thread, local on 2 threads, Ray with 2 single-threaded actors. Users/s, and memory sampled every
   1 s from /proc/PID/smaps_rollup of the job's processes (the `mindref batch` process and every
   process it starts, Ray's included): per worker (the local process; each Ray actor serving
   BatchServer) the peak of its own memory (Anonymous: heap, arenas, score buffers) and of its
   file-mapped pages (the bundle's mapped .npy arrays and Annoy index: page cache, one copy per
   machine however many workers map it); and the peak of the job's total proportional set size
   (PSS: shared pages divided among the processes mapping them), the physical memory of the job.
   CPU seconds (sampled with the memory, so a process's last second may be missed): of the workers,
   and of the rest of the job (the driver; with Ray its raylet, GCS, read and write tasks).

Figures are ratios measured in one run; the machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mindref.data import Dataset, synthetic
from mindref.datasets import split
from mindref.model import MINDConfig
from mindref.train import fit


def build(work: Path, items: int, users: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mindref.export import export_bundle

    rng = np.random.default_rng(seed)
    ds = synthetic(num_users=2000, seed=seed)
    spec = {"protocol": "loo", "max_len": 50}
    train, _, _ = split(ds, spec, {})
    cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                     dim=64, K=4, hidden=(64,), max_len=50, seed=seed)
    t = time.perf_counter()
    params = fit(cfg, ds, train, epochs=3, batch_size=256, num_neg=256).params
    print(f"trained on planted data: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    base = 1 + rng.integers(0, ds.num_items - 1, items)  # [items] the trained item each copies
    base[: ds.num_items - 1] = np.arange(1, ds.num_items)
    emb = params["item_emb"][base]
    noise = rng.normal(size=emb.shape).astype(np.float32)
    emb += 0.1 * noise * np.linalg.norm(emb, axis=1, keepdims=True) / np.sqrt(emb.shape[1])
    big = dict(params, item_emb=np.vstack([np.zeros((1, cfg.dim), np.float32), emb]))
    category = np.vstack([[[0]], ds.item_fields[0][base]])  # [items + 1, 1]
    big_cfg = MINDConfig(**{**cfg.to_dict(), "num_items": items + 1})
    big_ds = Dataset([np.array([1])], (category,), ds.field_names, ds.profiles[:1], ds.profile_names)
    t = time.perf_counter()
    export_bundle(work / "bundle", big, big_cfg, big_ds, n_trees=10, overwrite=True)
    print(f"exported {items:,} items: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    # users: planted interests over the big catalogue (items grouped by their trained item's cluster)
    by_cluster = [np.flatnonzero(category[:, 0] == c) for c in range(1, int(category.max()) + 1)]
    histories = []
    for _ in range(users):
        mine = rng.choice(len(by_cluster), rng.integers(2, 5), replace=False)
        pool = np.concatenate([by_cluster[c] for c in mine])
        histories.append([str(i) for i in rng.choice(pool, rng.integers(5, 41), replace=False)])
    table = pa.table({"user": [f"u{u}" for u in range(users)], "history": histories})
    pq.write_table(table, work / "users.parquet", row_group_size=1024)
    pq.write_table(table.slice(0, 2000), work / "users-2k.parquet", row_group_size=1024)


ONLY: list | None = None


def run(work: Path, name: str, users: str, threads: int, *flags: str) -> dict | None:
    """One `mindref batch` in its own process; its _SUCCESS.json, users/s and peak memory."""
    if ONLY and name not in ONLY:
        return None
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    out = work / f"out-{name}"
    cmd = [sys.executable, "-m", "mindref", "batch", "--bundle", str(work / "bundle"), "--users",
           str(work / users), "--out", str(out), "--threads", str(threads), *flags]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    memory = Memory(proc.pid)
    while proc.poll() is None:
        memory.sample()
        time.sleep(SAMPLE_EVERY)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode})")
    record = json.loads((out / "_SUCCESS.json").read_text())
    row = {"run": name, "users": record["input_rows"], "seconds": round(seconds, 1),
           "users_per_s": round(record["input_rows"] / seconds, 1),
           "job_users_per_s": round(record["input_rows"] / record["seconds"], 1), **memory.summary()}
    print(json.dumps(row), flush=True)
    return row


SAMPLE_EVERY = 1.0  # seconds between samples (each costs the job a little CPU: see Memory)
TREE_EVERY = 5  # samples between two listings of the job's processes


class Memory:
    """Peaks of a process tree's memory, from /proc (Linux): per worker process its own
    (Anonymous) and file-mapped (Rss - Anonymous) memory, and the tree's total PSS; and the CPU
    seconds of the workers and of every other process of the tree (the engine's own cost).

    Sampling is not free: listing every process of the machine and reading smaps_rollup (which
    walks the page tables of a process mapping 1 GB) every 0.2 s took 18% of a core from the
    2-core job, and more from Ray's 15 processes than from the local engine's one, so the
    listing is refreshed every TREE_EVERY samples and a sample taken every SAMPLE_EVERY s."""

    def __init__(self, root: int):
        self.root, self.workers, self.total_pss, self.cpu = root, {}, 0, {}
        self.samples, self.pids = 0, [root]

    def sample(self) -> None:
        if self.samples % TREE_EVERY == 0:
            self.pids = self._tree()
        self.samples += 1
        pss = 0
        for pid in self.pids:
            use = _rollup(pid)
            if not use:
                continue  # exited between the listing and the read
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_seconds(pid))
            pss += use["Pss"]
            if pid == self.root or b"BatchServer" in _cmdline(pid):
                own, mapped = self.workers.get(pid, (0, 0))
                self.workers[pid] = (max(own, use["Anonymous"]), max(mapped, use["Rss"] - use["Anonymous"]))
        self.total_pss = max(self.total_pss, pss)

    def summary(self) -> dict:
        actors = {p: m for p, m in self.workers.items() if p != self.root}  # Ray: the driver is no worker
        per_worker = list((actors or self.workers).values())
        worker_cpu = sum(c for p, c in self.cpu.items() if p in (actors or self.workers))
        other_cpu = sum(self.cpu.values()) - worker_cpu
        return {"worker_cpu_s": round(worker_cpu, 1), "other_cpu_s": round(other_cpu, 1),
                "workers": len(per_worker), "worker_own_mib": [round(o / 1024) for o, _ in per_worker],
                "worker_mapped_mib": [round(m / 1024) for _, m in per_worker],
                "driver_own_mib": round(self.workers.get(self.root, (0, 0))[0] / 1024) if actors else None,
                "job_pss_peak_mib": round(self.total_pss / 1024)}

    def _tree(self) -> list[int]:
        parent = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        tree, frontier = [self.root], [self.root]
        while frontier:
            frontier = [p for p, pp in parent.items() if pp in frontier]
            tree += frontier
        return tree


def _rollup(pid: int) -> dict:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    fields = {line.split(":")[0]: int(line.split()[1]) for line in lines[1:] if line.endswith("kB")}
    return fields if {"Rss", "Pss", "Anonymous"} <= fields.keys() else {}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (a sample taken before it exits)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def subset(work: Path, n: int | None) -> str:
    """users.parquet, or its first n users as users-<n>.parquet (1,024-row row groups)."""
    if n is None:
        return "users.parquet"
    import pyarrow.parquet as pq
    name = f"users-{n}.parquet"
    pq.write_table(pq.read_table(work / "users.parquet").slice(0, n), work / name, row_group_size=1024)
    return name


def recall(work: Path, a: str, b: str, n: int = 50) -> float:
    import pyarrow.parquet as pq

    exact = {r["user"]: set(r["items"][:n]) for r in pq.read_table(work / f"out-{a}").to_pylist()}
    approx = {r["user"]: set(r["items"][:n]) for r in pq.read_table(work / f"out-{b}").to_pylist()}
    return float(np.mean([len(exact[u] & approx[u]) / len(exact[u]) for u in exact]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a scratch folder (about 1.5 GB)")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--only", nargs="*", help="only these runs (e.g. ray-2-workers), with --skip-build")
    ap.add_argument("--engine-users", type=int, help="the engine runs on the first N users only "
                                                     "(default: every user)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the three engine runs")
    args = ap.parse_args()
    global ONLY
    ONLY = args.only
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.skip_build:
        build(args.work, args.items, args.users)
    manifest = json.loads((args.work / "bundle" / "manifest.json").read_text())
    print(json.dumps({"export_measured_search": manifest["search"]}), flush=True)
    searches = [run(args.work, f"search-{s}", "users-2k.parquet", 2, "--engine", "local", "--search", s)
                for s in ("exact", "onnx", "annoy")]
    if None not in searches:
        recalls = {f"{s}_recall@50_vs_exact": round(recall(args.work, "search-exact", f"search-{s}"), 4)
                   for s in ("annoy", "onnx")}
        print(json.dumps(recalls), flush=True)
    users = subset(args.work, args.engine_users)
    ratios = []
    for r in range(args.rounds):  # the three runs back to back in each round, so noise hits all three
        rows = [run(args.work, "local-1-thread", users, 1, "--engine", "local", "--search", "onnx"),
                run(args.work, "local-2-threads", users, 2, "--engine", "local", "--search", "onnx"),
                run(args.work, "ray-2-workers", users, 1, "--engine", "ray", "--workers", "2",
                    "--search", "onnx")]
        if None in rows:
            return
        local1, local2, ray2 = (row["job_users_per_s"] for row in rows)
        ratios.append((ray2 / local1, ray2 / local2))
        print(json.dumps({"round": r + 1, "ray_2_workers / local_1_thread": round(ray2 / local1, 2),
                          "ray_2_workers / local_2_threads": round(ray2 / local2, 2)}), flush=True)
    print(json.dumps({"rounds": args.rounds, "median ray_2_workers / local_1_thread": round(
        statistics.median(a for a, _ in ratios), 2), "median ray_2_workers / local_2_threads": round(
        statistics.median(b for _, b in ratios), 2)}), flush=True)

if __name__ == "__main__":
    main()
