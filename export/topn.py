"""Exact retrieval inside ONNX: Eq. (3) over the whole catalogue and the top n, one graph.

    inputs   interests      float32 [B, K, d]   V_u from the user tower, zero beyond K'_u
             interest_mask  bool [B, K]         valid interests (j < K'_u)
             history        int64 [B, H]        item ids to exclude (the user's history), 0 = padding
             n              int64 [1]           how many items (at most the catalogue's V)
    outputs  items          int64 [B, n]        item ids, best first (equal scores: lower id first)
             scores         float32 [B, n]      f(V_u, e_i) = max_k e_i . v_k (Eq. 3); -inf past the
                                                last item left (history covering the catalogue)
             interest       int64 [B, n]        the k whose e_i . v_k is the max

The item vectors E [V, d] are an initializer. The graph: scores of every item against every
interest, items major (one MatMul E [V, d] x [d, K B], the interests k-major), the max over k
(Eq. 3) on [V, K, B], transposed to [B, V], the history and the padding id 0 scattered to -inf,
TopK, and the arg max over k of the n items found only, from their vectors (Gather) against the
K interests (ArgMax keeps the first, lowest k, as NumPy's argmax). A masked interest (k >= K'_u;
it may hold a non-zero vector) is replaced, before the MatMul, by interest 0, which is always
valid (K'_u >= 1): a copy can neither raise the max nor win the arg max, since equal values go to
the lower k. Every row of interest_mask must hold interest 0 (TopNSession checks). A row whose
entries are all -inf (n larger than what is left) is trimmed by the caller (TopNSession).

Measured choices (bench/topn_profile.py, docs/scaling.md): with E as the MatMul's first operand,
onnxruntime streams it as it lies, so the catalogue needs no packed copy per worker and stays
shared (export/arrays.py); the earlier form, a Gemm of the interests against E transposed, ran
20% slower at one thread unless onnxruntime prepacked E into a private copy. Masking the
[B, K, V] scores instead of replacing masked interests took 1.2x to 3.4x the product's own time.

In a bundle the initializer is always ONNX external data pointing into the bundle's
item_vectors.npy at its data offset: the vectors are stored once, the graph file stays small, and
loading maps them once for NumPy and onnxruntime together (export/arrays.py). A graph built alone
keeps them inline up to `external_above` bytes (default 1 GiB; protobuf refuses messages over 2 GiB).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mindref import __version__

from .arrays import VECTORS_FILE, point_into
from .runtime import make_session
from .tower import IR_VERSION, OPSET

EXTERNAL_ABOVE = 2**30  # bytes of item vectors above which they are external data


def build_topn(E: np.ndarray, K: int, external_above: int = EXTERNAL_ABOVE,
               npy_offset: int | None = None) -> onnx.ModelProto:
    """The graph over item vectors E [V, d] (float32) for users of K interests. External data
    (E larger than external_above bytes) needs npy_offset: where E's bytes start in item_vectors.npy."""
    V, d = E.shape
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    if E.nbytes > external_above:
        if npy_offset is None:
            raise ValueError("external item vectors need the offset of their data in item_vectors.npy")
        items = TensorProto(name="item_vectors", data_type=f32, dims=[V, d])
        point_into(items, VECTORS_FILE, npy_offset)
    else:
        items = numpy_helper.from_array(np.ascontiguousarray(E, np.float32), "item_vectors")
    consts = [numpy_helper.from_array(np.array([d, -1], np.int64), "by_dim"),
              numpy_helper.from_array(np.array([V, K, -1], np.int64), "scores_shape"),
              numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf"),
              numpy_helper.from_array(np.array([2], np.int64), "axis_2"),
              numpy_helper.from_array(np.array([0], np.int64), "start"),
              numpy_helper.from_array(np.array([1], np.int64), "one")]
    node = helper.make_node
    nodes = [
        # a masked interest k >= K'_u takes interest 0's vector (always valid, K'_u >= 1): it can
        # neither raise the max nor win the arg max (equal values go to the lower k, and 0 < k)
        node("Unsqueeze", ["interest_mask", "axis_2"], ["mask3"]),  # [B, K, 1]
        node("Slice", ["interests", "start", "one", "one"], ["first_interest"]),  # [B, 1, d]
        node("Where", ["mask3", "interests", "first_interest"], ["valid"]),  # [B, K, d]
        node("Transpose", ["valid"], ["valid_t"], perm=[2, 1, 0]),  # [d, K, B]
        node("Reshape", ["valid_t", "by_dim"], ["v_t"]),  # [d, K B], k-major
        node("MatMul", ["item_vectors", "v_t"], ["s_flat"]),  # [V, K B]: e_i . v_k
        node("Reshape", ["s_flat", "scores_shape"], ["s3"]),  # [V, K, B]
        node("ReduceMax", ["s3", "one"], ["best_t"], keepdims=0),  # [V, B]  Eq. (3)
        node("Transpose", ["best_t"], ["best"], perm=[1, 0]),  # [B, V]
        node("Slice", ["history", "start", "one", "one"], ["first"]),  # [B, 1]
        node("Mul", ["first", "start"], ["padding"]),  # [B, 1] zeros: the padding id 0, always excluded
        node("Concat", ["history", "padding"], ["excluded"], axis=1),  # [B, H + 1]
        node("Shape", ["excluded"], ["excluded_shape"]),
        node("Expand", ["minus_inf", "excluded_shape"], ["minus_infs"]),  # [B, H + 1]
        node("ScatterElements", ["best", "excluded", "minus_infs"], ["left"], axis=1),  # [B, V]
        node("TopK", ["left", "n"], ["scores", "items"], axis=1, largest=1, sorted=1),  # [B, n]
        # the winning interest of the n items only: their vectors against the K interests
        node("Gather", ["item_vectors", "items"], ["e_top"]),  # [B, n, d]
        node("Transpose", ["valid"], ["valid_by_k"], perm=[0, 2, 1]),  # [B, d, K]
        node("MatMul", ["e_top", "valid_by_k"], ["s_top"]),  # [B, n, K]
        # the copies of interest 0 in masked slots may differ from it in the last bit here (this
        # small product's kernel need not round every column alike): they are masked outright
        node("Unsqueeze", ["interest_mask", "one"], ["mask_by_k"]),  # [B, 1, K]
        node("Where", ["mask_by_k", "s_top", "minus_inf"], ["s_valid"]),  # [B, n, K]
        node("ArgMax", ["s_valid"], ["interest"], axis=2, keepdims=0),  # [B, n] first max: lowest k
    ]
    inputs = [helper.make_tensor_value_info("interests", f32, ["B", K, d]),
              helper.make_tensor_value_info("interest_mask", TensorProto.BOOL, ["B", K]),
              helper.make_tensor_value_info("history", i64, ["B", "H"]),
              helper.make_tensor_value_info("n", i64, [1])]
    outputs = [helper.make_tensor_value_info("items", i64, ["B", "n"]),
               helper.make_tensor_value_info("scores", f32, ["B", "n"]),
               helper.make_tensor_value_info("interest", i64, ["B", "n"])]
    graph = helper.make_graph(nodes, "mind_eq3_topn", inputs, outputs, [items, *consts])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="mindref", producer_version=__version__,
                              doc_string="MIND retrieval: Eq. (3) over every item, history excluded, top n")
    if E.nbytes <= external_above:  # the external-data form is checked by path, beside its vectors
        onnx.checker.check_model(model)
    return model


class TopNSession:
    """The top-n graph on onnxruntime; users in chunks so that the [chunk, K, V] scores stay
    within `budget` bytes."""

    def __init__(self, model: bytes | str, V: int, K: int, provider: str = "auto", threads: int | None = None,
                 budget: int = 2**28, **external):
        """external: make_session's `shared` and `folder` (a graph with external data). Prepacking
        stays off: the MatMul reads the (memory-mapped, shared) catalogue where it lies."""
        self.session: ort.InferenceSession = make_session(model, provider, threads, prepack=False, **external)
        self.V, self.chunk = V, max(1, budget // (4 * K * V))

    def run(self, V_u: np.ndarray, mask: np.ndarray, history: np.ndarray, n: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """items, scores, interest [B, min(n, V)]; excluded slots have score -inf."""
        if not mask[:, 0].all():
            raise ValueError("interest_mask: interest 0 must be valid in every row (K'_u >= 1, Eq. 9)")
        feeds = {"interests": np.ascontiguousarray(V_u, np.float32), "interest_mask": mask.astype(bool),
                 "history": np.ascontiguousarray(history, np.int64)}
        k = np.array([min(n, self.V)], np.int64)
        parts = [self.session.run(None, {**{a: b[i:i + self.chunk] for a, b in feeds.items()}, "n": k})
                 for i in range(0, len(V_u), self.chunk)]
        return tuple(np.concatenate(x) for x in zip(*parts))
