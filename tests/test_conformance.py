"""The conformance kit passes correct ports and flags ports with the bugs found in public MIND code."""
import math

import numpy as np
import pytest

from mindref import conformance as C
from mindref.model import MINDConfig

# ---- correct ports, written independently of mindref's code ----------------------------------


def squash_port(z):
    n = np.linalg.norm(z, axis=-1, keepdims=True)
    return z * n / (1 + n**2)


def squash_vjp_port(z, dc):
    n = np.linalg.norm(z, axis=-1, keepdims=True)
    s = n / (1 + n**2)
    ds_dn = (1 - n**2) / (1 + n**2) ** 2
    u = np.divide(z, n, out=np.zeros_like(z), where=n > 0)
    return s * dc + ds_dn * n * np.sum(u * dc, -1, keepdims=True) * u


def interest_count_port(lengths, K):
    return np.array([max(1, min(K, int(n).bit_length() - 1)) for n in lengths])


def routing_port(e, S, b0, bmask, cmask, iterations, axis="interests", leak=None):
    """Per user and per iteration, in loops: the paper's routing as read by mindref."""
    B, L, d = e.shape
    K = b0.shape[1]
    u = np.zeros((B, K, d))
    for b in range(B):
        e_hat = e[b] @ S.T  # [L, d]
        logits = b0[b].copy() if leak is None else leak.setdefault("b", b0[b].copy())
        valid = np.outer(cmask[b], bmask[b])  # [K, L]
        for t in range(int(iterations)):
            w = np.zeros((K, L))
            for k in range(K):
                for i in range(L):
                    if valid[k, i]:
                        col = logits[:, i] if axis == "interests" else logits[k, :]
                        ok = valid[:, i] if axis == "interests" else valid[k, :]
                        w[k, i] = np.exp(logits[k, i] - col[ok].max()) / np.exp(col[ok] - col[ok].max()).sum()
            u[b] = squash_port(w @ e_hat)
            if t < int(iterations) - 1:
                logits = logits + u[b] @ e_hat.T
    return u


def attention_port(V, e, cmask, p=2):
    s = np.einsum("bkd,bd->bk", V, e)
    logits = np.where(cmask, s**p, -np.inf)
    a = np.exp(logits - logits.max(1, keepdims=True))
    return np.einsum("bk,bkd->bd", a / a.sum(1, keepdims=True), V)


def make_tower_port(params, cfg, item_fields, fresh_draw=False, relu=True):
    """The serving tower from mindref's parameters, in loops over users."""
    rng = np.random.default_rng()

    def tower(hist, profile):
        B, L = hist.shape
        out, masks = np.zeros((B, cfg.K, cfg.dim)), np.zeros((B, cfg.K), bool)
        for b in range(B):
            items = hist[b][hist[b] != 0]
            embs = []
            for it in items:
                parts = [params["item_emb"][it]] + [params[f"field_emb_{f}"][item_fields[f][it][0]]
                                                    for f in range(len(item_fields)) if item_fields[f][it][0]]
                embs.append(np.mean(parts, 0))
            n = len(items)
            K_u = max(1, min(cfg.K, int(math.floor(math.log2(n)))))
            b0 = rng.normal(size=(cfg.K, L)) if fresh_draw else params["serving_logits"][:, :L]
            cmask = (np.arange(cfg.K) < K_u)[None]
            u = routing_port(_place(hist[b], embs, cfg.dim), params["S"], b0[None], (hist[b] != 0)[None],
                             cmask, cfg.iterations)[0]
            prof = [params[f"profile_emb_{p}"][profile[b, p]] * (profile[b, p] != 0)
                    for p in range(len(cfg.profile_sizes))]
            x = np.concatenate([u, np.tile(np.concatenate(prof), (cfg.K, 1))], 1)
            x = x @ params["dense_W_0"] + params["dense_b_0"]
            x = np.maximum(x, 0) if relu else x
            x = x @ params["dense_W_1"] + params["dense_b_1"]
            out[b, :K_u], masks[b, :K_u] = x[:K_u], True
        return out, masks

    return tower


def _place(row, embs, d):
    e = np.zeros((1, len(row), d))
    e[0, row != 0] = embs
    return e


# ---- the kit passes correct ports ---------------------------------------------------------------


def test_correct_ports_pass():
    assert C.check_squash(squash_port, squash_vjp_port) == 100
    assert C.check_interest_count(interest_count_port) > 0
    for axis in ("interests", "behaviours"):
        C.check_routing(lambda *a, axis=axis: routing_port(*a, axis=axis), softmax_axis=axis, max_examples=60)
    C.check_attention(attention_port, p=2)
    C.check_attention(lambda V, e, m: attention_port(V, e, m, p=3), p=3)
    C.check_user_tower(make_tower_port, max_examples=30)


# ---- and flags the bugs found in public MIND code ------------------------------------------------


def test_flags_padding_that_takes_softmax_mass():
    """Softmax over all L behaviours, padding masked afterwards: the valid weights sum to < 1."""
    def routing(e, S, b0, bmask, cmask, iterations):
        e_hat = e @ S.T
        b = b0.copy()
        for _ in range(int(iterations)):
            w = np.exp(b - b.max(2, keepdims=True))
            w = w / w.sum(2, keepdims=True) * bmask[:, None, :] * cmask[:, :, None]  # mask after softmax
            u = squash_port(w @ e_hat)
            b = b + u @ e_hat.transpose(0, 2, 1)
        return u
    with pytest.raises(C.ConformanceError, match="routing output u differs") as err:
        C.check_routing(routing, softmax_axis="behaviours")
    assert "behaviour_mask" in str(err.value)


def test_flags_routing_logits_carried_across_batches():
    state = {}
    with pytest.raises(C.ConformanceError, match="routing"):
        C.check_routing(lambda *a: routing_port(*a, leak=state))


def test_flags_sign_keeping_pow_on_negative_scores():
    def attention(V, e, cmask):
        s = np.einsum("bkd,bd->bk", V, e)
        return _softmax_pool(V, np.sign(s) * np.abs(s) ** 2, cmask)  # keeps the sign: not pow
    with pytest.raises(C.ConformanceError, match="attention output v"):
        C.check_attention(attention, p=2)


def _softmax_pool(V, logits, cmask):
    logits = np.where(cmask, logits, -np.inf)
    a = np.exp(logits - logits.max(1, keepdims=True))
    return np.einsum("bk,bkd->bd", a / a.sum(1, keepdims=True), V)


def test_flags_the_squash_misprint():
    """z / ||z||^2 as printed in summaries of the paper: c = z / (1 + ||z||^2)."""
    with pytest.raises(C.ConformanceError, match="squash output c differs"):
        C.check_squash(lambda z: z / (1 + np.sum(z**2, -1, keepdims=True)))


def test_flags_a_wrong_squash_gradient():
    with pytest.raises(C.ConformanceError, match="squash gradient dz"):
        C.check_squash(squash_port, lambda z, dc: squash_vjp_port(z, dc) * 1.001)


def test_flags_interest_count_from_log2_of_n_plus_1():
    with pytest.raises(C.ConformanceError, match=r"K = 2, \|I_u\| = 3: got 2, mindref 1"):
        C.check_interest_count(lambda n, K: np.clip(np.floor(np.log2(1 + n)), 1, K).astype(int))


def test_flags_a_random_draw_at_inference():
    """DeepMatch #105: fresh routing logits at serving give different vectors call after call."""
    with pytest.raises(C.ConformanceError, match="different outputs|inconsistent"):
        C.check_user_tower(lambda p, c, f: make_tower_port(p, c, f, fresh_draw=True), max_examples=20)


def test_flags_a_crash_with_the_input():
    def routing(e, S, b0, bmask, cmask, iterations):
        if bmask.shape[1] > 3:
            raise IndexError("sequence too long for this port")
        return routing_port(e, S, b0, bmask, cmask, iterations)
    with pytest.raises(C.ConformanceError, match="raised IndexError") as err:
        C.check_routing(routing)
    assert err.value.args[0].count("\n") >= 3  # the (minimal) example follows


def test_tower_config_is_honoured():
    cfg = MINDConfig(num_items=20, field_sizes=(4,), profile_sizes=(3,), dim=4, K=2, hidden=(5,), max_len=6)
    assert C.check_user_tower(make_tower_port, cfg, max_examples=10) == 10


def pooling_port(item_table, field_table, item_ids, field_ids, count_padding=False):
    out = []
    for it, fs in zip(item_ids, field_ids):
        parts = [item_table[it]] if it else []
        valid = fs if count_padding else fs[fs != 0]
        if len(valid):
            parts.append(field_table[valid].mean(0))
        out.append(np.mean(parts, 0) if parts else np.zeros(item_table.shape[1]))
    return np.array(out)


def sampled_softmax_port(v, e_pos, e_neg, pos_ids, neg_ids, log_q_pos, log_q_neg, keep_hits=False):
    o_pos = np.sum(v * e_pos, 1) - log_q_pos
    o_neg = v @ e_neg.T - log_q_neg
    if not keep_hits:
        o_neg = np.where(neg_ids[None, :] == pos_ids[:, None], -np.inf, o_neg)
    o = np.concatenate([o_pos[:, None], o_neg], 1)
    m = o.max(1, keepdims=True)
    return float(np.mean(-(o_pos - m[:, 0]) + np.log(np.exp(o - m).sum(1))))


def test_pooling_and_sampled_softmax_ports():
    assert C.check_pooling(pooling_port) == 100
    assert C.check_sampled_softmax(sampled_softmax_port) == 100
    with pytest.raises(C.ConformanceError, match="pooled item embedding"):
        C.check_pooling(lambda *a: pooling_port(*a, count_padding=True))  # padding dilutes the mean
    with pytest.raises(C.ConformanceError, match="sampled softmax loss"):
        C.check_sampled_softmax(lambda *a: sampled_softmax_port(*a, keep_hits=True))  # hits take mass


def numeric_vjp(f, args, which, dout, h=1e-6):
    """Central-difference gradients of dout * f(*args) with respect to args[i] for i in which."""
    grads = []
    for i in which:
        x = np.array(args[i], dtype=np.float64)
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            hi, lo = x.copy(), x.copy()
            hi[idx] += h
            lo[idx] -= h
            up = f(*[hi if j == i else a for j, a in enumerate(args)])
            down = f(*[lo if j == i else a for j, a in enumerate(args)])
            g[idx] = float(dout) * (up - down) / (2 * h)
        grads.append(g)
    return tuple(grads)


def test_the_vjp_path_compares_gradients():
    """A port's gradients (here: central differences of the port) against mindref's backward."""
    def vjp(*args):
        *inputs, dloss = args
        return numeric_vjp(sampled_softmax_port, inputs, (0, 1, 2), dloss)
    assert C.check_sampled_softmax(sampled_softmax_port, vjp, rtol=1e-4, atol=1e-6, max_examples=30) == 30

    def wrong(*args):
        dv, de_pos, de_neg = vjp(*args)
        return dv, de_pos, np.zeros_like(de_neg)  # the negatives' gradient dropped
    with pytest.raises(C.ConformanceError, match="sampled softmax gradient de_neg"):
        C.check_sampled_softmax(sampled_softmax_port, wrong, rtol=1e-4, atol=1e-6, max_examples=30)


# ---- the kit's contract: no wrong names, one error, flat conventions, coverage ------------------


def test_an_epsilon_outside_the_catalogue_is_never_called_mindref():
    """A squash with epsilon 1e-12 (no catalogued value) differs from mindref on tiny capsules: the
    diagnosis must not say it matches mindref (the same bound as the check decides)."""
    def eps_squash(z, eps=1e-12):
        s = np.sum(z * z, -1, keepdims=True)
        return s / (1 + s) / np.sqrt(s + eps) * z
    with pytest.raises(C.ConformanceError) as err:
        C.check_squash(eps_squash)
    assert "matches mindref on" not in str(err.value) and "matches mindref with" not in str(err.value)


def test_a_tower_mask_is_named_by_a_rule_only_when_one_fits():
    """A tower that counts padding as behaviours gets a different mask, but no K'_u rule of n fits
    it: the stage is the mask, and no interest-count rule is blamed."""
    from mindref import model as M

    def make(params, cfg, fields):
        def tower(hist, profile):
            V, _ = M.user_vectors(params, cfg, fields, hist, profile)
            n = np.full(len(hist), hist.shape[1])  # padding counted
            mask = np.arange(cfg.K)[None] < M.routing.interest_count(n, cfg.K)[:, None]
            return V, mask
        return tower
    with pytest.raises(C.ConformanceError) as err:
        C.check_user_tower(make, max_examples=30)
    assert err.value.stage.startswith("the interest mask") and "check_interest_count" not in str(err.value)


def test_a_float32_port_is_told_to_declare_it():
    def float32_squash(z):
        z32 = z.astype(np.float32)
        n = np.linalg.norm(z32, axis=-1, keepdims=True)
        return (z32 * n / (1 + n**2)).astype(np.float64)
    with pytest.raises(C.ConformanceError) as err:
        C.check_squash(float32_squash)
    assert "declare precision='float32'" in str(err.value) and err.value.stage.startswith("precision")
    assert C.check_squash(float32_squash, precision="float32") == 100


def test_outputs_that_are_not_real_numbers_are_refused():
    for bad, words in ((lambda z: z.astype(complex), "complex"), (lambda z: np.full_like(z, np.nan),
                                                                  "not finite"),
                       (lambda z: [["a"] * z.shape[1]] * z.shape[0], "not numbers")):
        with pytest.raises(C.ConformanceError) as err:
            C.check_squash(bad, max_examples=5)
        assert err.value.kind == "output" and words in str(err.value), str(err.value)


def test_the_interest_count_check_honours_max_examples():
    import time
    calls = []

    def slow_port(n, K):
        calls.append(len(n))
        return np.array([max(1, min(K, int(x).bit_length() - 1)) for x in n])
    t = time.perf_counter()
    assert C.check_interest_count(slow_port, max_examples=50) <= 8 * 60
    assert time.perf_counter() - t < 1.0 and max(calls) <= 60
    with pytest.raises(C.ConformanceError, match=r"\|I_u\| = 3"):  # the edges beside powers of two stay in
        C.check_interest_count(lambda n, K: np.clip(np.floor(np.log2(1 + n)), 1, K).astype(int),
                               max_examples=20)


def test_routing_draws_reach_where_bugs_live():
    """At least a third of the routing examples have r >= 4 and a user with K'_u >= 2 (the i < 2
    update and the mask only show there)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mindref.conformance.checks_capsules import routing_cases
    seen = []

    @settings(max_examples=100, derandomize=True, database=None)
    @given(routing_cases(st))
    def draw(case):
        inputs, _ = case
        seen.append(int(inputs["iterations"]) >= 4 and int(inputs["capsule_mask"].sum(1).max()) >= 2)
    draw()
    assert sum(seen) >= len(seen) / 3, f"{sum(seen)} of {len(seen)}"


def test_conventions_are_one_flat_set_of_names():
    """The same names in a check's conventions, in an adapter's, and in the catalogue; the earlier
    keyword spellings still work; a wrong type or name is one ConformanceError."""
    behaviours = lambda *a: routing_port(*a, axis="behaviours")  # noqa: E731
    assert C.check_routing(behaviours, conventions={"axis": "behaviours"}, max_examples=20) == 20
    assert C.check_routing(behaviours, softmax_axis="behaviours", max_examples=20) == 20
    assert C.check_attention(lambda V, e, m: attention_port(V, e, m, p=3), conventions={"p": 3.0},
                             max_examples=20) == 20
    for conventions, words in (([("axis", "x")], "must be a dict"), ({"softmax_axes": "x"}, "known: axis"),
                               ({"grad": "partial"}, "not one of stop, full"), ({"dynamic_k": "yes"},
                                                                                "bool")):
        with pytest.raises(C.ConformanceError) as err:
            C.check_routing(behaviours, conventions=conventions)
        assert err.value.kind == "convention" and words in str(err.value), str(err.value)


BROKEN = {
    "syntax.py": ("def routing(:\n", "SyntaxError"),
    "names.py": ("import numpy as np\nX = undefined_name\n",
                 "NameError: name 'undefined_name' is not defined"),
    "init.py": ("class Adapter:\n    def __init__(self):\n        raise RuntimeError('no GPU')\n",
                "Adapter() raised RuntimeError"),
    "conv.py": ("class Adapter:\n    conventions = ['routing']\n", "conventions must be a dict"),
    "layer.py": ("class Adapter:\n    conventions = {'rooting': {}}\n", "'rooting', which is no layer"),
}


@pytest.mark.parametrize("module", sorted(BROKEN))
def test_a_broken_adapter_is_one_line_naming_what_is_broken(module, tmp_path, monkeypatch, capsys):
    from mindref.cli import main
    text, words = BROKEN[module]
    (tmp_path / module).write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(C.ConformanceError) as err:
        C.load(f"{module[:-3]}:Adapter")
    assert err.value.kind == "adapter" and words in str(err.value), str(err.value)
    assert main(["conform", f"{module[:-3]}:Adapter"]) == 2
    out = capsys.readouterr()
    assert words in out.err and "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1


def test_json_stays_json_when_the_port_prints(tmp_path, monkeypatch, capsys):
    import json

    from mindref.cli import main
    (tmp_path / "chatty.py").write_text(
        "import numpy as np\nclass Adapter:\n    def squash(self, z):\n        print('debug', z.shape)\n"
        "        n = np.linalg.norm(z, axis=-1, keepdims=True)\n        return z * n / (1 + n**2)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["conform", "chatty:Adapter", "--only", "squash", "--max-examples", "5", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["result"] == "pass" and "debug" in out.err
