"""B2I dynamic routing: the multi-interest extractor layer (MIND 3.3, Eqs. (4)-(9)).

Behaviours e_i (i in I_u, padded to L) are routed to K interest capsules u_j:

    b_ij ~ N(0, sigma^2)                                  random init (3.3.2, item 2)
    repeat r times:
        w_ij = softmax(b_ij)                              Eq. (5), axis: see below
        z_j  = sum_i w_ij S e_i                           Eq. (6)
        u_j  = squash(z_j)                                Eq. (7)
        b_ij <- b_ij + u_j^T S e_i   (not after the last) Algorithm 1, Eq. (8)'s logit

with one bilinear map S [d x d] shared by every (behaviour, interest) pair (3.3.2, item 1) and
K'_u = max(1, min(K, floor(log2 |I_u|))) capsules per user (Eq. (9); the floor is ours: the
paper prints log2 |I_u|); capsules beyond K'_u are zero. Padded behaviours get weight exactly 0
and cannot change any output.

Decisions (docs/spec.md):
- softmax axis: the note prints w_ij = exp b_ij / sum_{k=1..m} exp b_ik, ambiguous. Default
  'interests' (each behaviour distributes itself over the capsules, as in the original capsule
  routing, ComiRec and EasyRec); 'behaviours' normalises each capsule over the behaviours.
- gradient mode: 'stop', the mode the model trains with (MINDConfig.grad_mode), treats the
  logit updates as constants, so gradients flow only through the last iteration's z_j with its
  weights w_ij frozen, as every public implementation does; 'full' differentiates through every
  iteration (the function as written; the functions' default here, for the gradient checks).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .softmax import masked_softmax, masked_softmax_backward
from .squash import squash_backward, squash_forward

SOFTMAX_AXES = ("interests", "behaviours")
GRAD_MODES = ("full", "stop")


def interest_count(lengths: np.ndarray, K: int, dynamic: bool = True) -> np.ndarray:
    """K'_u = max(1, min(K, floor(log2 |I_u|))), Eq. (9); K for every user when not dynamic.

    lengths: [B] number of valid behaviours |I_u| (>= 1).  Returns [B] int64.
    """
    lengths = np.asarray(lengths)
    if np.any(lengths < 1):
        raise ValueError("interest_count: every user needs at least one behaviour (|I_u| >= 1)")
    if not dynamic:
        return np.full(lengths.shape, K, dtype=np.int64)
    # floor(log2 n) exactly: n = m * 2**x with m in [0.5, 1), so floor(log2 n) = x - 1
    log2 = np.frexp(lengths.astype(np.float64))[1].astype(np.int64) - 1
    return np.clip(log2, 1, K)  # Eq. (9)


def capsule_mask(behaviour_mask: np.ndarray, K: int, dynamic: bool = True) -> np.ndarray:
    """[B, K] bool: capsule j of user u is valid iff j < K'_u (Eq. (9))."""
    K_u = interest_count(behaviour_mask.sum(-1), K, dynamic)  # [B]
    return np.arange(K)[None, :] < K_u[:, None]


def init_logits(rng: np.random.Generator, shape: tuple, sigma: float = 1.0,
                dtype=np.float64) -> np.ndarray:
    """Routing logits b_ij ~ N(0, sigma^2) of shape [B, K, L] (3.3.2, item 2).

    The RNG is explicit: training draws afresh each batch; serving passes one stored draw.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):  # drawn in the target precision, no conversion
        return sigma * rng.standard_normal(shape, dtype=dtype)
    return (sigma * rng.standard_normal(shape)).astype(dtype)


class RoutingCache(NamedTuple):
    e_hat: np.ndarray  # [B, L, d]  S e_i
    mask: np.ndarray  # [B, K, L]  valid capsule & valid behaviour
    axis: int  # softmax axis of [B, K, L]
    grad_mode: str
    w: tuple  # per iteration [B, K, L]
    squash: tuple  # per iteration SquashCache (z [B, K, d])
    u: tuple  # per iteration [B, K, d]


class RoutingForwardCache(NamedTuple):
    e: np.ndarray  # [B, L, d]
    S: np.ndarray  # [d, d]
    route: RoutingCache


def routing_forward(
    e: np.ndarray,
    S: np.ndarray,
    b0: np.ndarray,
    behaviour_mask: np.ndarray,
    capsule_mask: np.ndarray,
    iterations: int = 3,
    softmax_axis: str = "interests",
    grad_mode: str = "full",
) -> tuple[np.ndarray, RoutingForwardCache]:
    """B2I routing, Eqs. (5)-(8). Returns the interest capsules u [B, K, d] and the cache.

    e: [B, L, d] behaviour embeddings;  S: [d, d];  b0: [B, K, L] initial logits (or [K, L],
    broadcast over the batch: a fixed serving draw);  behaviour_mask: [B, L] bool, at least one
    True per row;  capsule_mask: [B, K] bool, at least one True per row (see capsule_mask()).
    """
    B, L, d = e.shape
    if S.shape != (d, d):
        raise ValueError(f"routing: e {e.shape} and S {S.shape} do not fit")
    e_hat = (e.reshape(-1, d) @ S.T).reshape(B, L, d)  # [B, L, d]  S e_i, Eq. (8); 2-D GEMM
    u, cache = route(e_hat, b0, behaviour_mask, capsule_mask, iterations, softmax_axis, grad_mode)
    return u, RoutingForwardCache(e, S, cache)


def routing_backward(du: np.ndarray, cache: RoutingForwardCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (de, dS, db0) for the forward's (e, S, b0); db0 is [B, K, L]."""
    e, S, rcache = cache
    de_hat, db0 = route_backward(du, rcache)  # [B, L, d]
    d = e.shape[-1]
    dS = de_hat.reshape(-1, d).T @ e.reshape(-1, d)  # [d, d]
    de = (de_hat.reshape(-1, d) @ S).reshape(e.shape)  # [B, L, d]
    return de, dS, db0


def route(
    e_hat: np.ndarray,
    b0: np.ndarray,
    behaviour_mask: np.ndarray,
    capsule_mask: np.ndarray,
    iterations: int = 3,
    softmax_axis: str = "interests",
    grad_mode: str = "full",
) -> tuple[np.ndarray, RoutingCache]:
    """Eqs. (5)-(8) given the mapped behaviours e_hat = S e_i [B, L, d] (the model maps each
    distinct item once). Returns u [B, K, d] and the cache."""
    B, L, d = e_hat.shape
    K = capsule_mask.shape[-1]
    if softmax_axis not in SOFTMAX_AXES:
        raise ValueError(f"softmax_axis must be one of {SOFTMAX_AXES}, got {softmax_axis!r}")
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if behaviour_mask.shape != (B, L) or capsule_mask.shape != (B, K):
        raise ValueError(f"routing: behaviours {e_hat.shape}, behaviour_mask {behaviour_mask.shape}, "
                         f"capsule_mask {capsule_mask.shape} do not fit")
    if not behaviour_mask.any(-1).all():
        raise ValueError("routing: a user has no valid behaviour (empty history)")
    if not capsule_mask.any(-1).all():
        raise ValueError("routing: a user has no valid capsule")
    b = np.broadcast_to(b0, (B, K, L)).astype(e_hat.dtype)  # [B, K, L], a fresh copy
    mask = capsule_mask[:, :, None] & behaviour_mask[:, None, :]  # [B, K, L]
    axis = 1 if softmax_axis == "interests" else 2
    e_hat_T = e_hat.transpose(0, 2, 1)  # [B, d, L]
    ws, caches, us = [], [], []
    for t in range(iterations):
        w = masked_softmax(b, mask, axis)  # [B, K, L]  Eq. (5)
        z = w @ e_hat  # [B, K, d]  Eq. (6)
        u, sq = squash_forward(z)  # [B, K, d]  Eq. (7); 0 for masked capsules
        ws.append(w), caches.append(sq), us.append(u)
        if t < iterations - 1:
            b += u @ e_hat_T  # [B, K, L]  Eq. (8), in place: b is our copy
    return us[-1], RoutingCache(e_hat, mask, axis, grad_mode, tuple(ws), tuple(caches), tuple(us))


def route_backward(du: np.ndarray, cache: RoutingCache) -> tuple[np.ndarray, np.ndarray]:
    """Returns (de_hat, db0).

    'full': reverse-mode through all iterations (the logit updates included).
    'stop': only the last iteration, its weights w_ij held constant; db0 = 0.
    """
    e_hat, axis = cache.e_hat, cache.axis
    e_hat_T = e_hat.transpose(0, 2, 1)  # [B, d, L]
    r = len(cache.w)
    de_hat = None  # [B, L, d]
    db = np.zeros_like(cache.w[0])  # [B, K, L] gradient reaching b at the current iteration
    first = r - 1 if cache.grad_mode == "stop" else 0
    for t in reversed(range(first, r)):
        du_t = du if t == r - 1 else db @ e_hat  # [B, K, d]  Eq. (8) -> u
        dz = squash_backward(du_t, cache.squash[t])  # [B, K, d]
        w = cache.w[t]
        g = _transpose_times(w, dz)  # [B, L, d]  Eq. (6) -> S e_i
        if t < r - 1:
            g += db.transpose(0, 2, 1) @ cache.u[t]  # [B, L, d]  Eq. (8) -> S e_i
        de_hat = g if de_hat is None else np.add(de_hat, g, out=de_hat)
        if cache.grad_mode == "full":
            dw = dz @ e_hat_T  # [B, K, L]  Eq. (6) -> w
            db = db + masked_softmax_backward(dw, w, axis)  # Eq. (5); identity path of "+="
    return de_hat, db


def _transpose_times(w: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """w^T dz per user: [B, K, L], [B, K, d] -> [B, L, d]. With K = 1 an outer product, written as
    one: NumPy's matmul takes a loop about 3x slower than this for an inner dimension of 1."""
    if w.shape[1] == 1:
        return w[:, 0, :, None] * dz[:, 0, None, :]
    return w.transpose(0, 2, 1) @ dz
