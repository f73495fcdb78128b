"""The conformance kit names the mistake: each public bug of docs/decisions.md, written into an
otherwise correct port, is reported by name; several at once are named together; a difference
outside the catalogue is said to be one; every failure is one ConformanceError."""
import functools
import json

import numpy as np
import pytest
from test_conformance import attention_port, routing_port, sampled_softmax_port, squash_port

from mindref import conformance as C
from mindref import routing as R


def rechub_like_routing(e, S, b0, bmask, cmask, iterations, axis="behaviours", padding_mass=True, updates=2,
                        eps=1e-9, naive=False, update_from_z=False):
    """Routing with torch-rechub 0.9.0's choices (torch_rechub/basic/layers.py, CapsuleNetwork.forward:
    `F.softmax(capsule_weight, dim=-1)` then padding zeroed, the update under `if i < 2`, an epsilon
    1e-9 in the squash), each a switch; b0 is taken as given (torch-rechub draws it inside forward)."""
    e_hat = e @ S.T  # [B, L, d]
    b = b0.astype(np.float64)
    valid = cmask[:, :, None] & bmask[:, None, :]
    ax = 2 if axis == "behaviours" else 1
    for i in range(int(iterations)):
        x = b if padding_mass else np.where(valid, b, -np.inf)
        if naive:
            w = np.exp(x.astype(np.float32)).astype(np.float64)
        else:
            m = x.max(ax, keepdims=True)
            w = np.exp(x - np.where(np.isfinite(m), m, 0))  # a column of masked capsules: all 0
        total = w.sum(ax, keepdims=True)
        w = np.where(valid, w / np.where(total == 0, 1, total), 0)
        z = w @ e_hat
        s = np.sum(z * z, -1, keepdims=True)
        u = s / (1 + s) / np.sqrt(s + eps) * z if eps else z * np.sqrt(s) / (1 + s)
        if i < min(updates, int(iterations) - 1):
            b = b + (z if update_from_z else u) @ e_hat.transpose(0, 2, 1)
    return u


def diagnosis_of(check, *args, **kwargs) -> C.ConformanceError:
    with pytest.raises(C.ConformanceError) as err:
        check(*args, **kwargs)
    return err.value


def test_torch_rechub_routing_is_named_softmax_axis_padding_and_the_i_lt_2_update():
    err = diagnosis_of(C.check_routing, rechub_like_routing, max_examples=60)
    said = str(err.diagnosis)
    assert err.kind == "differs" and err.layer == "routing"
    for words in ("softmax over behaviours", "take softmax mass", "first two iterations"):
        assert words in said, said
    # its squash's epsilon 1e-9 is beyond float64 rounding on short capsules: named, within the check's bound
    assert "epsilon 1e-9" in said
    assert "routing weights of iteration 1" in err.stage  # the first stage that diverges


@pytest.mark.parametrize("switches, named", [
    ({"padding_mass": False, "updates": 99}, "softmax over behaviours"),
    ({"axis": "interests", "updates": 99}, "take softmax mass"),
    ({"axis": "interests", "padding_mass": False}, "first two iterations"),
    ({"axis": "interests", "padding_mass": False, "updates": 99, "update_from_z": True},
     "from z, before the squash"),
])
def test_each_routing_mistake_alone_is_named_alone(switches, named):
    err = diagnosis_of(C.check_routing, lambda *a: rechub_like_routing(*a, **{"eps": 0.0, **switches}),
                       max_examples=60)
    assert named in str(err.diagnosis) and " and " not in str(err.diagnosis).split("matches mindref with ")[1]


def test_the_i_lt_2_bug_is_found_because_iterations_reach_six():
    """With r <= 3 it is invisible; the kit's r reaches 6, and the minimal example has r = 4."""
    port = lambda *a: rechub_like_routing(*a, axis="interests", padding_mass=False, eps=0.0)  # noqa: E731
    err = diagnosis_of(C.check_routing, port, max_examples=60)
    assert int(err.inputs["iterations"]) == 4


def test_a_softmax_without_max_subtraction_is_named():
    """float32 exp overflows past 88: large drawn logits, or the updates, get there."""
    port = lambda *a: rechub_like_routing(*a, axis="interests", padding_mass=False, updates=99, eps=0.0,  # noqa: E731
                                          naive=True)
    err = diagnosis_of(C.check_routing, port, max_examples=60)
    assert "without max-subtraction" in str(err.diagnosis)


def test_a_declared_convention_is_the_base_of_the_diagnosis():
    """Declaring softmax_axis='behaviours' makes that the base: only the padding mass is named."""
    err = diagnosis_of(C.check_routing, lambda *a: rechub_like_routing(*a, updates=99, eps=0.0),
                       softmax_axis="behaviours", max_examples=60)
    assert "take softmax mass" in str(err.diagnosis) and "behaviours instead" not in str(err.diagnosis)
    C.check_routing(lambda *a: routing_port(*a, axis="behaviours"), softmax_axis="behaviours",
                    max_examples=20)


def test_a_difference_outside_the_catalogue_is_said_to_be_new():
    err = diagnosis_of(C.check_routing, lambda *a: 1.01 * routing_port(*a), max_examples=20)
    assert "none of the routing variants" in str(err.diagnosis)


def test_a_full_gradient_checked_in_stop_mode_is_told_to_declare_it():
    def vjp(e, S, b0, bmask, cmask, iterations, du):
        _, cache = R.routing_forward(e, S, b0, bmask, cmask, int(iterations), grad_mode="full")
        return R.routing_backward(du, cache)[:2]
    err = diagnosis_of(C.check_routing, routing_port, vjp, grad_mode="stop", max_examples=30)
    assert "declare grad_mode='full'" in str(err.diagnosis)


def test_squash_attention_count_and_loss_mistakes_are_named():
    cases = [
        (C.check_squash, (lambda z: z / (1 + np.sum(z**2, -1, keepdims=True)),), {}, "misprinted squash"),
        (C.check_attention, (lambda V, e, m: _attend(V, e, m, lambda s: np.sign(s) * np.abs(s) ** 2),),
         {"p": 2}, "sign"),
        (C.check_attention, (lambda V, e, m: _attend(V, e, m, lambda s: s),), {"p": 2}, "no pow"),
        (C.check_interest_count, (lambda n, K: np.clip(np.floor(np.log2(1 + n)), 1, K).astype(int),), {},
         "DeepMatch"),
        (C.check_interest_count, (lambda n, K: np.clip(np.floor(np.log(n)), 1, K).astype(int),), {},
         "EasyRec"),
        (C.check_sampled_softmax, (lambda *a: sampled_softmax_port(*a, keep_hits=True),), {}, "hits kept"),
        (C.check_sampled_softmax, (lambda v, ep, en, pi, ni, qp, qn: sampled_softmax_port(v, ep, en, pi, ni,
                                                                                            0 * qp, 0 * qn),),
         {}, "no logQ"),
    ]
    for check, args, kwargs, named in cases:
        err = diagnosis_of(check, *args, **kwargs)
        assert named in str(err.diagnosis), (check.__name__, named, str(err))


def _attend(V, e, cmask, f):
    s = np.einsum("bkd,bd->bk", V, e)
    logits = np.where(cmask, f(s), -np.inf)
    a = np.exp(logits - logits.max(1, keepdims=True))
    return np.einsum("bk,bkd->bd", a / a.sum(1, keepdims=True), V)


def test_state_between_calls_is_named_as_such():
    """DeepMatch's leak: the logits a call ends with are where the next call of that shape starts."""
    state = {}

    def routing(e, S, b0, bmask, cmask, iterations):
        b = state.get(b0.shape, b0)
        u = routing_port(e, S, b, bmask, cmask, iterations)
        state[b0.shape] = b + np.einsum("bkd,bld->bkl", u, e @ S.T)
        return u
    err = diagnosis_of(C.check_routing, routing, max_examples=30)
    assert err.kind == "inconsistent" and "random draw per call" in str(err.diagnosis)


def test_mindref_refusing_a_convention_is_one_conformance_error():
    """A non-integer p has no real pow of a negative score: mindref refuses it, and the kit reports
    the convention, not a raw ValueError."""
    err = diagnosis_of(C.check_attention, lambda V, e, m: attention_port(V, e, m, p=1.5), p=1.5)
    assert err.kind == "convention" and "declare a convention" in str(err)


def test_two_different_failures_are_one_conformance_error():
    """Crashing on long sequences and differing on short ones: one error, never an ExceptionGroup."""
    def routing(e, S, b0, bmask, cmask, iterations):
        if bmask.shape[1] > 20:
            raise IndexError("too long")
        return 1.01 * routing_port(e, S, b0, bmask, cmask, iterations)
    err = diagnosis_of(C.check_routing, routing, max_examples=60)
    assert isinstance(err, C.ConformanceError) and err.kind in ("differs", "raised")


def test_the_report_is_structured_and_json_able():
    err = diagnosis_of(C.check_squash, lambda z: z / (1 + np.sum(z**2, -1, keepdims=True)))
    report = json.loads(json.dumps(err.report()))
    assert report["layer"] == "squash" and report["quantity"] == "squash output c"
    assert report["got"] != report["expected"] and "misprinted" in report["diagnosis"]
    assert np.asarray(report["inputs"]["z"]).ndim == 2


def test_correct_ports_pass_the_wider_ranges():
    assert C.check_squash(squash_port, max_examples=50) == 50
    assert C.check_attention(attention_port, p=2, max_examples=50) == 50


ADAPTER = '''
import numpy as np
from test_conformance import interest_count_port, routing_port, squash_port
from test_diagnosis import rechub_like_routing


class Correct:
    conventions = {"routing": {"softmax_axis": "behaviours"}}
    squash = staticmethod(squash_port)
    interest_count = staticmethod(interest_count_port)

    def routing(self, *a):
        return routing_port(*a, axis="behaviours")


class RechubLike(Correct):
    conventions = {}

    def routing(self, *a):
        return rechub_like_routing(*a)

    def interest_count(self, n, K):
        return np.clip(np.floor(np.log2(1 + n)), 1, K).astype(int)
'''


def test_mindref_conform_runs_an_adapter_and_names_each_layers_mistake(tmp_path, monkeypatch, capsys):
    """`mindref conform module:Class`: one row per layer (absent layers skipped and listed), exit 1
    with the diagnoses when a layer fails, 0 when all pass; --json for scripts."""
    from pathlib import Path

    from mindref.cli import main
    (tmp_path / "my_port_checks.py").write_text(ADAPTER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main(["conform", "my_port_checks:RechubLike", "--max-examples", "40"]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert rows["squash"].split()[1] == "pass" and rows["pooling"].split()[1] == "skipped"
    assert "FAIL" in rows["routing"] and "softmax over behaviours" in rows["routing"]
    assert "FAIL" in rows["interest_count"] and "DeepMatch" in rows["interest_count"]
    assert main(["conform", "my_port_checks:Correct", "--max-examples", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["layer"]: r["result"] for r in report} == {
        "pooling": "skipped", "squash": "pass", "interest_count": "pass", "routing": "pass",
        "attention": "skipped", "sampled_softmax": "skipped", "tower": "skipped"}
    assert main(["conform", "my_port_checks:Nope"]) == 2
    assert "has no Nope" in capsys.readouterr().err


# ---- declared conventions: a port that differs only by one passes once it declares it -----------


def eps_squash(z, eps=1e-8):
    s = np.sum(z * z, -1, keepdims=True)
    return s / (1 + s) / np.sqrt(s + eps) * z


def complex_step_vjp(f, z, dc, h=1e-30):
    """dc . df/dz by the complex step (exact to rounding: f(z + ih e_k) = f(z) + ih f'(z) e_k, up
    to h^2 terms, which only show where the Jacobian is 0: at z = 0, given exactly)."""
    dz = np.zeros_like(z)
    for k in np.ndindex(z.shape):
        zc = z.astype(complex)
        zc[k] += 1j * h
        dz[k] = np.sum(dc * f(zc).imag) / h
    return np.where(np.any(z != 0, -1, keepdims=True), dz, 0)


def test_a_declared_squash_epsilon_is_checked_forward_and_backward():
    vjp = lambda z, dc: complex_step_vjp(eps_squash, z, dc)  # noqa: E731
    err = diagnosis_of(C.check_squash, eps_squash, vjp, max_examples=40)
    assert "epsilon 1e-8" in str(err.diagnosis)
    assert C.check_squash(eps_squash, vjp, conventions={"eps": "1e-8"}, max_examples=40) == 40
    with pytest.raises(C.ConformanceError):  # declaring the wrong epsilon still fails
        C.check_squash(eps_squash, conventions={"eps": "1e-9"}, max_examples=40)


def test_declared_loss_conventions():
    def port(v, e_pos, e_neg, pos_ids, neg_ids, log_q_pos, log_q_neg):  # no logQ, hits kept, summed
        return len(v) * sampled_softmax_port(v, e_pos, e_neg, pos_ids, neg_ids, 0 * log_q_pos, 0 * log_q_neg,
                                             keep_hits=True)
    declared = {"logq": "ignored", "hits": "kept", "reduce": "sum"}
    err = diagnosis_of(C.check_sampled_softmax, port)
    for words in ("no logQ", "hits kept", "summed"):
        assert words in str(err.diagnosis)
    assert C.check_sampled_softmax(port, conventions=declared, max_examples=50) == 50
    with pytest.raises(C.ConformanceError):
        C.check_sampled_softmax(port, conventions={"logq": "ignored", "hits": "kept"}, max_examples=50)

    def cosine(v, e_pos, e_neg, pos_ids, neg_ids, log_q_pos, log_q_neg, tau=0.2):
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731 (F.normalize)
        return sampled_softmax_port(unit(v) / tau, unit(e_pos), unit(e_neg), pos_ids, neg_ids,
                                    0 * log_q_pos, 0 * log_q_neg)
    assert C.check_sampled_softmax(cosine, conventions={"logits": "cosine", "logq": "ignored"},
                                   temperature=0.2, max_examples=50) == 50


def test_declared_routing_attention_count_and_tower_conventions():
    rechub = lambda *a: rechub_like_routing(*a, eps=0.0)  # noqa: E731
    assert C.check_routing(rechub, softmax_axis="behaviours", max_examples=40,
                           conventions={"padding": "mass", "updates": "first-2"}) == 40
    with pytest.raises(C.ConformanceError):  # the i < 2 update left undeclared
        C.check_routing(rechub, softmax_axis="behaviours", conventions={"padding": "mass"}, max_examples=40)
    assert C.check_routing(lambda *a: routing_port(*a), iterations=3, max_examples=20) == 20
    abs_pow = lambda V, e, m: _attend(V, e, m, lambda s: np.abs(s) ** 1.5)  # noqa: E731
    assert C.check_attention(abs_pow, p=1.5, conventions={"pow": "abs"}, max_examples=40) == 40
    deepmatch = lambda n, K: np.clip(np.floor(np.log2(1 + n)), 1, K).astype(int)  # noqa: E731
    assert C.check_interest_count(deepmatch, conventions={"rule": "floor-log2-1p"}) > 0


def test_an_l2_normalised_tower_is_told_to_declare_it_and_then_passes():
    from test_conformance import make_tower_port

    def normalised(params, cfg, fields):
        tower = make_tower_port(params, cfg, fields)

        def run(hist, profile):
            V, mask = tower(hist, profile)
            n = np.linalg.norm(V, axis=-1, keepdims=True)
            return np.divide(V, n, out=np.zeros_like(V), where=n > 0), mask
        return run
    err = diagnosis_of(C.check_user_tower, normalised, max_examples=10)
    assert "declare normalized=True" in str(err.diagnosis)
    assert C.check_user_tower(normalised, normalized=True, max_examples=10) == 10


def test_conventions_the_kit_cannot_check_are_one_clear_error():
    err = diagnosis_of(C.check_routing, routing_port, conventions={"softmax_axes": "x"})
    assert err.kind == "convention" and "known: axis, padding" in str(err)
    err = diagnosis_of(C.check_routing, routing_port, lambda *a: None, conventions={"padding": "mass"})
    assert err.kind == "convention" and "vjp=None" in str(err)


def as_float32(port):
    """The port computed in float32, as a PyTorch or TensorFlow port would by default."""
    def run(*args):
        out = port(*[a.astype(np.float32) if np.asarray(a).dtype == np.float64 else a for a in args])
        return np.asarray(out, np.float32)
    return run


def test_float32_ports_pass_at_float32_precision_and_tiny_capsules_are_still_checked():
    """Tolerances from each function's error analysis: correct float32 ports pass with
    precision='float32'; a float32 squash that flushes tiny capsules to 0 is still caught (an
    absolute atol of 1e-5 would have let it through)."""
    from test_conformance import pooling_port
    assert C.check_squash(as_float32(squash_port), precision="float32") == 100
    assert C.check_routing(as_float32(routing_port), precision="float32", max_examples=60) == 60
    assert C.check_attention(as_float32(attention_port), precision="float32") == 100
    assert C.check_sampled_softmax(as_float32(sampled_softmax_port), precision="float32") == 100
    assert C.check_pooling(as_float32(pooling_port), precision="float32") == 100
    with pytest.raises(C.ConformanceError):
        C.check_routing(as_float32(routing_port), max_examples=60)  # float32 is not float64

    def flushing(z):
        c = as_float32(squash_port)(z)
        return np.where(np.linalg.norm(z, axis=-1, keepdims=True) < 1e-4, 0, c)
    C.check_squash(flushing, atol=1e-5)  # the old absolute tolerance cannot see it
    err = diagnosis_of(C.check_squash, flushing, precision="float32")
    assert np.linalg.norm(err.inputs["z"]) < 1e-4


def test_a_tower_without_its_relu_and_a_cosine_loss_are_named():
    """Two of torch-rechub's MIND choices: its user tower is linear (no ReLU layers) and its loss
    is cosine over a temperature (0.02 in its example) with no logQ."""
    from test_conformance import make_tower_port
    err = diagnosis_of(C.check_user_tower, lambda p, c, f: make_tower_port(p, c, f, relu=False),
                       max_examples=10)
    assert "ReLU left out" in str(err.diagnosis)

    def cosine(v, e_pos, e_neg, pos_ids, neg_ids, log_q_pos, log_q_neg, tau=0.02):
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
        return sampled_softmax_port(unit(v) / tau, unit(e_pos), unit(e_neg), pos_ids, neg_ids,
                                    0 * log_q_pos, 0 * log_q_neg)
    err = diagnosis_of(C.check_sampled_softmax, cosine)
    assert "temperature 0.02" in str(err.diagnosis) and "no logQ" in str(err.diagnosis)


# ---- mistakes outside the catalogue: the kit must say where each goes wrong ---------------------


def fast_routing(e, S, b0, bmask, cmask, iterations, mistake=None, cache={}):  # noqa: B006 - the stale port's
    """Vectorised B2I routing (softmax over interests), with one mistake switched on by name."""
    r = int(iterations) + (mistake == "extra iteration")
    e_hat = e @ S if mistake == "transposed S" else e if mistake == "no S" else e @ S.T
    if mistake == "mask ignored":
        cmask = np.ones_like(cmask)
    if mistake == "own K'_u":
        n = bmask.sum(1)
        cmask = np.arange(cmask.shape[1])[None] < np.clip(np.floor(np.log2(1 + n)), 1, cmask.shape[1])[:,
                                                                                                       None]
    b = np.zeros_like(b0) if mistake == "b0 ignored" else b0.astype(float)
    if mistake == "stale":
        b = cache.setdefault(b0.shape, b0.copy())
    valid = cmask[:, :, None] & bmask[:, None, :]
    for t in range(r):
        x = np.where(valid, b / (2 if mistake == "halved logits" else 1), -np.inf)
        m = x.max(1, keepdims=True)
        w = np.exp(x - np.where(np.isfinite(m), m, 0))
        w = np.where(valid, w / np.maximum(w.sum(1, keepdims=True), 1e-300), 0)
        z = w @ e_hat
        n = np.linalg.norm(z, axis=-1, keepdims=True)
        u = z * n if mistake == "squash without its denominator" else z * n / (1 + n**2)
        if t < r - 1:
            sign = -1 if mistake == "update subtracted" else 1
            b = b + sign * u @ (e if mistake == "update from e" else e_hat).transpose(0, 2, 1)
    return u


def fast_attention(V, e, cmask, p=2, mistake=None):
    s = np.einsum("bkd,bd->bk", V, e if mistake != "scores of V with itself" else V[:, 0])
    logits = np.where(cmask, s**p, -np.inf)
    a = np.exp(logits - logits.max(1, keepdims=True))
    if mistake != "weights not normalised":
        a = a / a.sum(1, keepdims=True)
    v = np.einsum("bk,bkd->bd", a, V)
    return v + e if mistake == "the query added to the readout" else v


def fast_loss(v, e_pos, e_neg, pos_ids, neg_ids, log_q_pos, log_q_neg, mistake=None):
    sign = -1 if mistake == "logQ added" else 1
    o_pos = np.sum(v * e_pos, 1) - sign * log_q_pos
    o_neg = v @ e_neg.T - sign * log_q_neg
    if mistake == "only the first negative":
        o_neg = o_neg[:, :1]
        neg_ids = neg_ids[:1]
    o_neg = np.where(neg_ids[None, :] == pos_ids[:, None], -np.inf, o_neg)
    o = np.concatenate([o_pos[:, None], o_neg], 1)
    m = o.max(1, keepdims=True)
    rows = -(o_pos - m[:, 0]) + np.log(np.exp(o - m).sum(1))
    total = float(rows.max() if mistake == "max over the batch" else rows.mean())
    return -total if mistake == "wrong sign" else total


def fast_squash(z, mistake=None):
    n = np.linalg.norm(z, axis=0 if mistake == "norm over the wrong axis" else -1, keepdims=True)
    if mistake == "NaN at zero":
        return z / n * n**2 / (1 + n**2)
    return z * n if mistake == "no denominator" else z * n / (1 + n**2)


def fast_pooling(item_table, field_table, item_ids, field_ids, mistake=None):
    out = []
    for it, fs in zip(item_ids, field_ids):
        valid = fs if mistake == "padding counted" else fs[fs != 0]
        parts = [] if mistake == "item row left out" else [item_table[it]]
        if len(valid):
            rows = field_table[valid]
            parts.append(rows.sum(0) if mistake == "field rows summed" else rows.mean(0))
        out.append(np.mean(parts, 0) if parts else np.zeros(item_table.shape[1]))
    return np.array(out)


def mistaken_tower(mistake):
    from mindref import model as M

    def make(params, cfg, fields):
        p = dict(params, S=params["S"].T) if mistake == "transposed S" else params

        def tower(hist, profile):
            V, mask = M.user_vectors(p, cfg, fields, hist,
                                     0 * profile if mistake == "profile ignored" else profile)
            if mistake == "ReLU after the output layer":
                V = np.maximum(V, 0)
            if mistake == "K'_u from log2(1 + n)":
                n = (hist != 0).sum(1)
                mask = np.arange(cfg.K)[None] < np.clip(np.floor(np.log2(1 + n)), 1, cfg.K)[:, None]
            return V, mask
        return tower
    return make


OUTSIDE = [  # (check, port, keyword arguments, words the stage must hold)
    (C.check_routing, lambda *a: fast_routing(*a, mistake="transposed S"), {}, "S transposed"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="no S"), {}, "S not applied"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="mask ignored"), {}, "the capsule mask"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="own K'_u"), {}, "check_interest_count"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="update subtracted"), {},
     "logit update (Eq. 8) after iteration 1"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="update from e"), {},
     "logit update after iteration 1"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="extra iteration"), {}, "weights of iteration 1"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="squash without its denominator"), {},
     "the squash"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="b0 ignored"), {}, "weights of iteration 1"),
    (C.check_routing, functools.partial(fast_routing, mistake="stale", cache={}), {}, "state between calls"),
    (C.check_routing, lambda *a: fast_routing(*a, mistake="halved logits"), {}, "weights of iteration 1"),
    (C.check_squash, lambda z: fast_squash(z, "norm over the wrong axis"), {}, "direction"),
    (C.check_squash, lambda z: fast_squash(z, "no denominator"), {}, "length"),
    (C.check_squash, lambda z: fast_squash(z, "NaN at zero"), {}, "z = 0"),
    (C.check_attention, lambda *a: fast_attention(*a, mistake="weights not normalised"), {}, "sum to 1"),
    (C.check_attention, lambda *a: fast_attention(*a, mistake="the query added to the readout"), {},
     "not a combination"),
    (C.check_attention, lambda *a: fast_attention(*a, mistake="scores of V with itself"), {},
     "attention weights"),
    (C.check_sampled_softmax, lambda *a: fast_loss(*a, mistake="wrong sign"), {}, "wrong sign"),
    (C.check_sampled_softmax, lambda *a: fast_loss(*a, mistake="logQ added"), {}, "logQ correction"),
    (C.check_sampled_softmax, lambda *a: fast_loss(*a, mistake="only the first negative"), {},
     "the logits v . e"),
    (C.check_sampled_softmax, lambda *a: fast_loss(*a, mistake="max over the batch"), {}, "reduction"),
    (C.check_pooling, lambda *a: fast_pooling(*a, mistake="item row left out"), {}, "one side field"),
    (C.check_pooling, lambda *a: fast_pooling(*a, mistake="padding counted"), {}, "padding ids"),
    (C.check_pooling, lambda *a: fast_pooling(*a, mistake="field rows summed"), {}, "multi-valued"),
    (C.check_user_tower, mistaken_tower("ReLU after the output layer"), {"max_examples": 20},
     "the output layer"),
    (C.check_user_tower, mistaken_tower("profile ignored"), {"max_examples": 20}, "profile"),
    (C.check_user_tower, mistaken_tower("transposed S"), {"max_examples": 20}, "S transposed"),
    (C.check_user_tower, mistaken_tower("K'_u from log2(1 + n)"), {"max_examples": 20}, "the interest mask"),
]


@pytest.mark.parametrize("check, port, kwargs, stage", OUTSIDE, ids=[f"{c.__name__}: {s}" for c, _, _,
                                                                     s in OUTSIDE])
def test_a_mistake_outside_the_catalogue_is_located(check, port, kwargs, stage):
    """Each mistake is flagged as one ConformanceError whose stage says where the port first goes
    wrong, and no catalogued variant is named for it (none of them is one)."""
    err = diagnosis_of(check, port, **kwargs)
    assert err.stage and stage in err.stage, (err.stage, str(err)[-600:])
    assert "matches mindref with" not in str(err.diagnosis or ""), str(err.diagnosis)
