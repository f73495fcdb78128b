"""Baselines: each scorer checked against a direct computation on a tiny matrix."""
import numpy as np

from mindref.baselines import WALS, ItemCF, MostPopular, history_matrix, interactions
from mindref.data import Examples


def tiny_train():
    # user 0: items 1, 2; user 1: items 1, 3; user 2: items 2, 3, 4
    return Examples(users=np.array([0, 1, 2, 2]), hist=np.array([[1, 0], [1, 0], [2, 0], [2, 3]]),
                    target=np.array([2, 3, 3, 4]))


def test_interactions_and_most_popular():
    R = interactions(tiny_train(), 3, 5).toarray()
    np.testing.assert_array_equal(R, [[0, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 1, 1]])
    s = MostPopular(tiny_train(), 5)(np.array([0, 1]), np.zeros((2, 2), int))
    np.testing.assert_array_equal(s, [[0, 0, 1, 2, 1]] * 2)


def test_itemcf_is_the_summed_cosine_similarity():
    R = interactions(tiny_train(), 3, 5)
    s = ItemCF(R)(np.array([0]), np.array([[1, 0]]))  # history: item 1
    dense = R.toarray()
    norms = np.linalg.norm(dense, axis=0)
    cos = dense.T @ dense / np.outer(np.where(norms > 0, norms, 1), np.where(norms > 0, norms, 1))
    np.fill_diagonal(cos, 0)
    np.testing.assert_allclose(s[0], cos[1], rtol=1e-12)


def test_wals_solves_its_normal_equations_and_fits_the_data():
    R = interactions(tiny_train(), 3, 5)
    m = WALS(R, dim=3, alpha=5.0, reg=0.1, iterations=15)
    # the user step is exact: x_u solves (Y^T C_u Y + reg I) x = Y^T C_u p_u
    C = 1 + 5.0 * R.toarray()
    u = 2
    A = m.Y.T @ (C[u][:, None] * m.Y) + 0.1 * np.eye(3)
    x = np.linalg.solve(A, m.Y.T @ (C[u] * R.toarray()[u]))
    np.testing.assert_allclose(m._solve(R[u], m.Y)[0], x, rtol=1e-8)
    pred = m.X @ m.Y.T
    assert pred[R.toarray() == 1].min() > pred[:, 1:][R.toarray()[:, 1:] == 0].max()
    H = history_matrix(np.array([[2, 3, 4]]), 5)
    np.testing.assert_allclose(m(np.array([2]), np.array([[2, 3, 4]])), m._solve(H, m.Y) @ m.Y.T)
