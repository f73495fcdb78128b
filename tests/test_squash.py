"""Squash, Eq. (7): gradient check, z = 0, and its invariants."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mindref.squash import squash_backward, squash_forward

from gradcheck import assert_gradient, upstream
from strategies import SCALES, floats


@given(data=st.data(), shape=st.sampled_from([(1,), (4,), (3, 2), (2, 3, 4)]), scale=SCALES)
def test_squash_gradient(data, shape, scale):
    z = data.draw(floats(shape, scale), label="z")
    if data.draw(st.booleans(), label="zero first capsule"):
        z.reshape(-1, shape[-1])[0] = 0.0  # an exact zero capsule among the others
    dc = upstream(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), shape)
    z0, dc0 = z.copy(), dc.copy()
    _, cache = squash_forward(z)
    dz = squash_backward(dc, cache)
    np.testing.assert_array_equal(z, z0)  # backward mutates neither input
    np.testing.assert_array_equal(dc, dc0)  # nor the upstream gradient
    assert_gradient(lambda x: float(np.sum(squash_forward(x)[0] * dc)), z, dz, "z")


def test_squash_at_zero_is_zero_with_zero_jacobian():
    z = np.zeros((2, 3))
    with np.errstate(all="raise"):  # no 0/0 anywhere
        c, cache = squash_forward(z)
        dz = squash_backward(np.ones_like(z), cache)
    np.testing.assert_array_equal(c, 0.0)
    np.testing.assert_array_equal(dz, 0.0)  # squash(z) ~ ||z|| z is second order at 0


@given(z=floats((5, 4), 10.0))
def test_squash_keeps_direction_and_norm_below_one(z):
    z = np.where(np.abs(z) < 1e-70, 0.0, z)  # so that ||c||^2 is representable in the check
    c, _ = squash_forward(z)
    n = np.linalg.norm(z, axis=-1)
    nc = np.linalg.norm(c, axis=-1)
    assert np.all(nc < 1)
    np.testing.assert_allclose(nc, n**2 / (1 + n**2), rtol=1e-12)  # Eq. (7)
    nz = n > 0  # direction is defined for non-zero capsules
    cos = np.sum(c[nz] * z[nz], -1) / (nc[nz] * n[nz])
    np.testing.assert_allclose(cos, 1.0, rtol=1e-12)


def test_squash_is_not_the_misprinted_form():
    """The note's z/||z||^2 would give ||c|| = n/(1+n^2) = 0.4 at n = 2; Eq. (7) gives 0.8."""
    c, _ = squash_forward(np.array([[2.0, 0.0]]))
    np.testing.assert_allclose(np.linalg.norm(c), 0.8)


@given(data=st.data())
def test_squash_preserves_float32(data):
    z = data.draw(floats((3, 4), 1.0, np.float32))
    c, cache = squash_forward(z)
    assert c.dtype == np.float32
    assert squash_backward(np.ones_like(z), cache).dtype == np.float32


def test_squash_huge_and_tiny_norms_are_finite():
    z = np.array([[1e300, 1e300], [1e-100, 0.0], [3e-160, -3e-160], [5e-320, 0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        c, cache = squash_forward(z)
        dz = squash_backward(np.array([[1.0, -2.0]] * 4), cache)
    np.testing.assert_allclose(np.linalg.norm(c[0] / 1e150) * 1e150, 1.0)  # saturated at 1
    np.testing.assert_allclose(dz[0], 0.0, atol=1e-299)  # flat far out: derivative ~ 1/n
    np.testing.assert_allclose(c[1] / 1e-100 / 1e-100, [1.0, 0.0])  # c ~ ||z|| z near 0
    assert np.all(np.isfinite(dz))
