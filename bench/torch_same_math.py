"""mindref's training step against PyTorch running the same math, in one process.

    pip install torch==2.13.0          # in its own environment: mindref itself never needs torch
    python bench/torch_same_math.py --data ml-100k --K 4 1

The PyTorch port computes mindref's default step exactly (model.loss_forward with
objective='eq3-max': f_item pooling of the item id and its side fields, S e_i, B2I routing over
interests with stop-gradient, K'_u masks, the profile concatenated, ReLU layers, a linear layer,
every candidate scored by Eq. (3) in a sampled softmax with logQ and accidental hits removed),
from the same parameters and the same random draws (model.train_draws: b0, negatives, log Q).

Before any timing, a parity check: the loss and every gradient (the tables on the rows a batch
touches) against mindref's loss_backward, in float64 and in float32; a port that differs is not
timed. Then mindref (its Adam, lazy on the tables), PyTorch eager (Adam for the dense
parameters, SparseAdam for the tables), torch.compile of the same step and PyTorch eager with
dense table gradients and Adam (see torch_step) take the same batches, in rounds rotated between
them with a short pause, and the median of the per-round ratios is reported. The step is `mindref
train`'s default (its flags parsed by mindref's own command line). Printed first: threads,
OMP_WAIT_POLICY (unset here unless you set it for both), the BLAS in use (threadpoolctl when
installed). Last line, for scripts:

    ratios: eager K4=R K1=R compile K4=R K1=R eager-dense K4=R K1=R   (mindref samples/s / PyTorch's)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
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
from mindref.sparse import RowSparseGrad  # noqa: E402
from mindref.train import TrainConfig  # noqa: E402

TABLE_PREFIXES = ("item_emb", "field_emb_", "profile_emb_")


def is_table(name: str) -> bool:
    return name.startswith(TABLE_PREFIXES)


class TorchStep:
    """The step's loss in PyTorch, parameters as leaf tensors (tables as embeddings with sparse
    gradients unless sparse=False), everything else recomputed per batch as mindref does."""

    def __init__(self, torch, params: dict, cfg: M.MINDConfig, item_fields: tuple, dtype,
                 sparse: bool = True):
        self.torch, self.cfg, self.dtype, self.sparse = torch, cfg, dtype, sparse
        self.p = {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=k != "serving_logits")
                  for k, v in params.items()}
        self.fields = [torch.as_tensor(np.asarray(f, np.int64)) for f in item_fields]

    def loss(self, hist, profile, target, b0, neg, log_q_pos, log_q_neg):
        t, cfg, p = self.torch, self.cfg, self.p
        F = t.nn.functional
        B, L = hist.shape
        ids = t.cat([hist.reshape(-1), target, neg])
        distinct, inverse = t.unique(ids, return_inverse=True)  # mindref: sparse.unique_ids
        e_d = self._items(distinct)  # [n, d]  f_item
        e_hat_d = e_d @ p["S"].T  # [n, d]  S e_i
        # gathers as embedding lookups: their backward is a dense embedding backward, several
        # times faster in PyTorch than indexing's index_put (measured with torch.profiler)
        e_hat = F.embedding(inverse[: B * L], e_hat_d).reshape(B, L, -1)  # [B, L, d]
        e_t, e_n = F.embedding(inverse[B * L: B * L + B], e_d), F.embedding(inverse[B * L + B:], e_d)
        bmask = hist != 0  # [B, L]
        lengths = bmask.sum(1)
        K_u = t.clamp(t.floor(t.log2(lengths.to(t.float64))), 1, cfg.K).to(t.int64)  # Eq. (9)
        cmask = t.arange(cfg.K)[None, :] < K_u[:, None]  # [B, K]
        u = self._route(e_hat, b0, bmask, cmask)  # [B, K, d]
        x = u
        if cfg.profile_sizes:
            prof = t.cat([F.embedding(profile[:, q], p[f"profile_emb_{q}"], sparse=self.sparse)
                          * (profile[:, q] != 0)[:, None] for q in range(len(cfg.profile_sizes))], -1)
            x = t.cat([u, prof[:, None, :].expand(B, cfg.K, prof.shape[1])], -1)
        layers = len(cfg.hidden) + 1
        for n in range(layers):
            x = x @ p[f"dense_W_{n}"] + p[f"dense_b_{n}"]
            if n < layers - 1:
                x = t.relu(x)
        V = x * cmask[..., None]  # [B, K, d]
        minus_inf = t.tensor(-float("inf"), dtype=V.dtype)
        s_pos = t.where(cmask, t.einsum("bkd,bd->bk", V, e_t), minus_inf).amax(1)  # [B]  Eq. (3)
        s_neg = t.where(cmask[..., None], t.einsum("bkd,nd->bkn", V, e_n), minus_inf).amax(1)  # [B, N]
        o_pos = s_pos - log_q_pos
        o_neg = t.where(neg[None, :] == target[:, None], minus_inf, s_neg - log_q_neg[None, :])  # hits
        o = t.cat([o_pos[:, None], o_neg], 1)
        return (t.logsumexp(o, 1) - o_pos).mean()

    def _items(self, ids):
        """mindref.embedding: each field's non-padding ids averaged, then the present fields."""
        t, p = self.torch, self.p
        fields = [ids[:, None]] + [f[ids] for f in self.fields]  # per field [n, F_f]
        names = ["item_emb"] + [f"field_emb_{f}" for f in range(len(self.fields))]
        valid = [(f != 0) for f in fields]
        counts = [v.sum(1) for v in valid]
        present = t.clamp(sum((c > 0).to(t.int64) for c in counts), min=1)[:, None]  # [n, 1]
        e = 0
        for name, f, v, c in zip(names, fields, valid, counts):
            w = v.to(self.dtype) / t.clamp(c, min=1)[:, None] / present  # [n, F_f]
            e = e + (w[..., None] * t.nn.functional.embedding(f, p[name], sparse=self.sparse)).sum(1)
        return e

    def _route(self, e_hat, b0, bmask, cmask):
        """Eqs. (5)-(8) over interests; 'stop': every update and the final weights are constants,
        the gradient flows through the last z = w e_hat only (mindref.routing.route_backward)."""
        t = self.torch
        mask = cmask[:, :, None] & bmask[:, None, :]  # [B, K, L]
        fixed = e_hat.detach()
        b = b0
        for it in range(self.cfg.iterations):
            w = t.softmax(b.masked_fill(~mask, -float("inf")), dim=1).nan_to_num(0.0)  # [B, K, L]
            if it == self.cfg.iterations - 1:
                return squash(t, w.detach() @ e_hat)
            b = b + squash(t, w @ fixed) @ fixed.transpose(1, 2)
        raise AssertionError("iterations >= 1")

    def grads(self) -> dict:
        out = {}
        for k, v in self.p.items():
            if v.grad is None:
                continue
            g = v.grad.coalesce().to_dense() if v.grad.is_sparse else v.grad
            out[k] = g.detach().numpy()
        return out


def squash(t, z):
    """Eq. (7) as mindref computes it: z n / (1 + n^2), 0 (with gradient 0) at z = 0."""
    n2 = (z * z).sum(-1, keepdim=True)
    safe = t.where(n2 > 0, n2, t.ones_like(n2))
    n = t.sqrt(safe)
    return t.where(n2 > 0, z * n / (1 + safe), t.zeros_like(z))


def batch_inputs(torch, b: M.Batch, b0, neg, log_q):
    return (torch.as_tensor(b.hist), torch.as_tensor(b.profile), torch.as_tensor(b.target),
            torch.as_tensor(b0), torch.as_tensor(neg), torch.as_tensor(log_q[0]), torch.as_tensor(log_q[1]))


def parity(torch, ds, train, cfg: M.MINDConfig, sampler, rows, negatives, dtype, rtol: float) -> float:
    """The worst relative difference, loss and every gradient, mindref vs the port."""
    params = M.init_params(cfg, dtype)
    rng = np.random.default_rng(5)
    b = M.Batch(train.hist[rows], ds.profiles[train.users[rows]], train.target[rows])
    b0, neg, log_q = M.train_draws(rng, cfg, b, sampler, negatives, dtype)
    loss, cache = M.loss_forward(params, cfg, ds.item_fields, b, b0, neg, log_q)
    want = M.loss_backward(cache)
    port = TorchStep(torch, params, cfg, ds.item_fields, getattr(torch, np.dtype(dtype).name))
    got_loss = port.loss(*batch_inputs(torch, b, b0, neg, log_q))
    got_loss.backward()
    got = port.grads()
    worst = abs(float(got_loss.detach()) - float(loss)) / max(abs(float(loss)), 1e-30)
    for name, g in want.items():
        if isinstance(g, RowSparseGrad):
            dense = np.zeros_like(params[name])
            np.add.at(dense, g.rows, g.values)
            g = dense
        scale = max(float(np.abs(g).max()), 1e-30)
        diff = float(np.abs(got[name] - g).max()) / scale
        if diff > rtol:
            raise SystemExit(f"parity ({np.dtype(dtype).name}): gradient {name} differs by {diff:.2e} "
                             f"(relative to its largest entry); not timing a port that differs")
        worst = max(worst, diff)
    return worst


def mindref_step(ds, train, cfg, sampler, negatives):
    params = M.init_params(cfg)
    opt = Adam(params, lr=3e-3, frozen=("serving_logits",))
    rng = np.random.default_rng(0)

    def step(rows):
        b = M.Batch(train.hist[rows], ds.profiles[train.users[rows]], train.target[rows])
        b0, neg, log_q = M.train_draws(rng, cfg, b, sampler, negatives, np.float32)
        _, cache = M.loss_forward(params, cfg, ds.item_fields, b, b0, neg, log_q)
        opt.step(params, M.loss_backward(cache))
    return step


MODES = ("eager", "eager-dense", "compile")


def torch_step(torch, ds, train, cfg, sampler, negatives, mode: str):
    """'eager': sparse table gradients and SparseAdam (lazy, as mindref's Adam: the same math).
    'eager-dense': dense table gradients and Adam on every row, what most PyTorch code (torch-rechub
    among it) runs; not the same update (untouched rows move with their moments) but often faster
    on a small catalogue, so it is timed too. 'compile': torch.compile of the loss; inductor cannot
    compile sparse gradients, so the tables get dense gradients and Adam, as in 'eager-dense'."""
    sparse = mode == "eager"
    port = TorchStep(torch, M.init_params(cfg), cfg, ds.item_fields, torch.float32, sparse=sparse)
    tables = [v for k, v in port.p.items() if is_table(k)]
    dense = [v for k, v in port.p.items() if not is_table(k) and k != "serving_logits"]
    opts = ([torch.optim.Adam(dense, lr=3e-3), torch.optim.SparseAdam(tables, lr=3e-3)] if sparse
            else [torch.optim.Adam(dense + tables, lr=3e-3)])
    loss = torch.compile(port.loss, dynamic=True) if mode == "compile" else port.loss
    rng = np.random.default_rng(0)

    def step(rows):
        b = M.Batch(train.hist[rows], ds.profiles[train.users[rows]], train.target[rows])
        b0, neg, log_q = M.train_draws(rng, cfg, b, sampler, negatives, np.float32)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss(*batch_inputs(torch, b, b0, neg, log_q)).backward()
        for o in opts:
            o.step()
    return step


def settings(torch) -> str:
    line = (f"threads: torch {torch.get_num_threads()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')}")
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i.get('version')} x{i['num_threads']}"
                         for i in threadpool_info())
        return f"{line}; BLAS: {blas}"
    except ImportError:
        return f"{line}; BLAS: (threadpoolctl not installed)"


def main() -> None:
    import torch
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--K", type=int, nargs="+", default=[4, 1])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--negatives", type=int, default=None,
                    help="shared by the batch (default: mindref train's, as every other setting)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_temporaries_mapped()  # as mindref.train.fit does; process-wide, so torch's tensors get it too
    print(settings(torch) + "; glibc mmap threshold raised (mindref.allocator) for the whole process",
          flush=True)
    ds = load(args.data, "all")
    default = M.MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes,
                           profile_sizes=ds.profile_sizes)
    negatives = args.negatives or TrainConfig.num_neg  # mindref train's defaults: the step timed
    if not isinstance(negatives, int):
        raise SystemExit(f"the default step uses --negatives {negatives}; give a count to time")
    print(f"the step: `mindref train` defaults (d = {default.dim}, L = {default.max_len}, hidden "
          f"{list(default.hidden)}, {negatives} shared negatives, batch {args.batch}), {args.data}",
          flush=True)
    train, _, _ = leave_one_out(ds, default.max_len)
    sampler = LogUniformSampler.from_counts(np.bincount(train.target, minlength=ds.num_items))
    rng = np.random.default_rng(1)
    batches = [rng.choice(len(train.target), args.batch, replace=False) for _ in range(args.steps)]
    ratios = {}
    for K in args.K:
        cfg = dataclasses.replace(default, K=K)
        for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
            worst = parity(torch, ds, train, cfg, sampler, batches[0], negatives, dtype, tol)
            print(f"K = {K}: parity {np.dtype(dtype).name}: loss and every gradient within {worst:.1e} "
                  f"(relative; bound {tol:g})", flush=True)
        steps = {"mindref": mindref_step(ds, train, cfg, sampler, negatives)}
        for mode in MODES:
            if mode != "compile" or not args.no_compile:
                steps[mode] = torch_step(torch, ds, train, cfg, sampler, negatives, mode)
        for step in steps.values():  # warm-up (and torch.compile's compilation)
            for rows in batches[:3]:
                step(rows)
        rates = {name: [] for name in steps}
        names = list(steps)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotated
                t0 = time.perf_counter()
                for rows in batches:
                    steps[name](rows)
                rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
                time.sleep(0.5)
        for name, r in rates.items():
            print(f"K = {K} {name:>8}: median {statistics.median(r):>9,.0f} samples/s  "
                  f"(rounds: {', '.join(f'{x:,.0f}' for x in r)})", flush=True)
        for name in names[1:]:
            ratios[(name, K)] = statistics.median(m / o for m, o in zip(rates["mindref"], rates[name]))
    parts = [name + " " + " ".join(f"K{K}={ratios[(name, K)]:.2f}" for K in args.K)
             for name in ("eager", "compile", "eager-dense") if (name, args.K[0]) in ratios]
    print("ratios: " + " ".join(parts))


if __name__ == "__main__":
    main()
