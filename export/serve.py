"""Serving requests against a bundle: raw ids in, ranked raw ids out; batches streamed from
JSON lines; and `explain`, which shows one user's interest capsules in the terminal.

A request is {"user": any, "history": [raw item ids, oldest first], "profile": [raw values]}
(profile optional: unknown). Histories longer than the trained maximum L keep their latest L
behaviours (the model is trained on the latest L, mindref.data.pad).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from mindref.data import pad

from .bundle import Bundle
from .retrieval import Retrieved


def request_ids(bundle: Bundle, history: list, profile: list | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """One user's model ids: history [n] (every behaviour given, oldest first) and profile [P] (or
    None). ValueError naming the field and the value that is wrong."""
    if not isinstance(history, list | tuple):
        raise ValueError(f"history: expected a list of raw item ids, got {history!r:.60}")
    if len(history) == 0:
        raise ValueError("history: empty (a user needs at least one behaviour)")
    ids = np.array([bundle.item_id(r) for r in history], np.int64)
    if profile is None:
        return ids, None
    if not isinstance(profile, list | tuple):
        raise ValueError(f"profile: expected a list of raw values, got {profile!r}")
    return ids, bundle.profile_ids(["" if v is None else str(v) for v in profile])


def encode(bundle: Bundle, histories: list[list], profiles: list[list] | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hist [B, L] (the latest L, left-aligned, 0-padded: the tower's input), seen [B, n_max] (every
    behaviour given: what retrieval excludes) and profile ids [B, P] of raw requests."""
    if not histories:
        raise ValueError("no users in the request")
    users = []
    for u, h in enumerate(histories):
        try:
            users.append(request_ids(bundle, h, profiles[u] if profiles else None))
        except ValueError as err:
            raise ValueError(f"request {u} (0-based): {err}") from None
    return encoded(bundle, users)


def encoded(bundle: Bundle, users: list) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """hist, seen, profile of users given as request_ids() pairs (see encode)."""
    seqs = [ids for ids, _ in users]
    profiles = [p for _, p in users]
    if all(p is None for p in profiles):
        profile = None
    else:  # a user without a profile is one whose profile is unknown (id 0)
        P = next(len(p) for p in profiles if p is not None)
        profile = np.stack([np.zeros(P, np.int64) if p is None else p for p in profiles])
    L = min(bundle.cfg.max_len, max(map(len, seqs)))
    return pad(seqs, L), pad(seqs, max(map(len, seqs))), profile


def recommend(bundle: Bundle, histories: list[list], profiles: list[list] | None = None, n: int = 50,
              exact: str | bool | None = None, exclude_history: bool = True) -> list[dict]:
    """For each user: the top n items as raw ids with Eq. (3) scores and the winning interest. The
    tower reads the latest L behaviours; with exclude_history every behaviour given is excluded."""
    return _recommend(bundle, *encode(bundle, histories, profiles), n, exact, exclude_history)


def _recommend(bundle: Bundle, hist: np.ndarray, seen: np.ndarray, profile: np.ndarray | None, n: int,
               exact: str | bool | None, exclude_history: bool = True) -> list[dict]:
    found, mask = retrieve_encoded(bundle, hist, seen, profile, n, exact, exclude_history)
    return [_as_dict(bundle, r, int(m.sum()), n, s if exclude_history else s[:0])
            for r, m, s in zip(found, mask, seen)]


def retrieve_encoded(bundle: Bundle, hist: np.ndarray, seen: np.ndarray, profile: np.ndarray | None, n: int,
                     exact: str | bool | None, exclude_history: bool = True
                     ) -> tuple[list[Retrieved], np.ndarray]:
    """The tower and retrieval over encoded users: (Retrieved per user, interest masks [B, K])."""
    out = bundle.tower.run(hist, profile)
    found = bundle.retriever.retrieve(out.interests, out.mask, seen if exclude_history else None, n, exact)
    return found, out.mask


def _as_dict(bundle: Bundle, r: Retrieved, interests: int, n: int, excluded: np.ndarray) -> dict:
    res = {"items": [bundle.raw_id(i) for i in r.items], "scores": [round(float(s), 6) for s in r.scores],
           "interest": [int(k) for k in r.interests], "interests": interests, "found": len(r.items)}
    if len(r.items) < n:  # why: the catalogue less the history, or the index (counted for short results only)
        left = bundle.cfg.num_items - 1 - len(np.unique(excluded[excluded != 0]))
        res["note"] = (f"{len(r.items)} of {n}: the catalogue less the history holds only {left} items"
                       if len(r.items) >= left else
                       f"{len(r.items)} of {n}: the index returned too few candidates (raise --search-k "
                       "or --oversample, or use --search exact)")
    return res


def recommend_stream(bundle: Bundle, lines: Iterable[str], n: int = 50, batch: int = 1024,
                     exact: str | bool | None = None, errors: str = "raise") -> Iterator[dict]:
    """Requests as JSON lines -> one result dict per request, in order, `batch` users at a time.
    A malformed request raises ValueError naming its line number, the user and the field; with
    errors="record" it yields {"user", "line", "error"} in its place and the others are served
    (the rule `mindref batch` follows with its _errors/ rows)."""
    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
    chunk: list[tuple[dict, tuple]] = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            chunk.append(parse_request(bundle, number, text))
        except ValueError as err:
            if errors == "raise":
                raise
            yield from _serve_chunk(bundle, chunk, n, exact)  # keep the input's order
            chunk = []
            yield {"user": _user_of(text), "line": number, "error": str(err)}
            continue
        if len(chunk) == batch:
            yield from _serve_chunk(bundle, chunk, n, exact)
            chunk = []
    if chunk:
        yield from _serve_chunk(bundle, chunk, n, exact)


def parse_request(bundle: Bundle, number: int, text: str) -> tuple[dict, tuple]:
    """(the request, its model ids) of one JSON line; ValueError 'line N (user U): field: ...'."""
    try:
        req = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"line {number}: not JSON ({err})") from None
    if not isinstance(req, dict) or "history" not in req:
        raise ValueError(f'line {number}: expected {{"user": ..., "history": [...], "profile": [...]}}')
    try:
        return req, request_ids(bundle, req["history"], req.get("profile"))
    except ValueError as err:
        raise ValueError(f"line {number} (user {req.get('user')!r}): {err}") from None


def _user_of(text: str):
    try:
        req = json.loads(text)
    except ValueError:
        return None
    return req.get("user") if isinstance(req, dict) else None


def _serve_chunk(bundle: Bundle, chunk: list, n: int, exact: str | bool | None) -> Iterator[dict]:
    if not chunk:
        return
    results = _recommend(bundle, *encoded(bundle, [ids for _, ids in chunk]), n, exact)
    for (req, _), res in zip(chunk, results):
        yield {"user": req.get("user"), **res}


def describe(bundle: Bundle, item: int) -> str:
    """'label (field values)' of an item id, e.g. 'Star Wars (1977)  Action, Sci-Fi'."""
    label = bundle.items["item_labels"][item] if bundle.items["item_labels"] else str(item)
    values = []
    for f, vocab in enumerate(bundle.items["field_labels"]):
        ids = bundle.tower.item_fields[f][item]
        values += [vocab[i] for i in ids if i != 0]
    return f"{label}  [{', '.join(values)}]" if values else label


class Explanation(NamedTuple):
    """One user's interests: what `explain` prints and `explain --plot` draws."""

    behaviours: list  # [n_u] labels of the behaviours the tower routed (the latest L)
    weights: np.ndarray  # [K'_u, n_u] routing weights w_ij of the last iteration (Eq. 5)
    owner: np.ndarray  # [n_u] the interest that took most of each behaviour's weight
    retrieved: list  # per interest: [(rank, score, label)] of the top-n items it won (Eq. 3)
    K: int
    given: int  # behaviours in the request (more than n_u when the tower reads only the latest L)


def explanation(bundle: Bundle, history: list, profile: list | None = None, n: int = 10) -> Explanation:
    hist, seen, prof = encode(bundle, [history], [profile] if profile else None)
    out = bundle.tower.run(hist, prof)
    top = bundle.retriever.retrieve(out.interests, out.mask, seen, n, exact=True)[0]
    valid = np.flatnonzero(hist[0])
    K_u = int(out.mask[0].sum())
    w = out.weights[0][:K_u, valid]  # [K'_u, n_u]
    retrieved = [[(int(r) + 1, float(top.scores[r]), describe(bundle, int(top.items[r])))
                  for r in np.flatnonzero(top.interests == k)] for k in range(K_u)]
    return Explanation([describe(bundle, int(hist[0, i])) for i in valid], w, w.argmax(0), retrieved,
                       bundle.cfg.K, int(np.count_nonzero(seen[0])))


def explain(bundle: Bundle, history: list, profile: list | None = None, n: int = 10,
            behaviours: int = 6) -> str:
    """One user's interests in plain text: per capsule, the behaviours routed to it (each behaviour
    listed under the capsule that took most of its routing weight, Eq. 5) and the retrieved items
    whose Eq. (3) max it won. Interests count from 0, as in every output."""
    return explain_text(explanation(bundle, history, profile, n), n, behaviours)


def explain_text(x: Explanation, n: int, behaviours: int = 6) -> str:
    """An Explanation as the text `explain` prints."""
    K_u, n_u = x.weights.shape
    read = (f"{x.given} behaviours given, the tower reads the latest {n_u} (L = max_len; every one "
            f"given is excluded from the results): " if x.given > n_u else f"{n_u} behaviours -> ")
    lines = [f"{read}K'u = {K_u} of K = {x.K} interests (K'u = max(1, min(K, floor(log2 {n_u}))), Eq. 9)"]
    for k in range(K_u):
        mine = np.flatnonzero(x.owner == k)
        lines += ["", f"interest {k}: {len(mine)} behaviours routed here, wins {len(x.retrieved[k])} of the "
                      f"top {n}", "  routed behaviours (routing weight w_ij)"]
        for i in mine[np.argsort(-x.weights[k, mine])][:behaviours]:
            lines.append(f"    {x.weights[k, i]:5.2f}  {x.behaviours[i]}")
        if len(mine) > behaviours:
            lines.append(f"    ... and {len(mine) - behaviours} more")
        lines.append("  retrieved (rank, Eq. 3 score)")
        for rank, score, label in x.retrieved[k]:
            lines.append(f"    #{rank:<3d} {score:6.2f}  {label}")
        if not x.retrieved[k]:
            lines.append("    (none: other interests score every top item higher)")
    return "\n".join(lines)
