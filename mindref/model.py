"""The MIND model: the layers composed (Figure 2), forward and backward.

    behaviours --(embedding & pooling, 3.2)--> e_i [B, L, d]
               --(B2I routing, 3.3)----------> u_j [B, K, d]
    concat(u_j, profile embedding) --(ReLU layers, then a linear layer to d)--> V_u [B, K, d]
    training, by the objective (MINDConfig.objective):
      'eq3-max' (default): every candidate scored as serving scores it, f = max_k e . v_k (Eq. 3),
                 in a sampled softmax (max_score_loss): not the paper's training, measured better
      'label-aware' (the paper): label-aware attention with the target e_t (3.4) -> v_u [B, d]
                 -> sampled softmax (3.5), with the attention's mode (pow | hard | scaled) and p
    serving:  V_u itself, with the routing logits from one fixed stored draw (no randomness)

Decisions: the item function f_item is one shared set of tables (item id + category) for
behaviours, targets and negatives; the last dense layer is linear (a ReLU there would zero about
half of every user vector's coordinates); capsules beyond K'_u are zero in V_u.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from . import attention, dense, embedding, max_score_loss, routing, sampled_softmax
from .checks import check_float, check_ids
from .samplers import Sampler, negatives
from .sparse import RowSparseGrad, segment_sum, unique_ids

OBJECTIVES = ("eq3-max", "label-aware")  # the training objective: MINDConfig.objective


@dataclass(frozen=True)
class MINDConfig:
    """The model's settings: the one home of their defaults (the command line, the benches and
    the docs read them from here). The defaults were chosen on the validation splits of
    MovieLens-100K and Amazon Beauty (docs/results.md, "Defaults, chosen on the validation sets");
    on other data they are a starting point, not a finding."""

    num_items: int  # V, padding id 0 included
    field_sizes: tuple = ()  # rows of each item side field's table (category, genres, ...)
    profile_sizes: tuple = ()  # rows of each profile field's table (0 = unknown)
    dim: int = 64  # d: item, capsule and user vector size
    profile_dim: int = 8  # embedding size of each profile field
    K: int = 4  # interests
    hidden: tuple = (64,)  # ReLU layers between the capsules and the output layer
    iterations: int = 3  # routing iterations r
    sigma: float = 1.0  # std of the initial routing logits (docs/results.md)
    softmax_axis: str = "interests"  # Eq. (5): over the interests of each behaviour (decisions.md)
    grad_mode: str = "stop"  # no gradient through the routing logits' updates (decisions.md)
    dynamic_k: bool = True  # K'_u of Eq. (9); False: K interests for every user
    # the training objective (OBJECTIVES): 'eq3-max' scores every candidate by Eq. (3) in the loss
    # (max_score_loss; not the paper's, measured better: docs/results.md); 'label-aware' is the
    # paper's label-aware attention (3.4), whose mode (attention.MODES) and p follow
    objective: str = "eq3-max"
    attention: str = "pow"  # label-aware only: 'pow' (the paper's), 'hard' or 'scaled'
    p: float = 2.0  # label-aware only: the attention's power (the paper: 2)
    max_len: int = 5  # L: the latest behaviours read (chosen on validation; caps K'_u at 2)
    seed: int = 0  # parameter init and the stored serving draw of the routing logits

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.attention not in attention.MODES:
            raise ValueError(f"attention must be one of {attention.MODES} (label-aware attention's "
                             f"mode), got {self.attention!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> MINDConfig:
        """A config as to_dict wrote it (JSON lists back to tuples). Configs written before the
        objective had its own name said attention='max' for 'eq3-max' and attention='pow' (or
        'hard', 'scaled') for the label-aware objective: they load as what they meant."""
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        if "objective" not in raw:
            raw["objective"] = "eq3-max" if raw.get("attention") == "max" else "label-aware"
            raw["attention"] = "pow" if raw.get("attention") == "max" else raw.get("attention", "pow")
        return cls(**raw)


def param_shapes(cfg: MINDConfig) -> dict[str, tuple]:
    """Every parameter's name and shape, in the order init_params draws them."""
    d = cfg.dim
    shapes = {"item_emb": (cfg.num_items, d)}
    shapes.update({f"field_emb_{f}": (rows, d) for f, rows in enumerate(cfg.field_sizes)})
    shapes.update({f"profile_emb_{p}": (rows, cfg.profile_dim) for p, rows in enumerate(cfg.profile_sizes)})
    shapes["S"] = (d, d)
    sizes = [d + cfg.profile_dim * len(cfg.profile_sizes), *cfg.hidden, d]
    for n, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"dense_W_{n}"], shapes[f"dense_b_{n}"] = (a, b), (b,)
    # the fixed draw of initial routing logits used at serving (DeepMatch #105: never redraw)
    shapes["serving_logits"] = (cfg.K, cfg.max_len)
    return shapes


def init_params(cfg: MINDConfig, dtype=np.float32) -> dict[str, np.ndarray]:
    """Parameters, seeded by cfg.seed. Rows 0 (padding) of every table are zero."""
    rng = np.random.default_rng(cfg.seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if "_emb" in name:  # an embedding table
            t = rng.normal(0, 1 / np.sqrt(shape[1]), shape)
            t[0] = 0
        elif name == "S":
            t = rng.normal(0, 1 / np.sqrt(cfg.dim), shape)
        elif name.startswith("dense_W_"):
            t = rng.normal(0, np.sqrt(2 / shape[0]), shape)
        elif name.startswith("dense_b_"):
            t = np.zeros(shape)
        else:
            t = routing.init_logits(rng, shape, cfg.sigma, dtype)
        params[name] = t.astype(dtype)
    return params


def check_params(params: dict, cfg: MINDConfig) -> None:
    """Every parameter the config needs, of its shape, floating and finite; ValueError naming the
    first problem. O(parameters): checked once where training or scoring starts, not per batch."""
    for name, shape in param_shapes(cfg).items():
        if name not in params:
            raise ValueError(f"parameters: {name} is missing")
        value = params[name]
        if value.shape != shape:
            raise ValueError(f"parameters: {name} has shape {list(value.shape)}, "
                             f"the config needs {list(shape)}")
        check_float(name, value)


def num_dense(cfg: MINDConfig) -> int:
    return len(cfg.hidden) + 1


class ItemCache(NamedTuple):
    names: tuple  # the tables' parameter names
    emb: embedding.ItemEmbeddingCache


def item_forward(params: dict, item_fields: tuple, ids: np.ndarray) -> tuple[np.ndarray, ItemCache]:
    """e_i = f_item(F_i) (3.2): the item-id embedding averaged with its side fields' (multi-valued
    fields averaged first).  item_fields: per field [V, F_f];  ids [...] -> e [..., d]."""
    ids = np.asarray(ids)
    names = ("item_emb",) + tuple(f"field_emb_{f}" for f in range(len(item_fields)))
    e, c = embedding.item_embedding_forward([params[n] for n in names],
                                            [ids[..., None]] + [f[ids] for f in item_fields])
    return e, ItemCache(names, c)


def item_backward(de: np.ndarray, cache: ItemCache) -> dict[str, RowSparseGrad]:
    return dict(zip(cache.names, embedding.item_embedding_backward(de, cache.emb)))


def catalog(params: dict, item_fields: tuple, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """e_i = f_item(F_i) and S e_i (Eq. 8) of every item id: [V, d] each, row 0 (padding) 0."""
    E, _ = item_forward(params, item_fields, np.arange(num_items))  # [V, d]
    return E, E @ params["S"].T


def distinct_items(params: dict, item_fields: tuple, ids: np.ndarray, num_items: int
                   ) -> tuple[np.ndarray, np.ndarray, ItemCache, np.ndarray]:
    """f_item and the bilinear map S e_i (Eq. 8) depend on the item alone, so both are computed
    once per distinct id of ids [N] and gathered by the caller (the same function, fewer rows).
    Returns e [n, d], S e [n, d], the item cache and the position of each id among the n."""
    distinct, inverse = unique_ids(ids, num_items)
    e_d, icache = item_forward(params, item_fields, distinct)  # [n, d]
    return e_d, e_d @ params["S"].T, icache, inverse


class TowerCache(NamedTuple):
    route: routing.RoutingCache
    profile: embedding.ProfileCache | None
    dense: tuple
    capsule_mask: np.ndarray


def user_tower_forward(params: dict, cfg: MINDConfig, e_hat: np.ndarray, behaviour_mask: np.ndarray,
                       profile: np.ndarray, b0: np.ndarray) -> tuple[np.ndarray, TowerCache]:
    """V_u [B, K, d] (zero beyond K'_u) from the mapped behaviours e_hat = S e_i [B, L, d],
    behaviour_mask [B, L], profile ids [B, P] and initial routing logits b0 [B, K, L] or [K, L]."""
    cmask = routing.capsule_mask(behaviour_mask, cfg.K, cfg.dynamic_k)  # [B, K]  Eq. (9)
    u, rcache = routing.route(e_hat, b0, behaviour_mask, cmask, cfg.iterations,
                              cfg.softmax_axis, cfg.grad_mode)  # [B, K, d]  Eqs. (5)-(8)
    x, pcache = u, None
    if cfg.profile_sizes:
        tables = [params[f"profile_emb_{p}"] for p in range(len(cfg.profile_sizes))]
        prof, pcache = embedding.profile_embedding_forward(tables, profile)  # [B, P dp]
        x = np.concatenate([u, np.broadcast_to(prof[:, None], (*u.shape[:2], prof.shape[1]))], -1)
    dcaches = []
    for n in range(num_dense(cfg)):
        act = "relu" if n < num_dense(cfg) - 1 else "linear"
        x, dc = dense.dense_forward(x, params[f"dense_W_{n}"], params[f"dense_b_{n}"], act)
        dcaches.append(dc)
    V = x * cmask[..., None]  # [B, K, d]
    return V, TowerCache(rcache, pcache, tuple(dcaches), cmask)


def user_tower_backward(dV: np.ndarray, cache: TowerCache) -> tuple[dict, np.ndarray]:
    """Returns the tower's parameter gradients (S excluded) and de_hat [B, L, d]."""
    grads: dict = {}
    dx = dV * cache.capsule_mask[..., None]
    for n in reversed(range(len(cache.dense))):
        dx, grads[f"dense_W_{n}"], grads[f"dense_b_{n}"] = dense.dense_backward(dx, cache.dense[n])
    du = dx
    if cache.profile is not None:
        d = cache.route.e_hat.shape[-1]
        du, dprof = dx[..., :d], dx[..., d:].sum(1)  # the profile is shared by the K capsules
        for p, g in enumerate(embedding.profile_embedding_backward(dprof, cache.profile)):
            grads[f"profile_emb_{p}"] = g
    de_hat, _ = routing.route_backward(du, cache.route)
    return grads, de_hat


class Batch(NamedTuple):
    hist: np.ndarray  # [B, L] item ids, 0 = padding
    profile: np.ndarray  # [B, P]
    target: np.ndarray  # [B] the next item


class LossCache(NamedTuple):
    items: ItemCache  # f_item over the distinct items of behaviours, targets and negatives
    e_distinct: np.ndarray  # [n, d]
    S: np.ndarray  # [d, d]
    inverse: np.ndarray  # [B L + B + N] position of each id among the distinct ones
    tower: TowerCache
    att: attention.AttentionCache | None  # None with the eq3-max objective
    loss: sampled_softmax.SampledSoftmaxCache | max_score_loss.MaxScoreCache


def loss_forward(params: dict, cfg: MINDConfig, item_fields: tuple, batch: Batch, b0: np.ndarray,
                 neg_ids: np.ndarray, log_q: tuple | None) -> tuple[float, LossCache]:
    """The training loss for fixed random draws (routing logits b0, negatives neg_ids)."""
    B, L = batch.hist.shape
    ids = np.concatenate([batch.hist.reshape(-1), batch.target, neg_ids])  # [B L + B + N]
    e_d, e_hat_d, icache, inverse = distinct_items(params, item_fields, ids, cfg.num_items)
    e_hat = e_hat_d[inverse[: B * L]].reshape(B, L, -1)  # [B, L, d]  S e_i, Eq. (8)
    e_other = e_d[inverse[B * L:]]  # [B + N, d]
    e_t, e_n = e_other[:B], e_other[B:]  # [B, d], [N, d]
    V, tcache = user_tower_forward(params, cfg, e_hat, batch.hist != 0, batch.profile, b0)
    lq_pos, lq_neg = log_q if log_q is not None else (None, None)
    if cfg.objective == "eq3-max":  # every candidate scored by Eq. (3)
        loss, lcache = max_score_loss.max_score_forward(V, tcache.capsule_mask, e_t, e_n, batch.target,
                                                        neg_ids, lq_pos, lq_neg)
        return loss, LossCache(icache, e_d, params["S"], inverse, tcache, None, lcache)
    v, acache = attention.attention_forward(V, e_t, tcache.capsule_mask, cfg.p, cfg.attention)
    loss, lcache = sampled_softmax.sampled_softmax_forward(v, e_t, e_n, batch.target, neg_ids,
                                                           lq_pos, lq_neg)
    return loss, LossCache(icache, e_d, params["S"], inverse, tcache, acache, lcache)


def loss_backward(cache: LossCache) -> dict:
    """Gradients of every parameter: dense arrays, and RowSparseGrad for the tables."""
    if cache.att is None:
        dV, de_t, de_n = max_score_loss.max_score_backward(1.0, cache.loss)
        de_att = 0
    else:
        dv, de_t, de_n = sampled_softmax.sampled_softmax_backward(1.0, cache.loss)
        dV, de_att = attention.attention_backward(dv, cache.att)
    grads, de_hat = user_tower_backward(dV, cache.tower)
    d, n, BL = de_hat.shape[-1], cache.e_distinct.shape[0], de_hat.shape[0] * de_hat.shape[1]
    de_hat_d = segment_sum(cache.inverse[:BL], de_hat.reshape(BL, d), n)  # [n, d] per item
    grads["S"] = de_hat_d.T @ cache.e_distinct  # [d, d]   through S e_i
    de_other = np.concatenate([de_t + de_att, de_n])  # [B + N, d] targets, negatives
    de_d = de_hat_d @ cache.S + segment_sum(cache.inverse[BL:], de_other, n)  # [n, d]
    grads.update(item_backward(de_d, cache.items))
    return grads


def train_draws(rng: np.random.Generator, cfg: MINDConfig, batch: Batch, sampler: Sampler,
                num_neg: int | str, dtype) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """The random inputs of one training step: b0 [B, K, L], negatives [N], their log Q
    (None for num_neg = samplers.ALL_ITEMS, the full softmax)."""
    b0 = routing.init_logits(rng, (batch.hist.shape[0], cfg.K, batch.hist.shape[1]), cfg.sigma, dtype)
    neg, log_q = negatives(sampler, rng, num_neg, batch.target)
    return b0, neg, None if log_q is None else tuple(q.astype(dtype) for q in log_q)


def serving_logits(params: dict, L: int) -> np.ndarray:
    """The stored initial routing logits for histories of length L <= max_len: [K, L]."""
    stored = params["serving_logits"]
    if L > stored.shape[1]:
        raise ValueError(f"history length {L} exceeds the trained maximum {stored.shape[1]}")
    return stored[:, :L]


def serving_tower(params: dict, cfg: MINDConfig, e_hat: np.ndarray, hist: np.ndarray,
                  profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V_u [B, K, d] and the interest mask [B, K] from the mapped behaviours e_hat = S e_i
    [B, L, d] of hist [B, L], with the stored routing-logit draw. Deterministic."""
    V, cache = user_tower_forward(params, cfg, e_hat, hist != 0, profile,
                                  serving_logits(params, hist.shape[1]))
    return V, cache.capsule_mask


SERVING_CHUNK = 256  # users per pass: a pass's S e_i [256, L, d] stays in cache (docs/results.md)


def user_vectors(params: dict, cfg: MINDConfig, item_fields: tuple, hist: np.ndarray,
                 profile: np.ndarray, chunk: int = SERVING_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Serving (3.5): V_u [B, K, d] and the interest mask [B, K] of histories hist [B, L],
    `chunk` users at a time (users are independent: the same result, faster)."""
    hist = check_ids("history", hist, cfg.num_items)
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 user, got {chunk}")
    parts = [_user_vectors(params, cfg, item_fields, hist[i:i + chunk], profile[i:i + chunk])
             for i in range(0, max(len(hist), 1), chunk)]
    return tuple(np.concatenate(x) for x in zip(*parts))


def _user_vectors(params: dict, cfg: MINDConfig, item_fields: tuple, hist: np.ndarray,
                  profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pass of user_vectors: f_item and S e_i once per distinct item of the pass."""
    _, e_hat_d, _, inverse = distinct_items(params, item_fields, hist.reshape(-1), cfg.num_items)
    return serving_tower(params, cfg, e_hat_d[inverse].reshape(*hist.shape, -1), hist, profile)
