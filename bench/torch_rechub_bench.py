"""Training speed beside torch-rechub's MIND, in one process on the same batches.

    pip install torch==2.13.0 torch-rechub==0.9.0      # a separate environment: mindref never needs torch
    python bench/torch_rechub_bench.py --data ml-100k --K 4

MovieLens-100K leave-one-out training examples, d = 64, L = 50, batch 256, 3 negatives per
positive (torch-rechub: 3 per row, list-wise softmax; mindref: 768 shared by the batch, sampled
softmax), Adam, 2 threads each, libgomp's default wait policy unless OMP_WAIT_POLICY is set for
both (the settings are printed first). The two steps alternate (--rounds x --steps each) so that
the host's noise falls on both; the median round of each is reported, and the median of the
per-round ratios.
"""
from __future__ import annotations

import argparse
import statistics
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


def rechub_step(ds, train, K: int, d: int, L: int, negatives: int):
    """A closure running one torch-rechub MIND training step on a batch of example rows."""
    import torch
    import torch.nn.functional as F
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.matching import MIND

    user = [SparseFeature("user_id", len(ds.sequences), embed_dim=16)]
    user += [SparseFeature(name, int(ds.profiles[:, p].max()) + 1, embed_dim=16)
             for p, name in enumerate(ds.profile_names)]
    def sequence(name):
        return SequenceFeature(name, ds.num_items, embed_dim=d, pooling="concat", shared_with="movie_id")

    item = [SparseFeature("movie_id", ds.num_items, embed_dim=d)]
    model = MIND(user, [sequence("hist_movie_id")], item, [sequence("neg_items")], max_length=L,
                 temperature=0.02, interest_num=K)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def step(rows: np.ndarray) -> None:
        x = {"user_id": torch.as_tensor(train.users[rows]),
             "hist_movie_id": torch.as_tensor(train.hist[rows]),
             "movie_id": torch.as_tensor(train.target[rows]),
             "neg_items": torch.as_tensor(rng.integers(1, ds.num_items, (len(rows), negatives)))}
        profile = ds.profiles[train.users[rows]]
        x.update({name: torch.as_tensor(profile[:, p]) for p, name in enumerate(ds.profile_names)})
        y = model(x)  # [B, 1 + negatives], the positive first
        loss = F.cross_entropy(y / model.temperature, torch.zeros(len(rows), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def mindref_step(ds, train, K: int, d: int, L: int, negatives: int, batch: int):
    cfg = M.MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                       dim=d, K=K, max_len=L)
    params = M.init_params(cfg)
    opt = Adam(params, lr=3e-3, frozen=("serving_logits",))
    sampler = LogUniformSampler.from_counts(np.bincount(train.target, minlength=cfg.num_items))
    rng = np.random.default_rng(0)

    def step(rows: np.ndarray) -> None:
        b = M.Batch(train.hist[rows], ds.profiles[train.users[rows]], train.target[rows])
        b0, neg, log_q = M.train_draws(rng, cfg, b, sampler, negatives * batch, np.float32)
        _, cache = M.loss_forward(params, cfg, ds.item_fields, b, b0, neg, log_q)
        opt.step(params, M.loss_backward(cache))

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--negatives", type=int, default=3, help="per positive")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import torch
    from torch_same_math import settings
    torch.set_num_threads(2)
    keep_temporaries_mapped()  # as mindref.train.fit does; process-wide
    print(settings(torch), flush=True)
    ds = load(args.data, "all")
    train, _, _ = leave_one_out(ds, 50)
    steps = {"torch-rechub 0.9.0": rechub_step(ds, train, args.K, 64, 50, args.negatives),
             "mindref": mindref_step(ds, train, args.K, 64, 50, args.negatives, args.batch)}
    rng = np.random.default_rng(1)
    batches = [rng.choice(len(train.target), args.batch, replace=False) for _ in range(args.steps)]
    rates: dict = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        for rows in batches[:3]:
            step(rows)
    for _ in range(args.rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for rows in batches:
                step(rows)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t))
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        rounds = ", ".join(f"{x:,.0f}" for x in r)
        print(f"{name:>20}: median {med[name]:>8,.0f} samples/s  (rounds: {rounds})")
    ratio = statistics.median(m / o for m, o in zip(rates["mindref"], rates["torch-rechub 0.9.0"]))
    print(f"mindref / torch-rechub: {ratio:.2f}x (median of the per-round ratios)  "
          f"({args.data}, K = {args.K}, batch {args.batch}, {args.negatives} negatives per positive)")


if __name__ == "__main__":
    main()
