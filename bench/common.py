"""Shared by the benchmarks: where the real data is, and how to load a dataset by name."""
from __future__ import annotations

import os
import statistics
from pathlib import Path

from mindref.readers import read_movielens_100k, read_sequences

DATA = Path(os.environ.get("MINDREF_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def load(name: str, category: str = "last"):
    """ml-100k or beauty (category: the rule for Beauty's item category, readers.read_sequences;
    'last' here, as the published grid in docs/results.md was run; the library's default is 'all')."""
    if name == "ml-100k":
        return read_movielens_100k(DATA / "ml-100k")
    if name == "beauty":
        folder = DATA / "amazon-beauty"
        return read_sequences(folder / "Beauty.txt", folder / "Beauty_item2attributes.json", category)
    raise ValueError(f"unknown dataset {name!r}: ml-100k or beauty")


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value: one seed, no bar)."""
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0
    return statistics.mean(xs), se
