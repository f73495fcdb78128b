"""The checks of the layers around the capsules: embedding & pooling (3.2), label-aware attention
(3.4), the sampled softmax (3.5, Eqs. 10-11) and the whole serving user tower.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import attention as A
from .. import model as M
from . import bounds, localise, runner, tower_probes
from . import catalogue as D
from .checks_capsules import explained
from .conventions import resolve
from .errors import ConformanceError, Mismatch
from .strategies import array, floats, prefix_mask

# --- embedding & pooling (3.2) ---------------------------------------------------------------

def check_pooling(pooling: Callable, rtol: float | None = None, atol: float | None = None,
                  max_examples: int = 100, precision: str = "float64",
                  conventions: dict | None = None) -> int:
    """pooling(item_table [V, d], field_table [V_f, d], item_ids [N], field_ids [N, F]) -> e [N, d]:
    the item-id embedding averaged with the mean of the item's field embeddings (a multi-valued
    field averaged first), id 0 padding everywhere: a field with no id is absent, not a zero."""
    _, st = runner.hypothesis()
    resolve("pooling", conventions)
    from ..embedding import item_embedding_forward

    @st.composite
    def cases(draw):
        V, Vf, d, N, F = (draw(st.integers(2, 6)), draw(st.integers(2, 5)), draw(st.integers(1, 4)),
                          draw(st.integers(1, 5)), draw(st.integers(1, 3)))
        tables = [draw(floats(st, (V, d))), draw(floats(st, (Vf, d)))]
        for t in tables:
            t[0] = 0  # the padding rows
        ids = np.array([draw(st.integers(0, V - 1)) for _ in range(N)])
        fields = np.array([[draw(st.integers(0, Vf - 1)) for _ in range(F)] for _ in range(N)]).reshape(N, F)
        return {"item_table": tables[0], "field_table": tables[1], "item_ids": ids, "field_ids": fields}

    tol = bounds.Tol(rtol, atol, precision, "pooling")

    def compare(inputs):
        want, _ = item_embedding_forward([inputs["item_table"], inputs["field_table"]],
                                         [inputs["item_ids"][:, None], inputs["field_ids"]])
        runner.compare("pooled item embedding e_i", runner.call(pooling, inputs)[0], want, inputs, tol,
                       bound=tol.bound(bounds.pooling(inputs)))

    def explain(m: Mismatch):
        return localise.pooling(lambda x: runner.call(pooling, x)[0], tol), None

    return runner.run("pooling", "embedding & pooling", cases(), compare, max_examples, explain)


# --- sampled softmax (3.5, Eqs. 10-11) ------------------------------------------------------------

def check_sampled_softmax(loss: Callable, vjp: Callable | None = None, rtol: float | None = None,
                          atol: float | None = None, max_examples: int = 100, conventions: dict | None = None,
                          temperature: float | None = None, precision: str = "float64") -> int:
    """loss(v [B, d], e_pos [B, d], e_neg [N, d], pos_ids [B], neg_ids [N], log_q_pos [B],
    log_q_neg [N]) -> the mean over the batch of -log softmax(o)_pos, o = v . e - log Q, with a
    sampled negative equal to the row's positive removed (its logit -inf, no mass);
    vjp(..., dloss) -> (dv, de_pos, de_neg). conventions: logits, logq, hits, reduce,
    temperature, e.g. {"logq": "ignored", "hits": "kept", "reduce": "sum"}, or {"logits":
    "cosine", "temperature": 0.2} (forward only)."""
    _, st = runner.hypothesis()
    from ..sampled_softmax import sampled_softmax_backward, sampled_softmax_forward
    switches, settings = resolve("sampled_softmax", conventions, temperature=temperature)
    temperature = settings["temperature"]
    v = D.declared("sampled_softmax", switches)
    cosine = v["logits"].startswith("cosine")
    if vjp is not None and cosine:
        raise ConformanceError("sampled_softmax: the kit has no gradient for the declared conventions "
                               f"{switches}; "
                               "check the forward alone (vjp=None)", "sampled_softmax", "convention")

    @st.composite
    def cases(draw):
        B, S, d, V = draw(st.integers(1, 4)), draw(st.integers(1, 16)), draw(st.integers(1, 16)), 6
        scale = draw(st.sampled_from([2.0, 30.0]))  # 30: scores past float32 exp's range
        inputs = {"v": array(draw, st, (B, d), scale), "e_pos": array(draw, st, (B, d), 2.0),
                  "e_neg": array(draw, st, (S, d), 2.0),
                  "pos_ids": np.array([draw(st.integers(1, V)) for _ in range(B)]),
                  "neg_ids": np.array([draw(st.integers(1, V)) for _ in range(S)]),  # accidental hits likely
                  "log_q_pos": array(draw, st, (B,), 3.0), "log_q_neg": array(draw, st, (S,), 3.0)}
        return inputs, draw(st.floats(0.1, 2.0))

    logq, hits = v["logq"] == "subtracted", v["hits"] == "removed"
    tol = bounds.Tol(rtol, atol, precision, "sampled_softmax")

    def compare(case):
        inputs, dloss = case
        if cosine:
            want = D.compute("sampled_softmax", v, inputs, {"temperature": temperature})
        else:
            q = (inputs["log_q_pos"], inputs["log_q_neg"]) if logq else (None, None)
            x = [inputs[k] for k in ("v", "e_pos", "e_neg", "pos_ids", "neg_ids")]
            want, cache = runner.mindref_result("the sampled softmax", sampled_softmax_forward, inputs, *x,
                                                *q, hits)
            want = want * (len(inputs["v"]) if v["reduce"] == "sum" else 1)
        runner.compare("sampled softmax loss", runner.call(loss, inputs)[0], np.asarray(want), inputs, tol,
                       bound=tol.bound(bounds.loss(inputs, want, v, temperature)))
        if vjp is not None:
            got = runner.call(vjp, inputs, np.float64(dloss), outputs=3)
            upstream = dloss * (len(inputs["v"]) if v["reduce"] == "sum" else 1)
            for what, g, w in zip(("dv", "de_pos", "de_neg"), got, sampled_softmax_backward(upstream, cache)):
                runner.compare(f"sampled softmax gradient {what}", g, w, inputs, tol)

    def bound_of(x):
        return tol.bound(bounds.loss(x, D.compute("sampled_softmax", v, x, {"temperature": temperature}), v,
                                     temperature))

    port = lambda x: runner.call(loss, x)[0]  # noqa: E731
    explain = explained("sampled_softmax", loss, _loss_probes, tol, bound_of, v, {"temperature": temperature},
                        localiser=lambda x: localise.sampled_softmax(port, v, tol, temperature))
    title = "sampled softmax" + (f", declared {switches}" if switches else "")
    return runner.run("sampled_softmax", title, cases(), compare, max_examples, explain)


def _loss_probes() -> list[dict]:
    rng = np.random.default_rng(7)
    B, S, d = 5, 12, 6
    return [{"v": rng.standard_normal((B, d)), "e_pos": rng.standard_normal((B, d)),
             "e_neg": rng.standard_normal((S, d)), "pos_ids": rng.integers(1, 5, B),
             "neg_ids": rng.integers(1, 5, S), "log_q_pos": rng.standard_normal(B),
             "log_q_neg": rng.standard_normal(S)} for _ in range(3)]


# --- label-aware attention (3.4) -----------------------------------------------------------------

def check_attention(attention: Callable, vjp: Callable | None = None, mode: str | None = None,
                    p: float | None = None, rtol: float | None = None, atol: float | None = None,
                    max_examples: int = 100, conventions: dict | None = None,
                    precision: str = "float64") -> int:
    """attention(V, e, capsule_mask) -> v = V softmax(pow(V^T e, p)) over the valid capsules,
    negative scores included (pow with an integer p is s**p, sign and all). A non-integer p with a
    negative score has no real pow: mindref refuses it, reported as a convention to change, e.g.
    conventions={"pow": "abs"} (|s|^p) or {"pow": "sign"} (forward only; mode 'pow').
    conventions: pow, mask, readout, mode, p (mode and p also as keyword arguments)."""
    _, st = runner.hypothesis()
    switches, settings = resolve("attention", conventions, mode=mode, p=p)
    mode, p = settings["mode"], settings["p"]
    variant = D.declared("attention", switches)
    if vjp is not None and not D.is_mindref("attention", variant):
        raise ConformanceError(f"attention: the kit has no gradient for the declared conventions {switches}; "
                               "check the forward alone (vjp=None)", "attention", "convention")

    @st.composite
    def cases(draw):
        B, K, d = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 64))
        lengths = draw(st.lists(st.integers(1, K), min_size=B, max_size=B))
        scale = draw(st.sampled_from([1.5, 0.3, 6.0]))
        inputs = {"V": array(draw, st, (B, K, d), scale), "e": array(draw, st, (B, d), scale),
                  "capsule_mask": prefix_mask(lengths, K)}
        return inputs, draw(st.integers(0, 2**32 - 1))

    tol = bounds.Tol(rtol, atol, precision, "attention")

    def reference(inputs):
        if not D.is_mindref("attention", variant):
            return D.compute("attention", variant, inputs, {"p": p}), None
        return runner.mindref_result(f"attention (mode {mode}, p = {p})", A.attention_forward, inputs,
                                     inputs["V"],
                                     inputs["e"], inputs["capsule_mask"], p, mode)

    def compare(case):
        inputs, seed = case
        want, cache = reference(inputs)
        runner.compare(f"attention output v ({mode}, p = {p})", runner.call(attention, inputs)[0], want,
                       inputs, tol,
                       bound=tol.bound(bounds.attention(inputs, p, mode)))
        if vjp is not None:
            dv = np.random.default_rng(seed).standard_normal(want.shape)
            dV, de = A.attention_backward(dv, cache)
            got = runner.call(vjp, inputs, dv, outputs=2)
            runner.compare("attention gradient dV", got[0], dV, inputs, tol)
            runner.compare("attention gradient de", got[1], de, inputs, tol)

    port = lambda x: runner.call(attention, x)[0]  # noqa: E731
    want_of = lambda x: reference(x)[0]  # noqa: E731
    explain = explained("attention" if mode == "pow" else "attention-" + mode, attention, _attention_probes,
                        tol,
                        lambda x: tol.bound(bounds.attention(x, p, mode)), variant, {"p": p},
                        localiser=lambda x: localise.attention(port, want_of, tol, p, mode))
    title = f"attention ({mode}, p = {p}" + (f", declared {switches}" if switches else "") + ")"
    return runner.run("attention", title, cases(), compare, max_examples, explain)


def _attention_probes() -> list[dict]:
    rng = np.random.default_rng(7)
    mask = prefix_mask([4, 2, 1], 4)
    return [{"V": rng.standard_normal((3, 4, 5)), "e": rng.standard_normal((3, 5)), "capsule_mask": mask}
            for _ in range(3)]


# --- the whole serving user tower (3.5) -----------------------------------------------------------

def check_user_tower(make_tower: Callable, cfg: M.MINDConfig | None = None, rtol: float = 1e-5,
                     atol: float = 1e-6, max_examples: int = 50, normalized: bool | None = None,
                     conventions: dict | None = None) -> int:
    """make_tower(params, cfg, item_fields) -> tower(hist, profile) -> (V [B, K, d], mask [B, K])
    for mindref's parameters (a dict of float64 NumPy arrays, model.init_params; the stored
    routing-logit draw is params['serving_logits'] [K, max_len]) and item side fields ([V, F_f]).
    Compared with model.user_vectors on histories of every length 1..L with padding, item side
    fields and profiles; the same input must give the same output every time (no fresh random draw
    at inference: DeepMatch #105). conventions: {"normalized": True} (each interest L2-normalised,
    torch-rechub; also the keyword `normalized`)."""
    _, st = runner.hypothesis()
    _, settings = resolve("tower", conventions, normalized=normalized)
    normalized = settings["normalized"]
    cfg = cfg or M.MINDConfig(num_items=40, field_sizes=(5,), profile_sizes=(3, 4), dim=6, K=4, hidden=(8,),
                              max_len=16)  # 16 behaviours reach K'_u = 4
    rng = np.random.default_rng(cfg.seed)
    item_fields = tuple(np.where(np.arange(cfg.num_items)[:, None] == 0, 0,
                                 rng.integers(1, n, (cfg.num_items, 1))) for n in cfg.field_sizes)
    params = M.init_params(cfg, np.float64)
    try:
        tower = make_tower({k: v.copy() for k, v in params.items()}, cfg, item_fields)
    except Exception as err:  # noqa: BLE001
        raise ConformanceError(f"user tower: make_tower raised {type(err).__name__}: {err}", "tower",
                               "raised") from None
    tol = bounds.Tol(rtol, atol, "float64", "tower")

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
        got = runner.call(tower, inputs, outputs=2)
        if got[1].shape != mask.shape or not np.array_equal(got[1].astype(bool), mask):
            raise Mismatch(f"interest mask (K'_u, Eq. 9): {got[1].astype(int).tolist()}, mindref "
                           f"{mask.astype(int).tolist()}\n{runner.show(inputs)}", quantity="interest mask",
                           inputs=inputs)
        if normalized:
            norm = np.linalg.norm(V, axis=-1, keepdims=True)
            V = np.divide(V, norm, out=np.zeros_like(V), where=norm > 0)
        hint = None
        if not normalized and got[0].shape == V.shape:
            n = np.linalg.norm(got[0], axis=-1)[mask]
            hint = "every valid interest has norm 1: declare normalized=True" if np.allclose(n, 1) else None
        runner.compare("user vectors V_u", got[0], V, inputs, tol, hint)

    def explain(m: Mismatch):
        return tower_probes.localise(make_tower, cfg, normalized, tol, m.inputs, params, item_fields, tower)

    return runner.run("tower", "user tower" + (" (L2-normalised)" if normalized else ""), cases(), compare,
                      max_examples, explain)
