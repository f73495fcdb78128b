"""The top-n graph (export/topn.py) at a large catalogue: users/s and onnxruntime's time per node.

    python bench/topn_profile.py                  # 1,000,000 items, d = 64, K = 4, 64 users, top 50
    python bench/topn_profile.py --threads 1      # one intra-op thread (a Ray actor's setting)

Random item vectors and interests (speed does not depend on their values); TopNSession's default
chunk (16 users at 1M items); the best of 3 timed runs after a warm-up; then one profiled session.
Last, the cost of keeping the catalogue unpacked (TopNSession turns onnxruntime's prepacking off so
that the vectors are used where they are mapped, shared by every worker: export/arrays.py): the
same graph with prepacking on and off, rounds alternating, the median ratio.
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
from mindref.export.topn import TopNSession, build_topn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    E = rng.normal(size=(args.items + 1, 64)).astype(np.float32)
    E[0] = 0
    V = rng.normal(size=(args.users, 4, 64)).astype(np.float32)
    mask = np.ones((args.users, 4), bool)
    hist = rng.integers(1, args.items, (args.users, 20))
    model = build_topn(E, 4).SerializeToString()
    session = TopNSession(model, len(E), 4, "cpu", args.threads)
    session.run(V, mask, hist, 50)
    best = min(_timed(lambda: session.run(V, mask, hist, 50)) for _ in range(3))
    print(json.dumps({"items": args.items, "users": args.users, "chunk": session.chunk,
                      "users_per_s": round(args.users / best, 1)}))
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.add_session_config_entry("session.disable_prepacking", "1")  # as TopNSession runs it
    if args.threads:
        options.intra_op_num_threads = args.threads
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "topn")  # not into the current folder
    profiled = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {"interests": V[:session.chunk], "interest_mask": mask[:session.chunk],
             "history": hist[:session.chunk], "n": np.array([50])}
    for _ in range(4):
        profiled.run(None, feeds)
    per_node = defaultdict(float)
    for event in json.load(open(profiled.end_profiling())):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["args"]["op_name"]] += event["dur"] / 4 / 1000
    total = sum(per_node.values())
    print(json.dumps({op: f"{ms:.1f} ms ({ms / total:.0%})" for op, ms in
                      sorted(per_node.items(), key=lambda kv: -kv[1]) if ms >= 0.1}))
    packed = TopNSession(model, len(E), 4, "cpu", args.threads)
    packed.session = make_session(model, "cpu", args.threads, prepack=True)
    rates = {"unpacked": [], "prepacked": []}
    for _ in range(args.rounds):
        for name, s in (("unpacked", session), ("prepacked", packed)):
            rates[name].append(args.users / _timed(lambda s=s: s.run(V, mask, hist, 50)))
    ratio = statistics.median(u / p for u, p in zip(rates["unpacked"], rates["prepacked"]))
    print(json.dumps({"threads": args.threads, **{f"{k}_users_per_s": round(statistics.median(v), 1)
                                                  for k, v in rates.items()},
                      "unpacked / prepacked (median of rounds)": round(ratio, 3)}))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
