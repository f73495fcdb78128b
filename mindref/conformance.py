"""The conformance kit: check another MIND implementation against mindref, layer by layer.

    from mindref import conformance
    conformance.check_routing(my_routing, softmax_axis="interests")   # raises ConformanceError

Each check_* takes the other implementation as a plain callable on NumPy arrays (convert to and
from your framework's tensors inside it), drives it with generated inputs (shapes, masks,
padding, zero vectors, negative scores, large and tiny magnitudes), compares it with mindref in
float64 and raises ConformanceError naming the quantity that differs, with the minimal differing
example (Hypothesis shrinks it). `vjp` callables are optional: they get the forward's inputs and
the output cotangent and return the input gradients (a vector-Jacobian product), compared with
mindref's hand-written backward passes. Conventions (softmax axis, gradient mode, attention mode
and p, dynamic K'_u) are arguments: the check compares like with like.

Every call of the candidate gets fresh inputs and is made twice: an implementation that keeps
state between calls (routing logits carried over from the last batch, a fresh random draw at
inference) is caught as "inconsistent between calls".

Signatures expected (B batch, L behaviours, K interests, d size; masks are bool):
    pooling(item_table, field_table, item_ids [N], field_ids [N, F]) -> e [N, d]
    sampled_softmax(v, e_pos, e_neg, pos_ids, neg_ids, log_q_pos, log_q_neg) -> loss;
                                                       vjp(..., dloss) -> (dv, de_pos, de_neg)
    squash(z [N, d]) -> c [N, d];                      vjp(z, dc) -> dz
    interest_count(lengths [B] int, K) -> [B] int      (K'_u, Eq. 9)
    routing(e [B, L, d], S [d, d], b0 [B, K, L], behaviour_mask [B, L], capsule_mask [B, K],
            iterations) -> u [B, K, d];                vjp(..., du) -> (de, dS)
    attention(V [B, K, d], e [B, d], capsule_mask [B, K]) -> v [B, d];   vjp(..., dv) -> (dV, de)
    make_tower(params, cfg, item_fields) -> tower(hist [B, L] int, profile [B, P] int)
                                          -> (V [B, K, d], mask [B, K])

Needs Hypothesis (pip install 'mindref[conformance]'); mindref's model code does not. The guide,
with the catalogue of mistakes the kit names and a whole-port runner (`mindref conform`):
docs/conformance.md.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from . import attention as A
from . import diagnosis as D
from . import model as M
from . import routing as R
from .squash import squash_backward, squash_forward


class ConformanceError(AssertionError):
    """The other implementation differs from mindref, or could not be checked: the one error the
    kit raises. The message has the minimal example and, where the catalogue of known mistakes
    (mindref.diagnosis) reproduces the port, the mistake by name. Fields, for tools:

        layer      'routing', 'squash', ...
        kind       'differs' | 'inconsistent' (two calls, one input, two outputs) | 'raised' (the
                   port raised) | 'convention' (mindref cannot compute the declared convention on
                   this input) | 'kit' (the kit itself failed: a bug to report)
        quantity   what differs ('routing output u', 'squash gradient dz', ...)
        index, got, expected   the first differing entry
        inputs     the minimal input (a dict of arrays)
        diagnosis  the matching variants (mindref.diagnosis.Diagnosis) or a hint string, or None
    """

    def __init__(self, message: str, layer: str, kind: str, quantity: str | None = None,
                 index: list | None = None, got: float | None = None, expected: float | None = None,
                 inputs: dict | None = None, diagnosis=None):
        super().__init__(message)
        self.layer, self.kind, self.quantity, self.index = layer, kind, quantity, index
        self.got, self.expected, self.inputs, self.diagnosis = got, expected, inputs, diagnosis

    def report(self) -> dict:
        """The failure as JSON-able fields (inputs as nested lists)."""
        return {"layer": self.layer, "kind": self.kind, "quantity": self.quantity, "index": self.index,
                "got": self.got, "expected": self.expected,
                "diagnosis": None if self.diagnosis is None else str(self.diagnosis),
                "inputs": {k: np.asarray(v).tolist() for k, v in (self.inputs or {}).items()},
                "message": str(self)}


class _Mismatch(Exception):
    """One failed comparison, with what the report needs."""

    def __init__(self, text: str, kind: str = "differs", quantity: str | None = None,
                 index: list | None = None, got: float | None = None, expected: float | None = None,
                 inputs: dict | None = None, hint: str | None = None):
        super().__init__(text)
        self.kind, self.quantity, self.index, self.got, self.expected = kind, quantity, index, got, expected
        self.inputs, self.hint = inputs, hint


def _hypothesis():
    try:
        import hypothesis
        from hypothesis import strategies as st
    except ImportError:
        raise ImportError("mindref.conformance needs Hypothesis: "
                          "pip install 'mindref[conformance]'") from None
    return hypothesis, st


STATEFUL = ("the same input gives different outputs from call to call: a fresh random draw per call "
            "(torch-rechub and ComiRec draw the routing logits inside forward) or state carried between "
            "calls (DeepMatch #105: logits kept from the last batch); decisions.md §3")


PROFILES = {"ci": 1, "thorough": 10}  # MINDREF_CONFORMANCE=thorough: ten times the examples, for releases


def _run(layer: str, title: str, cases, compare: Callable, max_examples: int,
         diagnose: Callable | None = None) -> int:
    """Run compare on generated cases; on a failure raise ConformanceError with the minimal one and,
    for a difference, diagnose(inputs) (the variants that reproduce the port). Returns the number
    of examples run."""
    hypothesis, _ = _hypothesis()
    profile = os.environ.get("MINDREF_CONFORMANCE", "ci")
    if profile not in PROFILES:
        raise ConformanceError(f"MINDREF_CONFORMANCE={profile!r}: one of {', '.join(PROFILES)}", layer, "kit")
    max_examples *= PROFILES[profile]
    from hypothesis.errors import FlakyFailure

    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck), print_blob=False,
                         report_multiple_bugs=False)
    @hypothesis.given(cases)
    def run(case):
        compare(case)

    try:
        run()
    except _Mismatch as m:
        found = m.hint or (STATEFUL if m.kind == "inconsistent" else None) or (
            diagnose(m.inputs) if diagnose and m.kind == "differs" else None)
        text = f"{title}: {m}" + (f"\ndiagnosis: {found}" if found else "")
        raise ConformanceError(text, layer, m.kind, m.quantity, m.index, m.got, m.expected, m.inputs,
                               found) from None
    except FlakyFailure as group:  # the same input passed once and failed once: hidden state
        inner = next((e for e in group.exceptions if isinstance(e, _Mismatch)), None)
        raise ConformanceError(f"{title}: inconsistent between calls with the same input: {inner}\n"
                               f"diagnosis: {STATEFUL}", layer, "inconsistent",
                               inputs=getattr(inner, "inputs", None), diagnosis=STATEFUL) from None
    except ConformanceError:
        raise
    except Exception as err:  # noqa: BLE001 - the kit's own failure, reported as one
        raise ConformanceError(f"{title}: the kit failed ({type(err).__name__}: {err}); please report it "
                               "to mindref", layer, "kit") from None
    return max_examples


def _show(case: dict) -> str:
    with np.printoptions(precision=6, suppress=True, threshold=200):
        return "\n".join(f"  {k} = {np.asarray(v)!r}" for k, v in case.items())


def _call(fn: Callable, case: dict, *extra):
    """The candidate's output, twice (fresh copies each time), checked to be equal."""
    outs = []
    for _ in range(2):
        args = [np.array(v, copy=True) for v in case.values()] + [np.array(x, copy=True) for x in extra]
        try:
            out = fn(*args)
        except Exception as err:  # noqa: BLE001 - reported with the input that caused it
            raise _Mismatch(f"raised {type(err).__name__}: {err}\n{_show(case)}", "raised",
                            inputs=case) from None
        outs.append(out if isinstance(out, tuple) else (out,))
    for a, b in zip(*outs):
        if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
            raise _Mismatch(f"two calls with the same input gave different outputs\n{_show(case)}",
                            "inconsistent", inputs=case)
    return outs[0]


def _mindref(what: str, fn: Callable, case: dict, *args, **kwargs):
    """mindref's own result; its refusal of an input is reported as a convention it cannot compute."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FloatingPointError) as err:
        raise _Mismatch(f"mindref cannot compute {what} for this input under the declared conventions "
                        f"({err}): declare a convention mindref supports\n{_show(case)}", "convention",
                        inputs=case) from None


UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24}
SMALLEST = {"float64": float(np.finfo(np.float64).tiny), "float32": float(np.finfo(np.float32).tiny)}
SAFETY = 16  # the constant in front of every error bound below (docs/conformance.md, "Tolerances")


class _Tol:
    """The comparison a check makes: from the port's `precision`, per-entry error bounds
    SAFETY * (u * magnitude + the smallest normal number, below which a result underflows), each
    check's magnitude from the error analysis of its function; or,
    when the caller gives rtol or atol, np.isclose with those (and for gradients, which have no
    bound here, defaults per precision)."""

    def __init__(self, rtol: float | None, atol: float | None, precision: str, layer: str):
        if precision not in UNIT_ROUNDOFF:
            raise ConformanceError(f"{layer}: precision must be one of {', '.join(UNIT_ROUNDOFF)}, got "
                                   f"{precision!r}", layer, "convention")
        self.u, self.explicit = UNIT_ROUNDOFF[precision], rtol is not None or atol is not None
        self.smallest = SMALLEST[precision]
        loose = precision == "float32"
        self.rtol = rtol if rtol is not None else (1e-4 if loose else 1e-6)
        self.atol = atol if atol is not None else (1e-5 if loose else 1e-9)

    def bound(self, magnitude) -> np.ndarray | None:
        if self.explicit:
            return None
        return SAFETY * (self.u * np.asarray(magnitude, np.float64) + self.smallest)


def _compare(what: str, got, want, case: dict, rtol: float, atol: float, hint: str | None = None,
             bound: np.ndarray | None = None) -> None:
    """got against want: within the per-entry error bound when there is one, else np.isclose."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise _Mismatch(f"{what}: shape {list(got.shape)}, mindref {list(want.shape)}\n{_show(case)}",
                        quantity=what, inputs=case, hint=hint)
    with np.errstate(invalid="ignore"):
        close = (np.abs(got - want) <= bound) if bound is not None else np.isclose(got, want, rtol, atol)
    bad = ~close & ~(np.isnan(got) & np.isnan(want)) | (np.isnan(got) != np.isnan(want))
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        where = f"at index {list(i)}" if i else "(a scalar)"
        allowed = (f"error bound {float(np.broadcast_to(bound, got.shape)[i]):.3g}" if bound is not None
                   else f"rtol {rtol}, atol {atol}")
        with np.errstate(invalid="ignore"):
            worst = np.nanmax(np.abs(got - want)) if np.isfinite(got - want).any() else np.nan
        raise _Mismatch(f"{what} differs {where}: {float(got[i]):.9g}, mindref {float(want[i]):.9g} "
                        f"(max |diff| {worst:.3g}; {allowed})\n"
                        f"{_show(case)}", quantity=what, index=list(i), got=float(got[i]),
                        expected=float(want[i]), inputs=case, hint=hint)


def _diagnoser(layer: str, port: Callable, probes: Callable, rtol: float, atol: float,
               declared: dict | None = None, settings: dict | None = None) -> Callable:
    """inputs -> the Diagnosis of port on the failing inputs and the layer's fixed probes."""
    def run(inputs: dict):
        return D.diagnose(layer, lambda case: _call(port, case)[0], [inputs, *probes()], rtol, atol, declared,
                          settings)
    return run


def _floats(st, shape: tuple, scale: float = 2.0):
    """float64 arrays with entries in [-scale, scale], zeros and repeats likely."""
    from hypothesis.extra import numpy as hnp
    return hnp.arrays(np.float64, shape, elements=st.floats(-scale, scale, allow_subnormal=False))


def _array(draw, st, shape: tuple, scale: float) -> np.ndarray:
    """float64 [shape], Gaussian times scale from a drawn seed, optionally with a row of zeros:
    cheap to draw at the ranges' largest shapes, and a failure shrinks to the smallest shape and
    the lowest seed (entry-by-entry drawing at these sizes neither fits Hypothesis' budget nor
    shrinks across sizes)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = rng.standard_normal(shape) * scale
    if a.ndim >= 2 and draw(st.booleans()):
        a[..., 0, :] = 0  # a zero vector among the others
    return a


def _prefix_mask(lengths, size: int) -> np.ndarray:
    return np.arange(size)[None, :] < np.asarray(lengths)[:, None]


def _variant(layer: str, conventions: dict | None, vjp: Callable | None, has_gradient: bool = False):
    """The declared variant of a layer, or None for mindref's own choices. Declaring a convention
    checks the port against that variant (mindref.diagnosis); a vjp then needs the variant's
    gradient, which the kit has for the squash and the dot-product losses only."""
    try:
        variant = D.declared(layer, conventions)
    except ValueError as err:
        raise ConformanceError(str(err), layer, "convention") from None
    if D.is_mindref(layer, variant):
        return None
    if vjp is not None and not has_gradient:
        raise ConformanceError(f"{layer}: the kit has no gradient for the declared conventions "
                               f"{conventions}; check the forward alone (vjp=None)", layer, "convention")
    return variant


def _declared_title(conventions: dict | None) -> str:
    return f", declared {conventions}" if conventions else ""


# --- embedding & pooling (3.2) ---------------------------------------------------------------

def check_pooling(pooling: Callable, rtol: float | None = None, atol: float | None = None,
                  max_examples: int = 100, precision: str = "float64") -> int:
    """pooling(item_table [V, d], field_table [V_f, d], item_ids [N], field_ids [N, F]) -> e [N, d]:
    the item-id embedding averaged with the mean of the item's field embeddings (a multi-valued
    field averaged first), id 0 padding everywhere: a field with no id is absent, not a zero."""
    _, st = _hypothesis()
    from .embedding import item_embedding_forward

    @st.composite
    def cases(draw):
        V, Vf, d, N, F = (draw(st.integers(2, 6)), draw(st.integers(2, 5)), draw(st.integers(1, 4)),
                          draw(st.integers(1, 5)), draw(st.integers(1, 3)))
        tables = [draw(_floats(st, (V, d))), draw(_floats(st, (Vf, d)))]
        for t in tables:
            t[0] = 0  # the padding rows
        ids = np.array([draw(st.integers(0, V - 1)) for _ in range(N)])
        fields = np.array([[draw(st.integers(0, Vf - 1)) for _ in range(F)] for _ in range(N)]).reshape(N, F)
        return {"item_table": tables[0], "field_table": tables[1], "item_ids": ids, "field_ids": fields}

    tol = _Tol(rtol, atol, precision, "pooling")

    def compare(inputs):
        ids = [inputs["item_ids"][:, None], inputs["field_ids"]]
        want, _ = item_embedding_forward([inputs["item_table"], inputs["field_table"]], ids)
        # a mean of at most F + 1 rows: error <= (F + 2) u times the mean of the |rows|
        size, _ = item_embedding_forward([np.abs(inputs["item_table"]), np.abs(inputs["field_table"])], ids)
        _compare("pooled item embedding e_i", _call(pooling, inputs)[0], want, inputs, tol.rtol, tol.atol,
                 bound=tol.bound((ids[1].shape[1] + 2) * size))

    return _run("pooling", "embedding & pooling", cases(), compare, max_examples)


# --- sampled softmax (3.5, Eqs. 10-11) ------------------------------------------------------------

def check_sampled_softmax(loss: Callable, vjp: Callable | None = None, rtol: float | None = None,
                          atol: float | None = None, max_examples: int = 100, conventions: dict | None = None,
                          temperature: float = 1.0, precision: str = "float64") -> int:
    """loss(v [B, d], e_pos [B, d], e_neg [N, d], pos_ids [B], neg_ids [N], log_q_pos [B],
    log_q_neg [N]) -> the mean over the batch of -log softmax(o)_pos, o = v . e - log Q, with a
    sampled negative equal to the row's positive removed (its logit -inf, no mass);
    vjp(..., dloss) -> (dv, de_pos, de_neg). conventions (mindref.diagnosis.SWITCHES
    ['sampled_softmax']): e.g. {"logq": "ignored", "hits": "kept", "reduce": "sum"}, or
    {"logits": "cosine"} with `temperature` (forward only)."""
    _, st = _hypothesis()
    from .sampled_softmax import sampled_softmax_backward, sampled_softmax_forward

    @st.composite
    def cases(draw):
        B, S, d, V = draw(st.integers(1, 4)), draw(st.integers(1, 16)), draw(st.integers(1, 16)), 6
        scale = draw(st.sampled_from([2.0, 30.0]))  # 30: scores past float32 exp's range
        inputs = {"v": _array(draw, st, (B, d), scale), "e_pos": _array(draw, st, (B, d), 2.0),
                  "e_neg": _array(draw, st, (S, d), 2.0),
                  "pos_ids": np.array([draw(st.integers(1, V)) for _ in range(B)]),
                  "neg_ids": np.array([draw(st.integers(1, V)) for _ in range(S)]),  # accidental hits likely
                  "log_q_pos": _array(draw, st, (B,), 3.0), "log_q_neg": _array(draw, st, (S,), 3.0)}
        return inputs, draw(st.floats(0.1, 2.0))

    cosine = str((conventions or {}).get("logits", "dot")).startswith("cosine")
    v = (_variant("sampled_softmax", conventions, vjp, has_gradient=not cosine)
         or D.declared("sampled_softmax", None))
    logq, hits = v["logq"] == "subtracted", v["hits"] == "removed"
    tol = _Tol(rtol, atol, precision, "sampled_softmax")
    rtol, atol = tol.rtol, tol.atol

    def compare(case):
        inputs, dloss = case
        if v["logits"].startswith("cosine"):
            want = D.compute("sampled_softmax", v, inputs, {"temperature": temperature})
        else:
            q = (inputs["log_q_pos"], inputs["log_q_neg"]) if logq else (None, None)
            x = [inputs[k] for k in ("v", "e_pos", "e_neg", "pos_ids", "neg_ids")]
            want, cache = _mindref("the sampled softmax", sampled_softmax_forward, inputs, *x, *q, hits)
            want = want * (len(inputs["v"]) if v["reduce"] == "sum" else 1)
        _compare("sampled softmax loss", _call(loss, inputs)[0], np.asarray(want), inputs, rtol, atol,
                 bound=tol.bound(_loss_magnitude(inputs, want, v, temperature)))
        if vjp is not None:
            got = _call(vjp, inputs, np.float64(dloss))
            upstream = dloss * (len(inputs["v"]) if v["reduce"] == "sum" else 1)
            for what, g, w in zip(("dv", "de_pos", "de_neg"), got, sampled_softmax_backward(upstream, cache)):
                _compare(f"sampled softmax gradient {what}", g, w, inputs, rtol, atol)

    return _run("sampled_softmax", f"sampled softmax{_declared_title(conventions)}", cases(), compare,
                max_examples, _diagnoser("sampled_softmax", loss, _loss_probes, rtol, atol, conventions,
                                         {"temperature": temperature}))


def _loss_magnitude(x: dict, loss, variant: dict, temperature: float) -> float:
    """Error model of the loss: each logit o = v . e - log Q is off by <= u (d |v||e| + |log Q|);
    logsumexp(o) - o_pos is off by twice the worst logit error plus u (|loss| + log(1 + S)); a sum
    over the batch multiplies it by B."""
    v, e = np.abs(x["v"]), np.abs(np.vstack([x["e_pos"], x["e_neg"]]))
    summed = variant["reduce"] == "sum"
    if variant["logits"].startswith("cosine"):
        v, e = np.full_like(v, 1 / temperature), np.ones_like(e)
    d, S, B = v.shape[1], len(x["e_neg"]), len(v)
    log_q = np.abs(np.concatenate([x["log_q_pos"], x["log_q_neg"]]))
    worst = d * float(np.max(v @ e.T)) + float(np.max(log_q))
    return (2 * worst + float(np.abs(loss)) / (B if summed else 1) + np.log1p(S)) * (B if summed else 1)


def _loss_probes() -> list[dict]:
    rng = np.random.default_rng(7)
    B, S, d = 5, 12, 6
    return [{"v": rng.standard_normal((B, d)), "e_pos": rng.standard_normal((B, d)),
             "e_neg": rng.standard_normal((S, d)), "pos_ids": rng.integers(1, 5, B),
             "neg_ids": rng.integers(1, 5, S), "log_q_pos": rng.standard_normal(B),
             "log_q_neg": rng.standard_normal(S)} for _ in range(3)]


# --- squash, Eq. (7) ------------------------------------------------------------------------------

def check_squash(squash: Callable, vjp: Callable | None = None, rtol: float | None = None,
                 atol: float | None = None, max_examples: int = 100, conventions: dict | None = None,
                 precision: str = "float64") -> int:
    """squash(z) = ||z||^2 / (1 + ||z||^2) z / ||z|| over the last axis; 0 at z = 0.
    conventions: {"eps": "1e-8"} (an epsilon inside the square root) or {"form": "misprint"}."""
    _, st = _hypothesis()

    @st.composite
    def cases(draw):
        n, d = draw(st.integers(1, 8)), draw(st.integers(1, 64))
        scale = draw(st.sampled_from([1.0, 1e-3, 30.0, 1e-6]))
        return {"z": _array(draw, st, (n, d), scale)}, draw(st.integers(0, 2**32 - 1))

    variant = _variant("squash", conventions, vjp, has_gradient=True)
    tol = _Tol(rtol, atol, precision, "squash")
    rtol, atol = tol.rtol, tol.atol

    def compare(case):
        inputs, seed = case
        z = inputs["z"]
        c, cache = squash_forward(z)
        if variant is not None:
            c = D.compute("squash", variant, inputs)
        d = z.shape[-1]
        # ||z|| from d squares, then one scaling: the error is relative to the whole vector, d u ||c||,
        # with no absolute floor, so that a tiny capsule is checked as closely as a long one
        _compare("squash output c", _call(squash, inputs)[0], c, inputs, rtol, atol,
                 bound=tol.bound(d * np.linalg.norm(c, axis=-1, keepdims=True)))
        if vjp is not None:
            dc = np.random.default_rng(seed).standard_normal(c.shape)
            want = (squash_backward(dc, cache) if variant is None
                    else _squash_variant_vjp(z, dc, variant))
            _compare("squash gradient dz", _call(vjp, inputs, dc)[0], want, inputs, rtol, atol,
                     bound=tol.bound(d * _squash_vjp_magnitude(z, dc)))

    return _run("squash", f"squash{_declared_title(conventions)}", cases(), compare, max_examples,
                _diagnoser("squash", squash, _squash_probes, rtol, atol, conventions))


def _squash_vjp_magnitude(z: np.ndarray, dc: np.ndarray) -> np.ndarray:
    """|g| |dc| + |g'(n)| (|z| . |dc|) |z| / n with g(n) = n / (1 + n^2), c = g z: the terms of
    dz = g dc + g'(n) (z . dc) z / n before they cancel (0 at z = 0, as the Jacobian)."""
    n = np.linalg.norm(z, axis=-1, keepdims=True)
    g, dg = n / (1 + n**2), np.abs(1 - n**2) / (1 + n**2) ** 2
    dot = np.sum(np.abs(z) * np.abs(dc), -1, keepdims=True)
    return g * np.abs(dc) + dg * np.divide(dot, n, out=np.zeros_like(n), where=n > 0) * np.abs(z)


def _squash_variant_vjp(z: np.ndarray, dc: np.ndarray, variant: dict) -> np.ndarray:
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
                         conventions: dict | None = None) -> int:
    """K'_u = max(1, min(K, floor(log2 |I_u|))) for every K <= max_K and |I_u| <= max_length;
    exhaustive, so the first differing (K, |I_u|) is the smallest. conventions: {"rule": ...}
    (mindref.diagnosis.SWITCHES['interest_count'], e.g. "floor-log2-1p", DeepMatch's)."""
    variant = _variant("interest_count", conventions, None)
    lengths = np.arange(1, max_length + 1)
    for K in range(1, max_K + 1):
        want = (R.interest_count(lengths, K) if variant is None else
                D.compute("interest_count", variant, {"lengths": lengths, "K": K}).astype(int))
        got = np.asarray(interest_count(lengths.copy(), K))
        if got.shape != want.shape:
            raise ConformanceError(f"interest_count: shape {list(got.shape)} for {max_length} users",
                                   "interest_count", "differs", "K'_u")
        bad = np.flatnonzero(got != want)
        if bad.size:
            n = int(lengths[bad[0]])
            probes = [{"lengths": lengths.copy(), "K": k} for k in range(1, max_K + 1)]
            port = lambda case: interest_count(case["lengths"].copy(), case["K"])  # noqa: E731
            found = D.diagnose("interest_count", port, probes, 0, 0, conventions)
            raise ConformanceError(f"interest_count: K = {K}, |I_u| = {n}: got {got[bad[0]]}, mindref "
                                   f"{want[bad[0]]} (= max(1, min(K, floor(log2 {n}))))\ndiagnosis: {found}",
                                   "interest_count", "differs", "K'_u", [int(bad[0])], float(got[bad[0]]),
                                   float(want[bad[0]]), {"lengths": np.array([n]), "K": K}, found)
    return max_K * max_length


# --- B2I routing, Eqs. (4)-(8) ------------------------------------------------------------------

GRAD_MODE_MEANING = {"stop": "stop-gradient through the first r - 1 iterations",
              "full": "autograd through every iteration"}


def check_routing(routing: Callable, vjp: Callable | None = None, softmax_axis: str = "interests",
                  grad_mode: str = "stop", dynamic_k: bool = True, rtol: float | None = None,
                  atol: float | None = None, max_examples: int = 100, conventions: dict | None = None,
                  iterations: int | None = None, precision: str = "float64") -> int:
    """routing(e, S, b0, behaviour_mask, capsule_mask, iterations) -> u, padded behaviours anywhere
    in the sequence, capsules beyond K'_u masked; vjp(..., du) -> (de, dS) in grad_mode.
    Ranges: B <= 3, L <= 64, K <= 8, d <= 64, r <= 6 iterations (only `iterations` for a port
    with a fixed r), logits b0 up to |1000| (a softmax without max-subtraction overflows).
    conventions: further routing choices (mindref.diagnosis.SWITCHES['routing'], e.g.
    {"squash": "1e-9"}), checked on the forward only."""
    _, st = _hypothesis()

    @st.composite
    def cases(draw):
        B, L, K, d = (draw(st.integers(1, 3)), draw(st.integers(1, 64)), draw(st.integers(1, 8)),
                      draw(st.integers(1, 64)))
        lengths = draw(st.lists(st.integers(1, L), min_size=B, max_size=B))
        bmask = _prefix_mask(lengths, L)
        if draw(st.booleans()):  # padding anywhere, not only at the end
            shuffle = np.random.default_rng(draw(st.integers(0, 99)))
            bmask = np.array([shuffle.permutation(row) for row in bmask])
        b_scale = draw(st.sampled_from([3.0, 0.5, 100.0, 1000.0]))
        inputs = {"e": _array(draw, st, (B, L, d), 2.0), "S": _array(draw, st, (d, d), 1.0),
                  "b0": _array(draw, st, (B, K, L), b_scale), "behaviour_mask": bmask,
                  "capsule_mask": R.capsule_mask(bmask, K, dynamic_k),
                  "iterations": np.int64(iterations or draw(st.integers(1, 6)))}
        return inputs, draw(st.integers(0, 2**32 - 1))

    tol = _Tol(rtol, atol, precision, "routing")
    rtol, atol = tol.rtol, tol.atol
    conventions = dict(conventions or {})
    softmax_axis = conventions.pop("axis", softmax_axis)  # mindref computes either axis itself
    declared = {"axis": softmax_axis, **conventions}
    variant = _variant("routing", conventions, vjp)  # the choices mindref's routing does not have
    if variant is not None:
        variant["axis"] = softmax_axis

    def forward(inputs: dict, mode: str):
        x = dict(inputs, iterations=int(inputs["iterations"]))
        return _mindref("routing", R.routing_forward, inputs, **x, softmax_axis=softmax_axis, grad_mode=mode)

    def compare(case):
        inputs, seed = case
        u, cache = forward(inputs, grad_mode)
        if variant is not None:
            u = D.compute("routing", variant, inputs)
        _compare("routing output u", _call(routing, inputs)[0], u, inputs, rtol, atol,
                 bound=tol.bound(_routing_magnitude(inputs, cache)))
        if vjp is not None:
            du = np.random.default_rng(seed).standard_normal(u.shape)
            got = _call(vjp, inputs, du)
            other = "full" if grad_mode == "stop" else "stop"
            de_o, dS_o, _ = R.routing_backward(du, forward(inputs, other)[1])
            hint = None
            if all(D.same(np.asarray(g, np.float64), w, rtol, atol) for g, w in zip(got, (de_o, dS_o))):
                hint = (f"the gradients are mindref's grad_mode='{other}' ({GRAD_MODE_MEANING[other]}): "
                        f"declare grad_mode='{other}' (decisions.md §4)")
            de, dS, _ = R.routing_backward(du, cache)
            _compare(f"routing gradient de ({grad_mode})", got[0], de, inputs, rtol, atol, hint)
            _compare(f"routing gradient dS ({grad_mode})", got[1], dS, inputs, rtol, atol, hint)

    def probes():
        return _routing_probes(dynamic_k, iterations)

    title = f"routing (softmax over {softmax_axis}, grad {grad_mode}{_declared_title(conventions)})"
    return _run("routing", title, cases(), compare, max_examples,
                _diagnoser("routing", routing, probes, rtol, atol, declared))


def _routing_magnitude(x: dict, cache) -> np.ndarray:
    """Error model of routing, per capsule [B, K, 1]: a logit is off by <= u (|b0| + r max ||e_hat||)
    after r updates, which moves a softmax weight by that much relative to itself; z_j = sum_i w_ij
    e_hat_i then moves by that times M_j = sum_i w_ij ||e_hat_i||, plus u (L + d) M_j from its own
    sums; the squash is 1-Lipschitz; r iterations compound it at most r times."""
    e_hat = x["e"] @ x["S"].T  # [B, L, d]
    r, (_, L, d) = int(x["iterations"]), e_hat.shape
    norms = np.linalg.norm(e_hat, axis=-1)  # [B, L]
    M = np.einsum("bkl,bl->bk", cache.route.w[-1], norms)[..., None]  # [B, K, 1]
    logit = float(np.max(np.abs(x["b0"]), initial=0)) + r * float(norms.max(initial=0))
    return r * (L + d + logit) * M


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


# --- label-aware attention (3.4) -----------------------------------------------------------------

def check_attention(attention: Callable, vjp: Callable | None = None, mode: str = "pow", p: float = 2.0,
                    rtol: float | None = None, atol: float | None = None, max_examples: int = 100,
                    conventions: dict | None = None, precision: str = "float64") -> int:
    """attention(V, e, capsule_mask) -> v = V softmax(pow(V^T e, p)) over the valid capsules,
    negative scores included (pow with an integer p is s**p, sign and all). A non-integer p with a
    negative score has no real pow: mindref refuses it, reported as a convention to change, e.g.
    conventions={"pow": "abs"} (|s|^p) or {"pow": "sign"} (forward only; mode 'pow')."""
    _, st = _hypothesis()

    @st.composite
    def cases(draw):
        B, K, d = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 64))
        lengths = draw(st.lists(st.integers(1, K), min_size=B, max_size=B))
        scale = draw(st.sampled_from([1.5, 0.3, 6.0]))
        inputs = {"V": _array(draw, st, (B, K, d), scale), "e": _array(draw, st, (B, d), scale),
                  "capsule_mask": _prefix_mask(lengths, K)}
        return inputs, draw(st.integers(0, 2**32 - 1))

    variant = _variant("attention", conventions, vjp)
    tol = _Tol(rtol, atol, precision, "attention")
    rtol, atol = tol.rtol, tol.atol

    def compare(case):
        inputs, seed = case
        bound = tol.bound(_attention_magnitude(inputs, p, mode))
        if variant is not None:
            want = D.compute("attention", variant, inputs, {"p": p})
            _compare(f"attention output v (declared {conventions}, p = {p})", _call(attention, inputs)[0],
                     want, inputs, rtol, atol, bound=bound)
            return
        v, cache = _mindref(f"attention (mode {mode}, p = {p})", A.attention_forward, inputs, inputs["V"],
                            inputs["e"], inputs["capsule_mask"], p, mode)
        _compare(f"attention output v ({mode}, p = {p})", _call(attention, inputs)[0], v, inputs, rtol, atol,
                 bound=bound)
        if vjp is not None:
            dv = np.random.default_rng(seed).standard_normal(v.shape)
            dV, de = A.attention_backward(dv, cache)
            got = _call(vjp, inputs, dv)
            _compare("attention gradient dV", got[0], dV, inputs, rtol, atol)
            _compare("attention gradient de", got[1], de, inputs, rtol, atol)

    diagnose = _diagnoser("attention", attention, _attention_probes, rtol, atol, conventions, {"p": p})
    return _run("attention", f"attention ({mode}, p = {p})", cases(), compare, max_examples,
                diagnose if mode == "pow" else None)


def _attention_magnitude(x: dict, p: float, mode: str) -> np.ndarray:
    """Error model of attention, per entry of v [B, d]: a score s_k = V_k . e is off by <= d u
    |V_k| . |e|, its logit (s^p, or p s) by the derivative times that plus u |logit|; a softmax
    weight moves relative to itself by twice the worst logit error; v = sum_k a_k V_k then by that
    times sum_k |V_k| (bounding a_k <= 1), plus its own d u."""
    V, e, mask = x["V"], x["e"], x["capsule_mask"]
    d = V.shape[-1]
    s = np.einsum("bkd,bd->bk", V, e)
    ds = d * np.einsum("bkd,bd->bk", np.abs(V), np.abs(e))
    slope = p * np.abs(s) ** max(p - 1, 0) if mode == "pow" else np.full_like(s, abs(p))
    logit = np.abs(s) ** p if mode == "pow" else np.abs(p * s)
    worst = np.max(np.where(mask, slope * ds + logit, 0), axis=1, keepdims=True)  # [B, 1]
    return (d + 2 * worst) * np.einsum("bk,bkd->bd", mask.astype(float), np.abs(V))


def _attention_probes() -> list[dict]:
    rng = np.random.default_rng(7)
    mask = _prefix_mask([4, 2, 1], 4)
    return [{"V": rng.standard_normal((3, 4, 5)), "e": rng.standard_normal((3, 5)), "capsule_mask": mask}
            for _ in range(3)]


# --- the whole serving user tower (3.5) -----------------------------------------------------------

def check_user_tower(make_tower: Callable, cfg: M.MINDConfig | None = None, rtol: float = 1e-5,
                     atol: float = 1e-6, max_examples: int = 50, normalized: bool = False) -> int:
    """make_tower(params, cfg, item_fields) -> tower(hist, profile) -> (V [B, K, d], mask [B, K])
    for mindref's parameters (a dict of float64 NumPy arrays, model.init_params; the stored
    routing-logit draw is params['serving_logits'] [K, max_len]) and item side fields ([V, F_f]).
    Compared with model.user_vectors on histories of every length 1..L with padding, item side
    fields and profiles; the same input must give the same output every time (no fresh random draw
    at inference: DeepMatch #105). normalized: the port L2-normalises each interest (torch-rechub)."""
    _, st = _hypothesis()
    cfg = cfg or M.MINDConfig(num_items=40, field_sizes=(5,), profile_sizes=(3, 4), dim=6, K=4, hidden=(8,),
                              max_len=16)  # 16 behaviours reach K'_u = 4
    rng = np.random.default_rng(cfg.seed)
    item_fields = tuple(np.where(np.arange(cfg.num_items)[:, None] == 0, 0,
                                 rng.integers(1, n, (cfg.num_items, 1))) for n in cfg.field_sizes)
    params = M.init_params(cfg, np.float64)
    tower = make_tower({k: v.copy() for k, v in params.items()}, cfg, item_fields)

    @st.composite
    def cases(draw):
        B, L = draw(st.integers(1, 4)), draw(st.integers(1, cfg.max_len))
        lengths = draw(st.lists(st.integers(1, L), min_size=B, max_size=B))
        hist = np.array([[draw(st.integers(1, cfg.num_items - 1)) if i < n else 0 for i in range(L)]
                         for n in lengths], dtype=np.int64)
        profile = np.array([[draw(st.integers(0, s - 1)) for s in cfg.profile_sizes] for _ in range(B)],
                           dtype=np.int64).reshape(B, len(cfg.profile_sizes))
        return {"hist": hist, "profile": profile}

    def compare(inputs):
        V, mask = M.user_vectors(params, cfg, item_fields, inputs["hist"], inputs["profile"])
        got = _call(tower, inputs)
        if not np.array_equal(np.asarray(got[1], bool), mask):
            raise _Mismatch(f"interest mask (K'_u, Eq. 9): {np.asarray(got[1]).astype(int).tolist()}, "
                            f"mindref {mask.astype(int).tolist()}\n{_show(inputs)}", quantity="interest mask",
                            inputs=inputs, hint="the interest mask differs: run check_interest_count on the "
                                                "port's K'_u rule, which names it")
        if normalized:
            norm = np.linalg.norm(V, axis=-1, keepdims=True)
            V = np.divide(V, norm, out=np.zeros_like(V), where=norm > 0)
        hint = None
        if not normalized:
            n = np.linalg.norm(np.asarray(got[0], np.float64), axis=-1)[mask]
            hint = "every valid interest has norm 1: declare normalized=True" if np.allclose(n, 1) else None
        if hint is None and D.same(np.asarray(got[0], np.float64), D.tower_without_relu(
                params, cfg, item_fields, inputs["hist"], inputs["profile"]), rtol, atol):
            hint = ("matches mindref with the hidden layers' ReLU left out (Figure 2: 'several ReLU "
                    "layers'; decisions.md, the composed model)")
        _compare("user vectors V_u", got[0], V, inputs, rtol, atol, hint)

    return _run("tower", "user tower" + (" (L2-normalised)" if normalized else ""), cases(), compare,
                max_examples)


# --- a port's adapter, every layer in one run (`mindref conform`) ---------------------------------

# layer -> (check, the adapter's method for the forward, its method for the vjp or None)
LAYERS = {"pooling": (check_pooling, "pooling", None), "squash": (check_squash, "squash", "squash_vjp"),
          "interest_count": (check_interest_count, "interest_count", None),
          "routing": (check_routing, "routing", "routing_vjp"),
          "attention": (check_attention, "attention", "attention_vjp"),
          "sampled_softmax": (check_sampled_softmax, "sampled_softmax", "sampled_softmax_vjp"),
          "tower": (check_user_tower, "make_tower", None)}


def layers(adapter) -> list[str]:
    """The layers an adapter has: a method named as in LAYERS (e.g. `routing`, `make_tower`)."""
    return [layer for layer, (_, forward, _) in LAYERS.items() if callable(getattr(adapter, forward, None))]


def check_layer(adapter, layer: str, max_examples: int | None = None) -> int:
    """Run one layer's check on an adapter, with the conventions it declares
    (`conventions = {"routing": {"softmax_axis": "behaviours"}, ...}`: check_* keyword arguments)."""
    check, forward, vjp = LAYERS[layer]
    kwargs = dict(getattr(adapter, "conventions", {}).get(layer, {}))
    if max_examples is not None and layer != "interest_count":
        kwargs["max_examples"] = max_examples
    args = [getattr(adapter, forward)]
    if vjp is not None and callable(getattr(adapter, vjp, None)):
        args.append(getattr(adapter, vjp))
    try:
        return check(*args, **kwargs)
    except TypeError as err:  # a convention the check does not take
        raise ConformanceError(f"{layer}: the adapter's conventions {kwargs} do not fit "
                               f"{check.__name__} ({err})", layer, "convention") from None


def run_adapter(adapter, only: list[str] | None = None, max_examples: int | None = None) -> list[dict]:
    """Every layer in turn: rows of layer, result ('pass', 'FAIL', 'skipped'), detail (examples
    run, the diagnosis or first line of the failure, or why it was skipped) and report (a
    failure's ConformanceError.report())."""
    have, rows = layers(adapter), []
    for layer, (_, forward, _) in LAYERS.items():
        if only and layer not in only:
            continue
        if layer not in have:
            rows.append({"layer": layer, "result": "skipped", "detail": f"the adapter has no `{forward}`"})
            continue
        try:
            rows.append({"layer": layer, "result": "pass",
                         "detail": f"{check_layer(adapter, layer, max_examples):,} examples"})
        except ConformanceError as err:
            detail = str(err.diagnosis) if err.diagnosis else str(err).splitlines()[0]
            rows.append({"layer": layer, "result": "FAIL", "detail": detail, "report": err.report()})
    return rows
