"""Readers of real data into the one in-memory form (data.Dataset).

Ids are remapped: items to 1..V-1 in ascending order of their original id (0 is padding), users to
0..U-1 likewise, side-field and profile values to 1.. (0 = none / unknown). Each user's items are
sorted by time, ties kept in file order. A malformed record raises DataFormatError naming the file
and the line.

| reader | files | side fields | profile |
| --- | --- | --- | --- |
| read_movielens_100k | u.data, u.item, u.user | genre (several per movie) | age bucket, gender, occupation |
| read_movielens_1m | ratings.dat, movies.dat, users.dat ('::', latin-1) | genre | age, gender, occupation |
| read_sequences | one user per line + item -> attributes JSON | category by a rule, optional brand | none |
| read_comirec | {name}_train/valid/test.txt, {name}_item_cate.txt | category | none |
| read_interactions_csv | user,item,timestamp[,category], or a header naming them | category | none |
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .data import Dataset

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: <18, 18-24, ..., 56+
AGE_GROUPS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
CATEGORY_RULES = ("last", "first", "all", "none")


class DataFormatError(ValueError):
    """A malformed input file; the message names the file and line and what was expected."""


def decoded_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, blank ones included; a decoding error names the line.
    A UTF-8 byte-order mark at the start of the file is dropped (it is no part of the first value)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataFormatError(f"{path}:{n}: not valid {encoding} ({err.reason} at byte "
                                      f"{err.start})") from None
            yield n, text.removeprefix("\ufeff") if n == 1 else text


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line."""
    return ((n, text) for n, text in decoded_lines(path, encoding) if text.strip())


def _fields(path: Path, n: int, text: str, sep: str, count: int, what: str) -> list[str]:
    parts = text.split(sep)
    if len(parts) < count:
        raise DataFormatError(f"{path}:{n}: expected {what} ({count} fields separated by "
                              f"{sep!r}), got {text[:80]!r}")
    return parts


def _int(path: Path, n: int, value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataFormatError(f"{path}:{n}: {name} must be an integer, got {value!r}") from None


def _codes(values: list) -> tuple[np.ndarray, list]:
    """1-based codes of values in ascending order of the distinct values, and those values."""
    distinct = sorted(set(values))
    index = {v: i + 1 for i, v in enumerate(distinct)}
    return np.array([index[v] for v in values], dtype=np.int64), distinct


def build(users: list, items: list, times: list, attributes: dict | None = None,
          field_names: tuple = (), profiles: dict | None = None, profile_names: tuple = (),
          labels: dict | None = None, source: str = "input") -> Dataset:
    """The Dataset of interactions (users[k], items[k], times[k]).

    attributes: raw item -> tuple of lists, one list of raw values per side field
    profiles: raw user -> tuple of raw values, one per profile field (None = unknown)
    labels: raw item -> human-readable name
    """
    if not users:
        raise DataFormatError(f"{source}: no interactions found")
    user_code, raw_users = _codes(users)
    item_code, raw_items = _codes(items)
    user_code -= 1
    order = np.lexsort((np.arange(len(users)), np.asarray(times), user_code))
    bounds = np.flatnonzero(np.diff(user_code[order])) + 1
    sequences = np.split(item_code[order], bounds)
    V = len(raw_items) + 1
    fields, field_labels, profile_labels = [], [], []
    for f in range(len(field_names)):
        per_item = [list(attributes.get(it, ((),) * len(field_names))[f]) if attributes else []
                    for it in raw_items]
        values = sorted({v for vs in per_item for v in vs})
        index = {v: i + 1 for i, v in enumerate(values)}
        table = np.zeros((V, max(1, max(map(len, per_item), default=1))), dtype=np.int64)
        for r, vs in enumerate(per_item, 1):
            table[r, : len(vs)] = [index[v] for v in vs]
        fields.append(table)
        field_labels.append(tuple([""] + [str(v) for v in values]))
    prof = np.zeros((len(raw_users), len(profile_names)), dtype=np.int64)
    for p in range(len(profile_names)):
        col = [(profiles or {}).get(u, (None,) * len(profile_names))[p] for u in raw_users]
        known = sorted({v for v in col if v is not None})
        index = {v: i + 1 for i, v in enumerate(known)}
        prof[:, p] = [index.get(v, 0) for v in col]
        profile_labels.append(tuple([""] + [str(v) for v in known]))
    item_labels = tuple([""] + [str((labels or {}).get(it, it)) for it in raw_items])
    return Dataset(sequences, tuple(fields), tuple(field_names), prof, tuple(profile_names),
                   item_labels, tuple([None] + raw_items), tuple(raw_users), tuple(field_labels),
                   tuple(profile_labels))


def _ratings(path: Path, sep: str, encoding: str, names: tuple) -> tuple[list, list, list]:
    """(users, items, times) of a MovieLens ratings file: user, item, rating, time per line."""
    users, items, times = [], [], []
    for n, text in _lines(path, encoding):
        u, i, _, t = _fields(path, n, text, sep, 4, ", ".join(names) if sep == "\t" else sep.join(names))[:4]
        users.append(_int(path, n, u, names[0])), items.append(_int(path, n, i, names[1]))
        times.append(_int(path, n, t, names[3]))
    return users, items, times


def read_movielens_100k(folder: str | Path) -> Dataset:
    """MovieLens-100K: u.data (user item rating time, tab-separated), u.item ('|', latin-1, 19
    genre flags after 5 fields), u.user (id|age|gender|occupation|zip). Every rating is a
    behaviour (implicit feedback); ages are bucketed as in MovieLens-1M."""
    folder = Path(folder)
    users, items, times = _ratings(folder / "u.data", "\t", "utf-8", ("user", "item", "rating", "timestamp"))
    attributes, labels = {}, {}
    path = folder / "u.item"
    for n, text in _lines(path, "latin-1"):
        parts = _fields(path, n, text, "|", 24, "movie id|title|release|video release|url|19 flags")
        flags = parts[5:24]
        if any(f not in ("0", "1") for f in flags):
            raise DataFormatError(f"{path}:{n}: genre flags must be 0 or 1, got {flags}")
        movie = _int(path, n, parts[0], "movie id")
        attributes[movie] = ([g for g, f in enumerate(flags) if f == "1"],)
        labels[movie] = parts[1]
    profiles = {}
    path = folder / "u.user"
    for n, text in _lines(path):
        uid, age, gender, occupation = _fields(path, n, text, "|", 5, "id|age|gender|occupation|zip")[:4]
        bucket = int(np.searchsorted(AGE_EDGES, _int(path, n, age, "age"), side="right"))
        profiles[_int(path, n, uid, "user id")] = (bucket, gender, occupation)
    _check_known(folder / "u.item", set(items) - set(attributes), "movie")
    ds = build(users, items, times, attributes, ("genre",), profiles, ("age", "gender", "occupation"),
               labels)
    genres = _genre_names(folder / "u.genre")
    ages = [""] + [AGE_GROUPS[int(a)] for a in ds.profile_labels[0][1:]]
    names = [""] + [genres.get(int(g), g) for g in ds.field_labels[0][1:]]
    return ds._replace(field_labels=(tuple(names),), profile_labels=(tuple(ages), *ds.profile_labels[1:]))


def _genre_names(path: Path) -> dict:
    """u.genre (name|index per line) -> {index: name}; {} when the file is absent."""
    if not path.is_file():
        return {}
    names = {}
    for n, text in _lines(path, "latin-1"):
        name, index = _fields(path, n, text, "|", 2, "name|index")[:2]
        names[_int(path, n, index, "genre index")] = name
    return names


def read_movielens_1m(folder: str | Path) -> Dataset:
    """MovieLens-1M: ratings.dat (UserID::MovieID::Rating::Timestamp), movies.dat
    (MovieID::Title::Genre|Genre...), users.dat (UserID::Gender::Age::Occupation::Zip), latin-1."""
    folder = Path(folder)
    users, items, times = _ratings(folder / "ratings.dat", "::", "latin-1",
                                   ("UserID", "MovieID", "Rating", "Timestamp"))
    attributes, labels = {}, {}
    path = folder / "movies.dat"
    for n, text in _lines(path, "latin-1"):
        movie, title, genres = _fields(path, n, text, "::", 3, "MovieID::Title::Genres")[:3]
        movie = _int(path, n, movie, "MovieID")
        attributes[movie] = ([g for g in genres.split("|") if g],)
        labels[movie] = title
    profiles = {}
    path = folder / "users.dat"
    for n, text in _lines(path, "latin-1"):
        uid, gender, age, occupation = _fields(path, n, text, "::", 5,
                                               "UserID::Gender::Age::Occupation::Zip")[:4]
        profiles[_int(path, n, uid, "UserID")] = (_int(path, n, age, "Age"), gender,
                                                   _int(path, n, occupation, "Occupation"))
    _check_known(folder / "movies.dat", set(items) - set(attributes), "movie")
    return build(users, items, times, attributes, ("genre",), profiles, ("age", "gender", "occupation"),
                 labels)


def read_sequences(path: str | Path, attributes: str | Path | None = None,
                   category: str = "all", brand: bool = False) -> Dataset:
    """One user per line, `user item item ...` in time order (Amazon Beauty as preprocessed for
    S3-Rec), with an optional JSON {item: [attribute ids]} (brand first when known, then the
    categories on the item's category paths).

    category: 'all' (every attribute, one multi-valued field: the default, measured best on
    Beauty, docs/results.md), 'last' (the last attribute: the deepest category), 'first' (the
    first attribute: the brand when known, else the shallowest category), 'none'. brand=True adds
    the first attribute as a separate field.
    """
    if category not in CATEGORY_RULES:
        raise ValueError(f"category must be one of {CATEGORY_RULES}, got {category!r}")
    path = Path(path)
    users, items, times, seen = [], [], [], {}
    for n, text in _lines(path):
        parts = text.split()
        if len(parts) < 2:
            raise DataFormatError(f"{path}:{n}: expected 'user item [item ...]', got {text[:80]!r}")
        u = _int(path, n, parts[0], "user")
        if u in seen:  # two lines of one user have no defined order between them
            raise DataFormatError(f"{path}:{n}: user {u} already has a sequence on line {seen[u]}")
        seen[u] = n
        for t, it in enumerate(parts[1:]):
            users.append(u), items.append(_int(path, n, it, "item")), times.append(t)
    if attributes is None or category == "none" and not brand:
        return build(users, items, times, source=str(path))
    raw = _read_json(Path(attributes))
    pick = {"last": lambda a: a[-1:], "first": lambda a: a[:1], "all": lambda a: a}
    names = (("category",) if category != "none" else ()) + (("brand",) if brand else ())
    attrs = {}
    for key, values in raw.items():
        item = _int(Path(attributes), 0, key, "item id (JSON key)")
        chosen = (pick[category](values),) if category != "none" else ()
        attrs[item] = chosen + ((values[:1],) if brand else ())
    _check_known(Path(attributes), set(items) - set(attrs), "item")
    return build(users, items, times, attrs, names, source=str(path))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(x, int) for x in v)
                                             for v in data.values()):
        raise DataFormatError(f"{path}: expected an object {{item id: [integer attribute ids]}}")
    return data


def _check_known(path: Path, missing: set, what: str) -> None:
    if missing:
        raise DataFormatError(f"{path}: {len(missing)} {what}(s) that have interactions are missing "
                              f"here, e.g. {sorted(missing)[:5]}")


def read_comirec(folder: str | Path, name: str) -> tuple[Dataset, dict[str, np.ndarray]]:
    """ComiRec's preprocessed files: {name}_train.txt, {name}_valid.txt, {name}_test.txt with
    `user,item,order` lines (users already split 8:1:1) and {name}_item_cate.txt (`item,cate`).
    Returns the Dataset and the user indices of each split."""
    folder = Path(folder)
    users, items, times, split_of = [], [], [], {}
    for split in ("train", "valid", "test"):
        path = folder / f"{name}_{split}.txt"
        for n, text in _lines(path):
            u, i, t = _fields(path, n, text, ",", 3, "user,item,order")[:3]
            u = _int(path, n, u, "user")
            users.append(u), items.append(_int(path, n, i, "item")), times.append(_int(path, n, t, "order"))
            if split_of.setdefault(u, split) != split:
                raise DataFormatError(f"{path}:{n}: user {u} also appears in the {split_of[u]} split")
    attrs = {}
    path = folder / f"{name}_item_cate.txt"
    for n, text in _lines(path):
        i, c = _fields(path, n, text, ",", 2, "item,category")[:2]
        attrs[_int(path, n, i, "item")] = ([_int(path, n, c, "category")],)
    ds = build(users, items, times, attrs, ("category",))
    splits = {s: np.array([k for k, u in enumerate(ds.raw_user_ids) if split_of[u] == s], dtype=np.int64)
              for s in ("train", "valid", "test")}
    return ds, splits


CSV_COLUMNS = {"user": ("user", "user_id", "userid"), "item": ("item", "item_id", "itemid"),
               "timestamp": ("timestamp", "time", "ts"), "category": ("category", "cate", "category_id")}


class DataNote(UserWarning):
    """Something a reader did to the data that the user should know (the CLI prints it)."""


def read_interactions_csv(path: str | Path) -> Dataset:
    """A generic CSV of interactions, one per line.

    With a header line (the first line, when it is not parseable as data), columns are found by
    name in any order: user, item, timestamp (or user_id, item_id, time, ...) and optionally
    category; other columns are ignored with a note. Without a header the layout is exactly
    `user,item,timestamp[,category]`. A UTF-8 byte-order mark is dropped; a trailing comma (one
    empty last field) is ignored; an exact duplicate row (the same event logged twice) is dropped
    and counted in a note. Users and items may be any strings; timestamps are finite numbers.
    """
    path = Path(path)
    users, items, times, attrs, seen = [], [], [], {}, {}
    columns, duplicates = None, []
    for n, text in _lines(path):
        parts = [p.strip() for p in text.split(",")]
        if len(parts) > 1 and parts[-1] == "" and text.rstrip().endswith(","):
            parts.pop()  # a trailing comma
        if columns is None:
            columns, header = _csv_columns(path, n, parts)
            if header:
                continue
        row = _csv_row(path, n, parts, *columns)
        key = tuple(row)
        if key in seen:
            duplicates.append((n, seen[key]))
            continue
        seen[key] = n
        user, item, time, category = row
        users.append(user), items.append(item), times.append(float(time))
        if category is not None and attrs.setdefault(item, ([category],)) != ([category],):
            raise DataFormatError(f"{path}:{n}: item {item!r} has category {category!r} here "
                                  f"but {attrs[item][0][0]!r} earlier")
    if duplicates:
        warnings.warn(DataNote(f"{path}: {len(duplicates)} exact duplicate row(s) dropped, e.g. line "
                               f"{duplicates[0][0]} repeats line {duplicates[0][1]}"), stacklevel=2)
    return build(users, items, times, attrs, ("category",) if attrs else (), source=str(path))


def _csv_columns(path: Path, n: int, parts: list) -> tuple[tuple[dict, int, str], bool]:
    """(({column: position}, width, layout), whether the first line is a header): named by the
    header, or the documented layout of a file without one."""
    if len(parts) in (3, 4) and _is_number(parts[2]):  # data: no header
        pos = {"user": 0, "item": 1, "timestamp": 2, **({"category": 3} if len(parts) == 4 else {})}
        return (pos, len(parts), "user,item,timestamp[,category]"), False
    names = [p.lower() for p in parts]
    found = {col: names.index(a) for col, aliases in CSV_COLUMNS.items() for a in aliases if a in names}
    missing = [c for c in ("user", "item", "timestamp") if c not in found]
    if missing:
        raise DataFormatError(f"{path}:{n}: expected user,item,timestamp[,category], or a header line "
                              f"naming columns user, item and timestamp (missing {', '.join(missing)}); "
                              f"got {_shown(parts)}")
    if len(set(names)) != len(names):
        raise DataFormatError(f"{path}:{n}: the header names a column twice: {_shown(parts)}")
    ignored = [parts[i] for i in range(len(parts)) if i not in found.values()]
    if ignored:
        warnings.warn(DataNote(f"{path}: column(s) {', '.join(ignored)} ignored"), stacklevel=3)
    return (found, len(parts), "the header's columns"), True


def _csv_row(path: Path, n: int, parts: list, pos: dict, width: int, layout: str) -> list:
    """[user, item, timestamp, category or None] of a data line, checked."""
    if len(parts) != width:
        raise DataFormatError(f"{path}:{n}: {len(parts)} columns, expected {width} ({layout}); "
                              f"got {_shown(parts)}")
    user, item, time = (parts[pos[c]] for c in ("user", "item", "timestamp"))
    if not _is_number(time):
        raise DataFormatError(f"{path}:{n}: timestamp must be a finite number, got {time!r}")
    if not user or not item:
        raise DataFormatError(f"{path}:{n}: empty user or item id")
    return [user, item, time, parts[pos["category"]] if "category" in pos else None]


def _shown(parts: list) -> str:
    """The line as read, for an error message."""
    return repr(",".join(parts)[:80])


def _is_number(text: str) -> bool:
    """A finite number (NaN or inf would make the time order undefined)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
