"""mindref's command line.

    mindref demo                                    MIND vs K = 1 vs MostPopular on synthetic data
    mindref train --data-format ml-100k --out runs/ml   train (resumes when --out holds a run)
    mindref plot runs/ml --out curve.png            a run's loss and validation metrics per epoch
    mindref evaluate --model runs/ml --json         full-ranking metrics of a trained model
    mindref compare --data-format ml-100k           every baseline and MIND in one table
    mindref export --model runs/ml --out bundle     ONNX user tower + top-n graphs + Annoy index
    mindref retrieve --bundle bundle --history 50,172,181 -n 20    top items of one user
    mindref retrieve --bundle bundle --users req.jsonl --out res.jsonl    a file of users
    mindref explain --bundle bundle --history 50,172,181     one user's interests, readable
    mindref batch --bundle bundle --users users.parquet --out recs   every user, Parquet out
    mindref conform myport.checks:Adapter           check a port of MIND, layer by layer

This module parses and dispatches only: the defaults come from the configuration objects
(model.MINDConfig, train.TrainConfig), the work from the layers below (mindref/commands.py
calls them).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import MISSING, fields
from pathlib import Path

from . import __version__, commands
from .attention import MODES
from .compare import BASELINES, DEMO, OPT_IN
from .conformance import LAYERS  # the kit's layer names (Hypothesis is imported only when a check runs)
from .datasets import FORMATS, OWN_SETTING, PROTOCOLS, foreign_settings, resolved_path
from .evaluate import METRICS
from .export.providers import PRECISIONS  # no onnxruntime needed: the names only
from .model import OBJECTIVES, MINDConfig
from .readers import DataNote
from .routing import GRAD_MODES, SOFTMAX_AXES
from .runs import Plan, interests_note
from .samplers import ALL_ITEMS
from .train import TrainConfig

SEARCHES = ("auto", "exact", "onnx", "annoy")  # mindref.export.SEARCHES, which needs the export extra
PRECISION_HELP = ("fp32: exact float32 products; tf32: CUDA's tensor cores (about 1.4x faster top-n on "
                  "an H200, recall@50 0.999 against fp32; docs/results.md); the CPU computes fp32 either way")
BATCH_USERS_HELP = ("users per run of the ONNX graphs (default: sized for the provider: the CPU's cache, "
                    "CUDA's memory budget)")
SEARCH_HELP = ("exact: Eq. (3) over every item in NumPy; onnx: the same in the bundle's top-n graph; "
               "annoy: the index; auto (default): the fastest, measured when the bundle was exported")
FORCE_HELP = "replace the output if it exists (without it, an existing output is refused)"
TUNE_HELP = ("choose the settings on the validation split within this time budget (90s, 20m, 1h): "
             "L, negatives, lr, epochs and K for MIND (successive halving), each baseline's own "
             "(mindref/tuning.py); test is read once, after")


def _budget(text: str) -> float:
    from .tuning import parse_budget
    try:
        return parse_budget(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# flag (argparse dest) -> the setting it sets, where the names differ
MODEL_FLAGS = ("K", "dim", "hidden", "max_len", "iterations", "sigma", "softmax_axis", "grad_mode",
               "objective", "attention", "p", "seed")
TRAIN_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "negatives": "num_neg", "lr": "lr",
               "early_stop": "early_stop", "patience": "patience"}
DATA_FLAGS = {"data_format": "format", "protocol": "protocol", "category": "category",
              "comirec_name": "name", "users": "users"}


def default(config: type, name: str):
    """A configuration object's default for a setting (lists for tuples, as argparse gives them)."""
    value = next(f.default for f in fields(config) if f.name == name)
    assert value is not MISSING, name
    return list(value) if isinstance(value, tuple) else value


def plan(args) -> Plan:
    """What the parsed flags ask for: the data, the model settings, the training settings, and
    which of them were typed (mindref.runs.Plan). Benches that take mindref's flags use it too."""
    path = None if args.data_format == "synthetic" else resolved_path(args.data_format, args.data_path)
    spec = {"format": args.data_format, "path": path, "protocol": args.protocol, "max_len": args.max_len,
            "seed": args.seed, **{key: getattr(args, flag) for flag, key in DATA_FLAGS.items()  # its own
                                  if OWN_SETTING.get(key, ("",))[0] == args.data_format}}
    model = {name: getattr(args, name) for name in MODEL_FLAGS}
    model["hidden"] = tuple(model["hidden"])
    model["dynamic_k"] = not args.no_dynamic_k
    train_cfg = TrainConfig(**{field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items()
                               if hasattr(args, flag)})
    renamed = {**TRAIN_FLAGS, **DATA_FLAGS, "no_dynamic_k": "dynamic_k"}
    given = frozenset(renamed.get(flag, flag) for flag in getattr(args, "given", ()))
    return Plan(spec, model, train_cfg, given)


def _add_data(p, fmt: str = "ml-100k") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-format", choices=FORMATS, default=fmt, help="(default %(default)s)")
    g.add_argument("--data-path", type=Path, help="file or folder (default: $MINDREF_DATA/...)")
    g.add_argument("--protocol", choices=PROTOCOLS, default="loo",
                   help="loo: leave-one-out next item (default); strong: ComiRec's held-out users")
    g.add_argument("--category", default="all", help="sequences format: all|last|first|none (default all)")
    g.add_argument("--comirec-name", default="book", help="comirec format: the dataset's name (default book)")
    g.add_argument("--users", type=int, default=2000, help="synthetic format: number of users (default 2000)")
    g.add_argument("--seed", type=int, default=default(MINDConfig, "seed"),
                   help="seeds the parameters, the draws and the synthetic data (default %(default)s)")


def _add_model(p, **changes) -> None:
    """The model and training flags, their defaults from MINDConfig and TrainConfig (`changes`:
    the few a command changes, e.g. the demo's smaller model)."""
    def d(config: type, name: str):
        return changes.get(name, default(config, name))
    g = p.add_argument_group("model (defaults: mindref.model.MINDConfig)")
    g.add_argument("--K", type=int, default=d(MINDConfig, "K"), help="interests (default %(default)s)")
    g.add_argument("--dim", type=int, default=d(MINDConfig, "dim"), help="d (default %(default)s)")
    g.add_argument("--hidden", type=int, nargs="*", default=d(MINDConfig, "hidden"),
                   help="ReLU layer sizes (default %(default)s)")
    g.add_argument("--max-len", type=int, default=d(MINDConfig, "max_len"),
                   help="L: the latest behaviours read (default %(default)s, chosen on validation)")
    g.add_argument("--iterations", type=int, default=d(MINDConfig, "iterations"),
                   help="routing iterations r (default %(default)s)")
    g.add_argument("--sigma", type=float, default=d(MINDConfig, "sigma"),
                   help="std of the initial routing logits (default %(default)s)")
    g.add_argument("--softmax-axis", choices=SOFTMAX_AXES, default=d(MINDConfig, "softmax_axis"),
                   help="Eq. (5)'s softmax axis (default %(default)s)")
    g.add_argument("--grad-mode", choices=GRAD_MODES, default=d(MINDConfig, "grad_mode"),
                   help="gradients through the routing logits' updates (default %(default)s)")
    g.add_argument("--no-dynamic-k", action="store_true", help="K interests for every user (no K'_u, Eq. 9)")
    g.add_argument("--objective", choices=OBJECTIVES, default=d(MINDConfig, "objective"),
                   help="eq3-max (default, measured better): every candidate scored by Eq. (3) in the loss; "
                        "label-aware: the paper's label-aware attention (3.4) and sampled softmax")
    g.add_argument("--attention", choices=(*MODES, "max"), default=d(MINDConfig, "attention"),
                   help="label-aware attention's mode (with --objective label-aware; default %(default)s)")
    g.add_argument("--p", type=float, default=d(MINDConfig, "p"),
                   help="label-aware attention's power (with --objective label-aware; default %(default)s)")
    g = p.add_argument_group("training (defaults: mindref.train.TrainConfig)")
    g.add_argument("--epochs", type=int, default=d(TrainConfig, "epochs"), help="(default %(default)s)")
    g.add_argument("--batch-size", type=int, default=d(TrainConfig, "batch_size"),
                   help="(default %(default)s)")
    g.add_argument("--negatives", type=_negatives, default=d(TrainConfig, "num_neg"),
                   help=f"shared sampled negatives per batch (default %(default)s), or '{ALL_ITEMS}': the "
                        "full softmax of Eq. (10)")
    g.add_argument("--lr", type=float, default=d(TrainConfig, "lr"), help="Adam's step (default %(default)s)")


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


def _add_serving(p, name: str) -> None:
    """retrieve's and explain's flags."""
    p.add_argument("--bundle", required=True, type=Path, help="a bundle folder (mindref export --out)")
    p.add_argument("--history", help="raw item ids, oldest first, comma-separated")
    p.add_argument("--profile", help="raw profile values in the bundle's order, comma-separated")
    p.add_argument("-n", type=int, default=50 if name == "retrieve" else 10,
                   help="items (default %(default)s)")
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where the graphs run: auto (default) = CUDA when it really loads, else the CPU")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP + " (default: the bundle's)")
    p.add_argument("--oversample", type=int, default=2, help="Annoy candidates per interest: oversample * n "
                                                            "(default %(default)s)")
    p.add_argument("--search-k", type=int, default=-1, help="Annoy search_k (default -1: trees * n)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mindref", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"mindref {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="MIND vs K = 1 vs MostPopular on embedded synthetic data")
    _add_data(p, "synthetic")
    _add_model(p, **DEMO)
    p.add_argument("--json", action="store_true", help="the metrics as JSON")
    p.set_defaults(func=commands.cmd_demo)
    p = sub.add_parser("train", help="train MIND; checkpoints every epoch, resumes from --out")
    _add_data(p)
    _add_model(p)
    p.add_argument("--out", required=True, help="the run's folder")
    p.add_argument("--early-stop", choices=METRICS, metavar="METRIC",
                   help="stop when this validation metric (e.g. NDCG@50, HR@10) has not improved for "
                        "--patience epochs; the best epoch's parameters are kept in OUT/best")
    p.add_argument("--patience", type=int, default=default(TrainConfig, "patience"),
                   help="epochs without gain (with --early-stop; default %(default)s)")
    p.add_argument("--tune", metavar="BUDGET", type=_budget, help=TUNE_HELP + "; the settings you type "
                   "stay fixed. The trials go to OUT/tuning.jsonl (rerun to resume), the choice to "
                   "OUT/config.json")
    p.set_defaults(func=commands.cmd_train)
    p = sub.add_parser("plot", help="a run's training loss and validation metrics per epoch, as a PNG")
    p.add_argument("run", type=Path, help="a run folder (mindref train --out)")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write (needs the plots extra)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=commands.cmd_plot)
    p = sub.add_parser("evaluate", help="full-ranking metrics of a checkpoint")
    p.add_argument("--model", required=True, type=Path, help="a run or checkpoint folder")
    p.add_argument("--data-path", type=Path, help="the run's data, if it moved (default: the recorded "
                                                   "path, else $MINDREF_DATA/...)")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="(default %(default)s)")
    p.add_argument("--include-history", action="store_true", help="do not exclude history items")
    p.add_argument("--json", action="store_true", help="the metrics as JSON")
    p.set_defaults(func=commands.cmd_evaluate)
    p = sub.add_parser("compare", help="baselines and MIND in one table (the paper's Table 2)")
    _add_data(p)
    _add_model(p)
    p.add_argument("--skip", nargs="*", default=(), choices=BASELINES, help="baselines to leave out")
    p.add_argument("--tune", metavar="BUDGET", type=_budget, help=TUNE_HELP + " (one budget for the "
                   "whole comparison; each model's share: mindref.compare.TUNE_SHARE)")
    p.add_argument("--tune-log", type=Path, help="the trials' JSON-lines log (default: "
                   "tuning-<data format>-seed<seed>.jsonl here); the same log resumes a search")
    p.add_argument("--include", nargs="*", default=(), choices=OPT_IN,
                   help="baselines run only when asked: MaxMF (slow, and untuned: trained with MIND's "
                        "settings it scored below MostPopular on a new dataset; docs/results.md)")
    p.add_argument("--json", action="store_true", help="the metrics as JSON")
    p.set_defaults(func=commands.cmd_compare)
    p = sub.add_parser("export", help="a serving bundle: ONNX user tower, top-n graphs, item vectors, Annoy")
    p.add_argument("--model", required=True, type=Path, help="a run or checkpoint (mindref train --out)")
    p.add_argument("--out", required=True, type=Path, help="the bundle's folder")
    p.add_argument("--data-path", type=Path, help="the run's data, if it moved (default: the recorded "
                                                   "path, else $MINDREF_DATA/...)")
    p.add_argument("--trees", type=int, default=50, help="Annoy trees (default %(default)s; docs/results.md)")
    p.add_argument("--seed", type=int, default=0, help="Annoy's seed (default %(default)s)")
    p.add_argument("--metric", choices=("angular", "dot"), default="angular",
                   help="Annoy: 'angular' (default) over norm-equalised vectors (measured better) or 'dot'")
    p.add_argument("--items", choices=("table", "features"), default="table",
                   help="tower input: item ids over a precomputed S e_i table (default), or side fields too")
    p.add_argument("--force", action="store_true",
                   help="replace an existing bundle (only a mindref bundle; never another folder)")
    p.add_argument("--web", action="store_true", help="a web-sized bundle instead: the tower and top-n "
                   "graphs with their initializers inside and the catalogue as JSON, for onnxruntime-web "
                   "(export/web.py; the docs site's Try MIND page)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP + " (default "
                   "%(default)s; recorded as the bundle's serving precision; retrieve and batch use it "
                   "unless told otherwise)")
    p.set_defaults(func=commands.cmd_export)
    p = sub.add_parser("retrieve", help="top-N items of a user (--history) or of a file of users (--users)")
    _add_serving(p, "retrieve")
    p.add_argument("--users", type=Path, help='JSON lines {"user":..,"history":[..],"profile":[..]}')
    p.add_argument("--out", type=Path, help="JSON lines of results (with --users); a request that cannot "
                                            'be served is a line with "error", the others are served')
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--batch-size", type=int, default=1024, help="users read at a time (default %(default)s)")
    p.add_argument("--batch-users", type=int, help=BATCH_USERS_HELP)
    p.add_argument("--search", choices=SEARCHES, default="auto", help=SEARCH_HELP)
    p.add_argument("--include-history", action="store_true", help="do not exclude the history's items")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.set_defaults(func=commands.cmd_retrieve)
    p = sub.add_parser("explain", help="one user's interest capsules: routed behaviours, retrieved items")
    _add_serving(p, "explain")
    p.add_argument("--plot", type=Path, help="also draw the routing weights and retrieved items to this PNG "
                                             "(needs the plots extra: matplotlib)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=commands.cmd_explain)
    p = sub.add_parser("batch", help="recommendations for every user of a Parquet / JSON-lines file, "
                                      "in one process or on Ray")
    p.add_argument("--bundle", required=True, type=Path, help="a bundle folder (mindref export --out)")
    p.add_argument("--users", required=True, type=Path,
                   help="Parquet file or folder, or JSON lines: user (string), history (list of raw item "
                        "ids as strings, oldest first), profile (list of raw values as strings, optional)")
    p.add_argument("--out", required=True, type=Path, help="output folder (Parquet, _errors/, _SUCCESS.json)")
    p.add_argument("--force", action="store_true", help="replace a finished batch output (an unfinished "
                   "one, without _SUCCESS.json, is replaced without it; never another folder)")
    p.add_argument("--engine", choices=("local", "ray"),
                   help="local: one process; ray: Ray Data (default: ray when installed)")
    p.add_argument("--address", help="a Ray cluster to join (default: start Ray on this machine)")
    p.add_argument("--workers", type=int, help="Ray actors (default: the cluster's CPUs)")
    p.add_argument("--threads", type=int,
                   help="threads per worker (default: local, all cores; each Ray actor, 1)")
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto",
                   help="local engine: where the graphs run (default auto = CUDA when it really loads)")
    p.add_argument("--gpus", type=int, help="ray engine: one actor per GPU, each with its own CUDA "
                   "session (refused where the cluster has fewer GPUs)")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP + " (default: the bundle's)")
    p.add_argument("--batch-size", type=int, default=1024, help="users per batch (default %(default)s)")
    p.add_argument("--batch-users", type=int, help=BATCH_USERS_HELP)
    p.add_argument("-n", type=int, default=50, help="items per user (default %(default)s)")
    p.add_argument("--search", choices=SEARCHES, default="auto", help=SEARCH_HELP)
    p.set_defaults(func=commands.cmd_batch)
    p = sub.add_parser("conform", help="check a MIND port against mindref, layer by layer, and name its "
                                        "mistakes (docs/conformance.md)")
    p.add_argument("adapter", help="module:Class with the port's layers as methods (routing, squash, ...)")
    p.add_argument("--only", nargs="+", metavar="LAYER", help="only these layers", choices=tuple(LAYERS))
    p.add_argument("--max-examples", type=int, help="generated examples per layer (default: each check's)")
    p.add_argument("--thorough", action="store_true", help="ten times the examples (for a release)")
    p.add_argument("--json", action="store_true", help="the rows and failure reports as JSON")
    p.set_defaults(func=commands.cmd_conform)
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


def _subparser(ap: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def _flag(p: argparse.ArgumentParser, dest: str) -> str:
    """The flag of a setting as the user types it (-n, --batch-size)."""
    for action in p._actions:
        if action.dest == dest and action.option_strings:
            return max(action.option_strings, key=len)
    return f"--{dest.replace('_', '-')}"


def _check_values(ap: argparse.ArgumentParser, args) -> None:
    """Values argparse's types let through but the model cannot take, each error naming its flag as
    typed, with the subcommand's usage."""
    ap = _subparser(ap, args.command)
    for name in POSITIVE:
        value = getattr(args, name, None)
        if isinstance(value, int) and value < 1:
            ap.error(f"{_flag(ap, name)} must be >= 1, got {value}")
    cores = os.cpu_count() or 1
    if isinstance(getattr(args, "threads", None), int) and args.threads > cores:
        ap.error(f"--threads {args.threads}: this machine has {cores} cores; more threads than cores only "
                 f"wait on each other (measured 40x slower at 1,000); give at most {cores}")
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
    if getattr(args, "attention", None) == "max":
        ap.error("--attention max is now --objective eq3-max (the default): the objective that scores every "
                 "candidate by Eq. (3) is not an attention mode")
    paper_only = sorted({"attention", "p"} & args.given)
    if paper_only and getattr(args, "objective", None) != "label-aware":
        ap.error(f"--{paper_only[0]} sets the paper's label-aware attention; give --objective label-aware "
                 "too (before, --attention pow chose that objective: now --objective label-aware "
                 "--attention pow)")


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """Readers' notes (DataNote) as one line on stderr; libraries' warnings are not the user's."""
    if issubclass(category, DataNote):
        print(f"mindref: note: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    args.given = _given(argv)
    _check_values(ap, args)
    if hasattr(args, "max_len"):  # the commands that train
        args.plan = plan(args)
        model = args.plan.model
        note = interests_note(model.get("K", MINDConfig.K), model.get("max_len", MINDConfig.max_len),
                              model.get("dynamic_k", MINDConfig.dynamic_k))
        notes = [note] if note and {"K", "max_len"} & args.given else []  # the defaults' K'_u: documented
        for line in notes + foreign_settings(args.data_format, args.plan.given):
            print(f"mindref {args.command}: note: {line}", file=sys.stderr)
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

