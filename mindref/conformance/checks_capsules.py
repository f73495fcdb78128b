"""The capsule layer's checks: the squash (Eq. 7), the interest count K'_u (Eq. 9) and B2I dynamic
routing (Eqs. 4-8).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import routing as R
from ..squash import squash_backward, squash_forward
from . import bounds, localise, runner
from . import catalogue as D
from .conventions import resolve
from .errors import ConformanceError, Mismatch
from .strategies import array, prefix_mask


def measure(tol, bound_of: Callable) -> Callable:
    """(got, want, inputs) -> the largest |got - want| in units of the check's error bound on those
    inputs (the catalogue names a variant only at <= 1: the check's own judgement)."""
    cache = {}

    def distance(got, want, inputs) -> float:
        if got.shape != want.shape:
            return np.inf
        key = id(inputs)
        if key not in cache:
            cache[key] = bound_of(inputs)
        bound = cache[key]
        with np.errstate(invalid="ignore", divide="ignore"):
            nan = np.isnan(got) | np.isnan(want)
            if (np.isnan(got) != np.isnan(want)).any():
                return np.inf
            if bound is None:
                scale = tol.atol + tol.rtol * np.abs(want)
                return float(np.max(np.where(nan, 0, np.abs(got - want) / scale), initial=0))
            return float(np.max(np.where(nan, 0, np.abs(got - want) / np.broadcast_to(bound, got.shape)),
                                initial=0))
    return distance


def explained(layer: str, port: Callable, probes: Callable, tol, bound_of: Callable, switches: dict,
              settings: dict | None = None, localiser: Callable | None = None) -> Callable:
    """The explain() a check hands the runner: the first stage that diverges (localiser) and the
    catalogued mistakes that reproduce the failure within the check's bound."""
    def explain(m: Mismatch):
        if m.quantity and "gradient" in m.quantity:
            return f"the forward matches; the backward differs ({m.quantity})", None
        found = None
        if layer in D.SWITCHES:
            found = D.diagnose(layer, lambda case: runner.call(port, case)[0], [m.inputs, *probes()],
                               measure(tol, bound_of), switches, settings)
            if found.matches == ((),):  # mindref itself within the bound on every probe: say nothing false
                found = None
        if m.hint and "float32" in m.hint and not getattr(found, "matches", None):
            return "precision: no stage computes differently; every difference is float32's rounding", found
        return (localiser(m.inputs) if localiser else None), found
    return explain


# --- squash, Eq. (7) ------------------------------------------------------------------------------

def check_squash(squash: Callable, vjp: Callable | None = None, rtol: float | None = None,
                 atol: float | None = None, max_examples: int = 100, conventions: dict | None = None,
                 precision: str = "float64") -> int:
    """squash(z) = ||z||^2 / (1 + ||z||^2) z / ||z|| over the last axis; 0 at z = 0.
    conventions: {"eps": "1e-8"} (an epsilon inside the square root) or {"form": "misprint"}."""
    _, st = runner.hypothesis()
    switches, _ = resolve("squash", conventions)
    variant = D.declared("squash", switches)

    @st.composite
    def cases(draw):
        n, d = draw(st.integers(1, 8)), draw(st.integers(1, 64))
        scale = draw(st.sampled_from([1.0, 1e-3, 30.0, 1e-6]))
        return {"z": array(draw, st, (n, d), scale)}, draw(st.integers(0, 2**32 - 1))

    tol = bounds.Tol(rtol, atol, precision, "squash")

    def compare(case):
        inputs, seed = case
        z = inputs["z"]
        c, cache = squash_forward(z)
        if not D.is_mindref("squash", variant):
            c = D.compute("squash", variant, inputs)
        runner.compare("squash output c", runner.call(squash, inputs)[0], c, inputs, tol,
                       bound=tol.bound(bounds.squash(z, c)))
        if vjp is not None:
            dc = np.random.default_rng(seed).standard_normal(c.shape)
            want = squash_backward(dc, cache) if D.is_mindref("squash", variant) else _variant_vjp(z, dc,
                                                                                                   variant)
            runner.compare("squash gradient dz", runner.call(vjp, inputs, dc)[0], want, inputs, tol,
                           bound=tol.bound(bounds.squash_vjp(z, dc)))

    def bound_of(x):
        return tol.bound(bounds.squash(x["z"], squash_forward(x["z"])[0]))

    explain = explained("squash", squash, _squash_probes, tol, bound_of, switches,
                        localiser=lambda x: localise.squash(lambda y: runner.call(squash, y)[0], variant,
                                                            tol))
    title = "squash" + (f", declared {conventions}" if conventions else "")
    return runner.run("squash", title, cases(), compare, max_examples, explain)


def _variant_vjp(z: np.ndarray, dc: np.ndarray, variant: dict) -> np.ndarray:
    """dz of a squash variant c = g(s) z, s = ||z||^2: g dc + 2 g'(s) (z . dc) z, with
    g = s / ((1 + s) sqrt(s + eps)) (an epsilon) or 1 / (1 + s) (the misprint)."""
    s = np.sum(z * z, -1, keepdims=True)
    if variant["form"] == "misprint":
        g, dg = 1 / (1 + s), -1 / (1 + s) ** 2
    else:
        eps = float(variant["eps"]) if variant["eps"] != "none" else 0.0
        g = s / ((1 + s) * np.sqrt(s + eps))
        dg = (2 * (s + eps) - s * (1 + s)) / (2 * (1 + s) ** 2 * (s + eps) ** 1.5)
    return g * dc + 2 * dg * np.sum(z * dc, -1, keepdims=True) * z


def _squash_probes() -> list[dict]:
    rng = np.random.default_rng(7)
    return [{"z": rng.standard_normal((6, 5)) * scale} for scale in (0.3, 1.0, 3.0, 1e-4)]


# --- K'_u, Eq. (9) -----------------------------------------------------------------------------

def check_interest_count(interest_count: Callable, max_K: int = 8, max_length: int = 4096,
                         conventions: dict | None = None, max_examples: int | None = None) -> int:
    """K'_u = max(1, min(K, floor(log2 |I_u|))) for every K <= max_K and |I_u| <= max_length;
    exhaustive by default, so the first differing (K, |I_u|) is the smallest; with max_examples,
    that many lengths per K: every length at and beside a power of two, then spread evenly.
    conventions: {"rule": ...} (e.g. "floor-log2-1p", DeepMatch's)."""
    switches, _ = resolve("interest_count", conventions)
    variant = D.declared("interest_count", switches)
    lengths = np.arange(1, max_length + 1)
    if max_examples is not None and max_examples < max_length:
        edges = {n for k in range(int(np.log2(max_length)) + 1) for n in (2**k - 1, 2**k, 2**k + 1)}
        spread = np.linspace(1, max_length, max(max_examples - len(edges), 2)).astype(int)
        lengths = np.array(sorted({n for n in (*edges, *spread) if 1 <= n <= max_length}))
    for K in range(1, max_K + 1):
        want = D.compute("interest_count", variant, {"lengths": lengths, "K": K}).astype(int)
        try:
            got = runner.as_output(interest_count(lengths.copy(), K), "K'_u", {"K": K})
        except Mismatch as m:
            raise ConformanceError(f"interest_count: {m}", "interest_count", "output") from None
        except Exception as err:  # noqa: BLE001 - the port raised
            raise ConformanceError(f"interest_count: raised {type(err).__name__}: {err} (K = {K})",
                                   "interest_count",
                                   "raised") from None
        if got.shape != want.shape:
            raise ConformanceError(f"interest_count: shape {list(got.shape)} for {len(lengths)} users",
                                   "interest_count", "output", "K'_u")
        bad = np.flatnonzero(got != want)
        if bad.size:
            n = int(lengths[bad[0]])
            probes = [{"lengths": lengths.copy(), "K": k} for k in range(1, max_K + 1)]
            found = D.diagnose("interest_count", lambda case: interest_count(case["lengths"].copy(),
                                                                             case["K"]),
                               probes, lambda g, w, _: 0.0 if np.array_equal(g, w) else np.inf, switches)
            raise ConformanceError(f"interest_count: K = {K}, |I_u| = {n}: got {got[bad[0]]}, mindref "
                                   f"{want[bad[0]]} (= max(1, min(K, floor(log2 {n}))))\nfirst differs at: "
                                   "K'_u "
                                   f"for |I_u| = {n}\ndiagnosis: {found}", "interest_count", "differs",
                                   "K'_u",
                                   [int(bad[0])], float(got[bad[0]]), float(want[bad[0]]),
                                   {"lengths": np.array([n]), "K": K}, found, f"K'_u for |I_u| = {n}")
    return max_K * len(lengths)


# --- B2I routing, Eqs. (4)-(8) ------------------------------------------------------------------

GRAD_MODE_MEANING = {"stop": "stop-gradient through the first r - 1 iterations",
                     "full": "autograd through every iteration"}


def routing_cases(st, dynamic_k: bool = True, iterations: int | None = None):
    """Routing inputs: B <= 3, L <= 64, K <= 8, d <= 64, r <= 6, logits up to |1000|, padding
    anywhere; half of them in the regime where routing bugs live (r >= 4 and K'_u >= 2)."""
    @st.composite
    def cases(draw):
        rich = draw(st.booleans())  # r >= 4 and a user with K'_u >= 2
        B, d = draw(st.integers(1, 3)), draw(st.integers(1, 64))
        K, L = (draw(st.integers(2, 8)), draw(st.integers(4, 64))) if rich else (
            draw(st.integers(1, 8)), draw(st.integers(1, 64)))
        lengths = draw(st.lists(st.integers(1, L), min_size=B, max_size=B))
        if rich:
            lengths[0] = max(lengths[0], 4)
        bmask = prefix_mask(lengths, L)
        if draw(st.booleans()):  # padding anywhere, not only at the end
            shuffle = np.random.default_rng(draw(st.integers(0, 99)))
            bmask = np.array([shuffle.permutation(row) for row in bmask])
        b_scale = draw(st.sampled_from([3.0, 0.5, 100.0, 1000.0]))
        r = iterations or (draw(st.integers(4, 6)) if rich else draw(st.integers(1, 6)))
        inputs = {"e": array(draw, st, (B, L, d), 2.0), "S": array(draw, st, (d, d), 1.0),
                  "b0": array(draw, st, (B, K, L), b_scale), "behaviour_mask": bmask,
                  "capsule_mask": R.capsule_mask(bmask, K, dynamic_k), "iterations": np.int64(r)}
        return inputs, draw(st.integers(0, 2**32 - 1))
    return cases()


def check_routing(routing: Callable, vjp: Callable | None = None, softmax_axis: str | None = None,
                  grad_mode: str | None = None, dynamic_k: bool | None = None, rtol: float | None = None,
                  atol: float | None = None, max_examples: int = 100, conventions: dict | None = None,
                  iterations: int | None = None, precision: str = "float64") -> int:
    """routing(e, S, b0, behaviour_mask, capsule_mask, iterations) -> u, padded behaviours anywhere
    in the sequence, capsules beyond K'_u masked; vjp(..., du) -> (de, dS) in the declared grad.
    conventions (one flat dict, docs/conformance.md): axis, padding, updates, update_from, squash,
    softmax, grad, dynamic_k, iterations; softmax_axis, grad_mode, dynamic_k and iterations are the
    same under their earlier keyword spellings."""
    _, st = runner.hypothesis()
    switches, settings = resolve("routing", conventions, softmax_axis=softmax_axis, grad_mode=grad_mode,
                                 dynamic_k=dynamic_k, iterations=iterations)
    grad, dyn, fixed = settings["grad"], settings["dynamic_k"], settings["iterations"]
    variant = D.declared("routing", switches)
    axis = variant["axis"]
    others = {k: v for k, v in variant.items() if k != "axis"}
    if vjp is not None and not D.is_mindref("routing", {**others, "axis": "interests"}):
        raise ConformanceError(f"routing: the kit has no gradient for the declared conventions {switches}; "
                               "check the forward alone (vjp=None)", "routing", "convention")
    tol = bounds.Tol(rtol, atol, precision, "routing")

    def forward(inputs: dict, mode: str):
        x = dict(inputs, iterations=int(inputs["iterations"]))
        return runner.mindref_result("routing", R.routing_forward, inputs, **x, softmax_axis=axis,
                                     grad_mode=mode)

    def compare(case):
        inputs, seed = case
        u, cache = forward(inputs, grad)
        if not D.is_mindref("routing", {**others, "axis": "interests"}):
            u = D.compute("routing", variant, inputs)
        runner.compare("routing output u", runner.call(routing, inputs)[0], u, inputs, tol,
                       bound=tol.bound(bounds.routing(inputs, cache.route.w[-1])))
        if vjp is not None:
            du = np.random.default_rng(seed).standard_normal(u.shape)
            got = runner.call(vjp, inputs, du, outputs=2)
            other = "full" if grad == "stop" else "stop"
            de_o, dS_o, _ = R.routing_backward(du, forward(inputs, other)[1])
            hint = None
            if all(D.same(g, w, tol.rtol, tol.atol) for g, w in zip(got, (de_o, dS_o))):
                hint = (f"the gradients are mindref's grad_mode='{other}' ({GRAD_MODE_MEANING[other]}): "
                        f"declare grad_mode='{other}' (decisions.md §4)")
            de, dS, _ = R.routing_backward(du, cache)
            runner.compare(f"routing gradient de ({grad})", got[0], de, inputs, tol, hint)
            runner.compare(f"routing gradient dS ({grad})", got[1], dS, inputs, tol, hint)

    def bound_of(x):
        try:
            return tol.bound(bounds.routing(x, forward(x, "stop")[1].route.w[-1]))
        except Mismatch:
            return tol.bound(np.ones((*x["capsule_mask"].shape, 1)))

    port = lambda x: runner.call(routing, x)[0]  # noqa: E731
    explain = explained("routing", routing, lambda: _routing_probes(dyn, fixed), tol, bound_of, variant,
                        localiser=lambda x: localise.routing(port, variant, tol, dyn, fixed, x))
    declared = f", declared {switches}" if switches.keys() - {"axis"} else ""
    title = f"routing (softmax over {axis}, grad {grad}{declared})"
    return runner.run("routing", title, routing_cases(st, dyn, fixed), compare, max_examples, explain)


def _routing_probes(dynamic_k: bool, iterations: int | None = None) -> list[dict]:
    """Inputs that tell the routing variants apart: padding inside and at the end, K'_u < K, more
    than three iterations, and logits past float32 exp's range."""
    rng = np.random.default_rng(7)
    B, L, K, d = 2, 12, 4, 5
    bmask = np.ones((B, L), bool)
    bmask[0, [2, 7, 8]] = False  # padding inside the sequence
    bmask[1, 5:] = False  # and at its end
    return [{"e": rng.standard_normal((B, L, d)), "S": rng.standard_normal((d, d)) / 2,
             "b0": rng.standard_normal((B, K, L)) * scale, "behaviour_mask": bmask,
             "capsule_mask": R.capsule_mask(bmask, K, dynamic_k), "iterations": np.int64(iterations or r)}
            for r, scale in ((3, 1.0), (5, 1.0), (6, 3.0), (4, 100.0))]
