"""Why does K > 1 lose to K = 1 on a dataset? Score one trained model three ways and look at its
interests.

    python bench/diagnose_interests.py --data ml-100k --K 4                           # the paper's training
    python bench/diagnose_interests.py --data ml-100k --objective eq3-max --sigma 0.1  # the closest variant

- eq3:       max_k e_i . v_k (the paper's serving score, Eq. 3)
- attention: e_i . V softmax(pow(V^T e_i, p)), i.e. each candidate scored as training scores it
             (label-aware attention with the candidate as query; no label is used)
- mean:      e_i . mean_k v_k (one averaged vector)
and the mean pairwise cosine between a user's valid interest vectors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load  # noqa: E402

from mindref import model as M  # noqa: E402
from mindref.data import leave_one_out  # noqa: E402
from mindref.evaluate import evaluate, max_scores  # noqa: E402
from mindref.train import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--p", type=float, default=2.0)
    ap.add_argument("--objective", choices=M.OBJECTIVES, default="label-aware",
                    help="training objective (label-aware: the paper's, pow attention; eq3-max: Eq. 3)")
    ap.add_argument("--sigma", type=float, default=1.0, help="std of the initial routing logits")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    ds = load(args.data)
    train, _, test = leave_one_out(ds, 50)
    cfg = M.MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                       dim=64, K=args.K, p=args.p, objective=args.objective, sigma=args.sigma, max_len=50)
    params = fit(cfg, ds, train, epochs=args.epochs, num_neg=256).params
    E, _ = M.item_forward(params, ds.item_fields, np.arange(cfg.num_items))  # [V, d]
    cosines = []

    def vectors(users, hist):
        V, cmask = M.user_vectors(params, cfg, ds.item_fields, hist, ds.profiles[users])
        unit = V / np.maximum(np.linalg.norm(V, axis=-1, keepdims=True), 1e-12)
        cos = unit @ unit.transpose(0, 2, 1)  # [b, K, K]
        pair = cmask[:, :, None] & cmask[:, None, :] & ~np.eye(cfg.K, dtype=bool)
        cosines.extend(cos[pair].tolist())
        return V, cmask

    def eq3(users, hist):
        return max_scores(*vectors(users, hist), E)

    def attention(users, hist):
        V, cmask = vectors(users, hist)
        s = V @ E.T  # [b, K, V]
        logits = np.where(cmask[:, :, None], s ** args.p, -np.inf)
        a = np.exp(logits - logits.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        return (a * s).sum(1)

    def mean(users, hist):
        V, cmask = vectors(users, hist)
        return (V.sum(1) / cmask.sum(1, keepdims=True)) @ E.T

    out = {"data": args.data, "K": args.K, "p": args.p, "objective": args.objective, "sigma": args.sigma,
           "epochs": args.epochs}
    for name, score in (("eq3", eq3), ("attention", attention), ("mean", mean)):
        cosines.clear()
        m = evaluate(score, test, cfg.num_items)
        out[name] = {k: round(m[k], 4) for k in ("HR@10", "HR@50", "HR@100", "NDCG@50")}
    out["mean_pairwise_cosine_of_interests"] = round(float(np.mean(cosines)), 4) if cosines else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
