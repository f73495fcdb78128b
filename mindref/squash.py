"""Squash non-linearity of capsules (MIND 3.3.1, the paper's Eq. (7)).

    c = squash(z) = ||z||^2 / (1 + ||z||^2) * z / ||z||

Summaries of the paper (including our study note) print the last factor as z / ||z||^2; that is
a misprint: it gives c = z / (1 + ||z||^2), whose norm ||z|| / (1 + ||z||^2) peaks at 1/2 and then
falls, so longer capsules would come out shorter. The capsule reading "length in [0, 1), growing
with ||z||" needs z / ||z||, which every implementation uses.

We compute the algebraically equal form c = s(n) z with n = ||z|| and s(n) = n / (1 + n^2),
written 1 / (n + 1/n): exact at z = 0 (c = 0, Jacobian = 0, no epsilon), and free of overflow
for huge norms (n^2 is never formed; the norm itself is computed on z scaled by max |z_k|).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class SquashCache(NamedTuple):
    z: np.ndarray  # [..., d]
    norm: np.ndarray  # [..., 1]


def _norm(z: np.ndarray) -> np.ndarray:
    """||z|| over the last axis without overflow or underflow of the squares."""
    m = np.max(np.abs(z), axis=-1, keepdims=True)  # [..., 1]
    safe_m = np.where(m > 0, m, 1)
    return m * np.sqrt(np.sum((z / safe_m) ** 2, axis=-1, keepdims=True))  # [..., 1]


def _inverse(n: np.ndarray) -> np.ndarray:
    """1/n, finite everywhere (n = 0 maps to 1/tiny)."""
    return 1 / np.maximum(n, np.finfo(n.dtype).tiny)


def squash_forward(z: np.ndarray) -> tuple[np.ndarray, SquashCache]:
    """Eq. (7) over the last axis. z [..., d] -> c [..., d]; ||c|| < 1, direction kept."""
    n = _norm(z)  # [..., 1]
    s = np.where(n > 0, 1 / (n + _inverse(n)), 0)  # [..., 1]  n^2/(1+n^2) * 1/n
    return s * z, SquashCache(z, n)


def squash_backward(dc: np.ndarray, cache: SquashCache) -> np.ndarray:
    """c = s(n) z, so dc/dz = s I + s'(n) z u^T with u = z/n, and

        dz = s dc + s'(n) n (u . dc) u,   s'(n) n = s (1 - n^2) / (1 + n^2) = s (1/n - n) / (1/n + n).
    """
    z, n = cache
    r = _inverse(n)  # [..., 1]  1/n
    s = np.where(n > 0, 1 / (n + r), 0)  # [..., 1]
    n_ds_dn = s * (r - n) / (r + n)  # [..., 1], (1 - n^2)/(1 + n^2) in [-1, 1]
    u = z * np.where(n > 0, r, 0)  # [..., d], 0 where z = 0
    return s * dc + n_ds_dn * np.sum(u * dc, axis=-1, keepdims=True) * u
