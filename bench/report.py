"""Markdown tables from bench/quality.py's JSON lines (what docs/results.md shows).

    python bench/report.py results-ml.jsonl results-beauty.jsonl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("HR@10", "HR@50", "HR@100", "Recall@50", "NDCG@50")


def table(rows: list[dict]) -> str:
    head = "| model | " + " | ".join(f"test {c}" for c in COLUMNS) + " | valid HR@50 | seconds |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = " | ".join(f"{r['test'][c]:.4f}" for c in COLUMNS)
        lines.append(f"| {r['model']} | {cells} | {r['valid']['HR@50']:.4f} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        rows = [json.loads(line) for line in open(path) if line.strip()]
        print(f"### {Path(path).stem}\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
