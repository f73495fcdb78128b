"""Dense + ReLU layers: gradient check away from the ReLU kink, and the kink's convention."""
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from mindref.dense import dense_backward, dense_forward

from gradcheck import assert_gradient, upstream
from strategies import SCALES, floats


@given(data=st.data(), lead=st.sampled_from([(1,), (3,), (2, 3)]), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), activation=st.sampled_from(["relu", "linear"]), scale=SCALES)
def test_dense_gradient(data, lead, n_in, n_out, activation, scale):
    x = data.draw(floats(lead + (n_in,), scale), label="x")
    W = data.draw(floats((n_in, n_out)), label="W")
    b = data.draw(floats((n_out,)), label="b")
    h = x @ W + b
    assume(activation == "linear" or np.min(np.abs(h)) > 1e-4)  # finite differences need no kink
    dy = upstream(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), h.shape)
    _, cache = dense_forward(x, W, b, activation)
    dx, dW, db = dense_backward(dy, cache)

    def f(x_, W_, b_):
        return float(np.sum(dense_forward(x_, W_, b_, activation)[0] * dy))

    assert_gradient(lambda v: f(v, W, b), x, dx, "x")
    assert_gradient(lambda v: f(x, v, b), W, dW, "W")
    assert_gradient(lambda v: f(x, W, v), b, db, "b")


def test_relu_zero_passes_no_gradient():
    x, W, b = np.array([[1.0]]), np.array([[-1.0, 1.0]]), np.array([1.0, 0.0])  # h = [0, 1]
    y, cache = dense_forward(x, W, b)
    np.testing.assert_array_equal(y, [[0.0, 1.0]])
    dx, dW, db = dense_backward(np.array([[5.0, 7.0]]), cache)
    np.testing.assert_array_equal(db, [0.0, 7.0])
    np.testing.assert_array_equal(dx, [[7.0]])


def test_dense_rejects_mismatched_shapes():
    import pytest
    with pytest.raises(ValueError, match="do not fit"):
        dense_forward(np.zeros((2, 3)), np.zeros((4, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="activation"):
        dense_forward(np.zeros((2, 3)), np.zeros((3, 2)), np.zeros(2), "tanh")
