"""Command line: `mindref demo` trains and evaluates MIND on the embedded synthetic data."""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import __version__
from .data import leave_one_out, synthetic
from .model import MINDConfig
from .train import evaluate_model, fit


def _progress_bar(total_steps: int, desc: str):
    """A tqdm bar with loss and samples/s when tqdm is installed, else a quiet callback."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=total_steps, desc=desc, unit="step", leave=False, file=sys.stderr,
               disable=None, mininterval=0.5)  # silent when stderr is not a terminal
    state = {"t": time.perf_counter()}

    def update(epoch, step, steps, loss, batch_size=256):
        now = time.perf_counter()
        bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", samples_s=f"{batch_size / (now - state['t']):.0f}")
        state["t"] = now
        bar.update(1)

    return update, bar.close


def demo(args: argparse.Namespace) -> int:
    ds = synthetic(num_users=args.users, seed=args.seed)
    train, _, test = leave_one_out(ds, args.max_len)
    print(f"synthetic data: {len(ds.sequences)} users, {ds.num_items - 1} items, "
          f"{ds.field_sizes[0] - 1} planted interest clusters; {len(train.target)} training "
          f"examples, {len(test.users)} test users (leave-one-out, full ranking)")
    rows = {}
    for K in (1, args.K):
        cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes,
                         profile_sizes=ds.profile_sizes, dim=args.dim, K=K, max_len=args.max_len,
                         seed=args.seed)
        steps = args.epochs * -(-len(train.target) // args.batch_size)
        update, close = _progress_bar(steps, f"MIND K={K}")
        t0 = time.perf_counter()
        params, losses = fit(cfg, ds, train, epochs=args.epochs, batch_size=args.batch_size,
                             num_neg=args.negatives, progress=update)
        close()
        seconds = time.perf_counter() - t0
        m = evaluate_model(params, cfg, ds, test)
        rows[f"MIND K={K}" + (" (YouTube DNN)" if K == 1 else "")] = m
        print(f"K={K}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {seconds:.0f}s "
              f"({args.epochs * len(train.target) / seconds:,.0f} samples/s)")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["HR@10", "HR@20", "HR@50", "NDCG@50"]
    print(f"\n{'model':<28}" + "".join(f"{c:>10}" for c in cols))
    for name, m in rows.items():
        print(f"{name:<28}" + "".join(f"{m[c]:>10.4f}" for c in cols))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mindref", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mindref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train and evaluate MIND vs K = 1 on embedded synthetic data")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--K", type=int, default=4, help="interests (compared against K = 1)")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--negatives", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    for name in ("users", "epochs", "K", "dim", "max_len", "batch_size", "negatives"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
