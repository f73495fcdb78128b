"""The CPU's top-n graph (export/topn.py, the blocked form) at a large catalogue: its block size
and users per run, onnxruntime's time per node, and the cost of keeping the catalogue unpacked
(the GPU's pruned form: bench/gpu_check.py).

    python bench/topn_profile.py                  # 1,000,000 items, d = 64, K = 4, 256 users, top 50
    python bench/topn_profile.py --threads 1      # one intra-op thread (a Ray actor's setting)

Random item vectors and interests (speed does not depend on their values), a third of the users
with K'_u = 3, histories of 30 items. 1. Users/s (best of 3 timed runs after a warm-up) for every
block size x chunk of users, the last block size being the whole catalogue in one block (the
graph without blocking), with each graph's answers checked equal to the default's. 2. onnxruntime's
profile of the default graph (BLOCK, CPU_USERS), per operator. 3. TopNSession turns onnxruntime's
prepacking off so that the vectors are used where they are mapped, shared by every worker
(export/arrays.py): the default graph with prepacking on and off, rounds alternating, the median
ratio. With --forms, only this: the GPU's pruned form (chunks of CHUNK and twice that) on the CPU
against the blocked default, rounds alternating, medians (why the CPU keeps the blocked form).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mindref.export.runtime import make_session
from mindref.export.topn import BLOCK, CHUNK, CPU_USERS, TopNSession, build_topn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    ap.add_argument("--blocks", type=int, nargs="*", default=[8192, 16384, 32768, 65536],
                    help="block sizes to time (the whole catalogue in one block is always added)")
    ap.add_argument("--users-per-run", type=int, nargs="*", default=[16, 32, 64, 128], dest="chunks")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--forms", action="store_true", help="only the pruned form against the blocked default")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    E = rng.normal(size=(args.items + 1, 64)).astype(np.float32)
    E[0] = 0
    V = rng.normal(size=(args.users, 4, 64)).astype(np.float32)
    mask = np.ones((args.users, 4), bool)
    mask[::3, 3] = False
    hist = rng.integers(1, args.items, (args.users, 30))
    default = TopNSession(build_topn(E, 4).SerializeToString(), len(E), "cpu", args.threads)
    want = default.run(V, mask, hist, 50)
    if args.forms:
        return forms(args, E, V, mask, hist, default, want)
    grid = {}
    for block in [*args.blocks, len(E)]:
        graph = build_topn(E, 4, block=block).SerializeToString()
        for chunk in args.chunks:
            session = TopNSession(graph, len(E), "cpu", args.threads, users=chunk)
            got = session.run(V, mask, hist, 50)
            if not all(np.array_equal(a, b) for a, b in zip(got, want)):
                raise SystemExit(f"block {block}, chunk {chunk}: answers differ from the default graph's")
            rate = args.users / min(_timed(lambda s=session: s.run(V, mask, hist, 50)) for _ in range(3))
            grid[block, chunk] = rate
            print(json.dumps({"threads": args.threads, "block": block, "chunk": chunk,
                              "users_per_s": round(rate, 1)}), flush=True)
    whole = max(rate for (block, _), rate in grid.items() if block == len(E))
    default_rate = grid.get((BLOCK, CPU_USERS), 0)
    print(json.dumps({"default": [BLOCK, CPU_USERS], "default_users_per_s": round(default_rate, 1),
                      "best": max(grid, key=grid.get),
                      "default / best unblocked": round(default_rate / whole, 2)}), flush=True)
    model = build_topn(E, 4).SerializeToString()
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.add_session_config_entry("session.disable_prepacking", "1")  # as TopNSession runs it
    if args.threads:
        options.intra_op_num_threads = args.threads
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "topn")  # not into the current folder
    profiled = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {"interests": V[:CPU_USERS], "interest_mask": mask[:CPU_USERS], "history": hist[:CPU_USERS],
             "n": np.array([50])}
    for _ in range(4):
        profiled.run(None, feeds)
    per_node = defaultdict(float)
    for event in json.load(open(profiled.end_profiling())):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["args"]["op_name"]] += event["dur"] / 4 / 1000
    total = sum(per_node.values())
    print(json.dumps({op: f"{ms:.1f} ms ({ms / total:.0%})" for op, ms in
                      sorted(per_node.items(), key=lambda kv: -kv[1]) if ms >= 0.1}))
    packed = TopNSession(model, len(E), "cpu", args.threads)
    packed.session = make_session(model, "cpu", args.threads, prepack=True)
    rates = {"unpacked": [], "prepacked": []}
    for _ in range(args.rounds):
        for name, s in (("unpacked", default), ("prepacked", packed)):
            rates[name].append(args.users / _timed(lambda s=s: s.run(V, mask, hist, 50)))
    ratio = statistics.median(u / p for u, p in zip(rates["unpacked"], rates["prepacked"]))
    print(json.dumps({"threads": args.threads, **{f"{k}_users_per_s": round(statistics.median(v), 1)
                                                  for k, v in rates.items()},
                      "unpacked / prepacked (median of rounds)": round(ratio, 3)}))


def forms(args, E, V, mask, hist, default: TopNSession, want) -> None:
    sessions = {"blocked (default)": default}
    for chunk in (CHUNK, 2 * CHUNK):
        graph = build_topn(E, 4, form="pruned", chunk=chunk).SerializeToString()
        sessions[f"pruned, chunks of {chunk}"] = s = TopNSession(graph, len(E), "cpu", args.threads,
                                                                 users=CPU_USERS)
        if not np.array_equal(s.run(V, mask, hist, 50)[0], want[0]):
            raise SystemExit(f"pruned, chunks of {chunk}: answers differ from the blocked graph's")
    rates = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            rates[name].append(args.users / _timed(lambda s=s: s.run(V, mask, hist, 50)))
    print(json.dumps({"threads": args.threads, "users_per_run": CPU_USERS,
                      **{name: round(statistics.median(r), 1) for name, r in rates.items()}}))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
