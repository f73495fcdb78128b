"""The Eq. (3) max-score sampled softmax: gradients away from ties, and K = 1 = sampled softmax."""
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mindref.max_score_loss import max_score_backward, max_score_forward
from mindref.sampled_softmax import sampled_softmax_forward

from gradcheck import assert_gradient
from strategies import SCALES, floats, lengths, mask_from_lengths


@st.composite
def inputs(draw, max_K=4):
    B, K = draw(st.integers(1, 3)), draw(st.integers(1, max_K))
    S, d = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    scale = draw(SCALES)
    V = draw(floats((B, K, d), scale), label="V")
    e_pos, e_neg = draw(floats((B, d)), label="e_pos"), draw(floats((S, d)), label="e_neg")
    cmask = mask_from_lengths(draw(lengths(B, K), label="K'_u"), K)
    ids = lambda n: hnp.arrays(np.int64, (n,), elements=st.integers(1, 5))  # noqa: E731
    lq = (draw(floats((B,), 2.0)), draw(floats((S,), 2.0))) if draw(st.booleans()) else (None, None)
    return V, cmask, e_pos, e_neg, draw(ids(B)), draw(ids(S)), lq


def margin(V, cmask, e):
    """Smallest gap between the best and second-best valid interest for each (row, item)."""
    s = np.where(cmask[:, :, None], V @ e.T, -np.inf)  # [B, K, N]
    if s.shape[1] == 1:
        return np.inf
    top = np.sort(s, axis=1)
    return np.min(np.where(np.isfinite(top[:, -2]), top[:, -1] - top[:, -2], np.inf))


@given(data=inputs(), dloss=st.floats(-2, 2))
def test_max_score_gradient(data, dloss):
    V, cmask, e_pos, e_neg, pos, neg, (lq_pos, lq_neg) = data
    for b in range(V.shape[0]):  # the max is differentiable only away from ties
        assume(margin(V[b:b + 1], cmask[b:b + 1], np.r_[e_pos[b:b + 1], e_neg]) > 1e-4)
    _, cache = max_score_forward(V, cmask, e_pos, e_neg, pos, neg, lq_pos, lq_neg)
    dV, de_pos, de_neg = max_score_backward(dloss, cache)

    def f(V_, ep_, en_):
        return dloss * max_score_forward(V_, cmask, ep_, en_, pos, neg, lq_pos, lq_neg)[0]

    assert_gradient(lambda x: f(x, e_pos, e_neg), V, dV, "V")
    assert_gradient(lambda x: f(V, x, e_neg), e_pos, de_pos, "e_pos")
    assert_gradient(lambda x: f(V, e_pos, x), e_neg, de_neg, "e_neg")
    np.testing.assert_array_equal(dV[~cmask], 0.0)  # a masked interest never wins


@given(data=inputs(max_K=1))
def test_one_interest_is_the_sampled_softmax(data):
    V, cmask, e_pos, e_neg, pos, neg, (lq_pos, lq_neg) = data
    a, _ = max_score_forward(V, cmask, e_pos, e_neg, pos, neg, lq_pos, lq_neg)
    b, _ = sampled_softmax_forward(V[:, 0], e_pos, e_neg, pos, neg, lq_pos, lq_neg)
    np.testing.assert_allclose(a, b, rtol=1e-12)


@given(data=inputs(max_K=1), K=st.integers(2, 4))
def test_tied_interests_the_first_takes_the_gradient(data, K):
    """Interests tied on every candidate (copies of one vector): the max is the same and its whole
    gradient reaches the first valid interest, as argmax's first index, never split or doubled."""
    V1, _, e_pos, e_neg, pos, neg, (lq_pos, lq_neg) = data
    V = np.repeat(V1, K, axis=1)  # [B, K, d], every interest the same vector
    cmask = np.ones(V.shape[:2], bool)
    cmask[:, 0] = False  # the first interest masked: interest 1 is the first valid one
    one, c1 = max_score_forward(V1, np.ones((len(V1), 1), bool), e_pos, e_neg, pos, neg, lq_pos, lq_neg)
    loss, cache = max_score_forward(V, cmask, e_pos, e_neg, pos, neg, lq_pos, lq_neg)
    dV, de_pos, de_neg = max_score_backward(1.0, cache)
    dV1, de_pos1, de_neg1 = max_score_backward(1.0, c1)
    np.testing.assert_allclose(loss, one, rtol=1e-12)
    np.testing.assert_allclose(dV[:, 1], dV1[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(dV[:, [0, *range(2, K)]], 0.0)
    np.testing.assert_allclose(de_neg, de_neg1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(de_pos, de_pos1, rtol=1e-10, atol=1e-12)
