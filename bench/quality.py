"""Quality grid: baselines and MIND variants on real data, one JSON line per run.

    python bench/quality.py --data ml-100k --out results-ml.jsonl      # the whole grid
    python bench/quality.py --data beauty --only base K=1              # some variants

Every MIND variant changes one setting of BASE; all use leave-one-out, full ranking, history
excluded, seed 0 (--seed for others). docs/results.md is made from these lines by bench/report.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load  # noqa: E402

from mindref import baselines  # noqa: E402
from mindref.data import leave_one_out, strong_generalisation  # noqa: E402
from mindref.evaluate import evaluate  # noqa: E402
from mindref.model import MINDConfig  # noqa: E402
from mindref.train import evaluate_model, fit  # noqa: E402

# the grid published in docs/results.md: the paper's objective at L = 50, every variant one change away
BASE = dict(dim=64, K=4, hidden=(64,), iterations=3, sigma=1.0, softmax_axis="interests", grad_mode="stop",
            dynamic_k=True, objective="label-aware", attention="pow", p=2.0, max_len=50, seed=0)
FIT = dict(epochs=10, batch_size=256, num_neg=256, lr=3e-3)
VARIANTS = {
    "base": {}, "K=1": {"K": 1}, "K=2": {"K": 2}, "K=8": {"K": 8},
    "p=0": {"p": 0.0}, "p=1": {"p": 1.0}, "hard": {"attention": "hard"},
    "axis=behaviours": {"softmax_axis": "behaviours"}, "grad=full": {"grad_mode": "full"},
    "dynamic K off": {"dynamic_k": False}, "sigma=0.1": {"sigma": 0.1}, "sigma=5": {"sigma": 5.0},
    "max": {"objective": "eq3-max"}, "max, K=2": {"objective": "eq3-max", "K": 2},
    "max, K=8": {"objective": "eq3-max", "K": 8},
    "p=0, sigma=0.1": {"p": 0.0, "sigma": 0.1}, "max, sigma=0.1": {"objective": "eq3-max", "sigma": 0.1},
    "max, sigma=0.1, K=2": {"objective": "eq3-max", "sigma": 0.1, "K": 2},
    "max, sigma=0.1, dynamic K off": {"objective": "eq3-max", "sigma": 0.1, "dynamic_k": False},
    "max, sigma=0.1, r=1": {"objective": "eq3-max", "sigma": 0.1, "iterations": 1},
}
BASELINES = ("MostPopular", "ItemCF", "WALS", "MaxMF")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", help=f"a subset of {list(BASELINES) + list(VARIANTS)}")
    ap.add_argument("--category", default="last", help="Beauty's category rule: last|first|all|none")
    ap.add_argument("--protocol", choices=("loo", "strong"), default="loo")
    ap.add_argument("--seed", type=int, default=0, help="MIND's seed (initialisation, order, draws)")
    ap.add_argument("--epochs", type=int, default=FIT["epochs"])
    ap.add_argument("--negatives", type=int, default=FIT["num_neg"], help="shared negatives per batch")
    args = ap.parse_args()
    FIT.update(epochs=args.epochs, num_neg=args.negatives)
    ds = load(args.data, args.category)
    protocol = leave_one_out if args.protocol == "loo" else strong_generalisation
    train, valid, test = protocol(ds, BASE["max_len"])
    todo = args.only or [*BASELINES, *VARIANTS]
    if args.protocol == "strong":
        todo = [t for t in todo if t != "MaxMF"]  # no vectors for held-out users
    R = baselines.interactions(train, len(ds.sequences), ds.num_items)
    makers = {"MostPopular": lambda: baselines.MostPopular(train, ds.num_items),
              "ItemCF": lambda: baselines.ItemCF(R), "WALS": lambda: baselines.WALS(R, dim=64),
              "MaxMF": lambda: baselines.MaxMF(train, len(ds.sequences), ds.num_items, T=4, dim=64, **FIT)}
    for name in todo:
        t0 = time.perf_counter()
        if name in BASELINES:
            score = makers[name]()
            row = {"valid": evaluate(score, valid, ds.num_items), "test": evaluate(score, test, ds.num_items)}
        else:
            cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes,
                             profile_sizes=ds.profile_sizes, **{**BASE, **VARIANTS[name], "seed": args.seed})
            state = fit(cfg, ds, train, **FIT)
            row = {"config": VARIANTS[name], "fit": FIT, "losses": [round(x, 4) for x in state.losses],
                   "valid": evaluate_model(state.params, cfg, ds, valid),
                   "test": evaluate_model(state.params, cfg, ds, test)}
        label = name if args.category == "last" else f"{name}, category={args.category}"
        label = label if args.protocol == "loo" else f"{label}, strong generalisation"
        label = label if args.seed == 0 or name in BASELINES else f"{label}, seed {args.seed}"
        if name not in BASELINES and (args.epochs, args.negatives) != (10, 256):
            label = f"{label}, {args.epochs} epochs, {args.negatives} negatives"
        row = {"data": args.data, "model": label, "seconds": round(time.perf_counter() - t0), **row}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{args.data} {name}: test HR@50 {row['test']['HR@50']:.4f} ({row['seconds']}s)", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # rows already finished are in --out (each written as it ends)
        print("quality.py: interrupted; finished rows are kept in --out", file=sys.stderr)
        sys.exit(130)
