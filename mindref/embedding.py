"""Embedding & pooling layer (MIND 3.2).

    "Id features from input layer are transformed into embeddings through the embedding layer,
     and embeddings of each item are further averaged by a pooling layer."  (Figure 2)

An item i has feature fields F_i (item id, category id, genres, ...). Each field f has its own
table T_f. Its embedding is

    e_i = 1/|present(i)| * sum_{f in present(i)} mean_{x in F_i[f], x != 0} T_f[x]

i.e. a multi-valued field (a movie's several genres) is averaged first, then the fields are
averaged. Id 0 is padding in every field: it contributes nothing, and a field whose ids are all 0
is absent (it does not dilute the average). A padding item (all fields 0) embeds to 0.

The user profile P_u (gender, age, ...) has one id per field; its embeddings are concatenated.
Id 0 there means "unknown" and embeds to 0.

Backward passes return one RowSparseGrad per table (rows touched, never |V| x d).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .checks import check_ids
from .sparse import RowSparseGrad, scatter_rows, scatter_weighted


class ItemEmbeddingCache(NamedTuple):
    ids: tuple  # per field: [..., F_f] int
    weights: tuple  # per field: [..., F_f] pooling weight of each id (0 for padding)


def pooling_weights(ids: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The weight of each id in e_i: 1/count within its field, times 1/(number of present fields)."""
    valid = [f != 0 for f in ids]  # per field [..., F_f]
    counts = [v.sum(-1) for v in valid]  # per field [...]
    n_present = sum((c > 0).astype(np.int64) for c in counts)  # [...]
    denom_fields = np.maximum(n_present, 1)[..., None]  # [..., 1]
    return [v / np.maximum(c, 1)[..., None] / denom_fields for v, c in zip(valid, counts)]


def item_embedding_forward(
    tables: Sequence[np.ndarray], ids: Sequence[np.ndarray]
) -> tuple[np.ndarray, ItemEmbeddingCache]:
    """e_i = average over present fields of the masked mean of the field's embeddings (3.2).

    tables: per field [V_f, d]
    ids:    per field [..., F_f] int, the same leading shape in every field (F_f = 1 for a
            single-valued field such as the item id)
    returns e [..., d] in the tables' dtype.
    """
    if len(tables) != len(ids) or not tables:
        raise ValueError(f"item features: {len(tables)} tables but {len(ids)} id fields")
    ids = [check_ids(f"item field {f}", x, t.shape[0]) for f, (x, t) in enumerate(zip(ids, tables))]
    lead = ids[0].shape[:-1]
    for f, x in enumerate(ids):
        if x.ndim < 1 or x.shape[:-1] != lead:
            raise ValueError(f"item field {f}: ids shape {x.shape} does not match {lead} + [F]")
    weights = pooling_weights(ids)
    e = np.zeros(lead + (tables[0].shape[1],), dtype=tables[0].dtype)  # [..., d]
    for t, x, w in zip(tables, ids, weights):
        for f in range(x.shape[-1]):  # F_f is small (1 for the item id)
            e += w[..., f, None].astype(t.dtype) * np.take(t, x[..., f], axis=0)  # Sec. 3.2 pooling
    return e, ItemEmbeddingCache(tuple(ids), tuple(weights))


def item_embedding_backward(de: np.ndarray, cache: ItemEmbeddingCache) -> list[RowSparseGrad]:
    """Gradient of each field's table: every occurrence of id x receives weight * de."""
    d = de.shape[-1]
    flat_de = de.reshape(-1, d)  # [N, d]
    return [scatter_weighted(x.reshape(flat_de.shape[0], -1), w.reshape(flat_de.shape[0], -1), flat_de)
            for x, w in zip(cache.ids, cache.weights)]


class ProfileCache(NamedTuple):
    ids: np.ndarray  # [B, P]
    dims: tuple  # embedding size of each field


def profile_embedding_forward(
    tables: Sequence[np.ndarray], ids: np.ndarray
) -> tuple[np.ndarray, ProfileCache]:
    """Concatenate the user profile field embeddings (3.2); id 0 (unknown) embeds to 0.

    tables: per field [V_p, d_p];  ids: [B, P] int;  returns [B, sum_p d_p].
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != len(tables):
        raise ValueError(f"profile ids: expected shape [B, {len(tables)}], got {list(ids.shape)}")
    parts = []
    for p, t in enumerate(tables):
        col = check_ids(f"profile field {p}", ids[:, p], t.shape[0])  # [B]
        parts.append(t[col] * (col != 0)[:, None].astype(t.dtype))  # [B, d_p]
    out = np.concatenate(parts, axis=-1)  # [B, sum d_p]
    return out, ProfileCache(ids, tuple(t.shape[1] for t in tables))


def profile_embedding_backward(dout: np.ndarray, cache: ProfileCache) -> list[RowSparseGrad]:
    """Split the gradient of the concatenation back onto each field's table."""
    splits = np.cumsum(cache.dims)[:-1]
    return [scatter_rows(cache.ids[:, p], g) for p, g in enumerate(np.split(dout, splits, axis=-1))]
