"""Training throughput, peak memory and the fraction of the machine's GEMM rate a step reaches.

    python bench/train_bench.py --data beauty            # MINDConfig's d, K and L, batch 256, 3 neg/pos
    python bench/train_bench.py --data ml-100k --K 1

Timing is the median of --repeats runs of --steps steps each (after warm-up), in one process.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load  # noqa: E402

from mindref import model as M  # noqa: E402
from mindref.adam import Adam  # noqa: E402
from mindref.allocator import keep_temporaries_mapped  # noqa: E402
from mindref.data import leave_one_out  # noqa: E402
from mindref.samplers import LogUniformSampler  # noqa: E402


def step_flops(cfg: M.MINDConfig, B: int, L: int, S: int, distinct: float) -> float:
    """Multiply-adds x 2 of one training step (forward + backward), the matrix products only, as
    executed: S e_i, dS and de once per distinct item of the batch (model.loss_forward)."""
    d, K, r = cfg.dim, cfg.K, cfg.iterations
    e_hat = 2 * distinct * d * d * 3  # S e_i, then dS and de
    routed = r if cfg.grad_mode == "stop" else 3 * r  # backward through the last or every iteration
    routing = 2 * B * K * L * d * (r + (r - 1) + routed)  # z_j, logit updates, backward
    sizes = [d + cfg.profile_dim * len(cfg.profile_sizes), *cfg.hidden, d]
    dense = sum(2 * B * K * a * b * 3 for a, b in zip(sizes[:-1], sizes[1:]))
    softmax = 2 * B * S * d * 3  # logits, dv, de_neg
    return e_hat + routing + dense + softmax


def gemm_gflops(dtype=np.float32, n: int = 1024, repeats: int = 20) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    a @ a
    t = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="beauty")
    ap.add_argument("--dim", type=int, default=M.MINDConfig.dim)  # the model's defaults, from their one home
    ap.add_argument("--K", type=int, default=M.MINDConfig.K)
    ap.add_argument("--max-len", type=int, default=M.MINDConfig.max_len)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--neg-per-pos", type=int, default=3, help="shared negatives = this x batch size")
    ap.add_argument("--grad-mode", default="stop")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    keep_temporaries_mapped()
    ds = load(args.data)
    train, _, _ = leave_one_out(ds, args.max_len)
    cfg = M.MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                       dim=args.dim, K=args.K, max_len=args.max_len, grad_mode=args.grad_mode)
    params = M.init_params(cfg)
    opt = Adam(params, frozen=("serving_logits",))
    sampler = LogUniformSampler.from_counts(np.bincount(train.target, minlength=cfg.num_items))
    rng = np.random.default_rng(0)
    profiles = ds.profiles[train.users]
    B, S = args.batch_size, args.neg_per_pos * args.batch_size

    distinct = []

    def step() -> None:
        idx = rng.integers(0, len(train.target), B)
        batch = M.Batch(train.hist[idx], profiles[idx], train.target[idx])
        b0, neg, log_q = M.train_draws(rng, cfg, batch, sampler, S, np.float32)
        _, cache = M.loss_forward(params, cfg, ds.item_fields, batch, b0, neg, log_q)
        opt.step(params, M.loss_backward(cache))
        distinct.append(len(cache.e_distinct))

    for _ in range(5):
        step()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        times.append((time.perf_counter() - t) / args.steps)
    per_step = float(np.median(times))
    flops = step_flops(cfg, B, args.max_len, S, float(np.mean(distinct)))
    peak = gemm_gflops()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"data={args.data} d={args.dim} K={args.K} L={args.max_len} batch={B} negatives={S} "
          f"grad_mode={args.grad_mode} ({len(train.target)} training examples, {cfg.num_items - 1} items)")
    print(f"training: {B / per_step:,.0f} samples/s ({per_step * 1e3:.1f} ms/step, median of {args.repeats})")
    print(f"peak memory (max RSS of the process): {rss:.2f} GiB")
    print(f"step: {flops / 1e9:.3f} GFLOP (S e_i on {np.mean(distinct):.0f} distinct items) -> "
          f"{flops / per_step / 1e9:.1f} GFLOP/s; "
          f"NumPy float32 GEMM 1024^3: {peak:.1f} GFLOP/s; fraction {flops / per_step / 1e9 / peak:.1%}")


if __name__ == "__main__":
    main()
