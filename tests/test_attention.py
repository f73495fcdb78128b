"""Label-aware attention (3.4): gradients per mode, p edge cases, masks."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mindref.attention import attention_backward, attention_forward

from gradcheck import assert_gradient, upstream
from strategies import SCALES, floats, lengths, mask_from_lengths


@st.composite
def attention_inputs(draw, nonneg=False):
    B, K, d = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    scale = draw(SCALES)
    V = draw(floats((B, K, d), scale), label="V")
    e = draw(floats((B, d), 1.0), label="e")
    if nonneg:
        V, e = np.abs(V), np.abs(e)
    cmask = mask_from_lengths(draw(lengths(B, K), label="K'_u"), K)
    return V, e, cmask


def check_gradients(V, e, cmask, p, mode, seed, check_e=True):
    v, cache = attention_forward(V, e, cmask, p, mode)
    dv = upstream(np.random.default_rng(seed), v.shape)
    dV, de = attention_backward(dv, cache)

    def f(V_, e_):
        return float(np.sum(attention_forward(V_, e_, cmask, p, mode)[0] * dv))

    assert_gradient(lambda x: f(x, e), V, dV, "V")
    if check_e:
        assert_gradient(lambda x: f(V, x), e, de, "e")


@given(inputs=attention_inputs(), p=st.sampled_from([0, 1, 2, 3, 4]), seed=st.integers(0, 2**32 - 1))
def test_pow_gradient_integer_p(inputs, p, seed):
    check_gradients(*inputs, p, "pow", seed)


@given(inputs=attention_inputs(nonneg=True), p=st.sampled_from([1.0, 1.5, 2.5]),
       seed=st.integers(0, 2**32 - 1))
def test_pow_gradient_non_integer_p_on_positive_scores(inputs, p, seed):
    V, e, cmask = inputs
    assume(np.all(np.einsum("bkd,bd->bk", V, e)[cmask] > 1e-3))  # away from s = 0
    check_gradients(V, e, cmask, p, "pow", seed)


@given(inputs=attention_inputs(), p=st.sampled_from([0.0, 0.5, 1.0, 3.7, 20.0]),
       seed=st.integers(0, 2**32 - 1))
def test_scaled_gradient(inputs, p, seed):
    check_gradients(*inputs, p, "scaled", seed)


@given(inputs=attention_inputs(), seed=st.integers(0, 2**32 - 1))
def test_hard_gradient_reaches_the_chosen_capsule_only(inputs, seed):
    V, e, cmask = inputs
    s = np.where(cmask, np.einsum("bkd,bd->bk", V, e), -np.inf)
    top2 = np.sort(s, axis=-1)[:, -2:] if s.shape[1] > 1 else None
    assume(top2 is None or np.all((top2[:, 1] - top2[:, 0] > 1e-4) | ~np.isfinite(top2[:, 0])))
    check_gradients(V, e, cmask, np.inf, "hard", seed, check_e=False)
    _, cache = attention_forward(V, e, cmask, mode="hard")
    _, de = attention_backward(np.ones((V.shape[0], V.shape[2])), cache)
    np.testing.assert_array_equal(de, 0.0)  # argmax is piecewise constant in e


@given(inputs=attention_inputs())
def test_p_zero_is_the_mean_of_valid_capsules(inputs):
    V, e, cmask = inputs
    v, _ = attention_forward(V, e, cmask, p=0)
    want = (V * cmask[..., None]).sum(1) / cmask.sum(1, keepdims=True)
    np.testing.assert_allclose(v, want, rtol=1e-12, atol=1e-15)


@given(inputs=attention_inputs())
def test_hard_picks_the_best_valid_capsule(inputs):
    V, e, cmask = inputs
    v, cache = attention_forward(V, e, cmask, mode="hard")
    s = np.where(cmask, np.einsum("bkd,bd->bk", V, e), -np.inf)
    best = np.argmax(s, axis=1)
    np.testing.assert_array_equal(v, V[np.arange(V.shape[0]), best])


@given(inputs=attention_inputs(), mode=st.sampled_from(["pow", "scaled", "hard"]), data=st.data())
def test_masked_capsules_get_no_weight(inputs, mode, data):
    V, e, cmask = inputs
    v, cache = attention_forward(V, e, cmask, p=2, mode=mode)
    np.testing.assert_array_equal(cache.a[~cmask], 0.0)
    V2 = V.copy()
    V2[~cmask] = data.draw(st.sampled_from([1e3, -1e3]))
    np.testing.assert_array_equal(attention_forward(V2, e, cmask, p=2, mode=mode)[0], v)


def test_even_p_rewards_a_negative_match_odd_p_does_not():
    """pow(s, 2) makes s = -3 the best capsule; pow(s, 3) keeps it the worst."""
    V = np.array([[[1.0, 0.0], [-3.0, 0.0]]])
    e, m = np.array([[1.0, 0.0]]), np.ones((1, 2), bool)
    _, even = attention_forward(V, e, m, p=2)
    _, odd = attention_forward(V, e, m, p=3)
    assert even.a[0, 1] > 0.99 and odd.a[0, 1] < 0.01


def test_undefined_pow_is_refused():
    V = np.array([[[1.0], [-1.0]]])
    e, m = np.array([[1.0]]), np.ones((1, 2), bool)
    with pytest.raises(ValueError, match="non-integer p"):
        attention_forward(V, e, m, p=1.5)
    with pytest.raises(ValueError, match="p must be >= 0"):
        attention_forward(V, e, m, p=-1)
    with pytest.raises(ValueError, match="infinite derivative"):
        attention_forward(np.array([[[0.0]]]), np.array([[1.0]]), np.ones((1, 1), bool), p=0.5)
    with pytest.raises(ValueError, match="mode"):
        attention_forward(V, e, m, mode="soft")
    attention_forward(V, e, m, p=1.5, mode="scaled")  # the safe variant accepts it
    # a negative score on a masked capsule is ignored, not refused
    attention_forward(V, e, np.array([[True, False]]), p=1.5)


def test_large_scores_are_stable():
    V = np.array([[[1e3, 0.0], [-1e3, 0.0], [999.0, 0.0]]])
    e, m = np.array([[1.0, 0.0]]), np.ones((1, 3), bool)
    for mode, p in [("pow", 2), ("pow", 3), ("scaled", 5.0)]:
        v, cache = attention_forward(V, e, m, p, mode)
        dV, de = attention_backward(np.ones((1, 2)), cache)
        assert np.all(np.isfinite(v)) and np.all(np.isfinite(dV)) and np.all(np.isfinite(de))
