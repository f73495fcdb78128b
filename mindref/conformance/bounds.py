"""Error bounds: how far a port may be from mindref, per entry, from each function's error
analysis (docs/conformance.md, "Tolerances"), and the comparison every part of the kit makes
with them: the check, the catalogue's naming and the stage probes all use the same bound, so a
variant is named only if it reproduces the port as closely as the check demands.

    |got - want| <= SAFETY (u * magnitude + the smallest normal number)

u is the unit roundoff of the declared precision; the magnitude is what rounding can act on in
that function (the terms before they cancel), never a fixed absolute floor.
"""
from __future__ import annotations

import numpy as np

from .errors import ConformanceError

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24}
SMALLEST = {"float64": float(np.finfo(np.float64).tiny), "float32": float(np.finfo(np.float32).tiny)}
SAFETY = 16  # the constant in front of every error bound


class Tol:
    """The comparison a check makes: from the port's `precision`, per-entry error bounds
    SAFETY * (u * magnitude + smallest); or, when the caller gives rtol or atol, np.isclose with
    those (and for gradients without a bound here, defaults per precision)."""

    def __init__(self, rtol: float | None, atol: float | None, precision: str, layer: str):
        if precision not in UNIT_ROUNDOFF:
            raise ConformanceError(f"{layer}: precision must be one of {', '.join(UNIT_ROUNDOFF)}, got "
                                   f"{precision!r}", layer, "convention")
        self.precision = precision
        self.u, self.explicit = UNIT_ROUNDOFF[precision], rtol is not None or atol is not None
        self.smallest = SMALLEST[precision]
        loose = precision == "float32"
        self.rtol = rtol if rtol is not None else (1e-4 if loose else 1e-6)
        self.atol = atol if atol is not None else (1e-5 if loose else 1e-9)

    def bound(self, magnitude) -> np.ndarray | None:
        if self.explicit:
            return None
        return SAFETY * (self.u * np.asarray(magnitude, np.float64) + self.smallest)

    def close(self, got, want, bound: np.ndarray | None = None) -> np.ndarray:
        """Entry by entry: within the bound (or rtol/atol); NaN only where mindref has NaN."""
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        with np.errstate(invalid="ignore"):
            near = np.abs(got - want) <= bound if bound is not None else np.isclose(got, want, self.rtol,
                                                                                    self.atol)
        return (near | (np.isnan(got) & np.isnan(want))) & (np.isnan(got) == np.isnan(want))

    def hint(self, got, want, bound: np.ndarray | None = None) -> str | None:
        """A float64 check the port fails only by float32's rounding (within the same error model
        at float32's unit roundoff): say to declare it."""
        if self.precision != "float64":
            return None
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape or not (np.isfinite(got).all() and np.isfinite(want).all()):
            return None
        if bound is not None:
            single = np.abs(got - want) <= np.broadcast_to(bound, got.shape) * (UNIT_ROUNDOFF["float32"] /
                                                                              UNIT_ROUNDOFF["float64"])
        else:
            single = np.isclose(got, want, rtol=1e-5, atol=1e-6)
        if single.all():
            return ("every difference is within float32's rounding: if the port computes in float32, declare "
                    "precision='float32'")
        return None


# --- the error models: the magnitude each bound is built on -----------------------------------------

def pooling(x: dict) -> np.ndarray:
    """A mean of at most F + 1 rows: (F + 2) times the same mean of the rows' absolute values."""
    from ..embedding import item_embedding_forward
    ids = [x["item_ids"][:, None], x["field_ids"]]
    size, _ = item_embedding_forward([np.abs(x["item_table"]), np.abs(x["field_table"])], ids)
    return (ids[1].shape[1] + 2) * size


def squash(z: np.ndarray, c: np.ndarray) -> np.ndarray:
    """||z|| from d squares, then one scaling: d u ||c|| per vector, no absolute floor (a tiny
    capsule is checked as closely as a long one)."""
    return z.shape[-1] * np.linalg.norm(c, axis=-1, keepdims=True)


def squash_vjp(z: np.ndarray, dc: np.ndarray) -> np.ndarray:
    """d (|g| |dc| + |g'(n)| (|z| . |dc|) |z| / n), g(n) = n / (1 + n^2): the terms of dz before
    they cancel (0 at z = 0, as the Jacobian)."""
    n = np.linalg.norm(z, axis=-1, keepdims=True)
    g, dg = n / (1 + n**2), np.abs(1 - n**2) / (1 + n**2) ** 2
    dot = np.sum(np.abs(z) * np.abs(dc), -1, keepdims=True)
    return z.shape[-1] * (g * np.abs(dc) + dg * np.divide(dot, n, out=np.zeros_like(n),
                                                          where=n > 0) * np.abs(z))


def routing(x: dict, weights: np.ndarray) -> np.ndarray:
    """Per capsule [B, K, 1]: a logit is off by <= u (|b0| + r max ||e_hat||) after r updates, which
    moves a softmax weight by that much relative to itself; z_j = sum_i w_ij e_hat_i then moves by
    that times M_j = sum_i w_ij ||e_hat_i||, plus u (L + d) M_j from its own sums; the squash is
    1-Lipschitz; r iterations compound it at most r times. weights: the last iteration's [B, K, L]."""
    e_hat = x["e"] @ x["S"].T  # [B, L, d]
    r, (_, L, d) = int(x["iterations"]), e_hat.shape
    norms = np.linalg.norm(e_hat, axis=-1)  # [B, L]
    M = np.einsum("bkl,bl->bk", weights, norms)[..., None]  # [B, K, 1]
    logit = float(np.max(np.abs(x["b0"]), initial=0)) + r * float(norms.max(initial=0))
    return r * (L + d + logit) * M


def attention(x: dict, p: float, mode: str) -> np.ndarray:
    """Per entry of v [B, d]: a score s_k = V_k . e is off by <= d u |V_k| . |e|, its logit (s^p,
    or p s) by the derivative times that plus u |logit|; a weight moves relative to itself by
    twice the worst logit error; v = sum_k a_k V_k by that times sum_k |V_k|, plus its own d u."""
    V, e, mask = x["V"], x["e"], x["capsule_mask"]
    d = V.shape[-1]
    s = np.einsum("bkd,bd->bk", V, e)
    ds = d * np.einsum("bkd,bd->bk", np.abs(V), np.abs(e))
    slope = p * np.abs(s) ** max(p - 1, 0) if mode == "pow" else np.full_like(s, abs(p))
    logit = np.abs(s) ** p if mode == "pow" else np.abs(p * s)
    worst = np.max(np.where(mask, slope * ds + logit, 0), axis=1, keepdims=True)  # [B, 1]
    return (d + 2 * worst) * np.einsum("bk,bkd->bd", mask.astype(float), np.abs(V))


def loss(x: dict, value, variant: dict, temperature: float) -> float:
    """Each logit o = v . e - log Q is off by <= u (d |v||e| + |log Q|); logsumexp(o) - o_pos by
    twice the worst logit error plus u (|loss| + log(1 + S)); a sum over the batch times B."""
    v, e = np.abs(x["v"]), np.abs(np.vstack([x["e_pos"], x["e_neg"]]))
    summed = variant["reduce"] == "sum"
    if variant["logits"].startswith("cosine"):
        v, e = np.full_like(v, 1 / temperature), np.ones_like(e)
    d, S, B = v.shape[1], len(x["e_neg"]), len(v)
    log_q = np.abs(np.concatenate([x["log_q_pos"], x["log_q_neg"]]))
    worst = d * float(np.max(v @ e.T)) + float(np.max(log_q))
    return (2 * worst + float(np.abs(value)) / (B if summed else 1) + np.log1p(S)) * (B if summed else 1)
