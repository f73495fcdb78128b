"""Baselines: each scorer checked against a direct computation on a tiny matrix."""
import numpy as np
import pytest

from mindref.baselines import WALS, ItemCF, MaxMF, MostPopular, history_matrix, interactions
from mindref.data import Examples, leave_one_out, synthetic
from mindref.evaluate import evaluate

from gradcheck import assert_gradient


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


def test_maxmf_gradient_of_the_max_reaches_the_winning_vectors():
    m = MaxMF(tiny_train(), 3, 5, T=2, dim=3, epochs=0)
    rng = np.random.default_rng(0)
    m.U = rng.standard_normal(m.U.shape)  # float64 for the check
    m.Y = rng.standard_normal(m.Y.shape)
    users, pos, neg = np.array([0, 2, 2]), np.array([2, 3, 4]), np.array([1, 4, 3])
    lq_pos, lq_neg = rng.standard_normal(3), rng.standard_normal(3)
    g = m._grads(users, pos, neg, lq_pos, lq_neg)

    def loss(U, Y):
        s_pos = np.einsum("btd,bd->bt", U[users], Y[pos]).max(1) - lq_pos
        s_neg = (U[users] @ Y[neg].T).max(1) - lq_neg
        s_neg = np.where(neg[None, :] == pos[:, None], -np.inf, s_neg)
        all_ = np.concatenate([s_pos[:, None], s_neg], 1)
        mx = all_.max(1)
        return float(np.mean(mx + np.log(np.exp(all_ - mx[:, None]).sum(1)) - s_pos))

    assert_gradient(lambda U: loss(U, m.Y), m.U.copy(), g["U"].to_dense(3), "U")
    assert_gradient(lambda Y: loss(m.U, Y), m.Y.copy(), g["Y"].to_dense(5), "Y")


def test_maxmf_learns_and_refuses_unknown_users():
    ds = synthetic(num_users=300, num_clusters=30, items_per_cluster=20, seed=0)
    train, _, test = leave_one_out(ds, 40)
    m = MaxMF(train, 300, ds.num_items, T=3, dim=16, epochs=10, batch_size=64, num_neg=64, lr=1e-2)
    pop = evaluate(MostPopular(train, ds.num_items), test, ds.num_items)["HR@50"]
    assert evaluate(m, test, ds.num_items)["HR@50"] > pop + 0.3  # measured: 0.89 vs 0.06
    m.known[5] = False
    with pytest.raises(ValueError, match="user 5 has no learned vectors"):
        m(np.array([4, 5]), np.zeros((2, 3), int))


def test_wals_and_maxmf_report_progress_for_their_bars():
    """`compare` shows a bar for the slow baselines: one update per WALS iteration, per MaxMF step."""
    calls = []
    WALS(interactions(tiny_train(), 3, 5), dim=3, iterations=7, progress=calls.append)
    assert calls == [1] * 7
    ds = synthetic(num_users=50, seed=1)
    train, _, _ = leave_one_out(ds, 20)
    calls.clear()
    MaxMF(train, 50, ds.num_items, T=2, dim=8, epochs=2, batch_size=64, num_neg=16, progress=calls.append)
    assert len(calls) == 2 * -(-len(train.target) // 64)
