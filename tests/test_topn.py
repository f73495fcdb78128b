"""Exact top-n inside ONNX (export/topn.py) against the NumPy exact path, through onnx's
ReferenceEvaluator and onnxruntime: identical ids (apart from exact score ties), scores within
1e-5 relative, on generated cases (K'_u < K, masked interests holding non-zero vectors, histories
covering most of a tiny catalogue, n larger than the catalogue, every valid score negative)."""
import numpy as np
import pytest
from conftest import require
from hypothesis import given
from hypothesis import strategies as st

require("onnx"), require("onnxruntime")
import onnx  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from mindref.export import Retriever, TopNSession, build_topn, eq3  # noqa: E402
from mindref.export.arrays import npy_data_offset  # noqa: E402


@st.composite
def cases(draw):
    V = draw(st.integers(2, 40))  # item ids 0..V-1, 0 = padding
    K = draw(st.integers(1, 4))
    d = draw(st.integers(1, 6))
    B = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    E = rng.normal(size=(V, d)).astype(np.float32)
    E[0] = 0
    if draw(st.booleans()):  # every valid score negative: items opposite to the interests
        E[1:] = -np.abs(E[1:])
    V_u = rng.normal(size=(B, K, d)).astype(np.float32)  # masked capsules keep their (non-zero) vectors
    if draw(st.booleans()):
        V_u = np.abs(V_u)
    K_u = rng.integers(1, K + 1, B)  # K'_u <= K
    mask = np.arange(K)[None, :] < K_u[:, None]
    H = draw(st.integers(1, V + 3))
    hist = rng.integers(0, V, (B, H))  # up to all of a tiny catalogue, repeats, padding
    n = draw(st.integers(1, V + 5))  # n may exceed the catalogue
    return E, V_u, mask, hist, n


def numpy_top(E, V_u, mask, hist, n):
    return Retriever(E).retrieve(V_u, mask, hist, n, "exact")


def assert_same(expected, items, scores, interest, E, V_u, mask):
    keep = scores != -np.inf
    for b, want in enumerate(expected):
        got_items = items[b][keep[b]]
        assert len(got_items) == len(want.items)
        np.testing.assert_allclose(scores[b][keep[b]], want.scores, rtol=1e-5, atol=1e-6)
        differ = got_items != want.items
        if differ.any():  # only exact ties may be ordered differently
            s, _ = eq3(V_u[b], mask[b], E[got_items[differ]])
            np.testing.assert_allclose(s, want.scores[differ], rtol=1e-5, atol=1e-6)
        assert set(got_items) == set(want.items) or differ.any()
        k = interest[b][keep[b]]
        assert mask[b][k].all()  # the winning interest is always a valid one
        np.testing.assert_array_equal(k[~differ], want.interests[~differ])


@given(case=cases(), block=st.integers(1, 45))
def test_reference_evaluator_matches_numpy(case, block):
    """Any block size: one block, blocks of one item, a last block shorter than the rest."""
    E, V_u, mask, hist, n = case
    model = build_topn(E, V_u.shape[1], block=block)
    ref = ReferenceEvaluator(model)
    items, scores, interest = ref.run(None, {"interests": V_u, "interest_mask": mask, "history": hist,
                                             "n": np.array([min(n, len(E))], np.int64)})
    assert_same(numpy_top(E, V_u, mask, hist, n), items, scores, interest, E, V_u, mask)


@given(case=cases(), block=st.integers(1, 45))
def test_onnxruntime_matches_numpy(case, block):
    E, V_u, mask, hist, n = case
    session = TopNSession(build_topn(E, V_u.shape[1], block=block).SerializeToString(), len(E),
                          "cpu", chunk=2)  # two users a run: the chunking is exercised
    items, scores, interest = session.run(V_u, mask, hist, n)
    assert_same(numpy_top(E, V_u, mask, hist, n), items, scores, interest, E, V_u, mask)
    via = Retriever(E, topn=session).retrieve(V_u, mask, hist, n, "onnx")
    for b, (got, want) in enumerate(zip(via, numpy_top(E, V_u, mask, hist, n))):
        assert len(got.items) == len(want.items) == min(n, len(E) - 1 - len(set(hist[b].tolist()) - {0}))
        assert not set(got.items.tolist()) & (set(hist[b].tolist()) | {0})  # history and padding excluded
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)


def test_the_interest_mask_decides(tmp_path):
    """A masked capsule with a vector that would win every item must never win: in the graph and in
    NumPy's eq3 (a mutant that drops the mask from either fails here)."""
    E = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    V_u = np.array([[[0.1, 0.2], [50, 50]]], np.float32)  # capsule 1 masked, and huge
    mask = np.array([[True, False]])
    scores, winner = eq3(V_u[0], mask[0], E[1:])
    np.testing.assert_allclose(scores, [0.1, 0.2, 0.3], rtol=1e-6)
    assert not winner.any()
    want = Retriever(E).retrieve(V_u, mask, np.zeros((1, 1), np.int64), 3, "exact")[0]
    assert want.items.tolist() == [3, 2, 1] and not want.interests.any()
    session = TopNSession(build_topn(E, 2).SerializeToString(), 4, "cpu")
    items, scores, interest = session.run(V_u, mask, np.zeros((1, 1), np.int64), 3)
    assert items.tolist() == [[3, 2, 1]] and not interest.any()
    np.testing.assert_allclose(scores, [[0.3, 0.2, 0.1]], rtol=1e-6)
    with pytest.raises(ValueError, match="interest 0 must be valid"):
        session.run(V_u, ~mask, np.zeros((1, 1), np.int64), 3)


def test_large_catalogues_use_external_data_in_item_vectors_npy(tmp_path):
    """Over the threshold the graph's initializer points into item_vectors.npy (stored once); the
    graph file stays small, and both runtimes load it from the folder."""
    rng = np.random.default_rng(0)
    E = rng.normal(size=(60, 32)).astype(np.float32)
    E[0] = 0
    np.save(tmp_path / "item_vectors.npy", E)
    npy = (tmp_path / "item_vectors.npy").read_bytes()
    model = build_topn(E, 2, external_above=1000, npy_offset=npy_data_offset(npy), block=16)  # 16+16+16+12
    (tmp_path / "topn.onnx").write_bytes(model.SerializeToString())
    blocks = [t for t in model.graph.initializer if t.name.startswith("item_vectors_")]
    assert len(blocks) == 4 and all(t.data_location == onnx.TensorProto.EXTERNAL for t in blocks)
    assert sum(len(t.raw_data) for t in model.graph.initializer) < 500  # the graph's constants only
    onnx.checker.check_model(str(tmp_path / "topn.onnx"))
    V_u = rng.normal(size=(3, 2, 32)).astype(np.float32)
    mask = np.array([[True, True], [True, False], [True, True]])
    hist = rng.integers(0, 60, (3, 7))
    want = numpy_top(E, V_u, mask, hist, 25)
    session = TopNSession(str(tmp_path / "topn.onnx"), 60, "cpu")
    assert_same(want, *session.run(V_u, mask, hist, 25), E, V_u, mask)
    ref = ReferenceEvaluator(str(tmp_path / "topn.onnx"))
    out = ref.run(None, {"interests": V_u, "interest_mask": mask, "history": hist, "n": np.array([25])})
    assert_same(want, *out, E, V_u, mask)
    with pytest.raises(ValueError, match="offset"):
        build_topn(E, 2, external_above=1000)


def test_a_masked_copy_of_interest_0_never_wins_by_a_rounding():
    """Found by CI: the masked slots hold copies of interest 0, and the small product that picks
    the winning interest may round a copy one bit above the original; the graph masks them."""
    E = np.array([[0, 0, 0], [-0.5181977, -2.5899334, -0.00492276], [0.22407474, -0.5567026, 0.10075444]],
                 np.float32)
    V_u = np.array([[[0.8212991, -0.24590091, 1.0553937], [0.9025482, -0.10476276, -2.309042],
                     [0.10527434, 0.08232531, 0.24410139]],
                    [[0.9189133, 0.14118579, 0.22197124], [-0.6337704, 0.6115377, -0.45327246],
                     [0.58405256, 0.21165031, -0.89471865]]], np.float32)
    mask = np.array([[True, False, False], [True, True, True]])
    session = TopNSession(build_topn(E, 3).SerializeToString(), 3, "cpu", chunk=2)
    items, _, interest = session.run(V_u, mask, np.array([[0], [1]]), 1)
    assert items.tolist() == [[2], [2]] and interest[0, 0] == 0
