"""mindref's command line.

    mindref demo                                    MIND vs K = 1 vs MostPopular on synthetic data
    mindref train --data-format ml-100k --out runs/ml   train (resumes when --out holds a run)
    mindref evaluate --model runs/ml --json         full-ranking metrics of a trained model
    mindref compare --data-format ml-100k           every baseline and MIND in one table
    mindref export --model runs/ml --out bundle     ONNX user tower + item vectors + Annoy index
    mindref retrieve --bundle bundle --history 50,172,181 -n 20    top items of one user
    mindref retrieve --bundle bundle --users req.jsonl --out res.jsonl    a file of users
    mindref explain --bundle bundle --history 50,172,181     one user's interests, readable
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from . import __version__, baselines, checkpoint
from .attention import MODES
from .conformance import LAYERS  # the kit's layer names (Hypothesis is imported only when a check runs)
from .datasets import (
    FORMATS,
    PROTOCOLS,
    check_fingerprint,
    fingerprint,
    load_dataset,
    locate,
    resolved_path,
    split,
)
from .evaluate import METRICS, evaluate
from .export.providers import PRECISIONS  # no onnxruntime needed: the names and sizes only
from .model import MINDConfig
from .outputs import check_output
from .readers import DataNote, decoded_lines
from .routing import GRAD_MODES, SOFTMAX_AXES
from .samplers import ALL_ITEMS
from .train import TrainingInterrupted, evaluate_model, fit, load_state, save_state, scorer

SEARCHES = ("auto", "exact", "onnx", "annoy")  # mindref.export.SEARCHES, which needs the export extra
PRECISION_HELP = ("fp32: exact float32 products; tf32: CUDA's tensor cores (about 1.4x faster top-n on "
                  "an H200, recall@50 0.999 against fp32; docs/results.md); the CPU computes fp32 either way")
BATCH_USERS_HELP = ("users per run of the ONNX graphs (default: sized for the provider: the CPU's cache, "
                    "CUDA's memory budget)")
SEARCH_HELP = ("exact: Eq. (3) over every item in NumPy; onnx: the same in the bundle's top-n graph; "
               "annoy: the index; auto: the fastest, measured when the bundle was exported")
COLUMNS = ("HR@10", "HR@50", "HR@100", "Recall@50", "NDCG@50")
PATIENCE = 3  # --early-stop: epochs without gain
BEST = "best"  # OUT/best: the best epoch's parameters (--early-stop)


def _progress(total_steps: int, desc: str, batch_size: int):
    """A training bar with loss and samples/s: (update or None, close)."""
    bar = _bar(total_steps, desc, "step")
    if isinstance(bar, _NoBar):
        return None, bar.close
    t0 = time.perf_counter()

    def update(epoch, step, steps, loss):
        bar.update(1)
        rate = bar.n * batch_size / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", samples_s=f"{rate:,.0f}", refresh=False)

    return update, bar.close


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _tqdm():
    """tqdm's class, or None without the progress extra."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _bar(total: int, desc: str, unit: str):
    """A tqdm bar when tqdm is installed (shown when stderr is a terminal), else a no-op. Its rate
    and time left are the run's average (smoothing 0), the same average as the samples/s a
    training bar shows: tqdm's default moving average jumped at every epoch's checkpoint and
    promised minutes that never came."""
    tqdm = _tqdm()
    if tqdm is None:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, disable=None,
                mininterval=0.5, smoothing=0)


def _data_spec(args) -> dict:
    path = None if args.data_format == "synthetic" else resolved_path(args.data_format, args.data_path)
    return {"format": args.data_format, "path": path,
            "protocol": args.protocol, "max_len": args.max_len, "seed": args.seed,
            "category": args.category, "name": args.comirec_name, "users": args.users}


def _config(args, ds, K: int | None = None) -> MINDConfig:
    return MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                      dim=args.dim, K=K or args.K, hidden=tuple(args.hidden), iterations=args.iterations,
                      sigma=args.sigma, softmax_axis=args.softmax_axis, grad_mode=args.grad_mode,
                      dynamic_k=not args.no_dynamic_k, attention=args.attention, p=args.p,
                      max_len=args.max_len, seed=args.seed)


def _fit_args(args) -> dict:
    return {"epochs": args.epochs, "batch_size": args.batch_size, "num_neg": args.negatives, "lr": args.lr}


def _train_args(args) -> dict:
    """train's fit arguments and its early stopping (recorded with the run, checked on resume)."""
    return {**_fit_args(args), "early_stop": args.early_stop, "patience": args.patience}


def _on_epoch(out: Path, cfg: MINDConfig, ds, valid, spec: dict, fit_args: dict):
    """After each epoch: validation metrics into the run's curve, the best epoch's parameters to
    OUT/best (with --early-stop), the checkpoint; True (stop) when the metric has not improved for
    `patience` epochs."""
    metric, patience = fit_args.get("early_stop"), fit_args.get("patience")

    def on_epoch(state) -> bool:
        point = {"epoch": state.epoch, "loss": state.losses[-1]}
        if len(valid.users):
            point["valid"] = evaluate_model(state.params, cfg, ds, valid)
        state.curve.append(point)
        shown = "" if "valid" not in point else ", valid " + " ".join(
            f"{k} {point['valid'][k]:.4f}" for k in dict.fromkeys(("HR@10", "NDCG@50", "HR@50", metric)) if k)
        stop = False
        if metric:
            value = point["valid"][metric]
            if state.best is None or value > state.best["value"]:
                state.best = {"epoch": state.epoch, "metric": metric, "value": value}
                checkpoint.save(out / BEST, state.params, cfg, spec)  # before the state that names it
                shown += " (best)"
            stop = state.epoch - state.best["epoch"] >= patience
        save_state(out, state, cfg, spec, fit_args)
        _say(f"epoch {state.epoch}: loss {point['loss']:.4f}{shown}")
        return stop

    return on_epoch


def _say(line: str) -> None:
    """A line on stderr that does not tear the progress bar."""
    tqdm = _tqdm()
    if tqdm is None:
        print(line, file=sys.stderr)
    else:
        tqdm.write(line, file=sys.stderr)


def _train(cfg, ds, train, fit_args: dict, desc: str, state=None, on_epoch=None, stop=None):
    per_epoch = -(-len(train.target) // fit_args["batch_size"])
    steps = (fit_args["epochs"] - (state.epoch if state else 0)) * per_epoch - (state.step if state else 0)
    update, close = _progress(steps, desc, fit_args["batch_size"])
    t0 = time.perf_counter()
    try:
        state = fit(cfg, ds, train, epochs=fit_args["epochs"], batch_size=fit_args["batch_size"],
                    num_neg=fit_args["num_neg"], lr=fit_args["lr"], progress=update, state=state,
                    on_epoch=on_epoch, stop=stop)
    finally:
        close()
    return state, time.perf_counter() - t0


class _StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the current step, then stop cleanly."""

    def __init__(self):
        self.raised = False

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.raised:  # a second Ctrl-C: the user insists
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.raised


def _table(rows: dict) -> str:
    lines = [f"{'model':<26}" + "".join(f"{c:>11}" for c in COLUMNS)]
    lines += [f"{name:<26}" + "".join(f"{m[c]:>11.4f}" for c in COLUMNS) for name, m in rows.items()]
    return "\n".join(lines)


def cmd_train(args) -> int:
    out = Path(args.out)
    if (out / "config.json").exists():  # resume: the run's own config, data and fit arguments
        state, cfg, manifest = load_state(out)
        spec = locate(manifest["data"], args.data_path)
        fit_args = {**manifest["train"]["fit"]}
        _check_resume(args, out, cfg, manifest["data"], fit_args, state.epoch)
        fit_args["epochs"] = args.epochs if "epochs" in args.given else fit_args["epochs"]
        print(f"resuming {out} at epoch {state.epoch + 1}, step {state.step}", file=sys.stderr)
    else:
        state, spec, fit_args = None, _data_spec(args), _train_args(args)
        check_output(out, {"--data-path": spec["path"]})
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"--out {out}: exists and is not a mindref run (no config.json); "
                                  "give a new or empty folder")
    ds, splits = load_dataset(spec)
    if state is None:
        cfg, spec = _config(args, ds), {**spec, "fingerprint": fingerprint(ds)}
    else:  # a run from before fingerprints adopts the data it resumes on
        check_fingerprint(spec, ds)
        spec = {**spec, "fingerprint": spec.get("fingerprint") or fingerprint(ds)}
    train, valid, _ = split(ds, spec, splits)
    if "patience" in args.given and not fit_args.get("early_stop"):
        raise ValueError("--patience counts epochs without gain in the --early-stop metric; give "
                         "--early-stop METRIC too")
    if fit_args.get("early_stop") and not len(valid.users):
        raise ValueError("--early-stop needs validation cases (users with >= 3 behaviours); "
                         "this data has none")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):  # fail now, not after the first epoch
        raise PermissionError(f"{out}: not writable")
    try:
        with _StopFlag() as stop:
            state, seconds = _train(cfg, ds, train, fit_args, f"train K={cfg.K}", state,
                                    on_epoch=_on_epoch(out, cfg, ds, valid, spec, fit_args), stop=stop)
    except TrainingInterrupted as stopped:
        save_state(out, stopped.state, cfg, spec, fit_args)
        print(f"mindref train: {stopped}; checkpoint saved to {out}. Run the same command to resume.",
              file=sys.stderr)
        return 130
    except BaseException:
        if created and not any(out.iterdir()):  # nothing was saved: leave no empty run behind
            out.rmdir()
        raise
    print(f"{len(train.target):,} examples x {len(state.losses)} epochs; losses "
          + " ".join(f"{x:.3f}" for x in state.losses) + f"; checkpoint {out}")
    if state.best is not None:
        best = state.best
        why = (f"stopped early: no gain in {best['metric']} for {fit_args['patience']} epochs; "
               if state.epoch < fit_args["epochs"] else "")
        print(f"{why}best epoch {best['epoch']} ({best['metric']} {best['value']:.4f} on validation): "
              f"{out / BEST} (evaluate or export it with --model {out / BEST})")
    if state.curve and "valid" in state.curve[-1]:
        print(json.dumps({"valid": state.curve[-1]["valid"]}, indent=2))
    else:
        print("no validation cases (users with >= 3 behaviours) to evaluate", file=sys.stderr)
    return 0


def _run_flags(cfg: MINDConfig, spec: dict, fit: dict) -> dict:
    """The train flags a run was started with, as argparse names them (derived from its record)."""
    return {"K": cfg.K, "dim": cfg.dim, "hidden": list(cfg.hidden), "max_len": cfg.max_len,
            "iterations": cfg.iterations, "sigma": cfg.sigma, "softmax_axis": cfg.softmax_axis,
            "grad_mode": cfg.grad_mode, "no_dynamic_k": not cfg.dynamic_k, "attention": cfg.attention,
            "p": cfg.p, "seed": cfg.seed, "batch_size": fit.get("batch_size"),
            "negatives": fit.get("num_neg"), "early_stop": fit.get("early_stop"),
            "patience": fit.get("patience", PATIENCE), "lr": fit.get("lr"), "data_format": spec.get("format"),
            "protocol": spec.get("protocol"),
            "category": spec.get("category"), "comirec_name": spec.get("name"), "users": spec.get("users")}


def _check_resume(args, out: Path, cfg: MINDConfig, spec: dict, fit: dict, done: int) -> None:
    """Refuse to resume a run with flags other than its own (each differing flag named), or with
    fewer epochs than it has done. --data-path may differ when it holds the same data (checked by
    fingerprint once loaded)."""
    recorded = _run_flags(cfg, spec, fit)
    differ = [f"--{k.replace('_', '-')} {_shown(getattr(args, k))} (the run has {_shown(v)})"
              for k, v in recorded.items() if k in args.given and _shown(getattr(args, k)) != _shown(v)]
    if differ:
        raise ValueError(f"{out} holds a run started with other settings: " + "; ".join(differ)
                         + ". Rerun without these flags to resume it, or give a new --out for a fresh run")
    if "epochs" in args.given and args.epochs < done:
        raise ValueError(f"{out} has trained {done} epochs already; --epochs {args.epochs} is fewer. Give "
                         f"--epochs > {done} to train on, or a new --out for a fresh run")


def _shown(value) -> str:
    """A flag's value as the command line would spell it (lists space-separated, bools lower)."""
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def cmd_evaluate(args) -> int:
    params, cfg, manifest, _ = checkpoint.load(args.model)
    ds, spec, splits = _run_data(manifest, args.data_path)
    _, valid, test = split(ds, spec, splits)
    cases = test if args.split == "test" else valid
    m = evaluate(scorer(params, cfg, ds), cases, cfg.num_items, not args.include_history)
    if args.json:
        print(json.dumps({"model": str(args.model), "split": args.split, "metrics": m}, indent=2))
    else:
        print(_table({f"MIND K={cfg.K} ({args.split})": m}))
    return 0


def _run_data(manifest: dict, data_path: Path | None):
    """(Dataset, spec, splits) of the data a run was trained on, found by locate() and checked
    against the run's fingerprint."""
    spec = locate(manifest.get("data") or {}, data_path)
    ds, splits = load_dataset(spec)
    check_fingerprint(spec, ds)
    return ds, spec, splits


def _compare_rows(args, ds, splits, spec) -> dict:
    train, _, test = split(ds, spec, splits)
    rows = {}
    R = baselines.interactions(train, len(ds.sequences), ds.num_items)
    steps, wals_iterations = args.epochs * -(-len(train.target) // args.batch_size), 10
    makers = (("MostPopular", 0, lambda bar: baselines.MostPopular(train, ds.num_items)),
              ("ItemCF", 0, lambda bar: baselines.ItemCF(R)),
              ("WALS", wals_iterations, lambda bar: baselines.WALS(R, dim=args.dim, seed=args.seed,
                                                                   iterations=wals_iterations,
                                                                   progress=bar.update)),
              ("MaxMF", steps, lambda bar: baselines.MaxMF(
                  train, len(ds.sequences), ds.num_items, T=args.K, dim=args.dim, epochs=args.epochs,
                  batch_size=args.batch_size, num_neg=args.negatives, lr=args.lr, seed=args.seed,
                  progress=bar.update)))
    for name, total, make in makers:
        if name in args.skip or (name == "MaxMF" and spec["protocol"] != "loo"):
            continue  # MaxMF has no vectors for held-out users
        t0 = time.perf_counter()
        bar = _bar(total, name, "step" if name == "MaxMF" else "iteration") if total else _NoBar()
        try:
            model = make(bar)
        finally:
            bar.close()
        rows[name] = evaluate(model, test, ds.num_items)
        print(f"{name}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    for K in (1, args.K):
        cfg = _config(args, ds, K)
        state, seconds = _train(cfg, ds, train, _fit_args(args), f"MIND K={K}")
        name = "YouTube DNN (MIND K=1)" if K == 1 else f"MIND K={K}"
        rows[name] = evaluate_model(state.params, cfg, ds, test)
        print(f"{name}: loss {state.losses[0]:.3f} -> {state.losses[-1]:.3f}, {seconds:.0f}s "
              f"({args.epochs * len(train.target) / seconds:,.0f} samples/s)", file=sys.stderr)
    return rows


def cmd_compare(args) -> int:
    spec = _data_spec(args)
    ds, splits = load_dataset(spec)
    rows = _compare_rows(args, ds, splits, spec)
    print(json.dumps({"data": spec, "test": rows}, indent=2) if args.json else _table(rows))
    return 0


def cmd_demo(args) -> int:
    spec = _data_spec(args)
    ds, splits = load_dataset(spec)
    print(f"synthetic data: {len(ds.sequences)} users mixing 2-4 of {ds.field_sizes[0] - 1} planted "
          f"interest clusters, {ds.num_items - 1} items; leave-one-out, full ranking of every item",
          file=sys.stderr)
    args.skip = ("ItemCF", "WALS", "MaxMF")
    rows = _compare_rows(args, ds, splits, spec)
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


def cmd_plot(args) -> int:
    from .export import plots  # matplotlib only (the plots extra)

    run = args.run
    check_output(args.out, {"the run": run})  # never into the run's folder
    plots.png_path(args.out, "--out")
    manifest = checkpoint.read_manifest(run)
    train = manifest.get("train") or {}
    curve = train.get("curve") or []
    if not curve:
        raise ValueError(f"{run}: no per-epoch record (runs trained before mindref recorded curves, or "
                         "none finished an epoch); train it again with `mindref train`")
    cfg = manifest.get("config", {})
    drawn = plots.curve_figure(curve, args.out, f"{run.name}: MIND K={cfg.get('K')}, "
                               f"{train.get('fit', {}).get('num_neg')} negatives", train.get("best"))
    print(f"{len(curve)} epochs -> {drawn}", file=sys.stderr)
    return 0


def _serving():
    """mindref.export, or a clear error when the serving extra is not installed."""
    try:
        from . import export
        from .export import bundle  # noqa: F401  (onnx, onnxruntime, Annoy: the extra's packages)
    except ImportError as err:
        raise OSError(f"serving needs the export extra: pip install 'mindref[export]' ({err})") from None
    return export


def cmd_export(args) -> int:
    export = _serving()
    check_output(args.out, {"--model": args.model})
    params, cfg, manifest, _ = checkpoint.load(args.model)
    ds, spec, _ = _run_data(manifest, args.data_path)
    check_output(args.out, {"the data": spec.get("path")})
    out = export.export_bundle(args.out, params, cfg, ds, args.trees, args.seed, args.force, args.items,
                               args.metric, args.precision)
    print(f"bundle {out}: tower.onnx (IR {export.IR_VERSION}, opset {export.OPSET}, items={args.items}), "
          f"{cfg.num_items - 1:,} item vectors, Annoy index ({args.metric}, {args.trees} trees)")
    return 0


def _split_ids(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",")] if text else []


def _bundle(args):
    return _serving().load_bundle(args.bundle, args.provider, oversample=args.oversample,
                                  search_k=args.search_k, precision=args.precision,
                                  users=getattr(args, "batch_users", None))


def cmd_retrieve(args) -> int:
    export = _serving()
    if args.users:
        if not args.out:
            raise ValueError("--users needs --out FILE")
        check_output(args.out, {"--users": args.users, "--bundle": args.bundle})
    bundle = _bundle(args)
    if args.users:
        return _retrieve_file(export, bundle, args)
    if not args.history:
        raise ValueError("give --history ID,ID,... or --users FILE")
    res = export.recommend(bundle, [_split_ids(args.history)],
                           [_split_ids(args.profile)] if args.profile else None, args.n, args.search,
                           not args.include_history)[0]
    if "note" in res:
        print(f"mindref retrieve: note: {res['note']}", file=sys.stderr)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{'rank':>4}  {'score':>8}  {'interest':>8}  {'item':>8}  title   (interests count from 0, as in "
          "--json)")
    for rank, (item, score, k) in enumerate(zip(res["items"], res["scores"], res["interest"]), 1):
        label = export.describe(bundle, bundle.item_id(item))
        print(f"{rank:>4d}  {score:8.3f}  {k:>8d}  {item:>8}  {label}")
    return 0


def _retrieve_file(export, bundle, args) -> int:
    out, tmp = Path(args.out), Path(args.out).with_name(f".{Path(args.out).name}.part")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out}: is a folder; give a file name")
    total = sum(1 for _, text in decoded_lines(args.users) if text.strip())  # also checks the encoding
    bar, short = _bar(total, "retrieve", "user"), 0
    try:
        with open(tmp, "w", encoding="utf-8") as dst:
            lines = (text for _, text in decoded_lines(args.users))
            for res in export.recommend_stream(bundle, lines, args.n, args.batch_size, args.search):
                dst.write(json.dumps(res) + "\n")
                short += "note" in res
                bar.update(1)
        tmp.replace(out)  # complete results or none under the final name
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    if short:
        print(f"mindref retrieve: note: {short:,} users got fewer than {args.n} items (the \"note\" field "
              "says why)", file=sys.stderr)
    print(f"{total:,} users -> {out} ({bundle.tower.provider})", file=sys.stderr)
    return 0


def cmd_batch(args) -> int:
    _serving()
    try:
        from .export import batch
    except ImportError as err:
        raise OSError(f"mindref batch needs pyarrow: pip install 'mindref[batch]' ({err})") from None
    engine = args.engine or ("ray" if importlib.util.find_spec("ray") else "local")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise OSError("--engine ray needs Ray: pip install 'mindref[distributed]'")
    rows = batch.count_requests(Path(args.users)) if engine == "local" and Path(args.users).exists() else None
    bar = _bar(rows, f"batch ({engine})", "user") if rows is not None else _NoBar()
    try:
        record = batch.run_batch(args.bundle, args.users, args.out, engine, args.address, args.workers,
                                 args.batch_size, args.n, args.search, args.threads, progress=bar.update,
                                 rows=rows, provider=args.provider, gpus=args.gpus, precision=args.precision,
                                 users_per_run=args.batch_users)
    except Exception as err:  # Ray wraps worker errors in its own types: one line, the cause
        if type(err).__module__.startswith("ray"):
            raise RuntimeError(f"the Ray job failed: {str(err).strip().splitlines()[-1]}") from None
        raise
    finally:
        bar.close()
    print(f"{record['input_rows']:,} users -> {args.out}: {record['output_rows']:,} served, "
          f"{record['error_rows']:,} in _errors/ ({engine}, {record['seconds']:.1f} s)", file=sys.stderr)
    return 0


def cmd_conform(args) -> int:
    spec = args.adapter
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"adapter {spec!r}: expected module:Class (e.g. myport.checks:Adapter)")
    sys.path.insert(0, os.getcwd())  # an adapter beside the caller imports like a script's module
    if args.thorough:
        os.environ["MINDREF_CONFORMANCE"] = "thorough"
    try:
        adapter = getattr(importlib.import_module(module_name), class_name)()
        from . import conformance
        rows = conformance.run_adapter(adapter, args.only, args.max_examples)
    except ImportError as err:
        raise OSError(f"{err} (the kit needs Hypothesis: pip install 'mindref[conformance]')"
                      if err.name == "hypothesis" else f"adapter {spec!r}: {err}") from None
    except AttributeError:
        raise ValueError(f"adapter {spec!r}: {module_name} has no {class_name}") from None
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["layer"]) for r in rows)
        for r in rows:
            print(f"{r['layer']:<{width}}  {r['result']:<7}  {r['detail']}")
    failed = [r for r in rows if r["result"] == "FAIL"]
    if failed and not args.json:
        for r in failed:
            print(f"\n{r['report']['message']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_explain(args) -> int:
    export = _serving()
    bundle = _bundle(args)
    if args.plot:
        from .export import plots
        check_output(args.plot, {"--bundle": args.bundle}, "--plot")
        plots.png_path(args.plot, "--plot")
        plots.pyplot()  # before any work: a missing matplotlib says how to install it
    x = export.explanation(bundle, _split_ids(args.history), _split_ids(args.profile) or None, args.n)
    if args.plot:
        drawn = plots.explain_figure(x, args.plot)
        print(f"{drawn}: routing weights of {x.weights.shape[1]} behaviours over {x.weights.shape[0]} "
              "interests", file=sys.stderr)
    print(export.explain_text(x, args.n))
    return 0


def _add_data(p, fmt: str = "ml-100k") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-format", choices=FORMATS, default=fmt)
    g.add_argument("--data-path", type=Path, help="file or folder (default: $MINDREF_DATA/...)")
    g.add_argument("--protocol", choices=PROTOCOLS, default="loo",
                   help="loo: leave-one-out next item; strong: ComiRec's held-out users")
    g.add_argument("--category", default="all", help="sequences format: all|last|first|none")
    g.add_argument("--comirec-name", default="book")
    g.add_argument("--users", type=int, default=2000, help="synthetic format: number of users")
    g.add_argument("--seed", type=int, default=0)


def _add_model(p, epochs: int = 10, dim: int = 64) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--K", type=int, default=4, help="interests")
    g.add_argument("--dim", type=int, default=dim)
    g.add_argument("--hidden", type=int, nargs="*", default=[64], help="ReLU layer sizes")
    g.add_argument("--max-len", type=int, default=5,
                   help="L: the latest behaviours read (chosen on validation, docs/results.md)")
    g.add_argument("--iterations", type=int, default=3)
    g.add_argument("--sigma", type=float, default=1.0, help="std of the initial routing logits")
    g.add_argument("--softmax-axis", choices=SOFTMAX_AXES, default="interests")
    g.add_argument("--grad-mode", choices=GRAD_MODES, default="stop")
    g.add_argument("--no-dynamic-k", action="store_true", help="K interests for every user")
    g.add_argument("--attention", choices=(*MODES, "max"), default="max",
                   help="'max' (default, measured best): score every candidate by Eq. (3) in the loss; "
                        "'pow' with --p 2 --sigma 1 is the paper's label-aware attention (3.4)")
    g.add_argument("--p", type=float, default=2.0)
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--negatives", type=_negatives, default=2048,
                   help="shared sampled negatives per batch (chosen on validation), or 'all': the full "
                        "softmax of Eq. (10)")
    g.add_argument("--lr", type=float, default=3e-3)


def _negatives(text: str) -> int | str:
    if text == ALL_ITEMS:
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count of at least 1 or '{ALL_ITEMS}', got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mindref", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"mindref {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="MIND vs K = 1 vs MostPopular on embedded synthetic data")
    _add_data(p, "synthetic")
    _add_model(p, epochs=5, dim=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("train", help="train MIND; checkpoints every epoch, resumes from --out")
    _add_data(p)
    _add_model(p)
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--early-stop", choices=METRICS, metavar="METRIC",
                   help="stop when this validation metric (e.g. NDCG@50, HR@10) has not improved for "
                        "--patience epochs; the best epoch's parameters are kept in OUT/best")
    p.add_argument("--patience", type=int, default=PATIENCE, help="epochs without gain (with --early-stop)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("plot", help="a run's training loss and validation metrics per epoch, as a PNG")
    p.add_argument("run", type=Path, help="a run folder (mindref train --out)")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write (needs the plots extra)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("evaluate", help="full-ranking metrics of a checkpoint")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data-path", type=Path, help="the run's data, if it moved (default: the recorded "
                                                   "path, else $MINDREF_DATA/...)")
    p.add_argument("--split", choices=("test", "valid"), default="test")
    p.add_argument("--include-history", action="store_true", help="do not exclude history items")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("compare", help="baselines and MIND in one table (the paper's Table 2)")
    _add_data(p)
    _add_model(p)
    p.add_argument("--skip", nargs="*", default=(), choices=("MostPopular", "ItemCF", "WALS", "MaxMF"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("export", help="a serving bundle: ONNX user tower, item vectors, Annoy index")
    p.add_argument("--model", required=True, type=Path, help="checkpoint folder (mindref train --out)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder")
    p.add_argument("--data-path", type=Path, help="the run's data, if it moved (default: the recorded "
                                                   "path, else $MINDREF_DATA/...)")
    p.add_argument("--trees", type=int, default=50, help="Annoy trees (docs/results.md)")
    p.add_argument("--seed", type=int, default=0, help="Annoy's seed")
    p.add_argument("--metric", choices=("angular", "dot"), default="angular",
                   help="Annoy: 'angular' over norm-equalised vectors (measured better) or Annoy's 'dot'")
    p.add_argument("--items", choices=("table", "features"), default="table",
                   help="tower input: item ids over a precomputed S e_i table, or item side-field ids too")
    p.add_argument("--force", action="store_true",
                   help="replace an existing bundle (only a mindref bundle; never another folder)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP + " (recorded "
                   "as the bundle's serving precision; retrieve and batch use it unless told otherwise)")
    p.set_defaults(func=cmd_export)
    for name, help_text in (("retrieve", "top-N items of a user (--history) or of a file of users (--users)"),
                            ("explain", "one user's interest capsules: routed behaviours, retrieved items")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--bundle", required=True, type=Path)
        p.add_argument("--history", help="raw item ids, oldest first, comma-separated")
        p.add_argument("--profile", help="raw profile values in the bundle's order, comma-separated")
        p.add_argument("-n", type=int, default=50 if name == "retrieve" else 10)
        p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto",
                       help="where the graphs run: auto = CUDA when it really loads, else the CPU")
        p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP + " (default: the bundle's)")
        p.add_argument("--oversample", type=int, default=2,
                       help="Annoy candidates per interest: oversample * n")
        p.add_argument("--search-k", type=int, default=-1, help="Annoy search_k (-1: trees*n)")
        p.set_defaults(func=cmd_retrieve if name == "retrieve" else cmd_explain)
        if name == "explain":
            p.add_argument("--plot", type=Path, help="also draw the routing weights and retrieved items "
                                                     "to this PNG (needs the plots extra: matplotlib)")
        if name == "retrieve":
            p.add_argument("--users", type=Path, help='JSON lines {"user":..,"history":[..],"profile":[..]}')
            p.add_argument("--out", type=Path, help="JSON lines of results (with --users)")
            p.add_argument("--batch-size", type=int, default=1024)
            p.add_argument("--batch-users", type=int, help=BATCH_USERS_HELP)
            p.add_argument("--search", choices=SEARCHES, default="auto", help=SEARCH_HELP)
            p.add_argument("--include-history", action="store_true")
            p.add_argument("--json", action="store_true")
    p = sub.add_parser("batch", help="recommendations for every user of a Parquet / JSON-lines file, "
                                      "in one process or on Ray")
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--users", required=True, type=Path,
                   help="Parquet file or folder, or JSON lines: user, history (raw ids, oldest first), "
                        "profile")
    p.add_argument("--out", required=True, type=Path, help="output folder (Parquet, _errors/, _SUCCESS.json)")
    p.add_argument("--engine", choices=("local", "ray"),
                   help="local: one process; ray: Ray Data (default: ray when installed)")
    p.add_argument("--address", help="a Ray cluster to join (default: start Ray on this machine)")
    p.add_argument("--workers", type=int, help="Ray actors (default: the cluster's CPUs)")
    p.add_argument("--threads", type=int,
                   help="threads per worker (default: local, all cores; each Ray actor, 1)")
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto",
                   help="local engine: where the graphs run (auto = CUDA when it really loads)")
    p.add_argument("--gpus", type=int, help="ray engine: one actor per GPU, each with its own CUDA "
                   "session (refused where the cluster has fewer GPUs)")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP + " (default: the bundle's)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batch-users", type=int, help=BATCH_USERS_HELP)
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--search", choices=SEARCHES, default="auto", help=SEARCH_HELP)
    p.set_defaults(func=cmd_batch)
    p = sub.add_parser("conform", help="check a MIND port against mindref, layer by layer, and name its "
                                        "mistakes (docs/conformance.md)")
    p.add_argument("adapter", help="module:Class with the port's layers as methods (routing, squash, ...)")
    p.add_argument("--only", nargs="+", metavar="LAYER", help="only these layers", choices=tuple(LAYERS))
    p.add_argument("--max-examples", type=int, help="generated examples per layer (default: each check's)")
    p.add_argument("--thorough", action="store_true", help="ten times the examples (for a release)")
    p.add_argument("--json", action="store_true", help="the rows and failure reports as JSON")
    p.set_defaults(func=cmd_conform)
    return ap


POSITIVE = ("K", "dim", "max_len", "iterations", "epochs", "batch_size", "users", "n", "trees", "patience",
            "oversample", "workers", "threads", "max_examples", "batch_users", "gpus")


def _given(argv: list[str] | None) -> set[str]:
    """The flags the user typed (not defaulted): the command line parsed again with every default
    suppressed."""
    ap = parser()
    subparsers = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for p in (ap, *subparsers.choices.values()):
        for action in p._actions:
            if not action.required and action.dest != "help":
                action.default = argparse.SUPPRESS
    return set(vars(ap.parse_args(argv)))


def _check_values(ap: argparse.ArgumentParser, args) -> None:
    """Values argparse's types let through but the model cannot take, each error naming its flag."""
    for name in POSITIVE:
        if isinstance(getattr(args, name, None), int) and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(h < 1 for h in getattr(args, "hidden", [])):
        ap.error(f"--hidden: every layer size must be >= 1, got {' '.join(map(str, args.hidden))}")
    if getattr(args, "seed", 0) < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")
    for name in ("lr", "sigma", "p"):
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            ap.error(f"--{name} must be a finite number, got {value}")
    if getattr(args, "lr", 1) <= 0 or getattr(args, "sigma", 0) < 0:
        ap.error("--lr must be > 0 and --sigma >= 0")
    search_k = getattr(args, "search_k", -1)
    if search_k != -1 and not 1 <= search_k <= 2**31 - 1:
        ap.error(f"--search-k must be -1 (Annoy's default) or 1..{2**31 - 1:,}, got {search_k}")


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """Readers' notes (DataNote) as one line on stderr; libraries' warnings are not the user's."""
    if issubclass(category, DataNote):
        print(f"mindref: note: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    args.given = _given(argv)
    _check_values(ap, args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DataNote)
            warnings.showwarning = _note
            return args.func(args)
    except KeyboardInterrupt:
        print(f"mindref {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except MemoryError as err:
        print(f"mindref {args.command}: error: out of memory ({err or 'allocation failed'})", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError, FloatingPointError, OverflowError) as err:  # user mistakes
        print(f"mindref {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
