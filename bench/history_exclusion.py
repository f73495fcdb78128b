"""One trained model, two exclusion rules at evaluation: the user's whole known history (mindref's
protocol since issue 11) vs only the latest L items the model reads (the rule before it).

    python bench/history_exclusion.py [--data-path ../shared/data/ml-100k]
"""
import argparse
import json
import time

from mindref.datasets import default_path, load_dataset, split
from mindref.model import MINDConfig
from mindref.train import evaluate_model, fit

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--data-path", default=str(default_path("ml-100k")))
args = ap.parse_args()
spec = {"format": "ml-100k", "path": args.data_path, "protocol": "loo", "max_len": 50, "seed": 0}
ds, splits = load_dataset(spec)
train, valid, test = split(ds, spec, splits)
longer = sum(len(s) - 1 > 50 for s in ds.sequences)  # test histories longer than L
for K in (4, 1):
    cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                     dim=64, K=K, hidden=(64,), max_len=50, seed=0)
    t = time.time()
    state = fit(cfg, ds, train, epochs=10, batch_size=256, num_neg=256, lr=3e-3)
    rows = {"whole history": evaluate_model(state.params, cfg, ds, test),
            "latest L only": evaluate_model(state.params, cfg, ds, test._replace(seen=None))}
    print(json.dumps({"K": K, "test histories longer than L": longer, "test cases": len(test.users),
                      "seconds": round(time.time() - t),
                      **{k: {m: round(v[m], 4) for m in ("HR@10", "HR@50", "NDCG@50")}
                         for k, v in rows.items()}}))
