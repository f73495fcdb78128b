"""The gradient checker itself must be able to fail: a wrong backward is caught."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mindref.squash import squash_backward, squash_forward

from gradcheck import assert_gradient, upstream


@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 5), eps=st.sampled_from([1e-3, 1e-2]))
def test_checker_rejects_perturbed_squash_backward(seed, d, eps):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((3, d))
    dc = upstream(rng, z.shape)
    _, cache = squash_forward(z)
    good = squash_backward(dc, cache)

    def f(x):
        return float(np.sum(squash_forward(x)[0] * dc))

    assert_gradient(f, z.copy(), good, "z")  # the right one passes
    wrong = good * (1 + eps)  # a 0.1% to 1% error in every entry
    with pytest.raises(AssertionError):
        assert_gradient(f, z.copy(), wrong, "z")


def test_checker_rejects_dropped_term():
    """The squash backward without its radial term (a plausible bug) is rejected."""
    rng = np.random.default_rng(0)
    z, dc = rng.standard_normal((2, 4)), upstream(rng, (2, 4))
    _, cache = squash_forward(z)
    n = cache.norm
    only_scale = n / (1 + n * n) * dc

    def f(x):
        return float(np.sum(squash_forward(x)[0] * dc))

    with pytest.raises(AssertionError):
        assert_gradient(f, z.copy(), only_scale, "z")
