"""Embedding & pooling (3.2): table gradients (row-sparse), padding, field averaging."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mindref.embedding import (
    item_embedding_backward,
    item_embedding_forward,
    profile_embedding_backward,
    profile_embedding_forward,
)
from mindref.sparse import scatter_rows

from gradcheck import assert_gradient, upstream
from strategies import floats

D = 3


def id_arrays(lead: tuple, width: int, num_rows: int):
    return hnp.arrays(np.int64, lead + (width,), elements=st.integers(0, num_rows - 1))


@st.composite
def item_inputs(draw):
    lead = draw(st.sampled_from([(1,), (4,), (2, 3)]))
    n_fields = draw(st.integers(1, 3))
    rows = [draw(st.integers(1, 5)) for _ in range(n_fields)]  # V_f (1 = padding only)
    widths = [draw(st.integers(1, 3)) for _ in range(n_fields)]  # F_f (>1: multi-valued)
    tables = [draw(floats((v, D)), label=f"table {f}") for f, v in enumerate(rows)]
    ids = [draw(id_arrays(lead, w, v), label=f"ids {f}") for f, (w, v) in enumerate(zip(widths, rows))]
    return tables, ids


@given(inputs=item_inputs(), seed=st.integers(0, 2**32 - 1))
def test_item_embedding_gradient_is_row_sparse_and_exact(inputs, seed):
    tables, ids = inputs
    e, cache = item_embedding_forward(tables, ids)
    de = upstream(np.random.default_rng(seed), e.shape)
    grads = item_embedding_backward(de, cache)
    for f, (t, g) in enumerate(zip(tables, grads)):
        touched = np.unique(ids[f][ids[f] != 0])
        np.testing.assert_array_equal(g.rows, touched)  # exactly the non-padding rows used
        assert g.values.shape == (touched.size, D)

        def loss(t_f, f=f):
            ts = list(tables)
            ts[f] = t_f
            return float(np.sum(item_embedding_forward(ts, ids)[0] * de))

        assert_gradient(loss, t, g.to_dense(t.shape[0]), f"table {f}")


@given(inputs=item_inputs())
def test_padding_row_never_matters(inputs):
    tables, ids = inputs
    e, _ = item_embedding_forward(tables, ids)
    garbage = [t.copy() for t in tables]
    for t in garbage:
        t[0] = 1e6
    np.testing.assert_array_equal(item_embedding_forward(garbage, ids)[0], e)
    all_pad = np.all([np.all(x == 0, axis=-1) for x in ids], axis=0)  # padding items
    np.testing.assert_array_equal(e[all_pad], 0.0)


def test_multi_valued_field_is_averaged_first_and_absent_field_does_not_dilute():
    item = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]])  # id 1 -> 2, id 2 -> 4
    genre = np.array([[0.0, 0.0], [0.0, 2.0], [0.0, 6.0]])
    e, _ = item_embedding_forward([item, genre], [np.array([[1]]), np.array([[1, 2, 0]])])
    np.testing.assert_allclose(e, [[1.0, 2.0]])  # (item + mean(genres)) / 2
    e, _ = item_embedding_forward([item, genre], [np.array([[2]]), np.array([[0, 0, 0]])])
    np.testing.assert_allclose(e, [[4.0, 0.0]])  # no genre: the item id alone


@given(data=st.data(), B=st.integers(1, 4), n_fields=st.integers(1, 3))
def test_profile_embedding_gradient(data, B, n_fields):
    rows = [data.draw(st.integers(1, 4)) for _ in range(n_fields)]
    dims = [data.draw(st.integers(1, 3)) for _ in range(n_fields)]
    tables = [data.draw(floats((v, k)), label=f"table {p}") for p, (v, k) in enumerate(zip(rows, dims))]
    ids = np.stack([data.draw(hnp.arrays(np.int64, (B,), elements=st.integers(0, v - 1)))
                    for v in rows], axis=1)
    out, cache = profile_embedding_forward(tables, ids)
    assert out.shape == (B, sum(dims))
    dout = upstream(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), out.shape)
    grads = profile_embedding_backward(dout, cache)
    for p, (t, g) in enumerate(zip(tables, grads)):
        assert 0 not in g.rows

        def loss(t_p, p=p):
            ts = list(tables)
            ts[p] = t_p
            return float(np.sum(profile_embedding_forward(ts, ids)[0] * dout))

        assert_gradient(loss, t, g.to_dense(t.shape[0]), f"profile table {p}")


def test_scatter_rows_sums_duplicates():
    g = scatter_rows(np.array([[3, 1], [3, 0]]), np.arange(8.0).reshape(2, 2, 2))
    np.testing.assert_array_equal(g.rows, [1, 3])
    np.testing.assert_array_equal(g.values, [[2.0, 3.0], [0.0 + 4.0, 1.0 + 5.0]])


@pytest.mark.parametrize("bad, match", [
    (np.array([[5]]), "outside the table's range"),
    (np.array([[-1]]), "outside the table's range"),
    (np.array([[1.0]]), "must be integers"),
])
def test_bad_ids_are_named(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        item_embedding_forward([np.zeros((5, 2))], [bad])


def test_float32_preserved():
    t = np.ones((3, 2), dtype=np.float32)
    e, cache = item_embedding_forward([t], [np.array([[1, 2]])])
    assert e.dtype == np.float32
    assert item_embedding_backward(e, cache)[0].values.dtype == np.float32
