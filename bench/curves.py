"""Learning curves and the training knobs that shape the top of the ranking.

    python bench/curves.py --data ml-100k --out curves-ml.jsonl                  # default grid, seed 0
    python bench/curves.py --data beauty --only default "negatives=all, K=1" --seeds 0 1 2
    python bench/curves.py --summary curves-ml.jsonl curves-beauty.jsonl         # mean +- SE table
    python bench/curves.py --summary curves-ml.jsonl --split valid               # what defaults are chosen on

Each configuration is `mindref train`'s defaults with some flags changed (its name lists them,
parsed by mindref's own command line, so "default" is exactly what `mindref train` runs). Every
run: up to --epochs epochs, each followed by a full-ranking validation (HR@10, HR@50, HR@100,
NDCG@50); early stopping on validation NDCG@50 with --patience; the best epoch's parameters
evaluated on test. Item-CF and WALS (the classic baselines of the paper's Table 2) are evaluated
on the same splits ("baselines" rows, reading the latest 50 behaviours; "baselines, L=10" the
latest 10). One JSON line per run: the curve, the best epoch, its test metrics, samples/s and minutes.
Leave-one-out, full ranking, history excluded; Beauty with category rule 'last' as the published
grid (bench/common.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, mean_se  # noqa: E402

from mindref import baselines  # noqa: E402
from mindref.cli import parser, plan  # noqa: E402
from mindref.data import leave_one_out  # noqa: E402
from mindref.evaluate import evaluate  # noqa: E402
from mindref.train import evaluate_model, fit  # noqa: E402

# The configurations run by default: "default" is `mindref train` as it is; every other name is a
# list of its flags, key=value (hidden=none: no ReLU layer), parsed by flags(). Since 2026-11-30 the
# defaults are 2,048 negatives and L = 5; the earlier ones were 256 and L = 50, written out here.
GRID = ["default", "negatives=2048, max_len=5, K=1", "negatives=256, max_len=50",
        "negatives=2048, max_len=50", "negatives=all, max_len=50", "negatives=256, max_len=20",
        "negatives=2048, max_len=20", "negatives=all, max_len=20", "negatives=2048, max_len=10",
        "negatives=all, max_len=10", "negatives=2048, max_len=10, K=1", "negatives=2048, max_len=20, K=1",
        "negatives=2048, max_len=20, lr=1e-3", "hidden=none", "hidden=128", "dim=128", "lr=1e-2"]
BASELINES = ("baselines", "baselines, L=20", "baselines, L=10", "baselines, L=5")  # item-CF, WALS reading L


def flags(name: str) -> list[str]:
    """`mindref train` flags of a configuration name: 'negatives=2048, max_len=20, K=1' ->
    ['--negatives', '2048', '--max-len', '20', '--K', '1']; 'default' -> []."""
    if name == "default":
        return []
    out = []
    for part in name.split(","):
        key, _, value = part.strip().partition("=")
        out += [f"--{key.replace('_', '-')}"] + ([] if value == "none" else [value])
    return out


def configuration(name: str) -> str:
    """argparse type of a configuration name: one mindref train parses, or a baselines row."""
    if name not in BASELINES:
        try:
            parser().parse_args(["train", *flags(name), "--out", "-"])
        except SystemExit:
            raise argparse.ArgumentTypeError(f"{name!r} is not a set of mindref train flags") from None
    return name


SHOWN = ("HR@10", "HR@50", "HR@100", "NDCG@50")


def run(ds, name: str, flags: list, seed: int, epochs: int, patience: int) -> tuple[dict, dict, object]:
    """One configuration trained with early stopping: (its JSON row, the best epoch's parameters,
    its MINDConfig)."""
    args = parser().parse_args(["train", *flags, "--seed", str(seed), "--epochs", str(epochs), "--out", "-"])
    chosen = plan(args)
    cfg, fit_args = chosen.config(ds), chosen.train_cfg.fit_args()
    train, valid, test = leave_one_out(ds, cfg.max_len)
    curve, best = [], {"value": -1.0}

    def on_epoch(state) -> bool:
        m = evaluate_model(state.params, cfg, ds, valid)
        curve.append({"epoch": state.epoch, "loss": round(state.losses[-1], 4),
                      **{k: round(m[k], 4) for k in SHOWN}})
        if m["NDCG@50"] > best["value"]:
            kept = {k: v.copy() for k, v in state.params.items()}  # the best epoch's parameters
            best.update(epoch=state.epoch, value=m["NDCG@50"], params=kept)
        print(f"  {name} seed {seed}: " + json.dumps(curve[-1]), file=sys.stderr, flush=True)
        return state.epoch - best["epoch"] >= patience

    t0 = time.perf_counter()
    state = fit(cfg, ds, train, **{**fit_args, "epochs": epochs}, on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    row = {"model": name, "flags": flags, "seed": seed, "curve": curve, "best_epoch": best["epoch"],
            "epochs_run": state.epoch, "test": evaluate_model(best["params"], cfg, ds, test),
            "valid": {k: curve[best["epoch"] - 1][k] for k in SHOWN},
            "minutes": round(seconds / 60, 2),
            "samples_per_s": round(state.epoch * len(train.target) / seconds)}  # validation included
    return row, best["params"], cfg


def classic(ds, L: int = 50) -> list[dict]:
    """Item-CF and WALS fitted on the training interactions (every item before the held-out ones),
    each scoring a case from its latest L behaviours, as MIND reads them."""
    train, valid, test = leave_one_out(ds, L)
    R = baselines.interactions(train, len(ds.sequences), ds.num_items)
    rows = []
    for name, make in (("ItemCF", lambda: baselines.ItemCF(R)), ("WALS", lambda: baselines.WALS(R, dim=64))):
        model = make()
        rows.append({"model": name if L == 50 else f"{name}, L={L}", "seed": 0,
                     "valid": evaluate(model, valid, ds.num_items),
                     "test": evaluate(model, test, ds.num_items)})
    return rows


def summary(paths: list[Path], split: str = "test") -> None:
    """Mean +- SE per (data, model) of the best epochs' metrics on `split` ('valid': what the
    defaults are chosen on; 'test': what is reported)."""
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    groups = {}
    for r in rows:
        groups.setdefault((r["data"], r["model"]), []).append(r)
    print(f"{'data':<9}{'model':<22}{'seeds':>6}" + "".join(f"{m:>17}" for m in SHOWN) + f"{'epochs':>9}")
    for (data, model), rs in groups.items():
        if split not in rs[0]:
            continue  # a row written before validation was recorded for item-CF and WALS
        cells = ["{:.4f}+-{:.4f}".format(*mean_se([r[split][m] for r in rs])) for m in SHOWN]
        epochs = "/".join(str(r.get("best_epoch", "-")) for r in rs)
        print(f"{data:<9}{model:<22}{len(rs):>6}" + "".join(f"{c:>17}" for c in cells) + f"{epochs:>9}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k", choices=("ml-100k", "beauty"))
    ap.add_argument("--out", type=Path, help="JSON lines, appended")
    ap.add_argument("--only", nargs="*", type=configuration,
                    help="some runs: 'baselines' (or 'baselines, L=10'), 'default', or flags as "
                         "'negatives=2048, max_len=20, K=1' (default: baselines and GRID)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--epochs", type=int, default=30, help="at most (early stopping on valid NDCG@50)")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--summary", type=Path, nargs="*", help="print the mean +- SE table of these files")
    ap.add_argument("--split", choices=["valid", "test"], default="test", help="the --summary's metrics")
    args = ap.parse_args()
    if args.summary:
        return summary(args.summary, args.split)
    if args.out is None:
        ap.error("--out is required (or --summary FILES)")
    try:
        args.out.open("a").close()  # an unwritable --out fails now, not after the first run
    except OSError as err:
        ap.error(f"--out {args.out}: {err.strerror}")
    ds = load(args.data)
    for name in args.only or ["baselines", *GRID]:
        if name.startswith("baselines"):
            rows = classic(ds, int(name.partition("L=")[2] or 50))
        else:  # one seed at a time, each written when done: Ctrl-C loses the run in progress only
            rows = (run(ds, name, flags(name), seed, args.epochs, args.patience)[0] for seed in args.seeds)
        for row in rows:
            with open(args.out, "a") as f:
                f.write(json.dumps({"data": args.data, **row}) + "\n")
            print(f"{args.data} {row['model']} seed {row['seed']}: test " + " ".join(
                f"{m} {row['test'][m]:.4f}" for m in SHOWN), flush=True)

if __name__ == "__main__":
    main()
