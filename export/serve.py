"""Serving requests against a bundle: raw ids in, ranked raw ids out; batches streamed from
JSON lines; and `explain`, which shows one user's interest capsules in the terminal.

A request is {"user": any, "history": [raw item ids, oldest first], "profile": [raw values]}
(profile optional: unknown). Histories longer than the trained maximum L keep their latest L
behaviours (the model is trained on the latest L, mindref.data.pad).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import numpy as np

from mindref.data import pad

from .bundle import Bundle
from .retrieval import Retrieved


def encode(bundle: Bundle, histories: list[list], profiles: list[list] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """hist [B, L] (the latest L, left-aligned, 0-padded) and profile ids [B, P] of raw requests."""
    if not histories:
        raise ValueError("no users in the request")
    seqs = []
    for u, h in enumerate(histories):
        if len(h) == 0:
            raise ValueError(f"user {u}: empty history (a user needs at least one behaviour)")
        seqs.append(np.array([bundle.item_id(r) for r in h], np.int64))
    L = min(bundle.cfg.max_len, max(map(len, seqs)))
    profile = np.stack([bundle.profile_ids([str(v) for v in p]) for p in profiles]) if profiles else None
    return pad(seqs, L), profile


def recommend(bundle: Bundle, histories: list[list], profiles: list[list] | None = None, n: int = 50,
              exact: bool | None = None, exclude_history: bool = True) -> list[dict]:
    """For each user: the top n items as raw ids with Eq. (3) scores and the winning interest."""
    hist, profile = encode(bundle, histories, profiles)
    out = bundle.tower.run(hist, profile)
    found = bundle.retriever.retrieve(out.interests, out.mask, hist if exclude_history else None, n, exact)
    return [_as_dict(bundle, r, int(m.sum())) for r, m in zip(found, out.mask)]


def _as_dict(bundle: Bundle, r: Retrieved, interests: int) -> dict:
    return {"items": [bundle.raw_id(i) for i in r.items], "scores": [round(float(s), 6) for s in r.scores],
            "interest": [int(k) for k in r.interests], "interests": interests}


def recommend_stream(bundle: Bundle, lines: Iterable[str], n: int = 50, batch: int = 1024,
                     exact: bool | None = None) -> Iterator[dict]:
    """Requests as JSON lines -> one result dict per request, in order, `batch` users at a time.
    A malformed line raises ValueError naming its line number."""
    chunk: list[tuple[int, dict]] = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        chunk.append((number, _request(number, text)))
        if len(chunk) == batch:
            yield from _serve_chunk(bundle, chunk, n, exact)
            chunk = []
    if chunk:
        yield from _serve_chunk(bundle, chunk, n, exact)


def _request(number: int, text: str) -> dict:
    try:
        req = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"line {number}: not JSON ({err})") from None
    if not isinstance(req, dict) or not isinstance(req.get("history"), list):
        raise ValueError(f'line {number}: expected {{"user": ..., "history": [...], "profile": [...]}}')
    return req


def _serve_chunk(bundle: Bundle, chunk: list, n: int, exact: bool | None) -> Iterator[dict]:
    try:
        histories = [req["history"] for _, req in chunk]
        profiles = [req["profile"] for _, req in chunk] if any("profile" in r for _, r in chunk) else None
        if profiles is not None and any(p is None for p in profiles):
            raise ValueError("give a profile for every user of a file, or for none")
        results = recommend(bundle, histories, profiles, n, exact)
    except ValueError as err:
        raise ValueError(f"lines {chunk[0][0]}-{chunk[-1][0]}: {err}") from None
    for (_, req), res in zip(chunk, results):
        yield {"user": req.get("user"), **res}


def describe(bundle: Bundle, item: int) -> str:
    """'label (field values)' of an item id, e.g. 'Star Wars (1977)  Action, Sci-Fi'."""
    label = bundle.items["item_labels"][item] if bundle.items["item_labels"] else str(item)
    values = []
    for f, vocab in enumerate(bundle.items["field_labels"]):
        ids = bundle.tower.item_fields[f][item]
        values += [vocab[i] for i in ids if i != 0]
    return f"{label}  [{', '.join(values)}]" if values else label


def explain(bundle: Bundle, history: list, profile: list | None = None, n: int = 10,
            behaviours: int = 6) -> str:
    """One user's interests in plain text: per capsule, the behaviours routed to it (each behaviour
    listed under the capsule that took most of its routing weight, Eq. 5) and the retrieved items
    whose Eq. (3) max it won."""
    hist, prof = encode(bundle, [history], [profile] if profile else None)
    out = bundle.tower.run(hist, prof)
    top = bundle.retriever.retrieve(out.interests, out.mask, hist, n, exact=True)[0]
    valid = np.flatnonzero(hist[0])
    w = out.weights[0][:, valid]  # [K, n_u]
    owner = np.where(out.mask[0][:, None], w, -1).argmax(0)  # [n_u] the capsule of each behaviour
    K_u, cfg = int(out.mask[0].sum()), bundle.cfg
    lines = [f"{len(valid)} behaviours -> K'u = {K_u} of K = {cfg.K} interests "
             f"(K'u = max(1, min(K, floor(log2 {len(valid)}))), Eq. 9)"]
    for k in range(K_u):
        mine = np.flatnonzero(owner == k)
        won = np.flatnonzero(top.interests == k)
        lines += ["", f"interest {k + 1}: {len(mine)} behaviours routed here, wins {len(won)} of the top {n}",
                  "  routed behaviours (routing weight w_ij)"]
        for i in mine[np.argsort(-w[k, mine])][:behaviours]:
            lines.append(f"    {w[k, i]:5.2f}  {describe(bundle, int(hist[0, valid[i]]))}")
        if len(mine) > behaviours:
            lines.append(f"    ... and {len(mine) - behaviours} more")
        lines.append("  retrieved (rank, Eq. 3 score)")
        for r in won:
            lines.append(f"    #{r + 1:<3d} {top.scores[r]:6.2f}  {describe(bundle, int(top.items[r]))}")
        if not len(won):
            lines.append("    (none: other interests score every top item higher)")
    return "\n".join(lines)
