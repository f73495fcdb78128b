"""B2I dynamic routing (3.3): gradients in both modes, masks, K'_u and invariants."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mindref.routing import (
    capsule_mask,
    init_logits,
    interest_count,
    routing_backward,
    routing_forward,
)
from mindref.squash import squash_forward

from gradcheck import assert_gradient, upstream
from strategies import SCALES, floats, lengths, mask_from_lengths


@st.composite
def routing_inputs(draw, max_B=3, max_L=5, max_K=4, max_d=4):
    B, L = draw(st.integers(1, max_B)), draw(st.integers(1, max_L))
    K, d = draw(st.integers(1, max_K)), draw(st.integers(1, max_d))
    scale = draw(SCALES)
    e = draw(floats((B, L, d), scale), label="e")
    S = draw(floats((d, d)), label="S")
    b0 = draw(floats((B, K, L), 3.0), label="b0")
    bmask = mask_from_lengths(draw(lengths(B, L), label="lengths"), L)
    cmask = capsule_mask(bmask, K, dynamic=draw(st.booleans(), label="dynamic K"))
    config = dict(iterations=draw(st.integers(1, 3), label="iterations"),
                  softmax_axis=draw(st.sampled_from(["interests", "behaviours"]), label="axis"))
    return e, S, b0, bmask, cmask, config


def assume_smooth(cache, cmask):
    """Central differences are only O(h^2)-accurate where squash is smooth: ||z|| > 0.
    (squash ~ ||z|| z has a kink in its second derivative at 0; test_squash checks z = 0.)"""
    for sq in cache.route.squash:
        assume(np.all(sq.norm[..., 0][cmask] > 1e-3))


@given(inputs=routing_inputs(), seed=st.integers(0, 2**32 - 1))
def test_full_mode_gradient_matches_the_routing_function(inputs, seed):
    e, S, b0, bmask, cmask, config = inputs
    u, cache = routing_forward(e, S, b0, bmask, cmask, grad_mode="full", **config)
    assume_smooth(cache, cmask)
    du = upstream(np.random.default_rng(seed), u.shape)
    copies = [x.copy() for x in (e, S, b0, du)]
    de, dS, db0 = routing_backward(du, cache)
    for x, x0 in zip((e, S, b0, du), copies):
        np.testing.assert_array_equal(x, x0)  # nothing mutated

    def f(e_, S_, b_):
        return float(np.sum(routing_forward(e_, S_, b_, bmask, cmask, grad_mode="full",
                                            **config)[0] * du))

    assert_gradient(lambda x: f(x, S, b0), e, de, "e")
    assert_gradient(lambda x: f(e, x, b0), S, dS, "S")
    assert_gradient(lambda x: f(e, S, x), b0, db0, "b0")


@given(inputs=routing_inputs(), seed=st.integers(0, 2**32 - 1))
def test_stop_mode_gradient_matches_the_frozen_weight_surrogate(inputs, seed):
    """'stop': u = squash(sum_i w_ij S e_i) with the final w_ij held constant."""
    e, S, b0, bmask, cmask, config = inputs
    u, cache = routing_forward(e, S, b0, bmask, cmask, grad_mode="stop", **config)
    assume_smooth(cache, cmask)
    w_final = cache.route.w[-1]  # [B, K, L]
    du = upstream(np.random.default_rng(seed), u.shape)
    de, dS, db0 = routing_backward(du, cache)

    def surrogate(e_, S_):
        return float(np.sum(squash_forward(np.einsum("bkl,bld->bkd", w_final, e_ @ S_.T))[0] * du))

    np.testing.assert_allclose(surrogate(e, S), np.sum(u * du), rtol=1e-12, atol=1e-12)
    assert_gradient(lambda x: surrogate(x, S), e, de, "e")
    assert_gradient(lambda x: surrogate(e, x), S, dS, "S")
    np.testing.assert_array_equal(db0, 0.0)


@given(inputs=routing_inputs(), data=st.data())
def test_padding_changes_nothing(inputs, data):
    """Garbage in padded behaviours (embeddings and logits) and appended padding: same output."""
    e, S, b0, bmask, cmask, config = inputs
    u, _ = routing_forward(e, S, b0, bmask, cmask, **config)
    B, L, d = e.shape
    extra = data.draw(st.integers(0, 3), label="appended padding")
    e2 = np.concatenate([e, np.zeros((B, extra, d))], axis=1)
    b2 = np.concatenate([b0, np.zeros((B, b0.shape[1], extra))], axis=2)
    m2 = np.concatenate([bmask, np.zeros((B, extra), bool)], axis=1)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    e2[~m2] = rng.standard_normal((np.sum(~m2), d)) * 100
    b2[:, :, ~m2.any(0)] += 50.0  # columns padded in every row
    b2 = np.where(m2[:, None, :], b2, rng.standard_normal(b2.shape) * 100)
    u2, _ = routing_forward(e2, S, b2, m2, cmask, **config)
    np.testing.assert_allclose(u2, u, rtol=1e-12, atol=1e-14)


@given(inputs=routing_inputs(), data=st.data())
def test_permuting_behaviours_with_their_logits_changes_nothing(inputs, data):
    e, S, b0, bmask, cmask, config = inputs
    perm = np.array(data.draw(st.permutations(range(e.shape[1]))))
    u, _ = routing_forward(e, S, b0, bmask, cmask, **config)
    u2, _ = routing_forward(e[:, perm], S, b0[:, :, perm], bmask[:, perm], cmask, **config)
    np.testing.assert_allclose(u2, u, rtol=1e-10, atol=1e-13)


@given(inputs=routing_inputs(max_K=1))
def test_single_interest_is_the_squashed_weighted_sum(inputs):
    """K = 1: softmax over interests gives every behaviour weight 1, so u = squash(sum S e_i);
    over behaviours with one iteration, u = squash(sum_i softmax(b0)_i S e_i)."""
    e, S, b0, bmask, cmask, config = inputs
    e_hat = e @ S.T * bmask[..., None]
    u, _ = routing_forward(e, S, b0, bmask, cmask, config["iterations"], "interests")
    np.testing.assert_allclose(u[:, 0], squash_forward(e_hat.sum(1))[0], rtol=1e-10, atol=1e-14)
    w = np.exp(b0[:, 0] - b0[:, 0].max(-1, keepdims=True)) * bmask  # [B, L]
    w /= w.sum(-1, keepdims=True)
    u, _ = routing_forward(e, S, b0, bmask, cmask, 1, "behaviours")
    want = squash_forward(np.einsum("bl,bld->bd", w, e_hat))[0]
    np.testing.assert_allclose(u[:, 0], want, rtol=1e-10, atol=1e-14)


@given(inputs=routing_inputs())
def test_outputs_are_capsules_and_masked_ones_are_zero(inputs):
    e, S, b0, bmask, cmask, config = inputs
    u, cache = routing_forward(e, S, b0, bmask, cmask, **config)
    assert np.all(np.linalg.norm(u, axis=-1) < 1)
    np.testing.assert_array_equal(u[~cmask], 0.0)
    rc = cache.route
    for w in rc.w:
        np.testing.assert_array_equal(w[~rc.mask], 0.0)
        axis_sums = w.sum(rc.axis)
        valid = rc.mask.any(rc.axis)
        np.testing.assert_allclose(axis_sums[valid], 1.0, rtol=1e-12)


@pytest.mark.parametrize("n, K, want", [
    (1, 4, 1), (2, 4, 1), (3, 4, 1), (4, 4, 2), (7, 4, 2), (8, 4, 3),
    (15, 4, 3), (16, 4, 4), (1000, 4, 4), (2**40, 64, 40), (2**40 - 1, 64, 39),
])
def test_dynamic_interest_number(n, K, want):
    """Eq. (9): K'_u = max(1, min(K, floor(log2 |I_u|))), exact at powers of two."""
    assert interest_count(np.array([n]), K)[0] == want
    assert interest_count(np.array([n]), K, dynamic=False)[0] == K


def test_empty_history_and_bad_config_are_refused():
    e, S = np.zeros((1, 3, 2)), np.eye(2)
    b0 = np.zeros((1, 2, 3))
    cm = np.ones((1, 2), bool)
    with pytest.raises(ValueError, match="empty history"):
        routing_forward(e, S, b0, np.zeros((1, 3), bool), cm)
    with pytest.raises(ValueError, match="softmax_axis"):
        routing_forward(e, S, b0, np.ones((1, 3), bool), cm, softmax_axis="rows")
    with pytest.raises(ValueError, match="grad_mode"):
        routing_forward(e, S, b0, np.ones((1, 3), bool), cm, grad_mode="half")
    with pytest.raises(ValueError, match="at least one behaviour"):
        interest_count(np.array([0]), 4)


def test_init_logits_are_seeded_gaussian_in_the_requested_dtype():
    a = init_logits(np.random.default_rng(7), (64, 4, 50), sigma=2.0, dtype=np.float32)
    b = init_logits(np.random.default_rng(7), (64, 4, 50), sigma=2.0, dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    assert abs(a.std() - 2.0) < 0.05 and abs(a.mean()) < 0.05


def test_float32_in_float32_out():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((2, 5, 3)).astype(np.float32)
    S = rng.standard_normal((3, 3)).astype(np.float32)
    bm = np.ones((2, 5), bool)
    u, cache = routing_forward(e, S, init_logits(rng, (2, 4, 5), dtype=np.float32), bm,
                               capsule_mask(bm, 4))
    assert u.dtype == np.float32
    assert all(g.dtype == np.float32 for g in routing_backward(np.ones_like(u), cache))
