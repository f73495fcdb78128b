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

Needs Hypothesis (pip install 'mindref[test]'); mindref's model code does not.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import attention as A
from . import model as M
from . import routing as R
from .squash import squash_backward, squash_forward


class ConformanceError(AssertionError):
    """The other implementation differs from mindref; the message has the minimal example."""


class _Mismatch(Exception):
    pass


def _hypothesis():
    try:
        import hypothesis
        from hypothesis import strategies as st
    except ImportError:
        raise ImportError("mindref.conformance needs Hypothesis: pip install 'mindref[test]'") from None
    return hypothesis, st


def _run(name: str, cases, compare: Callable, max_examples: int) -> int:
    """Run compare on generated cases; on a failure raise ConformanceError with the minimal one."""
    hypothesis, _ = _hypothesis()
    from hypothesis.errors import FlakyFailure

    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck), print_blob=False)
    @hypothesis.given(cases)
    def run(case):
        compare(case)

    try:
        run()
    except _Mismatch as m:
        raise ConformanceError(f"{name}: {m}") from None
    except FlakyFailure as group:  # the same input passed once and failed once: hidden state
        inner = next((e for e in group.exceptions if isinstance(e, _Mismatch)), group)
        raise ConformanceError(f"{name}: inconsistent between calls with the same input (state kept "
                               f"between calls, or a random draw?): {inner}") from None
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
            raise _Mismatch(f"raised {type(err).__name__}: {err}\n{_show(case)}") from None
        outs.append(out if isinstance(out, tuple) else (out,))
    for a, b in zip(*outs):
        if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
            raise _Mismatch(f"two calls with the same input gave different outputs\n{_show(case)}")
    return outs[0]


def _compare(what: str, got, want, case: dict, rtol: float, atol: float) -> None:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        raise _Mismatch(f"{what}: shape {list(got.shape)}, mindref {list(want.shape)}\n{_show(case)}")
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol) | (np.isnan(got) != np.isnan(want))
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        raise _Mismatch(f"{what} differs at index {list(i)}: {float(got[i]):.9g}, "
                        f"mindref {float(want[i]):.9g} "
                        f"(max |diff| {np.nanmax(np.abs(got - want)):.3g}; rtol {rtol}, atol {atol})\n"
                        f"{_show(case)}")


def _floats(st, shape: tuple, scale: float = 2.0):
    """float64 arrays with entries in [-scale, scale], zeros and repeats likely."""
    from hypothesis.extra import numpy as hnp
    return hnp.arrays(np.float64, shape, elements=st.floats(-scale, scale, allow_subnormal=False))


def _prefix_mask(lengths, size: int) -> np.ndarray:
    return np.arange(size)[None, :] < np.asarray(lengths)[:, None]


# --- embedding & pooling (3.2) ---------------------------------------------------------------

def check_pooling(pooling: Callable, rtol: float = 1e-6, atol: float = 1e-9, max_examples: int = 100) -> int:
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

    def compare(inputs):
        want, _ = item_embedding_forward([inputs["item_table"], inputs["field_table"]],
                                         [inputs["item_ids"][:, None], inputs["field_ids"]])
        _compare("pooled item embedding e_i", _call(pooling, inputs)[0], want, inputs, rtol, atol)

    return _run("embedding & pooling", cases(), compare, max_examples)


# --- sampled softmax (3.5, Eqs. 10-11) ------------------------------------------------------------

def check_sampled_softmax(loss: Callable, vjp: Callable | None = None, rtol: float = 1e-6,
                          atol: float = 1e-9, max_examples: int = 100) -> int:
    """loss(v [B, d], e_pos [B, d], e_neg [S, d], pos_ids [B], neg_ids [S], log_q_pos [B],
    log_q_neg [S]) -> the mean over the batch of -log softmax(o)_pos, o = v . e - log Q, with a
    sampled negative equal to the row's positive removed (its logit -inf, no mass);
    vjp(..., dloss) -> (dv, de_pos, de_neg)."""
    _, st = _hypothesis()
    from .sampled_softmax import sampled_softmax_backward, sampled_softmax_forward

    @st.composite
    def cases(draw):
        B, S, d, V = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4)), 6
        inputs = {"v": draw(_floats(st, (B, d))), "e_pos": draw(_floats(st, (B, d))),
                  "e_neg": draw(_floats(st, (S, d))),
                  "pos_ids": np.array([draw(st.integers(1, V)) for _ in range(B)]),
                  "neg_ids": np.array([draw(st.integers(1, V)) for _ in range(S)]),  # accidental hits likely
                  "log_q_pos": draw(_floats(st, (B,), 3.0)), "log_q_neg": draw(_floats(st, (S,), 3.0))}
        return inputs, draw(st.floats(0.1, 2.0))

    def compare(case):
        inputs, dloss = case
        want, cache = sampled_softmax_forward(*inputs.values())
        _compare("sampled softmax loss", _call(loss, inputs)[0], np.asarray(want), inputs, rtol, atol)
        if vjp is not None:
            got = _call(vjp, inputs, np.float64(dloss))
            for what, g, w in zip(("dv", "de_pos", "de_neg"), got, sampled_softmax_backward(dloss, cache)):
                _compare(f"sampled softmax gradient {what}", g, w, inputs, rtol, atol)

    return _run("sampled softmax", cases(), compare, max_examples)


# --- squash, Eq. (7) ------------------------------------------------------------------------------

def check_squash(squash: Callable, vjp: Callable | None = None, rtol: float = 1e-6, atol: float = 1e-9,
                 max_examples: int = 100) -> int:
    """squash(z) = ||z||^2 / (1 + ||z||^2) z / ||z|| over the last axis; 0 at z = 0."""
    _, st = _hypothesis()

    @st.composite
    def cases(draw):
        n, d = draw(st.integers(1, 4)), draw(st.integers(1, 5))
        scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
        return {"z": draw(_floats(st, (n, d), scale))}, draw(st.integers(0, 2**32 - 1))

    def compare(case):
        inputs, seed = case
        c, cache = squash_forward(inputs["z"])
        _compare("squash output c", _call(squash, inputs)[0], c, inputs, rtol, atol)
        if vjp is not None:
            dc = np.random.default_rng(seed).standard_normal(c.shape)
            _compare("squash gradient dz", _call(vjp, inputs, dc)[0], squash_backward(dc, cache), inputs,
                     rtol, atol)

    return _run("squash", cases(), compare, max_examples)


# --- K'_u, Eq. (9) -----------------------------------------------------------------------------

def check_interest_count(interest_count: Callable, max_K: int = 8, max_length: int = 4096) -> int:
    """K'_u = max(1, min(K, floor(log2 |I_u|))) for every K <= max_K and |I_u| <= max_length;
    exhaustive, so the first differing (K, |I_u|) is the smallest."""
    lengths = np.arange(1, max_length + 1)
    for K in range(1, max_K + 1):
        want = R.interest_count(lengths, K)
        got = np.asarray(interest_count(lengths.copy(), K))
        if got.shape != want.shape:
            raise ConformanceError(f"interest_count: shape {list(got.shape)} for {max_length} users")
        bad = np.flatnonzero(got != want)
        if bad.size:
            n = int(lengths[bad[0]])
            raise ConformanceError(f"interest_count: K = {K}, |I_u| = {n}: got {got[bad[0]]}, mindref "
                                   f"{want[bad[0]]} (= max(1, min(K, floor(log2 {n}))))")
    return max_K * max_length


# --- B2I routing, Eqs. (4)-(8) ------------------------------------------------------------------

def check_routing(routing: Callable, vjp: Callable | None = None, softmax_axis: str = "interests",
                  grad_mode: str = "stop", dynamic_k: bool = True, rtol: float = 1e-6, atol: float = 1e-9,
                  max_examples: int = 100) -> int:
    """routing(e, S, b0, behaviour_mask, capsule_mask, iterations) -> u, padded behaviours anywhere
    in the sequence, capsules beyond K'_u masked; vjp(..., du) -> (de, dS) in grad_mode."""
    _, st = _hypothesis()

    @st.composite
    def cases(draw):
        B, L, K, d = (draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 4)),
                      draw(st.integers(1, 4)))
        lengths = draw(st.lists(st.integers(1, L), min_size=B, max_size=B))
        bmask = _prefix_mask(lengths, L)
        if draw(st.booleans()):  # padding anywhere, not only at the end
            shuffle = np.random.default_rng(draw(st.integers(0, 99)))
            bmask = np.array([shuffle.permutation(row) for row in bmask])
        inputs = {"e": draw(_floats(st, (B, L, d))), "S": draw(_floats(st, (d, d), 1.0)),
                  "b0": draw(_floats(st, (B, K, L), 3.0)), "behaviour_mask": bmask,
                  "capsule_mask": R.capsule_mask(bmask, K, dynamic_k),
                  "iterations": np.int64(draw(st.integers(1, 3)))}
        return inputs, draw(st.integers(0, 2**32 - 1))

    def compare(case):
        inputs, seed = case
        x = dict(inputs, iterations=int(inputs["iterations"]))
        u, cache = R.routing_forward(**x, softmax_axis=softmax_axis, grad_mode=grad_mode)
        _compare("routing output u", _call(routing, inputs)[0], u, inputs, rtol, atol)
        if vjp is not None:
            du = np.random.default_rng(seed).standard_normal(u.shape)
            de, dS, _ = R.routing_backward(du, cache)
            got = _call(vjp, inputs, du)
            _compare(f"routing gradient de ({grad_mode})", got[0], de, inputs, rtol, atol)
            _compare(f"routing gradient dS ({grad_mode})", got[1], dS, inputs, rtol, atol)

    return _run(f"routing (softmax over {softmax_axis}, grad {grad_mode})", cases(), compare, max_examples)


# --- label-aware attention (3.4) -----------------------------------------------------------------

def check_attention(attention: Callable, vjp: Callable | None = None, mode: str = "pow", p: float = 2.0,
                    rtol: float = 1e-6, atol: float = 1e-9, max_examples: int = 100) -> int:
    """attention(V, e, capsule_mask) -> v = V softmax(pow(V^T e, p)) over the valid capsules,
    negative scores included (pow with an integer p is s**p, sign and all)."""
    _, st = _hypothesis()

    @st.composite
    def cases(draw):
        B, K, d = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
        lengths = draw(st.lists(st.integers(1, K), min_size=B, max_size=B))
        inputs = {"V": draw(_floats(st, (B, K, d), 1.5)), "e": draw(_floats(st, (B, d), 1.5)),
                  "capsule_mask": _prefix_mask(lengths, K)}
        return inputs, draw(st.integers(0, 2**32 - 1))

    def compare(case):
        inputs, seed = case
        v, cache = A.attention_forward(inputs["V"], inputs["e"], inputs["capsule_mask"], p, mode)
        _compare(f"attention output v ({mode}, p = {p})", _call(attention, inputs)[0], v, inputs, rtol, atol)
        if vjp is not None:
            dv = np.random.default_rng(seed).standard_normal(v.shape)
            dV, de = A.attention_backward(dv, cache)
            got = _call(vjp, inputs, dv)
            _compare("attention gradient dV", got[0], dV, inputs, rtol, atol)
            _compare("attention gradient de", got[1], de, inputs, rtol, atol)

    return _run(f"attention ({mode}, p = {p})", cases(), compare, max_examples)


# --- the whole serving user tower (3.5) -----------------------------------------------------------

def check_user_tower(make_tower: Callable, cfg: M.MINDConfig | None = None, rtol: float = 1e-5,
                     atol: float = 1e-6, max_examples: int = 50) -> int:
    """make_tower(params, cfg, item_fields) -> tower(hist, profile) -> (V [B, K, d], mask [B, K])
    for mindref's parameters (a dict of float64 NumPy arrays, model.init_params; the stored
    routing-logit draw is params['serving_logits'] [K, max_len]) and item side fields ([V, F_f]).
    Compared with model.user_vectors on histories of every length 1..L with padding, item side
    fields and profiles; the same input must give the same output every time (no fresh random draw
    at inference: DeepMatch #105)."""
    _, st = _hypothesis()
    cfg = cfg or M.MINDConfig(num_items=30, field_sizes=(5,), profile_sizes=(3, 4), dim=6, K=4, hidden=(8,),
                              max_len=10)
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
                            f"mindref {mask.astype(int).tolist()}\n{_show(inputs)}")
        _compare("user vectors V_u", got[0], V, inputs, rtol, atol)

    return _run("user tower", cases(), compare, max_examples)
