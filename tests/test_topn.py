"""Exact top-n inside ONNX (export/topn.py), both forms, against the NumPy exact path, through
onnx's ReferenceEvaluator and onnxruntime: identical ids (apart from exact score ties), scores
within 1e-5 relative, on generated cases (K'_u < K, masked interests holding non-zero vectors,
histories covering most of a tiny catalogue, n larger than the catalogue, every valid score
negative, catalogues smaller than a chunk); and how runs are sized for each provider."""
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
from mindref.export.providers import INT32_ELEMENTS  # noqa: E402
from mindref.export.topn import FORMS, MAX_INPUTS, PRUNED_FROM, blocks, layout_for  # noqa: E402


@st.composite
def layouts(draw):
    """A form and its sizes: blocks of any size (one item, a short last block), chunks of any
    size (one item, more than the catalogue)."""
    form = draw(st.sampled_from(FORMS))
    return {"form": form, "block": draw(st.integers(1, 45)), "chunk": draw(st.integers(1, 12))}


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


@given(case=cases(), layout=layouts())
def test_reference_evaluator_matches_numpy(case, layout):
    """Any block size: one block, blocks of one item, a last block shorter than the rest; any
    chunk size: chunks of one item, a catalogue smaller than a chunk, items past the grid."""
    E, V_u, mask, hist, n = case
    model = build_topn(E, V_u.shape[1], **layout)
    ref = ReferenceEvaluator(model)
    items, scores, interest = ref.run(None, {"interests": V_u, "interest_mask": mask, "history": hist,
                                             "n": np.array([min(n, len(E))], np.int64)})
    assert_same(numpy_top(E, V_u, mask, hist, n), items, scores, interest, E, V_u, mask)


@given(case=cases(), layout=layouts())
def test_onnxruntime_matches_numpy(case, layout):
    E, V_u, mask, hist, n = case
    session = TopNSession(build_topn(E, V_u.shape[1], **layout).SerializeToString(), len(E),
                          "cpu", users=2)  # two users a run: the runs are exercised
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
    for form in FORMS:
        session = TopNSession(build_topn(E, 2, form=form, chunk=2).SerializeToString(), 4, "cpu")
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
    for form in FORMS:
        session = TopNSession(build_topn(E, 3, form=form, chunk=1).SerializeToString(), 3, "cpu", users=2)
        items, _, interest = session.run(V_u, mask, np.array([[0], [1]]), 1)
        assert items.tolist() == [[2], [2]] and interest[0, 0] == 0


def test_pruned_form_keeps_ties_in_id_order():
    """Items of equal score come lower id first in both forms, also when the chunk that holds the
    lower id ranks below the other's (the kept chunks are gathered in id order)."""
    E = np.zeros((9, 2), np.float32)  # chunk 4: G = 2; chunk 0 = items 0, 2, 4, 6, chunk 1 = 1, 3, 5, 7
    E[[2, 3]] = [1, 0]  # a tie between items 2 (chunk 0) and 3 (chunk 1), both in group 1
    E[5] = [2, 0]  # the best item: chunk 1 ranks above chunk 0
    V_u = np.array([[[1, 0]]], np.float32)
    for form in FORMS:
        session = TopNSession(build_topn(E, 1, form=form, chunk=4).SerializeToString(), 9, "cpu")
        items, scores, _ = session.run(V_u, np.ones((1, 1), bool), np.zeros((1, 1), np.int64), 3)
        assert items[0].tolist() == [5, 2, 3], form
        np.testing.assert_array_equal(scores[0], [2, 1, 1])


def default_order(model) -> list[str]:
    """The op types in onnxruntime's default execution order (GraphViewer's ReverseDFSFrom from
    the leaf nodes, a node's inputs visited highest node index first: onnxruntime/core/graph/
    graph_viewer.cc), nodes numbered as they appear in the graph."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumed = {name for node in nodes for name in node.input}
    stack = [(i, False) for i, node in enumerate(nodes) if not set(node.output) & consumed]
    seen, order = set(), []
    while stack:
        i, leave = stack.pop()
        if leave:
            order.append(nodes[i].op_type)
        elif i not in seen:
            seen.add(i)
            stack.append((i, True))
            stack += [(j, False) for j in sorted({producer[x] for x in nodes[i].input if x in producer})
                      if j not in seen]
    return order


def test_pruned_form_runs_each_max_right_after_its_gemms():
    """The Gemms are emitted so that onnxruntime's default order runs each Max of the running max
    right after its own segment of Gemms: at most one segment of [K B, G] group scores alive at
    once, the memory the CUDA run sizing counts on (measured on an H200: 12.0 GiB held instead of
    58.4 at 1M items; emitted in plain order, CUDA ran all 64 Gemms first)."""
    E = np.random.default_rng(0).normal(size=(400, 4)).astype(np.float32)
    order = default_order(build_topn(E, 2, form="pruned", chunk=24))
    ops = "".join("g" if op == "Gemm" else "M" for op in order if op in ("Gemm", "Max"))
    segments = "g" * MAX_INPUTS + "M" + ("g" * (MAX_INPUTS - 1) + "M") * 2 + "ggM"  # 24 = 8 + 7 + 7 + 2
    assert ops == segments, ops


def test_runs_are_sized_for_the_provider():
    """The CPU takes its cache-sized runs; CUDA as many users as the budget holds, never so many
    that a tensor reaches INT32_ELEMENTS; an explicit size wins."""
    E = np.zeros((200_001, 4), np.float32)
    for layout in ({"form": "pruned", "chunk": 32}, {"form": "blocked", "block": 200_001}):
        session = TopNSession(build_topn(E, 4, **layout).SerializeToString(), len(E), "cpu")
        assert session.users_per_run(50, 50) == 32
        session.provider = "cuda"  # the sizing rule, without a GPU
        users = session.users_per_run(50, 50)
        assert 1 < users < 2**31 // 200_001
        session.budget = 2**60  # memory no limit: the int32 bound decides
        biggest = session.users_per_run(50, 50)
        G = len(E) // 32 if layout["form"] == "pruned" else len(E)
        widest = 4 * G if layout["form"] == "pruned" else 4 * len(E)
        assert biggest == INT32_ELEMENTS // widest
        session.budget = 1
        assert session.users_per_run(50, 50) == 1
        session.users = 7
        assert session.users_per_run(50, 50) == 7
    with pytest.raises(ValueError, match="at least 1"):
        TopNSession(build_topn(E[:10], 4).SerializeToString(), 10, "cpu", users=0)


def test_each_provider_gets_its_form():
    assert layout_for("cpu", 10**6) == {"form": "blocked", "block": 32_768}
    assert layout_for("cuda", PRUNED_FROM)["form"] == "pruned"
    assert layout_for("cuda", PRUNED_FROM - 1) == {"form": "blocked", "block": PRUNED_FROM - 1}
    assert [rows for _, _, rows in blocks(10, "pruned", chunk=3)] == [3, 3, 3, 1]  # 3 groups of G = 3, 1 more
    assert [rows for _, _, rows in blocks(2, "pruned", chunk=3)] == [2]  # smaller than a chunk
