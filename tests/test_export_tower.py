"""The ONNX user tower: NumPy serving tower == onnx ReferenceEvaluator == onnxruntime."""
import numpy as np
import pytest
from conftest import require
from hypothesis import given
from hypothesis import strategies as st

from mindref import model as M
from mindref.data import synthetic

onnx = require("onnx")
require("onnxruntime")
from onnx.reference import ReferenceEvaluator  # noqa: E402

from mindref.export import IR_VERSION, OPSET, TowerSession, build_tower  # noqa: E402
from mindref.export.tower import routing_bounds  # noqa: E402

# (name, multi-valued field?, profile fields, K, softmax axis, dynamic K, iterations, sigma);
# "wide-draw" has stored logits beyond LOGIT_RANGE, so its graph takes the shifted routing form
CONFIGS = [("base", False, (4, 3), 4, "interests", True, 3, 1.0),
           ("genres", True, (), 3, "interests", True, 2, 1.0),
           ("behaviours-axis", True, (5,), 4, "behaviours", True, 3, 1.0),
           ("fixed-K", False, (2, 2, 6), 3, "interests", False, 1, 1.0),
           ("wide-draw", True, (3,), 4, "behaviours", True, 3, 30.0)]
V, L_MAX, D = 40, 12, 8
_cache: dict = {}


def tower(name: str, items: str = "features"):
    """(params, cfg, item_fields, onnx model, ReferenceEvaluator, TowerSession), built once per
    configuration; the parameters of one name are the same in both item modes."""
    if (name, items) not in _cache:
        _, multi, profile, K, axis, dynamic, r, sigma = next(c for c in CONFIGS if c[0] == name)
        seed = [c[0] for c in CONFIGS].index(name)
        rng = np.random.default_rng(seed)
        fields = [rng.integers(1, 6, (V, 1))]
        if multi:  # a multi-valued field with padding, as MovieLens genres
            fields.append(rng.integers(0, 9, (V, 3)))
        for f in fields:
            f[0] = 0
        cfg = M.MINDConfig(num_items=V, field_sizes=tuple(int(f.max()) + 1 for f in fields),
                           profile_sizes=profile, dim=D, profile_dim=3, K=K, hidden=(10,), iterations=r,
                           softmax_axis=axis, dynamic_k=dynamic, sigma=sigma, max_len=L_MAX, seed=seed)
        params = M.init_params(cfg)
        params = {k: v * 3 if k.startswith(("item", "field")) else v for k, v in params.items()}  # spread
        model = build_tower(params, cfg, tuple(fields), items)
        _cache[name, items] = (params, cfg, tuple(fields), model, ReferenceEvaluator(model),
                               TowerSession(model.SerializeToString(), cfg, tuple(fields), "cpu"))
    return _cache[name, items]


@st.composite
def requests(draw):
    name = draw(st.sampled_from([c[0] for c in CONFIGS]))
    items = draw(st.sampled_from(["table", "features"]))
    cfg = tower(name, items)[1]
    B, L = draw(st.integers(1, 5)), draw(st.integers(1, L_MAX))
    lens = draw(st.lists(st.integers(1, L), min_size=B, max_size=B))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    hist = rng.integers(1, V, (B, L))
    hist[np.arange(L)[None, :] >= np.array(lens)[:, None]] = 0
    if draw(st.booleans()):  # padding anywhere, not only at the end
        hist = rng.permuted(hist, axis=1)
        hist[np.flatnonzero(~(hist != 0).any(1)), 0] = 1
    profile = np.stack([rng.integers(0, s, B) for s in cfg.profile_sizes], 1) if cfg.profile_sizes else None
    return (name, items), hist, profile


def numpy_route(params, cfg, fields, hist, profile):
    """The NumPy serving path: V_u and the tower's cache."""
    prof = np.zeros((hist.shape[0], 0), np.int64) if profile is None else profile
    e, _ = M.item_forward(params, fields, hist)
    e_hat = e @ params["S"].T
    b0 = M.serving_logits(params, hist.shape[1])
    V_u, cache = M.user_tower_forward(params, cfg, e_hat, hist != 0, prof, b0)
    return V_u, cache


def numpy_tower(params, cfg, fields, hist, profile):
    """The NumPy serving path with its routing weights (the last iteration's w)."""
    V_u, cache = numpy_route(params, cfg, fields, hist, profile)
    return V_u, cache.capsule_mask, cache.route.w[-1]


@given(requests())
def test_numpy_reference_and_onnxruntime_agree(request):
    (name, items), hist, profile = request
    params, cfg, fields, _, ref, session = tower(name, items)
    V_np, mask_np, w_np = numpy_tower(params, cfg, fields, hist, profile)
    feeds = session.feeds(hist, profile)
    for V_x, mask_x, w_x in (ref.run(None, feeds), session.run(hist, profile)):
        np.testing.assert_array_equal(mask_x, mask_np)
        assert V_x.dtype == np.float32 and V_x.shape == V_np.shape
        assert np.abs(V_x - V_np).max() <= 1e-5
        assert np.abs(w_x - w_np).max() <= 1e-5
    # the public NumPy entry point gives the same vectors
    V_pub, mask_pub = M.user_vectors(params, cfg, fields, hist, np.zeros((len(hist), 0), np.int64)
                                     if profile is None else profile)
    np.testing.assert_array_equal(mask_pub, mask_np)
    np.testing.assert_allclose(V_pub, V_np, rtol=0, atol=1e-6)


@pytest.mark.parametrize("items", ["table", "features"])
def test_routing_form_follows_the_proven_bounds(items):
    """The short softmax and squash only where routing_bounds proves them exact; the other
    configuration keeps the shifted forms (and both agree with NumPy: the test above)."""
    forms = {name: {p.key: p.value for p in tower(name, items)[3].metadata_props}["routing_form"]
             for name, *_ in CONFIGS}
    assert forms == {"base": "unshifted", "genres": "unshifted", "behaviours-axis": "unshifted",
                     "fixed-K": "unshifted", "wide-draw": "shifted"}
    ops = {n.op_type for n in tower("base", items)[3].graph.node}
    assert "ReduceSumSquare" in ops and "IsInf" not in ops
    ops = {n.op_type for n in tower("wide-draw", items)[3].graph.node}
    assert "ReduceSumSquare" not in ops and "IsInf" in ops


@given(requests(), st.floats(0.1, 30), st.floats(0.1, 30))
def test_routing_bounds_hold(request, scale, s_scale):
    """Every logit b_ij and capsule norm ||z_j|| the NumPy routing reaches is within the bounds
    the export proves from the parameters alone, for item tables spread by `scale` and S by
    `s_scale`."""
    (name, items), hist, profile = request
    params, cfg, fields = tower(name, items)[:3]
    params = {k: v * scale if k.startswith(("item", "field")) else v for k, v in params.items()}
    params["S"] = params["S"] * s_scale
    f32 = {k: np.asarray(v, np.float32) for k, v in params.items()}
    table = M.catalog(f32, fields, cfg.num_items)[1] if items == "table" else None
    max_logit, max_norm = routing_bounds(f32, cfg, table)
    route = numpy_route(params, cfg, fields, hist, profile)[1].route
    b = M.serving_logits(params, hist.shape[1])  # [K, L]
    for t in range(cfg.iterations):
        assert np.abs(b).max() <= max_logit * (1 + 1e-6)
        assert np.linalg.norm(route.squash[t].z, axis=-1).max() <= max_norm * (1 + 1e-6)
        b = b + route.u[t] @ route.e_hat.transpose(0, 2, 1)  # Eq. (8)


def test_large_batches_are_served_in_chunks_with_the_same_result():
    """Both serving paths run SERVING_CHUNK users at a time: a batch across chunk boundaries
    gives what each user alone gives, and NumPy and onnxruntime still agree."""
    params, cfg, fields, _, _, session = tower("base", "table")
    rng = np.random.default_rng(5)
    B = 2 * M.SERVING_CHUNK + 3
    hist = rng.integers(0, V, (B, L_MAX))
    hist[:, 0] = rng.integers(1, V, B)
    prof = np.stack([rng.integers(0, s, B) for s in cfg.profile_sizes], 1)
    V_np, mask_np = M.user_vectors(params, cfg, fields, hist, prof)
    out = session.run(hist, prof)
    assert out.interests.shape == (B, cfg.K, cfg.dim) and out.weights.shape == (B, cfg.K, L_MAX)
    np.testing.assert_array_equal(out.mask, mask_np)
    assert np.abs(out.interests - V_np).max() <= 1e-5
    for r in (0, M.SERVING_CHUNK - 1, M.SERVING_CHUNK, B - 1):
        V_r, mask_r = M.user_vectors(params, cfg, fields, hist[r:r + 1], prof[r:r + 1])
        np.testing.assert_array_equal(mask_r[0], mask_np[r])
        np.testing.assert_allclose(V_r[0], V_np[r], rtol=0, atol=1e-6)
        alone = session.run(hist[r:r + 1], prof[r:r + 1])
        np.testing.assert_allclose(alone.weights[0], out.weights[r], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        M.user_vectors(params, cfg, fields, hist, prof, chunk=0)
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        TowerSession(tower("base", "table")[3].SerializeToString(), cfg, fields, "cpu", chunk=0)


def test_interest_count_is_exact_at_powers_of_two():
    """K'u flips at n = 4, 8 (float log2 would be at risk exactly there)."""
    params, cfg, fields, _, _, session = tower("base")
    expected = {1: 1, 3: 1, 4: 2, 7: 2, 8: 3, 12: 3}
    hist = np.zeros((len(expected), L_MAX), np.int64)
    for r, n in enumerate(expected):
        hist[r, :n] = np.arange(1, n + 1)
    mask = session.run(hist, np.ones((len(expected), 2), np.int64)).mask
    assert mask.sum(1).tolist() == list(expected.values())


def test_model_is_pinned_checked_and_described():
    _, cfg, _, model, _, _ = tower("base")
    assert model.ir_version == IR_VERSION == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert '"K": 4' in props["config"] and props["mindref_version"]
    names = [i.name for i in model.graph.input]
    assert names == ["item_ids", "field_0_ids", "profile_ids"]
    assert [i.name for i in tower("base", "table")[3].graph.input] == ["item_ids", "profile_ids"]
    with pytest.raises(ValueError, match="items must be one of"):
        build_tower(*tower("base")[:2], tower("base")[2], "pooled")
    assert [o.name for o in model.graph.output] == ["interests", "interest_mask", "routing_weights"]


def test_serving_is_deterministic():
    """DeepMatch #105: the same input gives the same user vectors, call after call."""
    _, cfg, _, _, _, session = tower("base")
    hist = np.array([[3, 4, 5, 6, 7, 8, 9, 10, 0, 0]])
    prof = np.array([[1, 2]])
    a, b = session.run(hist, prof), session.run(hist, prof)
    np.testing.assert_array_equal(a.interests, b.interests)


@pytest.mark.parametrize("hist, profile, message", [
    (np.array([[1, 2, V]]), None, "outside the table's range"),
    (np.array([[1, -2, 3]]), None, "outside the table's range"),
    (np.array([[1.0, 2.0]]), None, "must be integers"),
    (np.array([[0, 0, 0], [1, 2, 3]]), None, "row 0 is all padding"),
    (np.ones((1, L_MAX + 1), np.int64), None, "exceeds the trained maximum"),
    (np.array([1, 2, 3]), None, "expected shape [B, L]"),
    (np.array([[1, 2, 3]]), np.array([[1, 2, 3]]), "profile: expected shape [1, 2]"),
    (np.array([[1, 2, 3]]), np.array([[1, 7]]), "profile field 1"),
])
def test_bad_requests_are_refused_by_name(hist, profile, message):
    session = tower("base")[5]
    with pytest.raises((ValueError, TypeError)) as err:
        session.run(hist, profile)
    assert message in str(err.value)


def test_cpu_only_machines_get_the_cpu_quietly(capfd):
    """onnxruntime-gpu lists CUDA even where its libraries are missing: 'auto' must fall back
    without an error log, and 'cuda' must say it did not load."""
    from mindref.export import make_session
    model = tower("base")[3].SerializeToString()
    session = make_session(model, "auto")
    err = capfd.readouterr().err
    if "CUDAExecutionProvider" in session.get_providers():
        pytest.skip("CUDA really loads here")
    assert "CUDAExecutionProvider" not in err and "Failed" not in err
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="cuda"):
        make_session(model, "cuda")
    with pytest.raises(ValueError, match="provider"):
        make_session(model, "tpu")


def test_synthetic_model_exports():
    """A model over the embedded synthetic dataset (one category field, one profile field)."""
    ds = synthetic(num_users=50, seed=3)
    cfg = M.MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                       dim=8, K=4, max_len=20)
    params = M.init_params(cfg)
    model = build_tower(params, cfg, ds.item_fields, "table")
    session = TowerSession(model.SerializeToString(), cfg, ds.item_fields, "cpu")
    hist = np.zeros((3, 20), np.int64)
    for r, s in enumerate(ds.sequences[:3]):
        hist[r, :min(20, len(s))] = s[-20:]
    out = session.run(hist, ds.profiles[:3])
    V_np, mask_np = M.user_vectors(params, cfg, ds.item_fields, hist, ds.profiles[:3])
    np.testing.assert_array_equal(out.mask, mask_np)
    assert np.abs(out.interests - V_np).max() <= 1e-5
