"""onnxruntime's CUDA provider on the serving graphs: parity with the CPU and users/s (issue 12).

    python bench/gpu_check.py                       # 1M items, batches of 1,024 and 4,096 users
    python bench/gpu_check.py --items 5000 --batches 64   # a quick run (what the tests do)

One table: for each provider (cpu, and cuda when it really loads) and batch size, users/s of the
user tower, of the top-n graph (Eq. 3 over every item, history excluded, top 50) and of both; then
CUDA vs CPU parity, max |difference| of the interests and of the top-50 scores (bar: 1e-4) and the
share of top-50 ids that agree. Without CUDA the parity part is skipped with a line saying so.
Needs onnxruntime-gpu (`pip install 'mindref[export-gpu]'`, and the CUDA libraries its build
names: `python -c "from mindref.export.runtime import cuda_needs; print(cuda_needs())"`) for the
CUDA rows; runs in under 5 minutes.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from mindref.export import TopNSession, build_topn, build_tower
from mindref.export.runtime import TowerSession
from mindref.model import MINDConfig, catalog, init_params

PARITY = 1e-4


def sessions(items: int, provider: str, seed: int = 0):
    """(tower session, top-n session, E) over a catalogue of `items` items (init parameters: parity
    and speed do not depend on training)."""
    cfg = MINDConfig(num_items=items + 1, field_sizes=(21,), dim=64, K=4, hidden=(64,), max_len=50, seed=seed)
    params = init_params(cfg)
    fields = (np.r_[0, 1 + np.arange(items) % 20].astype(np.int64)[:, None],)
    E, _ = catalog(params, fields, cfg.num_items)
    tower = TowerSession(build_tower(params, cfg, fields).SerializeToString(), cfg, fields, provider)
    topn = TopNSession(build_topn(E, cfg.K).SerializeToString(), cfg.num_items, provider)
    return cfg, tower, topn


def requests(cfg: MINDConfig, users: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, cfg.max_len + 1, users)
    hist = rng.integers(1, cfg.num_items, (users, cfg.max_len))
    hist[np.arange(cfg.max_len)[None, :] >= lengths[:, None]] = 0
    return hist


def timed(fn, repeats: int = 3) -> float:
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("-n", type=int, default=50)
    args = ap.parse_args(argv)
    providers = {"cpu": sessions(args.items, "cpu")}
    try:
        providers["cuda"] = sessions(args.items, "cuda")
    except RuntimeError as err:
        print(f"cuda: not available here ({err}); the parity check is skipped")
    print(f"{'provider':<9}{'batch':>7}{'tower users/s':>15}{'top-n users/s':>15}{'both users/s':>14}")
    outputs = {}
    for name, (cfg, tower, topn) in providers.items():
        for B in args.batches:
            hist = requests(cfg, B)
            out = tower.run(hist)
            t_tower = timed(lambda: tower.run(hist))  # noqa: B023
            t_topn = timed(lambda: topn.run(out.interests, out.mask, hist, args.n))  # noqa: B023
            outputs[name, B] = (out, topn.run(out.interests, out.mask, hist, args.n))
            print(f"{name:<9}{B:>7}{B / t_tower:>15,.0f}{B / t_topn:>15,.0f}{B / (t_tower + t_topn):>14,.0f}")
    if "cuda" not in providers:
        return
    for B in args.batches:
        (cpu_out, (cpu_items, cpu_scores, _)), (gpu_out, (gpu_items, gpu_scores, _)) = \
            outputs["cpu", B], outputs["cuda", B]
        d_interests = float(np.abs(cpu_out.interests - gpu_out.interests).max())
        d_scores = float(np.abs(cpu_scores - gpu_scores).max())
        agree = float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(cpu_items, gpu_items)]))
        ok = d_interests <= PARITY and d_scores <= PARITY and (cpu_out.mask == gpu_out.mask).all()
        print(f"parity batch {B}: interests {d_interests:.2e}, top-{args.n} scores {d_scores:.2e}, ids agree "
              f"{agree:.4f}, masks equal {bool((cpu_out.mask == gpu_out.mask).all())}: "
              f"{'PASS' if ok else 'FAIL'} (bar {PARITY})")


if __name__ == "__main__":
    main()
