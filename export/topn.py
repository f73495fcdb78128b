"""Exact retrieval inside ONNX: Eq. (3) over the whole catalogue and the top n, one graph.

    inputs   interests      float32 [B, K, d]   V_u from the user tower, zero beyond K'_u
             interest_mask  bool [B, K]         valid interests (j < K'_u)
             history        int64 [B, H]        item ids to exclude (the user's history), 0 = padding
             n              int64 [1]           how many items (at most the catalogue's V)
    outputs  items          int64 [B, n]        item ids, best first (equal scores: lower id first)
             scores         float32 [B, n]      f(V_u, e_i) = max_k e_i . v_k (Eq. 3); -inf past the
                                                last item left (history covering the catalogue)
             interest       int64 [B, n]        the k whose e_i . v_k is the max

The catalogue is cut into blocks of `block` items, each its own initializer E_b [V_b, d], and
every block goes through the same steps, so that its [V_b, K, B] scores stay in cache instead of
a [V, K, B] array streaming through memory:

    scores of the block's items against every interest, items major (MatMul E_b [V_b, d] x
    [d, K B], the interests k-major), the max over k (Eq. 3) -> [B, V_b], the history's items of
    this block set to -inf (ScatterElements with reduction min: the history's items in other
    blocks scatter +inf, which changes nothing), the block's top min(n, V_b) (TopK), and for
    those only the winning interest (their vectors, Gather, against the K interests, ArgMax).

The blocks' candidates [B, sum_b min(n, V_b)] are merged by one last TopK: the global top n is
among them, since each block gave its own top n. Equal scores keep the lower id first (TopK
returns the lower index first, blocks are concatenated in id order, and ArgMax the lower k).

A masked interest (k >= K'_u; it may hold a non-zero vector) is replaced, before the products, by
interest 0, which is always valid (K'_u >= 1): a copy can neither raise the max nor win the arg
max, and the small product that picks the winner masks the copies outright (its kernel need not
round every column alike). Every row of interest_mask must hold interest 0 (TopNSession checks).
A row whose entries are all -inf (n larger than what is left) is trimmed by the caller.

Measured choices (bench/topn_profile.py, docs/results.md): blocks of 32,768 items and runs of 32
users were among the fastest of 8,192..65,536 and 16..128 at 1M items (65,536 was 8% faster in
one run, with twice the scores' memory), 1.28x the best unblocked setting at one thread, and the
batch job 1.22x and 1.25x faster at one and two threads; with E_b as the MatMul's first operand
onnxruntime streams it as it lies, so the catalogue needs no packed copy per worker and stays
shared (export/arrays.py); masking the scores instead of replacing masked interests took 1.2x to
3.4x the product's own time.

In a bundle each block is ONNX external data pointing into the bundle's item_vectors.npy at its
rows' offset: the vectors are stored once, the graph file stays small, and loading maps them once
for NumPy and onnxruntime together (export/arrays.py). A graph built alone keeps them inline up
to `external_above` bytes (default 1 GiB; protobuf refuses messages over 2 GiB).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mindref import __version__
from mindref.checks import check_ids

from .arrays import VECTORS_FILE, point_into
from .runtime import make_session
from .tower import IR_VERSION, OPSET

EXTERNAL_ABOVE = 2**30  # bytes of item vectors above which they are external data
BLOCK = 32_768  # items per block (measured: docs/results.md)
CHUNK = 32  # users per session.run (measured with BLOCK)


def blocks(V: int, block: int | None = None) -> list[tuple[str, int, int]]:
    """The catalogue's blocks of `block` items (None: BLOCK): (initializer name, first row, rows)."""
    block = BLOCK if block is None else block
    return [(f"item_vectors_{b}", o, min(block, V - o)) for b, o in enumerate(range(0, V, block))]


def block_views(E: np.ndarray, block: int | None = None) -> dict[str, np.ndarray]:
    """Each block's initializer as a view of E (no copy): make_session's `shared`."""
    return {name: E[o:o + rows] for name, o, rows in blocks(len(E), block)}


def build_topn(E: np.ndarray, K: int, external_above: int = EXTERNAL_ABOVE,
               npy_offset: int | None = None, block: int | None = None) -> onnx.ModelProto:
    """The graph over item vectors E [V, d] (float32) for users of K interests, in blocks of
    `block` items (None: BLOCK). External data (E larger than external_above bytes) needs
    npy_offset: where E's bytes start in item_vectors.npy."""
    V, d = E.shape
    block = BLOCK if block is None else block
    if block < 1:
        raise ValueError(f"block must be at least 1 item, got {block}")
    external = E.nbytes > external_above
    if external and npy_offset is None:
        raise ValueError("external item vectors need the offset of their data in item_vectors.npy")
    node, const = helper.make_node, numpy_helper.from_array
    initializers = [const(np.array(v, t), name) for name, v, t in (
        ("minus_inf", -np.inf, np.float32), ("plus_inf", np.inf, np.float32), ("start", [0], np.int64),
        ("one", [1], np.int64), ("axis_2", [2], np.int64), ("zero", 0, np.int64),
        ("by_dim", [d, -1], np.int64), ("block", block, np.int64))]
    nodes = [
        # a masked interest k >= K'_u takes interest 0's vector (always valid, K'_u >= 1): it can
        # neither raise the max nor win the arg max (equal values go to the lower k, and 0 < k)
        node("Unsqueeze", ["interest_mask", "axis_2"], ["mask3"]),  # [B, K, 1]
        node("Slice", ["interests", "start", "one", "one"], ["first_interest"]),  # [B, 1, d]
        node("Where", ["mask3", "interests", "first_interest"], ["valid"]),  # [B, K, d]
        node("Transpose", ["valid"], ["valid_t"], perm=[2, 1, 0]),  # [d, K, B]
        node("Reshape", ["valid_t", "by_dim"], ["v_t"]),  # [d, K B], k-major
        node("Transpose", ["valid"], ["valid_by_k"], perm=[0, 2, 1]),  # [B, d, K]
        node("Unsqueeze", ["interest_mask", "one"], ["mask_by_k"]),  # [B, 1, K]
        # the excluded ids: the history and the padding id 0, as (block, row in the block)
        node("Slice", ["history", "start", "one", "one"], ["first"]),  # [B, 1]
        node("Mul", ["first", "start"], ["padding"]),  # [B, 1] zeros
        node("Concat", ["history", "padding"], ["excluded"], axis=1),  # [B, H + 1]
        node("Div", ["excluded", "block"], ["excluded_block"]),  # [B, H + 1]
        node("Mod", ["excluded", "block"], ["excluded_row"]),  # [B, H + 1]
    ]
    found = {"scores": [], "items": [], "interest": []}
    for b, (name, o, rows) in enumerate(blocks(V, block)):
        if external:
            items = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[rows, d])
            point_into(items, VECTORS_FILE, npy_offset + o * d * 4)
        else:
            items = const(np.ascontiguousarray(E[o:o + rows], np.float32), name)
        initializers += [items, const(np.array(b, np.int64), f"b{b}"), const(np.array(o, np.int64), f"o{b}"),
                         const(np.array([rows, K, -1], np.int64), f"shape{b}"),
                         const(np.array([rows], np.int64), f"rows{b}")]
        nodes += [
            node("MatMul", [name, "v_t"], [f"s{b}"]),  # [V_b, K B]: e_i . v_k
            node("Reshape", [f"s{b}", f"shape{b}"], [f"s3_{b}"]),  # [V_b, K, B]
            node("ReduceMax", [f"s3_{b}", "one"], [f"best_t{b}"], keepdims=0),  # [V_b, B]  Eq. (3)
            node("Transpose", [f"best_t{b}"], [f"best{b}"], perm=[1, 0]),  # [B, V_b]
            node("Equal", ["excluded_block", f"b{b}"], [f"here{b}"]),  # [B, H + 1]
            node("Where", [f"here{b}", "excluded_row", "zero"], [f"rows_out{b}"]),
            node("Where", [f"here{b}", "minus_inf", "plus_inf"], [f"out{b}"]),  # +inf: min() keeps the score
            node("ScatterElements", [f"best{b}", f"rows_out{b}", f"out{b}"], [f"left{b}"], axis=1,
                 reduction="min"),  # [B, V_b]
            node("Min", ["n", f"rows{b}"], [f"n{b}"]),
            node("TopK", [f"left{b}", f"n{b}"], [f"top_s{b}", f"top_r{b}"], axis=1, largest=1, sorted=1),
            node("Add", [f"top_r{b}", f"o{b}"], [f"top_i{b}"]),  # [B, n_b] item ids
            # the winning interest of the block's top only: their vectors against the K interests
            node("Gather", [name, f"top_r{b}"], [f"e_top{b}"]),  # [B, n_b, d]
            node("MatMul", [f"e_top{b}", "valid_by_k"], [f"s_top{b}"]),  # [B, n_b, K]
            node("Where", ["mask_by_k", f"s_top{b}", "minus_inf"], [f"s_valid{b}"]),
            node("ArgMax", [f"s_valid{b}"], [f"top_k{b}"], axis=2, keepdims=0),  # [B, n_b] lowest k of a tie
        ]
        for key, out in zip(found, (f"top_s{b}", f"top_i{b}", f"top_k{b}")):
            found[key].append(out)
    nodes += [node("Concat", outs, [f"all_{key}"], axis=1) for key, outs in found.items()]
    nodes += [node("TopK", ["all_scores", "n"], ["scores", "where"], axis=1, largest=1, sorted=1),  # [B, n]
              node("GatherElements", ["all_items", "where"], ["items"], axis=1),
              node("GatherElements", ["all_interest", "where"], ["interest"], axis=1)]
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("interests", f32, ["B", K, d]),
              helper.make_tensor_value_info("interest_mask", TensorProto.BOOL, ["B", K]),
              helper.make_tensor_value_info("history", i64, ["B", "H"]),
              helper.make_tensor_value_info("n", i64, [1])]
    outputs = [helper.make_tensor_value_info("items", i64, ["B", "n"]),
               helper.make_tensor_value_info("scores", f32, ["B", "n"]),
               helper.make_tensor_value_info("interest", i64, ["B", "n"])]
    graph = helper.make_graph(nodes, "mind_eq3_topn", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="mindref", producer_version=__version__,
                              doc_string="MIND retrieval: Eq. (3) over every item, history excluded, top n")
    if not external:  # the external-data form is checked by path, beside its vectors
        onnx.checker.check_model(model)
    return model


class TopNSession:
    """The top-n graph on onnxruntime; users `chunk` at a time."""

    def __init__(self, model: bytes | str, V: int, provider: str = "auto", threads: int | None = None,
                 chunk: int = CHUNK, **external):
        """external: make_session's `shared` and `folder` (a graph with external data). Prepacking
        stays off: the MatMuls read the (memory-mapped, shared) catalogue where it lies."""
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 user, got {chunk}")
        self.session: ort.InferenceSession = make_session(model, provider, threads, prepack=False, **external)
        self.V, self.chunk = V, chunk

    def run(self, V_u: np.ndarray, mask: np.ndarray, history: np.ndarray, n: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """items, scores, interest [B, min(n, V)]; excluded slots have score -inf."""
        if not mask[:, 0].all():
            raise ValueError("interest_mask: interest 0 must be valid in every row (K'_u >= 1, Eq. 9)")
        history = check_ids("history", np.ascontiguousarray(history, np.int64), self.V)
        feeds = {"interests": np.ascontiguousarray(V_u, np.float32), "interest_mask": mask.astype(bool),
                 "history": history}
        k = np.array([min(n, self.V)], np.int64)
        parts = [self.session.run(None, {**{a: b[i:i + self.chunk] for a, b in feeds.items()}, "n": k})
                 for i in range(0, len(V_u), self.chunk)]
        return tuple(np.concatenate(x) for x in zip(*parts))
