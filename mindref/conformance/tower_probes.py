"""Where a user tower goes wrong: the interest mask, then designed parameters that let one stage
through at a time (make_tower is called with them, as with any parameters).

With the dense layers set to pass their input through exactly (W_0 = [I, -I] and W_1 = [I; -I]
over the capsule part, so that ReLU(x) - ReLU(-x) = x), the tower's output is the capsules
themselves: pooling and routing are checked alone. Then the hidden layer alone (W_1 selecting its
first d units), the output layer alone (W_0 passing through), and the profile's part of the
concatenation (W_1 adding it to the output).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import model as M
from . import catalogue as D
from . import runner


def _dense(cfg: M.MINDConfig, params: dict, hidden: str, output: str, rng) -> dict:
    """params with one hidden layer of 2 d_in units: 'pass' or 'random', and an output layer
    'pass' (the capsule part), 'first' (the hidden layer's first d units), 'profile' (the capsule
    part plus the profile part, summed) or 'random'."""
    d = cfg.dim
    d_in = d + cfg.profile_dim * len(cfg.profile_sizes)
    eye = np.eye(d_in)
    out = dict(params)
    out["dense_W_0"] = np.hstack([eye, -eye]) if hidden == "pass" else rng.standard_normal((d_in,
                                                                                            2 * d_in)) / 2
    out["dense_b_0"] = np.zeros(2 * d_in) if hidden == "pass" else rng.standard_normal(2 * d_in) / 4
    W1 = np.zeros((2 * d_in, d))
    if output in ("pass", "profile"):
        W1[:d_in][np.arange(d), np.arange(d)], W1[d_in:][np.arange(d), np.arange(d)] = 1, -1
    if output == "profile":  # the profile part, folded onto the output's coordinates
        for j in range(d, d_in):
            W1[j, (j - d) % d], W1[d_in + j, (j - d) % d] = 1, -1
    if output == "first":
        W1[np.arange(d), np.arange(d)] = 1
    if output == "random":
        W1 = rng.standard_normal((2 * d_in, d)) / 2
    out["dense_W_1"] = W1
    # outside the output layer's own probe its bias lifts every output above 0, so that a ReLU after
    # the output layer (a mistake) changes nothing there
    out["dense_b_1"] = rng.standard_normal(d) / 4 if output == "random" else np.full(d, 10.0)
    return out


def localise(make_tower, cfg: M.MINDConfig, normalized: bool, tol, inputs: dict, params: dict,
             item_fields: tuple, tower) -> tuple[str | None, str | None]:
    """(the first stage that diverges, a diagnosis or None) for a tower that failed on `inputs`."""
    hist, profile = inputs["hist"], inputs["profile"]
    V, mask = M.user_vectors(params, cfg, item_fields, hist, profile)
    try:
        got_V, got_mask = runner.call(tower, inputs, outputs=2)
    except runner.Mismatch:
        return None, None
    if got_mask.shape != mask.shape or not np.array_equal(got_mask.astype(bool), mask):
        return _mask(hist, got_mask, mask, cfg.K)
    if not normalized and D.same(got_V, D.tower_without_relu(params, cfg, item_fields, hist, profile),
                                 tol.rtol,
                                 tol.atol):
        return ("the hidden layer (ReLU(x W + b))", "matches mindref with the hidden layers' ReLU left out "
                "(Figure 2: 'several ReLU layers'; decisions.md, the composed model)")
    probe_cfg = dataclasses.replace(cfg, hidden=(2 * (cfg.dim + cfg.profile_dim * len(cfg.profile_sizes)),))
    rng = np.random.default_rng(13)
    one = {"hist": np.array([[hist[0][hist[0] != 0][0]]]), "profile": profile[:1]}  # one behaviour
    for name, (hidden, output), x in (
            ("the capsules before the dense layers (pooling and routing, with the dense layers passing them "
             "through)", ("pass", "pass"), inputs),
            ("the profile's part of the concatenation (each capsule concatenated with the profile embedding)",
             ("pass", "profile"), inputs),
            ("the hidden layer (ReLU(x W + b))", ("random", "first"), inputs),
            ("the output layer (linear x W + b, no ReLU after it)", ("pass", "random"), inputs)):
        probe = _dense(probe_cfg, params, hidden, output, rng)
        got = _run(make_tower, probe, probe_cfg, item_fields, x)
        if got is None:
            return (f"{name}: the port's tower could not run with the probe's parameters (one hidden layer "
                    f"of {probe_cfg.hidden[0]} units)"), None
        want, _ = M.user_vectors(probe, probe_cfg, item_fields, x["hist"], x["profile"])
        if normalized:
            norm = np.linalg.norm(want, axis=-1, keepdims=True)
            want = np.divide(want, norm, out=np.zeros_like(want), where=norm > 0)
        if not D.same(got, want, tol.rtol, tol.atol):
            if output == "pass" and hidden == "pass":
                return _capsules(make_tower, probe, probe_cfg, item_fields, one, tol) or name, None
            return name, None
    return None, None


def _run(make_tower, params: dict, cfg, item_fields, x: dict):
    try:
        tower = make_tower({k: v.copy() for k, v in params.items()}, cfg, item_fields)
        return runner.call(tower, x, outputs=2)[0]
    except Exception:  # noqa: BLE001 - a port that cannot take the probe's parameters
        return None


def _capsules(make_tower, params: dict, cfg, item_fields, one: dict, tol) -> str | None:
    """Pooling, the map S e_i or routing: one behaviour with S = I gives u = squash(e_i), along the
    pooled e_i; with the real S, along S e_i."""
    for S in (np.eye(cfg.dim), params["S"]):
        probe = dict(params, S=S)
        got = _run(make_tower, probe, cfg, item_fields, one)
        want, _ = M.user_vectors(probe, cfg, item_fields, one["hist"], one["profile"])
        if got is None or D.same(got, want, tol.rtol, tol.atol):
            continue
        a, b = got[0, 0] - 10.0, want[0, 0] - 10.0  # the capsule, below the probe's output bias
        if abs(a @ b) >= (1 - 1e-6) * np.linalg.norm(a) * np.linalg.norm(b):
            return "the capsule of one behaviour (the squash, Eq. 7)"
        if S is params["S"]:
            e = b @ np.linalg.inv(S.T)  # the pooled e_i, from mindref's S e_i
            along = abs(a @ (e @ S)) >= (1 - 1e-6) * np.linalg.norm(a) * np.linalg.norm(e @ S)
            turned = "S transposed" if along else "the capsule points elsewhere"
            return f"the map S e_i inside the tower (Eq. 4): {turned}"
        return "the item embedding f_item (3.2: the id's row averaged with its side fields' rows)"
    return "routing inside the tower (Eqs. 5-8 with the stored logits params['serving_logits'])"


def _mask(hist: np.ndarray, got: np.ndarray, want: np.ndarray, K: int) -> tuple[str, str | None]:
    """The mask's stage, and the K'_u rule it follows when a catalogued one fits every row."""
    n = (hist != 0).sum(1)
    counts = got.astype(bool).sum(1) if got.shape == want.shape else None
    stage = "the interest mask (K'_u, Eq. 9)"
    if counts is None:
        return f"{stage}: shape {list(got.shape)}, mindref {list(want.shape)}", None
    rows = "; ".join(f"{int(c)} for {int(m)} behaviours (mindref {int(w)})"
                     for c, m, w in zip(counts, n, want.sum(1)) if c != w)
    for choice in D.SWITCHES["interest_count"]["rule"][1:]:
        rule = D.compute("interest_count", {"rule": choice.value}, {"lengths": n, "K": K}).astype(int)
        prefix = np.arange(K)[None, :] < rule[:, None]
        if np.array_equal(got.astype(bool), prefix):
            return f"{stage}: {rows}", (f"the port's K'_u is {choice.says} ({choice.where}); "
                                        "check_interest_count checks a K'_u rule alone")
    return f"{stage}: {rows}", None
