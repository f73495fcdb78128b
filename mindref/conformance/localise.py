"""The first stage that diverges: designed probe inputs that isolate one stage of a layer at a
time, run through the port's public call, in the order the stages compute (docs/conformance.md,
"Where it goes wrong"). Each probe's expected output comes from the declared variant
(catalogue.compute), and is compared with the check's own error bound.

Routing, for instance: one behaviour and one interest at r = 1 leave only the map S e_i and the
squash (the output's direction is S e_i's, its length the squash's); a capsule mask with K'_u < K
leaves the mask; behaviours along orthogonal axes with S = I leave the weights of the first
iteration, which are then read back from the output; r = 2..6 add one logit update at a time; two
inputs of one shape called in turn catch state kept between calls.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import routing as R
from . import bounds
from . import catalogue as D

STATE = ("state between calls (an input's answer depends on what was run before it, or changes from one call "
         "to the next)")


class Probe:
    """Runs the port on a probe input: its output, or None when it raised (the stage's finding)."""

    def __init__(self, port: Callable):
        self.port = port

    def __call__(self, inputs: dict):
        try:
            return np.asarray(self.port({k: np.array(v, copy=True) for k, v in inputs.items()}), np.float64)
        except Exception:  # noqa: BLE001 - a raise on a probe is reported as that probe's stage
            return None


def _differs(got, want, bound) -> bool:
    if got is None or got.shape != want.shape:
        return True
    with np.errstate(invalid="ignore"):
        ok = (np.abs(got - want) <= bound) | (np.isnan(got) & np.isnan(want))
    return not bool(np.all(ok))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a.ravel() @ b.ravel() / (na * nb)) if na > 0 and nb > 0 else 0.0


def _unsquash(u: np.ndarray) -> np.ndarray:
    """z from u = squash(z) (||u|| < 1): ||z||^2 = ||u|| / (1 - ||u||)."""
    n = np.linalg.norm(u, axis=-1, keepdims=True)
    zn = np.sqrt(np.divide(n, 1 - n, out=np.zeros_like(n), where=n < 1))
    return np.divide(u * zn, n, out=np.zeros_like(u), where=n > 0)


# --- routing ---------------------------------------------------------------------------------------

def routing(port: Callable, variant: dict, tol, dynamic_k: bool = True, iterations: int | None = None,
            failing: dict | None = None) -> str | None:
    """The first stage of routing (Eqs. 4-9) where the port differs from the declared variant."""
    run = Probe(port)
    fixed = iterations

    def want(x):
        return D.compute("routing", variant, x)

    def bound(x):
        try:
            _, cache = R.routing_forward(x["e"], x["S"], x["b0"], x["behaviour_mask"], x["capsule_mask"],
                                         int(x["iterations"]), softmax_axis=variant["axis"])
            return tol.bound(bounds.routing(x, cache.route.w[-1]))
        except (ValueError, FloatingPointError):
            return tol.bound(np.ones((*x["capsule_mask"].shape, 1)))

    def case(e, S, b0, bmask, cmask, r):
        return {"e": e, "S": S, "b0": b0, "behaviour_mask": bmask, "capsule_mask": cmask,
                "iterations": np.int64(fixed or r)}

    rng = np.random.default_rng(11)
    d, I = 4, np.eye(4)
    axes = I[None, :3] * np.array([1.0, 2.0, 0.5])[None, :, None]  # [1, 3, d]: behaviours on orthogonal axes
    # 0. state: an answer must not depend on what was run before. Two inputs of one shape in one
    # order, and the same two (each user twice: a second shape) in the other order; a port that
    # keeps state answers the second call of each pair from the first
    x0 = case(axes, I, rng.standard_normal((1, 2, 3)), np.ones((1, 3), bool), np.ones((1, 2), bool), 1)
    y0 = dict(x0, b0=rng.standard_normal((1, 2, 3)))

    def twice(x):
        return {k: np.repeat(v, 2, 0) if np.ndim(v) and k != "S" else v for k, v in x.items()}
    x_first, y_second = run(x0), run(y0)
    y_first, x_second = run(twice(y0)), run(twice(x0))
    again = run(x0)
    answers = (x_first, y_second, y_first, x_second, again)
    if any(a is None for a in answers) or not np.array_equal(x_first, again) or not (
            np.allclose(x_first, x_second[:1], rtol=1e-9, atol=0) and np.allclose(y_second, y_first[:1],
                                                                                  rtol=1e-9,
                                                                                 atol=0)):
        return STATE
    # 1. one behaviour, one interest, r = 1: u = squash(S e) whatever the softmax (its weight is 1)
    S = rng.standard_normal((d, d)) / 2 + I
    e = rng.standard_normal((2, 1, d))
    one = case(e, S, rng.standard_normal((2, 1, 1)), np.ones((2, 1), bool), np.ones((2, 1), bool), 1)
    got, z = run(one), e @ S.T
    if got is None:
        return "the port raised on one behaviour and one interest (r = 1)"
    if _least_cos(got, z) < 1 - 1e-6:
        if _least_cos(got, e @ S) > 1 - 1e-6:
            return "the map S e_i (Eq. 4): the output points along S^T e_i, S transposed"
        if _least_cos(got, e) > 1 - 1e-6:
            return "the map S e_i (Eq. 4): the output points along e_i, S not applied"
        return "the map S e_i (Eq. 4, before any softmax): one behaviour's capsule points elsewhere"
    if not np.allclose(got, want(one), rtol=1e-6, atol=0):
        return _squash_stage(got, z)
    # 2. the capsule mask: K'_u < K must leave capsules k >= K'_u exactly 0 (and the others not)
    bmask = np.array([[True] * 7, [True] * 3 + [False] * 4])  # 7 and 3: K'_u rules disagree here
    cmask = R.capsule_mask(bmask, 4, dynamic_k)
    got = run(case(rng.standard_normal((2, 7, d)), S, rng.standard_normal((2, 4, 7)), bmask, cmask, 1))
    if got is None:
        return "the port raised on a capsule mask with K'_u < K"
    live = np.linalg.norm(got, axis=-1) > 0  # [B, K]
    if (live != cmask).any():
        return _mask_stage(live, cmask, bmask)
    # 3-5. the weights of iteration 1, read back from the output (S = I, behaviours on orthogonal axes)
    for name, x in (("the routing weights of iteration 1 (Eq. 5)", x0),
                    ("padding in the routing softmax (Eq. 5): a padded behaviour must take no weight and no "
                     "mass",
                     case(axes, I, x0["b0"][:, :, [0, 2, 1]], np.array([[True, False, True]]),
                          np.ones((1, 2), bool), 1)),
                    ("the routing weights at large logits (|b_ij| ~ 100): a softmax without max-subtraction "
                     "overflows", case(np.repeat(axes, 2, 0), I, np.repeat(x0["b0"], 2, 0) * 100,
                                       np.ones((2, 3), bool), np.ones((2, 2), bool), 1))):
        got = run(x)
        if got is None or got.shape != want(x).shape or not np.all(np.isfinite(got)):
            return f"{name}: the port raised or returned non-finite values" if got is None or \
                not np.all(np.isfinite(got)) else f"{name}: shape {list(got.shape)}"
        if np.max(np.abs(_read(got, axes) - _read(want(x), axes))) > 1e-6:
            return name + _weights(got, want(x), axes)
    # 6. the squash to rounding (an epsilon inside it shows only here)
    if _differs(run(one), want(one), bound(one)):
        return _squash_stage(run(one), z)
    # 7. one logit update more at a time (Eq. 8)
    for r in range(2, 7):
        if fixed and r != fixed:
            continue
        x = case(np.repeat(axes / 2, r, 0), I, np.repeat(x0["b0"], r, 0), np.ones((r, 3), bool),
                 np.ones((r, 2), bool), r)  # r rows: a shape of its own
        got = run(x)
        if got is None or _differs(got, want(x), bound(x)):
            return (f"the logit update (Eq. 8) after iteration {r - 1}, seen in the weights of iteration {r}"
                    + (_weights(got[:1], want(x)[:1], axes / 2) if got is not None else ": the port raised"))
    if failing is not None:
        return _bisect_iterations(run, failing, want, bound, fixed)
    return None


def _least_cos(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest |cosine| between matching vectors (last axis) of a and b."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    cos = np.abs(np.sum(a * b, -1)) / np.where(na * nb > 0, na * nb, 1)
    return float(np.min(np.where(na * nb > 0, cos, 0), initial=1.0))


def _squash_stage(got: np.ndarray, z: np.ndarray) -> str:
    n, m = np.linalg.norm(z, axis=-1).ravel(), np.linalg.norm(got, axis=-1).ravel()
    return (f"the squash (Eq. 7): for ||z|| = {n[0]:.6g} the capsule's length is {m[0]:.9g}, mindref's "
            f"{n[0]**2 / (1 + n[0]**2):.9g} (one behaviour, one interest, r = 1)")


def _mask_stage(live: np.ndarray, cmask: np.ndarray, bmask: np.ndarray) -> str:
    b = int(np.argwhere(live != cmask)[0][0])
    n, k_port, k_mask = int(bmask[b].sum()), int(live[b].sum()), int(cmask[b].sum())
    K = live.shape[1]
    rule = next((r.says for r in D.SWITCHES["interest_count"]["rule"][1:]
                 if int(D.compute("interest_count", {"rule": r.value}, {"lengths": [n],
                                                                        "K": K})[0]) == k_port), None)
    told = (f"; {k_port} is {rule} for n = {n}: the port decides K'_u itself instead of honouring the "
            "capsule mask, so check its K'_u rule with check_interest_count") if rule else ""
    return (f"the capsule mask (K'_u, Eq. 9): {k_port} non-zero capsules for a user the mask gives {k_mask} "
            f"(of K = {K}, {n} behaviours){told}")


def _read(u: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """The weights [K, L] of the first row's last iteration, read back from its capsules (behaviours
    along orthogonal axes: z_k = sum_i w_ki e_i, and z from u by undoing the squash)."""
    scale = np.linalg.norm(axes[0], axis=-1)  # [L]
    return (_unsquash(u[0]) @ (axes[0] / scale[:, None]).T) / scale


def _weights(got, want, axes) -> str:
    """The port's weights beside mindref's (read back from the first row's capsules)."""
    if got is None:
        return ": the port raised"
    port, mindref = _read(got, axes).round(3).tolist(), _read(want, axes).round(3).tolist()
    return f": the port's weights {port}, mindref's {mindref}"


def _bisect_iterations(run: Probe, x: dict, want: Callable, bound: Callable, fixed) -> str | None:
    """Every designed probe agrees: the first iteration of the failing input itself that differs."""
    r = int(x["iterations"])
    for t in range(1, r + 1):
        if fixed and t != fixed:
            continue
        y = dict(x, iterations=np.int64(t))
        got = run(y)
        if got is None or _differs(got, want(y), bound(y)):
            where = "the weights of iteration 1" if t == 1 else f"the logit update after iteration {t - 1}"
            shape = f"L = {x['e'].shape[1]}, K = {x['b0'].shape[1]}, d = {x['e'].shape[2]}"
            return (f"{where} on the minimal input ({shape}); every designed probe agrees: the difference "
                    "needs inputs like it")
    return None


# --- squash ------------------------------------------------------------------------------------------

def squash(port: Callable, variant: dict, tol) -> str | None:
    run = Probe(port)
    zero = {"z": np.zeros((2, 3))}
    got = run(zero)
    if got is None or not np.array_equal(np.nan_to_num(got, nan=1.0), np.zeros((2, 3))):
        return "the squash at z = 0 (it must be exactly 0, not NaN)"
    rng = np.random.default_rng(3)
    z = {"z": rng.standard_normal((3, 4)) * np.array([[0.5], [1.0], [2.0]])}
    got, want = run(z), D.compute("squash", variant, z)
    if got is None or got.shape != want.shape:
        return "the squash's output shape (c has z's shape: one vector per row)"
    for row in range(3):
        if abs(_cos(got[row], z["z"][row])) < 1 - 1e-9:
            return "the squash's direction: each c must point along its own z (over the last axis only)"
    if _differs(got, want, tol.bound(bounds.squash(z["z"], want))):
        n = np.linalg.norm(z["z"], axis=-1)
        return ("the squash's length (Eq. 7): for ||z|| = " + ", ".join(f"{x:.3g}" for x in n) + " it gives "
                + ", ".join(f"{x:.3g}" for x in np.linalg.norm(got, axis=-1)) + ", mindref "
                + ", ".join(f"{x:.3g}" for x in np.linalg.norm(want, axis=-1)))
    return None


# --- label-aware attention -----------------------------------------------------------------------

def attention(port: Callable, reference: Callable, tol, p: float, mode: str) -> str | None:
    """The first stage of label-aware attention (3.4) where the port differs from reference(x)."""
    run = Probe(port)
    d, scale = 4, np.array([1.0, 2.0, 0.5])
    V = (np.eye(d)[:3] * scale[:, None])[None]  # [1, K, d]: capsules along orthogonal axes
    for name, e, mask in (
            ("one valid capsule (v must be it)", np.array([[0.3, 0.2, 0.1, 0.7]]), np.array([[True, False,
                                                                                              False]])),
            ("the attention weights (softmax of pow(V_k . e, p) over the valid capsules)",
             np.array([[0.4, 0.3, 0.6, 0.7]]), np.ones((1, 3), bool)),
            ("the attention weights on negative scores (pow of a negative score)",
             np.array([[-0.4, 0.3, -0.6, 0.7]]), np.ones((1, 3), bool)),
            ("the capsule mask (capsules k >= K'_u take no attention)", np.array([[0.4, 0.3, 0.6, 0.7]]),
             np.array([[True, True, False]])),
            ("the attention softmax at large scores (a softmax without max-subtraction overflows)",
             np.array([[12.0, 10.0, 8.0, 0.7]]), np.ones((1, 3), bool))):
        x = {"V": V, "e": e, "capsule_mask": mask}
        got, want = run(x), reference(x)
        if got is None:
            return f"{name}: the port raised"
        if _differs(got, want, tol.bound(bounds.attention(x, p, mode))):
            a_port, a_want = (got[0] @ np.eye(d)[:3].T) / scale, (want[0] @ np.eye(d)[:3].T) / scale
            outside = np.linalg.norm(got[0] - a_port @ V[0])
            if outside > 1e-9 * max(1.0, np.linalg.norm(got)):
                return "the readout (v = sum_k a_k V_k: the port's v is not a combination of the capsules)"
            if abs(a_port.sum() - 1) > 1e-9:
                return f"the readout (the weights must sum to 1; the port's sum to {a_port.sum():.4g})"
            return (f"{name}: the port's weights {a_port.round(4).tolist()}, mindref's "
                    f"{a_want.round(4).tolist()}")
    return None


# --- sampled softmax -------------------------------------------------------------------------------

def sampled_softmax(port: Callable, variant: dict, tol, temperature: float) -> str | None:
    run = Probe(port)
    settings = {"temperature": temperature}
    v, ep, en = np.array([[1.0, 0.5]]), np.array([[0.8, -0.2]]), np.array([[0.3, 0.9], [-0.5, 0.4]])
    base = {"v": v, "e_pos": ep, "e_neg": en, "pos_ids": np.array([1]), "neg_ids": np.array([2, 3]),
            "log_q_pos": np.zeros(1), "log_q_neg": np.zeros(2)}
    two = {"v": np.vstack([v, -v]), "e_pos": np.vstack([ep, en[:1]]), "e_neg": en, "pos_ids": np.array([1,
                                                                                                        4]),
           "neg_ids": np.array([2, 3]), "log_q_pos": np.zeros(2), "log_q_neg": np.zeros(2)}
    for name, x in (("the logits v . e and the softmax over the positive and the negatives (Eq. 10)", base),
                    ("the logQ correction (o = v . e - log Q, Eq. 11)",
                     dict(base, log_q_pos=np.array([-0.5]), log_q_neg=np.array([1.0, -2.0]))),
                    ("accidental hits (a sampled negative equal to the positive is removed)",
                     dict(base, neg_ids=np.array([1, 3]))),
                    ("the reduction over the batch (the mean of the rows' losses)", two)):
        got, want = run(x), D.compute("sampled_softmax", variant, x, settings)
        if got is None:
            return f"{name}: the port raised"
        if _differs(got, want, tol.bound(bounds.loss(x, want, variant, temperature))):
            if np.allclose(got, -want):
                return f"{name}: the loss has the wrong sign (it is -log softmax of the positive)"
            return f"{name}: {float(got):.6g}, mindref {float(want):.6g}"
    return None


# --- pooling ----------------------------------------------------------------------------------------

def pooling(port: Callable, tol) -> str | None:
    from ..embedding import item_embedding_forward
    run = Probe(port)
    rng = np.random.default_rng(5)
    items, fields = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    items[0] = fields[0] = 0
    for name, ids, field_ids in (("one side field (the mean of the item's row and the field's)", [2], [[1]]),
                                 ("a multi-valued field (its rows averaged first, then with the item's)",
                                  [3], [[1, 2]]),
                                 ("padding ids in a field (id 0 is absent, not a zero row)", [1, 2], [[0,
                                                                                                       3],
                                                                                                       [0,
                                                                                                        0]])):
        x = {"item_table": items, "field_table": fields, "item_ids": np.array(ids),
             "field_ids": np.array(field_ids)}
        got = run(x)
        want, _ = item_embedding_forward([items, fields], [x["item_ids"][:, None], x["field_ids"]])
        if got is None or _differs(got, want, tol.bound(bounds.pooling(x))):
            return name
    return None
