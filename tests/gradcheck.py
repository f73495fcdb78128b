"""Finite-difference gradient checking (float64 central differences).

Lessons measured on the prototype (shared/STYLE.md): step h = 1e-7 with rtol = 1e-5 and
atol = 1e-6 hold for squash, attention and routing in float64; float32 does not, so every
check runs in float64. The upstream gradient is random, never ones (ones make every softmax
backward vanish and hide bugs).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

H = 1e-7
RTOL = 1e-5
ATOL = 1e-6


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = H) -> np.ndarray:
    """(f(x + h e_k) - f(x - h e_k)) / 2h for every entry k of x. f must read x afresh each call."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        f_plus = f(x)
        flat[k] = old - h
        f_minus = f(x)
        flat[k] = old
        gflat[k] = (f_plus - f_minus) / (2 * h)
    return grad


def assert_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, analytic: np.ndarray,
                    name: str = "x") -> None:
    """Assert analytic == numerical gradient of scalar f at x (float64 only).

    The absolute tolerance grows with |f(x)|: the round-off of f(x +- h) is about eps |f| / h.
    """
    assert x.dtype == np.float64, "gradient checks run in float64 only"
    assert analytic.shape == x.shape, f"d{name}: shape {analytic.shape} != {x.shape}"
    numeric = numerical_gradient(f, x)
    scale = max(1.0, abs(f(x)))
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL * scale,
                               err_msg=f"gradient of {name} differs from central differences")


def upstream(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """A random upstream gradient (never ones)."""
    return rng.standard_normal(shape)
