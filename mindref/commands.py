"""What each `mindref` command does, once its flags are parsed (mindref/cli.py parses them):
each handler calls the layer that does the work (runs, compare, checkpoint, export, the kit) and
prints its result. Handlers take the parsed arguments and return the exit status.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from . import checkpoint
from .compare import DEMO_SKIPS, compare, settings_table, table
from .datasets import check_fingerprint, load_dataset, locate, split
from .evaluate import evaluate
from .outputs import OutputLock, check_existing, check_output, write_failed
from .progress import Progress
from .readers import decoded_lines
from .runs import BEST, TUNING_LOG, Plan, result
from .runs import train as train_run
from .train import scorer


def cmd_train(args) -> int:
    if args.tune:
        args.plan = _tuned_plan(args)
    outcome = train_run(Path(args.out), args.plan, args.data_path)
    if args.tune:
        _record_tuning(Path(args.out), args.plan_tuning)
    out, state, fit = Path(args.out), outcome.state, outcome.train_cfg
    if outcome.interrupted:
        print(f"mindref train: training interrupted at epoch {state.epoch + 1}, step {state.step}; "
              f"checkpoint saved to {out}. Run the same command to resume.", file=sys.stderr)
        return 130
    print(f"{outcome.examples:,} examples x {len(state.losses)} epochs; losses "
          + " ".join(f"{x:.3f}" for x in state.losses) + f"; checkpoint {out}")
    if state.best is not None:
        best = state.best
        why = (f"stopped early: no gain in {best['metric']} for {fit.patience} epochs; "
               if state.epoch < fit.epochs else "")
        print(f"{why}best epoch {best['epoch']} ({best['metric']} {best['value']:.4f} on validation): "
              f"{out / BEST} (evaluate or export it with --model {out / BEST})")
    shown = [p for p in state.curve if "valid" in p]
    if state.best is not None:  # the run's result is its best epoch: show that epoch's validation
        shown = [p for p in shown if p.get("epoch") == state.best["epoch"]] or shown
    if shown:
        print(json.dumps({"valid": shown[-1]["valid"]}, indent=2))
    else:
        print("no validation cases (users with >= 3 behaviours) to evaluate", file=sys.stderr)
    return 0


def _tuned_plan(args) -> Plan:
    """train --tune: the run's plan with MIND's settings chosen on validation (mindref/tuning.py);
    the settings the user typed stay fixed. A run already trained keeps what it chose."""
    from dataclasses import replace

    from . import tuning
    plan: Plan = args.plan
    out = Path(args.out)
    if (out / "config.json").exists():  # resume: the run's config holds the choice
        args.plan_tuning = checkpoint.read_manifest(out).get("tuning")
        return plan
    ds, splits = load_dataset(plan.spec)
    space = {k: v for k, v in tuning.SPACES["MIND"].items() if k not in plan.given}  # typed: fixed
    out.mkdir(parents=True, exist_ok=True)
    best = tuning.tune_mind(ds, plan.spec, splits, plan.model, plan.train_cfg, args.tune,
                            tuning.TrialLog(out / TUNING_LOG), space=space, seed=plan.model.get("seed", 0))
    chosen = best["settings"]
    model = {**plan.model, **{k: v for k, v in chosen.items() if k in ("K", "max_len")}}
    train_cfg = replace(plan.train_cfg, epochs=best["epochs"],
                        **{k: v for k, v in chosen.items() if k in ("num_neg", "lr")})
    args.plan_tuning = {"budget_s": args.tune, "metric": tuning.METRIC, "settings": chosen,
                        "epochs": best["epochs"], "valid": best["valid"], "trials": best["trials"],
                        "log": TUNING_LOG}
    print(f"mindref train: chose on validation: {chosen}, {best['epochs']} epochs ({tuning.METRIC} "
          f"{best['valid'][tuning.METRIC]:.4f})", file=sys.stderr)
    # the run trains with the chosen settings: the same seed and data as the winning trial, so its
    # parameters are that trial's best epoch
    return plan._replace(spec={**plan.spec, "max_len": model["max_len"]}, model=model, train_cfg=train_cfg,
                         given=plan.given | {"max_len", "epochs"})


def _record_tuning(out: Path, record: dict | None) -> None:
    """The tuning's choice in the run's config.json (beside the settings it chose)."""
    if record is None:
        return
    manifest = checkpoint.read_manifest(out)
    if manifest.get("tuning") != record:
        manifest["tuning"] = record
        checkpoint.atomic_write(out / "config.json", json.dumps(manifest, indent=2).encode())


def cmd_compare(args) -> int:
    plan: Plan = args.plan
    ds, splits = load_dataset(plan.spec)
    log, chosen = None, {}
    if args.tune:
        log = args.tune_log or Path(f"tuning-{plan.spec['format']}-seed{plan.spec['seed']}.jsonl")
        print(f"mindref compare: tuning every model on validation within {args.tune:.0f} s; trials in {log}",
              file=sys.stderr)
    rows = compare(ds, plan.spec, splits, plan.model, plan.train_cfg, tuple(args.skip), tuple(args.include),
                   args.tune, log, chosen)
    if args.json:
        extra = {"settings": chosen} if chosen else {}
        print(json.dumps({"data": plan.spec, "test": rows, **extra}, indent=2))
    else:
        print(table(rows))
        if chosen:
            print("\nsettings chosen on validation:\n" + settings_table(chosen))
    return 0


def cmd_demo(args) -> int:
    plan: Plan = args.plan
    ds, splits = load_dataset(plan.spec)
    print(f"synthetic data: {len(ds.sequences)} users mixing 2-4 of {ds.field_sizes[0] - 1} planted "
          f"interest clusters, {ds.num_items - 1} items; leave-one-out, full ranking of every item",
          file=sys.stderr)
    rows = compare(ds, plan.spec, splits, plan.model, plan.train_cfg, DEMO_SKIPS)
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


def _result(model: Path) -> Path:
    """The checkpoint a command reads for --model RUN: the run's best epoch when it has one."""
    folder, note = result(model)
    if note:
        print(f"mindref: note: {note}", file=sys.stderr)
    return folder


def cmd_evaluate(args) -> int:
    params, cfg, manifest, _ = checkpoint.load(_result(args.model))
    ds, spec, splits = _run_data(manifest, args.data_path)
    _, valid, test = split(ds, spec, splits)
    cases = test if args.split == "test" else valid
    m = evaluate(scorer(params, cfg, ds), cases, cfg.num_items, not args.include_history)
    if args.json:
        print(json.dumps({"model": str(args.model), "split": args.split, "metrics": m}, indent=2))
    else:
        print(table({f"MIND K={cfg.K} ({args.split})": m}))
    return 0


def _run_data(manifest: dict, data_path: Path | None):
    """(Dataset, spec, splits) of the data a run was trained on, found by locate() and checked
    against the run's fingerprint."""
    spec = locate(manifest.get("data") or {}, data_path)
    ds, splits = load_dataset(spec)
    check_fingerprint(spec, ds)
    return ds, spec, splits


def cmd_plot(args) -> int:
    from .export import plots  # matplotlib only (the plots extra)

    run = args.run
    check_output(args.out, {"the run": run})  # never into the run's folder
    plots.png_path(args.out, "--out")
    check_existing(args.out, args.force)
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
    params, cfg, manifest, _ = checkpoint.load(_result(args.model))
    ds, spec, _ = _run_data(manifest, args.data_path)
    check_output(args.out, {"the data": spec.get("path")})
    if args.web:
        from .export.web import export_web
        with OutputLock(args.out, "export"):
            record = export_web(args.out, params, cfg, ds, args.force)
        sizes = ", ".join(f"{name} {f['bytes'] / 2**20:.2f} MiB" for name, f in record["files"].items())
        print(f"web bundle {args.out}: {sizes}")
        return 0
    with OutputLock(args.out, "export"):
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
        check_existing(args.out, args.force)
    bundle = _bundle(args)
    if args.users:
        with OutputLock(args.out, "retrieve"):
            return _retrieve_file(export, bundle, args)
    if not args.history:
        raise ValueError("give --history ID,ID,... or --users FILE")
    given = len(_split_ids(args.history))
    if given > bundle.cfg.max_len:
        print(f"mindref retrieve: note: {given} behaviours given; the tower reads the latest "
              f"{bundle.cfg.max_len} (L = max_len, as trained)"
              + ("" if args.include_history else "; every one given is excluded from the results"),
              file=sys.stderr)
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
    bar, short, failed = Progress(total, "retrieve", "user"), 0, []
    try:
        with open(tmp, "w", encoding="utf-8") as dst:
            lines = (text for _, text in decoded_lines(args.users))
            for res in export.recommend_stream(bundle, lines, args.n, args.batch_size, args.search,
                                               errors="record"):
                try:
                    dst.write(json.dumps(res) + "\n")
                except OSError as err:
                    raise write_failed(out, err, tmp) from None
                short += "note" in res
                if "error" in res:
                    failed.append(res["error"])
                bar.update(1)
        tmp.replace(out)  # complete results or none under the final name
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    if short:
        print(f"mindref retrieve: note: {short:,} users got fewer than {args.n} items (the \"note\" field "
              "says why)", file=sys.stderr)
    if failed:  # the rule batch follows: a bad request is recorded and the others are served
        print(f"mindref retrieve: {len(failed):,} of {total:,} requests could not be served (their lines in "
              f"{out} hold \"error\"; the first: {failed[0]})", file=sys.stderr)
    print(f"{total - len(failed):,} users -> {out} ({bundle.tower.provider})", file=sys.stderr)
    return 1 if total and len(failed) == total else 0


def cmd_batch(args) -> int:
    _serving()
    try:
        from .export import batch, job
    except ImportError as err:
        raise OSError(f"mindref batch needs pyarrow: pip install 'mindref[batch]' ({err})") from None
    engine = args.engine or ("ray" if importlib.util.find_spec("ray") else "local")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise OSError("--engine ray needs Ray: pip install 'mindref[distributed]'")
    rows = batch.count_requests(Path(args.users)) if engine == "local" and Path(args.users).exists() else None
    bar = Progress(rows, f"batch ({engine})", "user")
    try:
        record = job.run_batch(args.bundle, args.users, args.out, engine, args.address, args.workers,
                                 args.batch_size, args.n, args.search, args.threads, progress=bar.update,
                                 rows=rows, provider=args.provider, gpus=args.gpus, precision=args.precision,
                                 users_per_run=args.batch_users, force=args.force)
    except job.NothingServed as err:  # not a success: a scheduler must see it fail
        print(f"mindref batch: failed: {err}", file=sys.stderr)
        return 1
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
    from . import conformance
    if args.thorough:
        os.environ["MINDREF_CONFORMANCE"] = "thorough"
    try:
        adapter = conformance.load(args.adapter)
    except conformance.ConformanceError as err:  # the adapter is broken: what and where, one line
        raise ValueError(str(err)) from None
    rows = conformance.run_adapter(adapter, args.only, args.max_examples, quiet=args.json)
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
        check_existing(args.plot, args.force, "--plot")
        plots.pyplot()  # before any work: a missing matplotlib says how to install it
    x = export.explanation(bundle, _split_ids(args.history), _split_ids(args.profile) or None, args.n)
    if args.plot:
        drawn = plots.explain_figure(x, args.plot)
        print(f"{drawn}: routing weights of {x.weights.shape[1]} behaviours over {x.weights.shape[0]} "
              "interests", file=sys.stderr)
    print(export.explain_text(x, args.n))
    return 0


