"""Markdown tables from bench/quality.py's JSON lines (what docs/results.md shows), and HR@N curves.

    python bench/report.py results-ml.jsonl results-beauty.jsonl
    python bench/report.py curves-ml.jsonl curves-beauty.jsonl --plot hr-at-n.png --only ItemCF WALS default

--plot draws HR@N against N (the cutoffs of mindref.evaluate: 10, 20, 50, 100) on test for every
model of the files (bench/quality.py's or bench/curves.py's lines), one panel per dataset; a model
run with several seeds is drawn at its mean with one standard error as a bar. It needs the plots
extra (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_se  # noqa: E402

from mindref.evaluate import CUTOFFS  # noqa: E402

COLUMNS = ("HR@10", "HR@50", "HR@100", "Recall@50", "NDCG@50")


def table(rows: list[dict]) -> str:
    head = "| model | " + " | ".join(f"test {c}" for c in COLUMNS) + " | valid HR@50 | seconds |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = " | ".join(f"{r['test'][c]:.4f}" for c in COLUMNS)
        lines.append(f"| {r['model']} | {cells} | {r['valid']['HR@50']:.4f} | {r['seconds']} |")
    return "\n".join(lines)


def hr_curves(rows: list[dict], only: list[str] | None) -> dict[str, dict[str, list]]:
    """{dataset: {model: [(mean, standard error) of test HR@N for N in CUTOFFS]}} in file order."""
    runs: dict = {}
    for r in rows:
        if only is None or r["model"] in only:
            runs.setdefault(r["data"], {}).setdefault(r["model"], []).append(r["test"])
    out = {}
    for data, models in runs.items():
        out[data] = {}
        for model, tests in models.items():
            out[data][model] = [mean_se([t[f"HR@{n}"] for t in tests]) for n in CUTOFFS]
    return out


def plot(curves: dict, path: Path) -> Path:
    from mindref.export.plots import _save, png_path, pyplot
    path = png_path(path, "--plot")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2), squeeze=False)
    for ax, (data, models) in zip(axes[0], curves.items()):
        for model, points in models.items():
            mean, se = zip(*points)
            ax.errorbar(CUTOFFS, mean, yerr=se, marker="o", ms=3, capsize=2, label=model)
        ax.set_xscale("log")
        ax.set_xticks(CUTOFFS, [str(n) for n in CUTOFFS])
        ax.set_xlabel("N (top-N list length)")
        ax.set_ylabel("test HR@N")
        ax.set_title(data)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(plt, fig, path, 120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="+", help="JSON lines of bench/quality.py or bench/curves.py")
    ap.add_argument("--plot", type=Path, help="draw HR@N curves to this PNG instead of printing tables")
    ap.add_argument("--only", nargs="*", help="these models only (the names in the files)")
    args = ap.parse_args()
    try:
        rows = {p: [json.loads(x) for x in p.read_text().splitlines() if x.strip()] for p in args.files}
    except (OSError, ValueError) as err:  # a missing file, a line that is not JSON
        ap.error(str(err))
    if args.plot is not None:
        curves = hr_curves([r for rs in rows.values() for r in rs], args.only)
        if not curves:
            ap.error("no runs to draw (check --only against the files' model names)")
        try:
            print(f"wrote {plot(curves, args.plot)}")
        except (OSError, ValueError) as err:  # not a .png name, a folder, no matplotlib
            ap.error(str(err))
        return
    for path, rs in rows.items():
        print(f"### {path.stem}\n\n{table(rs)}\n")


if __name__ == "__main__":
    main()
