"""Serving benchmarks: the user tower (NumPy vs onnxruntime) and Annoy retrieval vs exact.

    python bench/serve_bench.py tower  [--model DIR]   users/s at batch 1 and 1024 (Beauty model)
    python bench/serve_bench.py beauty [--model DIR]   multi-interest recall@50 and users/s, Annoy vs exact
    python bench/serve_bench.py million                recall@50 and queries/s on 1M synthetic vectors

--model is a checkpoint (mindref train --out); without it a Beauty model (d = 64, K = 4, L = 50)
is trained for --epochs and kept in --workdir. Each figure is the best of --repeats timed runs
in this one process (the tower also gives the median per-round ratio); compare ratios within one
run, not across runs (the host is shared).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA  # noqa: E402

from mindref import checkpoint  # noqa: E402
from mindref import model as M  # noqa: E402
from mindref.datasets import load_dataset, split  # noqa: E402
from mindref.export import ItemIndex, TowerSession, build_tower, export_bundle, load_bundle  # noqa: E402
from mindref.export.retrieval import Retriever  # noqa: E402
from mindref.train import fit, save_state  # noqa: E402

BEAUTY = {"format": "sequences", "path": str(DATA / "amazon-beauty" / "Beauty.txt"), "protocol": "loo",
          "max_len": 50, "seed": 0, "category": "all"}




def beauty_model(args):
    """(params, cfg, ds, test cases) of --model, or of a Beauty model trained here once."""
    folder = Path(args.model) if args.model else Path(args.workdir) / "beauty-model"
    if not (folder / "config.json").exists():
        ds, _ = load_dataset(BEAUTY)
        train, _, _ = split(ds, BEAUTY, {})
        cfg = M.MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                           dim=64, K=4, max_len=50)
        fit_args = {"epochs": args.epochs, "batch_size": 256, "num_neg": 768, "lr": 3e-3}
        print(f"training a Beauty model for {args.epochs} epochs -> {folder}", file=sys.stderr)
        fit(cfg, ds, train, **fit_args, on_epoch=lambda s: save_state(folder, s, cfg, BEAUTY, fit_args))
    params, cfg, manifest, _ = checkpoint.load(folder)
    ds, splits = load_dataset(manifest["data"])
    _, _, test = split(ds, manifest["data"], splits)
    return params, cfg, ds, test


def interleaved(fns: dict, repeats: int) -> dict:
    """Seconds of each function in each of `repeats` rounds, the functions run one after the other
    within a round (so a slow moment of the shared host hits all of them)."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: np.array(t) for name, t in times.items()}


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls of fn, after a warm-up call."""
    return float(interleaved({"fn": fn}, repeats)["fn"].min())


def bench_tower(args) -> dict:
    params, cfg, ds, test = beauty_model(args)
    sessions = {items: TowerSession(build_tower(params, cfg, ds.item_fields, items).SerializeToString(),
                                    cfg, ds.item_fields, args.provider, chunk=args.chunk)
                for items in ("table", "features")}
    out = {}
    for B in (1, 1024):
        rows = np.resize(np.arange(len(test.users)), B)
        hist, prof = test.hist[rows], ds.profiles[test.users[rows]]
        fns = {"numpy": lambda h=hist, p=prof: M.user_vectors(params, cfg, ds.item_fields, h, p, args.chunk)}
        for items, s in sessions.items():
            fns[f"onnxruntime-{s.provider} items={items}"] = lambda s=s, h=hist, p=prof: s.run(h, p)
        times = interleaved(fns, args.repeats * (50 if B == 1 else 1))
        out[f"batch {B}"] = {}
        line = f"batch {B:>5}:"
        for name, t in times.items():
            ratio, median = times["numpy"].min() / t.min(), float(np.median(times["numpy"] / t))
            out[f"batch {B}"][name] = {"users/s": B / t.min(), "x numpy (best)": ratio,
                                       "x numpy (median round)": median}
            line += f" | {name} {B / t.min():>9,.0f} users/s ({ratio:.2f}x best, {median:.2f}x median round)"
        print(line)
    return out


def recall(found: list, truth: list) -> float:
    return float(np.mean([len(set(f.items.tolist()) & set(t.items.tolist())) / max(len(t.items), 1)
                          for f, t in zip(found, truth)]))


def bench_beauty(args) -> dict:
    """Multi-interest retrieval for the test users: each valid interest queries Annoy, merge, Eq. (3)."""
    params, cfg, ds, test = beauty_model(args)
    bundle_dir = Path(args.workdir) / "beauty-bundle"
    rows = np.arange(min(args.users, len(test.users)))
    hist, prof = test.hist[rows], ds.profiles[test.users[rows]]
    out = {}
    for metric, trees in ((m, t) for m in args.metrics for t in args.trees):
        export_bundle(bundle_dir, params, cfg, ds, n_trees=trees, overwrite=True, metric=metric)
        bundle = load_bundle(bundle_dir, "cpu")
        V = bundle.tower.run(hist, prof)
        def exact(bundle=bundle, V=V):
            return bundle.retriever.retrieve(V.interests, V.mask, hist, 50, exact=True)
        t_exact = best_time(exact, 1)
        truth = bundle.retriever.retrieve(V.interests, V.mask, hist, 50, exact=True)
        for search_k in args.search_k:
            r = Retriever(bundle.E, bundle.retriever.index, oversample=2, search_k=search_k)
            t = best_time(lambda: r.retrieve(V.interests, V.mask, hist, 50, exact=False), 1)  # noqa: B023
            rec = recall(r.retrieve(V.interests, V.mask, hist, 50, exact=False), truth)
            key = f"{metric}, trees {trees}, search_k {search_k}"
            out[key] = {"recall@50": rec, "users/s": len(rows) / t, "exact users/s": len(rows) / t_exact}
            print(f"Beauty {key:>35}: recall@50 {rec:.3f}  {len(rows) / t:>8,.0f} users/s "
                  f"(exact, batched: {len(rows) / t_exact:,.0f})")
    return out


def million_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered item vectors like trained embeddings: 1,000 Gaussian clusters, log-normal norms."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    E = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    E *= np.exp(0.3 * rng.standard_normal((n, 1))).astype(np.float32) / np.sqrt(d)
    return E


def exact_top(E: np.ndarray, Q: np.ndarray, n: int) -> np.ndarray:
    """Brute force: the ids of the n largest q . e_i over E[1:] (row 0 is padding), unordered."""
    return np.argpartition(-(Q @ E[1:].T), n, axis=1)[:, :n] + 1  # [q, n]


def bench_million(args) -> dict:
    """Single-vector queries on 1M synthetic d = 64 vectors: recall@50 of Annoy against the exact
    top 50, and queries/s against brute force one query at a time and in batches of 1024."""
    d, n = 64, args.items
    E = np.vstack([np.zeros((1, d), np.float32), million_vectors(n, d)])  # row 0: padding
    Q = million_vectors(args.queries, d, seed=1)
    t0 = time.perf_counter()
    truth = np.concatenate([exact_top(E, Q[i:i + 64], 50) for i in range(0, len(Q), 64)])  # [q, 50]
    t_batched = time.perf_counter() - t0
    t_single = best_time(lambda: [exact_top(E, q[None], 50) for q in Q[:20]], 1) / 20
    out = {"exact queries/s (one at a time)": 1 / t_single,
           "exact queries/s (batches of 64)": len(Q) / t_batched}
    print(f"1M x {d}: exact {1 / t_single:,.0f} q/s one at a time, {len(Q) / t_batched:,.0f} q/s batched")
    for metric, trees in ((m, t) for m in args.metrics for t in args.trees):
        t0 = time.perf_counter()
        index = ItemIndex.build(E, trees, seed=0, metric=metric, n_jobs=-1)
        build = time.perf_counter() - t0
        for search_k in args.search_k:
            def query(index=index, search_k=search_k):
                return [index.query(q, 50, search_k) for q in Q]
            t = best_time(query, 1)
            found = query()
            rec = float(np.mean([len(set(f) & set(t_)) / 50 for f, t_ in zip(found, truth)]))
            key = f"{metric}, trees {trees}, search_k {search_k}"
            out[key] = {"recall@50": rec, "queries/s": len(Q) / t, "build s": build,
                        "x exact one at a time": t_single / (t / len(Q)),
                        "x exact batched": (t_batched / len(Q)) / (t / len(Q))}
            print(f"{key:>35}: recall@50 {rec:.3f}  {len(Q) / t:>8,.0f} q/s  "
                  f"x{t_single * len(Q) / t:5.1f} of one-at-a-time exact, "
                  f"x{t_batched / t:5.2f} of batched exact (build {build:.0f}s)")
        del index
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("tower", "beauty", "million"))
    ap.add_argument("--model", help="a checkpoint folder (default: train a Beauty model in --workdir)")
    ap.add_argument("--workdir", default="runs/serve-bench")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=M.SERVING_CHUNK, help="tower: users per pass, both paths")
    ap.add_argument("--users", type=int, default=2000, help="beauty: test users to retrieve for")
    ap.add_argument("--items", type=int, default=1_000_000, help="million: catalog size")
    ap.add_argument("--queries", type=int, default=1024, help="million: query vectors")
    ap.add_argument("--trees", type=int, nargs="+", default=[50])
    ap.add_argument("--search-k", type=int, nargs="+", default=[-1])
    ap.add_argument("--metrics", nargs="+", default=["angular", "dot"], choices=("angular", "dot"))
    ap.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "auto"), help="tower: onnxruntime's")
    ap.add_argument("--json", help="append the figures to this JSON-lines file")
    args = ap.parse_args()
    figures = {"tower": bench_tower, "beauty": bench_beauty, "million": bench_million}[args.what](args)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"what": args.what, "args": vars(args), "figures": figures}) + "\n")


if __name__ == "__main__":
    main()
