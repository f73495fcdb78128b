"""Sampled softmax (3.5, Eqs. (10)-(11)): gradients, logQ, accidental hits, the full oracle."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mindref.sampled_softmax import (
    full_softmax_backward,
    full_softmax_forward,
    sampled_softmax_backward,
    sampled_softmax_forward,
)
from mindref.samplers import LogUniformSampler, UniformSampler
from mindref.sparse import scatter_rows

from gradcheck import assert_gradient
from strategies import SCALES, floats


@st.composite
def sampled_inputs(draw):
    B, S, d = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    V = draw(st.integers(2, 6))  # few items: accidental hits happen often
    scale = draw(SCALES)
    v = draw(floats((B, d), scale), label="v")
    e_pos = draw(floats((B, d), scale), label="e_pos")
    e_neg = draw(floats((S, d), scale), label="e_neg")
    ids = lambda n: hnp.arrays(np.int64, (n,), elements=st.integers(1, V - 1))  # noqa: E731
    pos_ids, neg_ids = draw(ids(B), label="pos_ids"), draw(ids(S), label="neg_ids")
    if draw(st.booleans(), label="logQ"):
        log_q = (draw(floats((B,), 2.0)), draw(floats((S,), 2.0)))
    else:
        log_q = (None, None)
    return v, e_pos, e_neg, pos_ids, neg_ids, log_q


@given(inputs=sampled_inputs(), hits=st.booleans(), dloss=st.floats(-3, 3))
def test_sampled_softmax_gradient(inputs, hits, dloss):
    v, e_pos, e_neg, pos_ids, neg_ids, (lq_pos, lq_neg) = inputs

    def f(v_, ep_, en_):
        return dloss * sampled_softmax_forward(v_, ep_, en_, pos_ids, neg_ids, lq_pos, lq_neg,
                                               hits)[0]

    _, cache = sampled_softmax_forward(v, e_pos, e_neg, pos_ids, neg_ids, lq_pos, lq_neg, hits)
    dv, de_pos, de_neg = sampled_softmax_backward(dloss, cache)
    assert_gradient(lambda x: f(x, e_pos, e_neg), v, dv, "v")
    assert_gradient(lambda x: f(v, x, e_neg), e_pos, de_pos, "e_pos")
    assert_gradient(lambda x: f(v, e_pos, x), e_neg, de_neg, "e_neg")


@given(inputs=sampled_inputs())
def test_accidental_hits_take_no_mass(inputs):
    v, e_pos, e_neg, pos_ids, neg_ids, (lq_pos, lq_neg) = inputs
    loss, cache = sampled_softmax_forward(v, e_pos, e_neg, pos_ids, neg_ids, lq_pos, lq_neg)
    hit = neg_ids[None, :] == pos_ids[:, None]  # [B, S]
    np.testing.assert_array_equal(cache.prob_neg[hit], 0.0)
    np.testing.assert_allclose(cache.prob_pos + cache.prob_neg.sum(1), 1.0, rtol=1e-12)
    _, _, de_neg = sampled_softmax_backward(1.0, cache)
    only_hits = hit.all(0)  # a negative that is a hit for every row gets no gradient
    np.testing.assert_array_equal(de_neg[only_hits], 0.0)


@given(data=st.data(), B=st.integers(1, 4), V=st.integers(2, 7), d=st.integers(1, 4),
       scale=SCALES, log_q=st.booleans())
def test_all_items_sampled_uniformly_equals_full_softmax(data, B, V, d, scale, log_q):
    """Negatives = every item once, uniform Q: the sampled loss is Eq. (10) exactly."""
    E = data.draw(floats((V, d), scale), label="E")
    v = data.draw(floats((B, d), scale), label="v")
    pos = data.draw(hnp.arrays(np.int64, (B,), elements=st.integers(1, V - 1)), label="pos")
    neg = np.arange(1, V)
    sampler = UniformSampler(V)
    lq = (sampler.log_expected_count(pos, V - 1), sampler.log_expected_count(neg, V - 1)) \
        if log_q else (None, None)
    loss, cache = sampled_softmax_forward(v, E[pos], E[neg], pos, neg, *lq)
    full, fcache = full_softmax_forward(v, E, pos)
    np.testing.assert_allclose(loss, full, rtol=1e-10, atol=1e-12)
    dv, de_pos, de_neg = sampled_softmax_backward(1.0, cache)
    fdv, fdE = full_softmax_backward(1.0, fcache)
    np.testing.assert_allclose(dv, fdv, rtol=1e-9, atol=1e-12)
    dE = scatter_rows(np.r_[pos, neg], np.r_[de_pos, de_neg]).to_dense(V)
    np.testing.assert_allclose(dE, fdE, rtol=1e-9, atol=1e-12)


@given(data=st.data(), B=st.integers(1, 3), V=st.integers(2, 5), d=st.integers(1, 3))
def test_full_softmax_gradient(data, B, V, d):
    E, v = data.draw(floats((V, d)), label="E"), data.draw(floats((B, d)), label="v")
    pos = data.draw(hnp.arrays(np.int64, (B,), elements=st.integers(1, V - 1)), label="pos")
    _, cache = full_softmax_forward(v, E, pos)
    dv, dE = full_softmax_backward(1.0, cache)
    assert_gradient(lambda x: full_softmax_forward(x, E, pos)[0], v, dv, "v")
    assert_gradient(lambda x: full_softmax_forward(v, x, pos)[0], E, dE, "E")
    np.testing.assert_array_equal(dE[0], 0.0)  # padding is not an item


def test_huge_logits_give_a_finite_loss():
    v = np.array([[1e3, 0.0]])
    e_pos, e_neg = np.array([[-1e3, 0.0]]), np.array([[1e3, 0.0], [0.0, 1.0]])
    loss, cache = sampled_softmax_forward(v, e_pos, e_neg, np.array([1]), np.array([2, 3]))
    np.testing.assert_allclose(loss, 2e6)  # -(-1e6) + logsumexp(-1e6, 1e6, 0) = 2e6
    assert all(np.all(np.isfinite(g)) for g in sampled_softmax_backward(1.0, cache))


def test_logq_matches_the_sampler():
    sampler = LogUniformSampler(np.array([3, 1, 2]))  # item 3 most popular
    lq = sampler.log_expected_count(np.array([3, 1, 2]), 10)
    p = np.array([np.log(2), np.log(3 / 2), np.log(4 / 3)]) / np.log(4)
    np.testing.assert_allclose(lq, np.log(10 * p))


def test_shape_errors_are_named():
    with pytest.raises(ValueError, match="sampled softmax"):
        sampled_softmax_forward(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((5, 3)),
                                np.ones(2, int), np.ones(5, int))
    with pytest.raises(ValueError, match="both log_q_pos and log_q_neg"):
        sampled_softmax_forward(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((5, 3)),
                                np.ones(2, int), np.ones(5, int), log_q_pos=np.zeros(2))
    with pytest.raises(ValueError, match="positive ids"):
        full_softmax_forward(np.zeros((1, 2)), np.zeros((3, 2)), np.array([0]))
