"""Where the top of the ranking is won or lost: HR@10 by how popular the target is, and how popular
the top-10 lists are (the popularity question of docs/results.md, "The top of the ranking").

    python bench/popularity.py --data ml-100k --only "negatives=256, max_len=50" default
    python bench/popularity.py --data beauty --only "negatives=256, max_len=50" default

Item-CF and WALS (reading the latest 50, 10 and 5 behaviours) and MIND configurations of
bench/curves.py (each trained as there: early stopping on validation NDCG@50, the best epoch
kept; seed 0) rank every item for the test cases (leave-one-out, the whole history excluded, as
mindref.evaluate does). Printed per model:
- HR@10 of the test cases split into three groups of (about) equal size by the training count of
  their target: head (the most popular targets), middle, tail;
- the median training count of the items in the top-10 lists, beside the test targets' median:
  a model whose lists are more popular than the targets leans on popularity, one below leans away.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load  # noqa: E402
from curves import configuration, flags, run  # noqa: E402

from mindref import baselines  # noqa: E402
from mindref.data import leave_one_out, pad  # noqa: E402
from mindref.evaluate import hits, top_n  # noqa: E402
from mindref.train import scorer  # noqa: E402

GROUPS = ("head", "middle", "tail")


def top10(score, cases, num_items: int, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """[N, 10] item ids and whether each is the target, ranked as mindref.evaluate ranks them."""
    tops, hit = [], []
    for start in range(0, len(cases.users), batch):
        sl = slice(start, start + batch)
        seen = pad(cases.seen[sl], max(map(len, cases.seen[sl])))
        top = top_n(score(cases.users[sl], cases.hist[sl]), seen, 10)
        tops.append(top), hit.append(hits(top, cases.targets[sl], num_items)[0])
    return np.concatenate(tops), np.concatenate(hit)


def groups(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[N] 0 (head), 1 (middle), 2 (tail): the cases in thirds by their target's training count,
    ties kept together by ranking on (count, id)."""
    order = np.lexsort((targets, -counts[targets]))  # most popular first
    group = np.empty(len(targets), np.int64)
    group[order] = np.arange(len(targets)) * 3 // len(targets)
    return group


def report(name: str, top: np.ndarray, hit: np.ndarray, group: np.ndarray, counts: np.ndarray) -> str:
    by_group = " ".join(f"{hit[group == g].any(1).mean():>8.4f}" for g in range(3))
    listed = np.median(counts[top[top > 0]])
    return f"{name:<28}{hit.any(1).mean():>8.4f} {by_group} {listed:>12.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k", choices=("ml-100k", "beauty"))
    ap.add_argument("--only", nargs="*", type=configuration, default=["default"],
                    help="MIND configurations, named as in bench/curves.py")
    ap.add_argument("--epochs", type=int, default=20, help="at most (early stopping on valid NDCG@50)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = load(args.data)
    train, _, test = leave_one_out(ds, 50)
    counts = np.bincount(train.target, minlength=ds.num_items)  # training count of each item
    targets = np.array([t[0] for t in test.targets])
    group = groups(counts, targets)
    R = baselines.interactions(train, len(ds.sequences), ds.num_items)
    itemcf, wals = baselines.ItemCF(R), baselines.WALS(R, dim=64)
    models = {"ItemCF": itemcf, "WALS": wals}
    for L in (10, 5):
        _, _, test_l = leave_one_out(ds, L)
        models.update({f"ItemCF, L={L}": (itemcf, test_l), f"WALS, L={L}": (wals, test_l)})
    for name in args.only:
        _, params, cfg = run(ds, name, flags(name), args.seed, args.epochs, 3)
        _, _, test_l = leave_one_out(ds, cfg.max_len)  # the configuration's own L, the same cases
        assert [t[0] for t in test_l.targets] == targets.tolist()
        models[name] = (scorer(params, cfg, ds), test_l)
    print(f"{args.data}, test, seed {args.seed}: {len(targets)} cases; target training counts: head >= "
          f"{counts[targets[group == 0]].min()}, tail <= {counts[targets[group == 2]].max()}; "
          f"the targets' median count {np.median(counts[targets]):.0f}")
    head = " ".join(f"{g:>8}" for g in GROUPS)
    print(f"{'model':<28}{'HR@10':>8} {head} {'top-10 median count':>12}")
    for name, model in models.items():
        score, cases = model if isinstance(model, tuple) else (model, test)
        top, hit = top10(score, cases, ds.num_items)
        print(report(name, top, hit, group, counts), flush=True)


if __name__ == "__main__":
    main()
