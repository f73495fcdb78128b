"""Exact retrieval inside ONNX: Eq. (3) over the whole catalogue and the top n, one graph.

    inputs   interests      float32 [B, K, d]   V_u from the user tower, zero beyond K'_u
             interest_mask  bool [B, K]         valid interests (j < K'_u)
             history        int64 [B, H]        item ids to exclude (the user's history), 0 = padding
             n              int64 [1]           how many items (at most the catalogue's V)
    outputs  items          int64 [B, n]        item ids, best first (equal scores: lower id first)
             scores         float32 [B, n]      f(V_u, e_i) = max_k e_i . v_k (Eq. 3); -inf past the
                                                last item left (history covering the catalogue)
             interest       int64 [B, n]        the k whose e_i . v_k is the max

A masked interest (k >= K'_u; it may hold a non-zero vector) is replaced, before the products, by
interest 0, which is always valid (K'_u >= 1): a copy can neither raise the max nor win the arg
max, and the small product that picks the winner masks the copies outright (its kernel need not
round every column alike). Every row of interest_mask must hold interest 0 (TopNSession checks).
A row whose entries are all -inf (n larger than what is left) is trimmed by the caller.

The same function comes in two forms (FORMS), each the faster on one kind of processor (measured:
docs/results.md); both are exact against NumPy in tests/test_topn.py.

**'blocked'** (the CPU's). The catalogue is cut into blocks of `block` items, each its own
initializer E_b [V_b, d], so that a block's [V_b, K, B] scores stay in cache: per block, the
scores of its items against every interest (MatMul E_b [V_b, d] x [d, K B], items major), the max
over k (Eq. 3), the history's items set to -inf (ScatterElements with reduction min: the history's
items in other blocks scatter +inf, which changes nothing), the block's top min(n, V_b) (TopK), and
for those only the winning interest (Gather, a small MatMul, ArgMax). The blocks' candidates are
merged by one last TopK. Blocks of 32,768 items and runs of 32 users were among the fastest of
8,192..65,536 and 16..128 at 1M items, 1.28x the best unblocked setting at one thread; with E_b as
the MatMul's first operand onnxruntime streams it as it lies, so the catalogue needs no packed
copy per worker (export/arrays.py); masking the scores instead of replacing masked interests took
1.2x to 3.4x the product's own time.

**'pruned'** (the GPU's). On a GPU the full [B, V] pass of every step after the product costs more
than the product, and TopK over a million columns is a slow kernel. This form touches the [B, V]
scores once: per block, each interest's scores (Gemm v_k [B, d] x E_b^T -> [B, V_b]) are reduced at
once to the max of each chunk of `chunk` consecutive items, and the K chunk maxima to their max:

    c_j = max_{i in chunk j} max_k e_i . v_k                                     [B, V_b / chunk]

Then only m = n + H + 1 chunks per block go on (H = the history's width): the top m chunks by c_j
hold the block's top m items (each of those items lies in a chunk whose c_j is at least its score;
were its chunk outranked by m others, each would hold an item scoring above it, and it would not be
in the top m). Their items are gathered and scored exactly again (Eq. 3 with the interest mask,
ArgMax for the winner), and the block's top m kept. The blocks' candidates [B, sum_b m] hold the
catalogue's top m; the history and the padding id 0 (at most H + 1 distinct ids) are set to -inf
among them, and one last TopK gives the top n of the rest. Equal scores keep the lower id first:
the kept chunks are gathered in id order, blocks are concatenated in id order, and TopK returns
the lower index first. The last block's items past a multiple of `chunk` form a block of their own
(one chunk).

In a bundle each block is ONNX external data pointing into the bundle's item_vectors.npy at its
rows' offset: the vectors are stored once, the graph file stays small, and loading maps them once
for NumPy and onnxruntime together (export/arrays.py). A graph built alone keeps them inline up
to `external_above` bytes (default 1 GiB; protobuf refuses messages over 2 GiB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mindref import __version__
from mindref.checks import check_ids

from .arrays import VECTORS_FILE, point_into
from .providers import CUDA_BUDGET, INT32_ELEMENTS, provider_name
from .runtime import make_session
from .tower import IR_VERSION, OPSET

EXTERNAL_ABOVE = 2**30  # bytes of item vectors above which they are external data
FORMS = ("blocked", "pruned")
BLOCK = 32_768  # items per block of the blocked form (measured: docs/results.md)
CHUNK = 32  # items per chunk of the pruned form (measured: docs/results.md)
CPU_USERS = 32  # users per run on the CPU (measured with the blocked form's BLOCK)
MAX_INPUTS = 8  # inputs per Max node: onnxruntime's CUDA kernel reads up to 8 in one pass
PRUNED_FROM = 65_536  # items from which CUDA runs the pruned form (measured: 30,000 and 100,000 items)

_node, _const = helper.make_node, numpy_helper.from_array


def layout_for(provider: str, V: int) -> dict:
    """The form (and its sizes) that runs fastest on a provider over V items (docs/results.md):
    the CPU's blocked form in cache-sized blocks; on CUDA the pruned form from PRUNED_FROM items,
    below it the blocked form in one block."""
    if provider == "cpu":
        return {"form": "blocked", "block": BLOCK}
    return {"form": "pruned", "chunk": CHUNK} if V >= PRUNED_FROM else {"form": "blocked", "block": V}


def blocks(V: int, form: str = "blocked", block: int = BLOCK, chunk: int = CHUNK
           ) -> list[tuple[str, int, int]]:
    """The catalogue's initializers: (name, first row, rows). 'blocked': blocks of `block` items.
    'pruned': the `chunk` groups of G = V // chunk items (none if V < chunk), then the items past
    chunk G as one more block (fewer than chunk)."""
    if block < 1 or chunk < 1:
        raise ValueError(f"block and chunk must be at least 1 item, got {block} and {chunk}")
    if form == "blocked":
        starts = [(o, min(block, V - o)) for o in range(0, V, block)]
    else:
        G = V // chunk
        starts = [(c * G, G) for c in range(chunk)] if G else []
        starts += [(chunk * G, V - chunk * G)] if V > chunk * G else []
    return [(f"item_vectors_{b}", o, rows) for b, (o, rows) in enumerate(starts)]


def block_views(E: np.ndarray, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each block initializer of a top-n graph as a view of E (no copy): make_session's `shared`."""
    return {name: E[o:o + rows] for name, o, rows in blocks(len(E), **graph_layout(model))}


def graph_layout(model: onnx.ModelProto) -> dict:
    """form, block and chunk of a top-n graph (its metadata; graphs before forms were 'blocked')."""
    props = {p.key: p.value for p in model.metadata_props}
    return {"form": props.get("topn_form", "blocked"), "block": int(props.get("topn_block", BLOCK)),
            "chunk": int(props.get("topn_chunk", CHUNK))}


def build_topn(E: np.ndarray, K: int, external_above: int = EXTERNAL_ABOVE, npy_offset: int | None = None,
               block: int = BLOCK, form: str = "blocked", chunk: int = CHUNK) -> onnx.ModelProto:
    """The graph over item vectors E [V, d] (float32) for users of K interests, in the given form
    (FORMS): 'blocked' in blocks of `block` items, 'pruned' in chunks of `chunk` items. External
    data (E larger than external_above bytes) needs npy_offset: where E's bytes start in
    item_vectors.npy."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    V, d = E.shape
    layout = blocks(V, form, block, chunk)
    external = E.nbytes > external_above
    if external and npy_offset is None:
        raise ValueError("external item vectors need the offset of their data in item_vectors.npy")
    inits = [_const(np.array(v, t), name) for name, v, t in (
        ("minus_inf", -np.inf, np.float32), ("plus_inf", np.inf, np.float32), ("zero_f", 0, np.float32),
        ("start", [0], np.int64), ("one", [1], np.int64), ("axis_2", [2], np.int64), ("zero", 0, np.int64),
        ("by_dim", [d, -1], np.int64), ("block", block, np.int64), ("keep_rows", [0, -1], np.int64),
        ("by_k", [K, -1, V // chunk], np.int64), ("rows_by_d", [-1, d], np.int64))]
    for name, o, rows in layout:
        if external:
            items = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[rows, d])
            point_into(items, VECTORS_FILE, npy_offset + o * d * 4)
        else:
            items = _const(np.ascontiguousarray(E[o:o + rows], np.float32), name)
        inits += [items, _const(np.array(o, np.int64), f"first_{name}"), _const(np.array([rows], np.int64),
                                                                                f"rows_{name}")]
    nodes = _head(form)
    found = []  # (scores, items, interest) of each source of candidates
    if form == "blocked":
        for b, (name, _, _) in enumerate(layout):
            more_nodes, more_inits, outs = _blocked_block(b, name, K)
            nodes, inits = nodes + more_nodes, inits + more_inits
            found.append(outs)
    else:
        G = V // chunk
        if G:  # the grid: chunk j is items j, G + j, ..., (chunk - 1) G + j
            more_nodes, more_inits = _grid(layout[:chunk], G)
            nodes, inits = nodes + more_nodes, inits + more_inits
            found.append(("grid_s", "grid_i", "grid_k"))
        if V > chunk * G:  # the rest (fewer than chunk items): every one scored
            nodes += _rest(layout[-1][0])
            found.append(("rest_s", "rest_i", "rest_k"))
    nodes += [_node("Concat", list(outs), [f"all_{key}"], axis=1)
              for key, outs in zip(("scores", "items", "interest"), zip(*found))]
    if form == "pruned":  # the history and the padding id, excluded among the candidates
        nodes += [_node("Unsqueeze", ["all_items", "axis_2"], ["merge_items3"]),  # [B, M, 1]
                  _node("Unsqueeze", ["excluded", "one"], ["merge_excluded3"]),  # [B, 1, H + 1]
                  _node("Equal", ["merge_items3", "merge_excluded3"], ["hit"]),  # [B, M, H + 1]
                  _node("Where", ["hit", "minus_inf", "zero_f"], ["hit_penalty"]),
                  _node("ReduceMin", ["hit_penalty", "axis_2"], ["penalty"], keepdims=0),  # [B, M]: 0 or -inf
                  _node("Add", ["all_scores", "penalty"], ["left_scores"])]
    nodes += [_node("TopK", ["left_scores" if form == "pruned" else "all_scores", "n"], ["scores", "where"],
                    axis=1, largest=1, sorted=1),  # [B, n]
              _node("GatherElements", ["all_items", "where"], ["items"], axis=1),
              _node("GatherElements", ["all_interest", "where"], ["interest"], axis=1)]
    props = {"topn_form": form, "topn_block": str(block), "topn_chunk": str(chunk)}
    model = _model(nodes, inits, K, d, props)
    if not external:  # the external-data form is checked by path, beside its vectors
        onnx.checker.check_model(model)
    return model


def _head(form: str) -> list:
    """Masked interests replaced by interest 0, the layouts the form's products need, and the
    excluded ids (the history and the padding id 0)."""
    nodes = [
        # a masked interest k >= K'_u takes interest 0's vector (always valid, K'_u >= 1): it can
        # neither raise the max nor win the arg max (equal values go to the lower k, and 0 < k)
        _node("Unsqueeze", ["interest_mask", "axis_2"], ["mask3"]),  # [B, K, 1]
        _node("Slice", ["interests", "start", "one", "one"], ["first_interest"]),  # [B, 1, d]
        _node("Where", ["mask3", "interests", "first_interest"], ["valid"]),  # [B, K, d]
        _node("Transpose", ["valid"], ["valid_by_k"], perm=[0, 2, 1]),  # [B, d, K]
        _node("Unsqueeze", ["interest_mask", "one"], ["mask_by_k"]),  # [B, 1, K]
        _node("Slice", ["history", "start", "one", "one"], ["first"]),  # [B, 1]
        _node("Mul", ["first", "start"], ["padding"]),  # [B, 1] zeros
        _node("Concat", ["history", "padding"], ["excluded"], axis=1),  # [B, H + 1]
    ]
    if form == "blocked":  # the interests k-major for one product per block; excluded ids by block
        return nodes + [
            _node("Transpose", ["valid"], ["valid_t"], perm=[2, 1, 0]),  # [d, K, B]
            _node("Reshape", ["valid_t", "by_dim"], ["v_t"]),  # [d, K B], k-major
            _node("Div", ["excluded", "block"], ["excluded_block"]),  # [B, H + 1]
            _node("Mod", ["excluded", "block"], ["excluded_row"]),  # [B, H + 1]
        ]
    return nodes + [
        _node("Transpose", ["valid"], ["valid_kb3"], perm=[1, 0, 2]),  # [K, B, d]
        _node("Reshape", ["valid_kb3", "rows_by_d"], ["valid_kb"]),  # [K B, d], k-major
        _node("Shape", ["excluded"], ["excluded_width"], start=1, end=2),  # [1]: H + 1
        _node("Add", ["n", "excluded_width"], ["m"]),  # [1]: m = n + H + 1 candidates
    ]


def _blocked_block(b: int, name: str, K: int) -> tuple[list, list, tuple]:
    """One block of the blocked form: every item scored, the history excluded, the block's top n."""
    inits = [_const(np.array([0, K, -1], np.int64), f"shape{b}"),  # 0: V_b, as it is
             _const(np.array(b, np.int64), f"b{b}")]
    nodes = [
        _node("MatMul", [name, "v_t"], [f"s{b}"]),  # [V_b, K B]: e_i . v_k
        _node("Reshape", [f"s{b}", f"shape{b}"], [f"s3_{b}"]),  # [V_b, K, B]
        _node("ReduceMax", [f"s3_{b}", "one"], [f"best_t{b}"], keepdims=0),  # [V_b, B]  Eq. (3)
        _node("Transpose", [f"best_t{b}"], [f"best{b}"], perm=[1, 0]),  # [B, V_b]
        _node("Equal", ["excluded_block", f"b{b}"], [f"here{b}"]),  # [B, H + 1]
        _node("Where", [f"here{b}", "excluded_row", "zero"], [f"rows_out{b}"]),
        _node("Where", [f"here{b}", "minus_inf", "plus_inf"], [f"out{b}"]),  # +inf: min() keeps the score
        _node("ScatterElements", [f"best{b}", f"rows_out{b}", f"out{b}"], [f"left{b}"], axis=1,
              reduction="min"),  # [B, V_b]
        _node("Min", ["n", f"rows_{name}"], [f"n{b}"]),
        _node("TopK", [f"left{b}", f"n{b}"], [f"top_s{b}", f"top_r{b}"], axis=1, largest=1, sorted=1),
        _node("Add", [f"top_r{b}", f"first_{name}"], [f"top_i{b}"]),  # [B, n_b] item ids
        # the winning interest of the block's top only: their vectors against the K interests
        _node("Gather", [name, f"top_r{b}"], [f"e_top{b}"]),  # [B, n_b, d]
        _node("MatMul", [f"e_top{b}", "valid_by_k"], [f"s_top{b}"]),  # [B, n_b, K]
        _node("Where", ["mask_by_k", f"s_top{b}", "minus_inf"], [f"s_valid{b}"]),
        _node("ArgMax", [f"s_valid{b}"], [f"top_k{b}"], axis=2, keepdims=0),  # [B, n_b] lowest k of a tie
    ]
    return nodes, inits, (f"top_s{b}", f"top_i{b}", f"top_k{b}")


def _grid(groups: list, G: int) -> tuple[list, list]:
    """The pruned form over chunk groups of G items (group c: items c G .. c G + G - 1): each
    group's scores for every interest (one Gemm), the running max over groups and interests = the
    chunk maxima c_j over chunks j = {j, G + j, ..}; the top m chunks' items re-scored (Eq. 3), and
    their top m as candidates (grid_s, grid_i, grid_k)."""
    # the running max in segments of MAX_INPUTS inputs: max_0 = Max(g_0..g_7), max_1 = Max(max_0,
    # g_8..g_14), ... Emitted as every segment's Gemms, last segment first, then the Max nodes in
    # order: onnxruntime's default order (a depth-first walk from the outputs, visiting a node's
    # highest-numbered input first) then runs each Max right after its own Gemms, so that only
    # one segment's [K B, G] scores are alive at once (measured: docs/results.md)
    segments, first = [], 0
    while first < len(groups):
        size = MAX_INPUTS - (first > 0)
        segments.append(range(first, min(first + size, len(groups))))
        first += size
    nodes = [_node("Gemm", ["valid_kb", groups[c][0]], [f"g{c}"], transB=1)  # [K B, G]: e_{c G + j} . v_k
             for segment in reversed(segments) for c in segment]
    for t, segment in enumerate(segments):
        nodes.append(_node("Max", [f"gmax{t - 1}"] * (t > 0) + [f"g{c}" for c in segment], [f"gmax{t}"]))
    maxima = [f"gmax{len(segments) - 1}"]
    inits = [_const(np.array([G], np.int64), "chunks")]
    nodes += [
        _node("Reshape", [maxima[0], "by_k"], ["cmax_by_k"]),  # [K, B, G]
        _node("ReduceMax", ["cmax_by_k", "start"], ["cmax"], keepdims=0),  # [B, G]  c_j, Eq. (3) maxed over j
        _node("Min", ["m", "chunks"], ["m_c"]),
        _node("TopK", ["cmax", "m_c"], ["_cv", "top_c"], axis=1, largest=1, sorted=1),  # [B, m_c]
        # the kept chunks in id order: their items are gathered in id order, ties go to the lower id
        _node("TopK", ["top_c", "m_c"], ["kept", "_ci"], axis=1, largest=0, sorted=1),
    ]
    gathered, ids = [], []
    for c, (name, o, _) in enumerate(groups):  # chunk j's item in group c is row j of E_c
        inits.append(_const(np.array(o, np.int64), f"group_first{c}"))
        nodes += [_node("Gather", [name, "kept"], [f"e_kept{c}"]),  # [B, m_c, d]
                  _node("Add", ["kept", f"group_first{c}"], [f"id_kept{c}"])]  # [B, m_c] item ids
        gathered.append(f"e_kept{c}")
        ids.append(f"id_kept{c}")
    nodes += [
        _node("Concat", gathered, ["e_cand"], axis=1),  # [B, chunk m_c, d], in id order
        _node("Concat", ids, ["id_cand"], axis=1),  # [B, chunk m_c]
        _node("MatMul", ["e_cand", "valid_by_k"], ["s_cand"]),  # [B, chunk m_c, K]
        _node("Where", ["mask_by_k", "s_cand", "minus_inf"], ["s_cand_valid"]),
        _node("ReduceMax", ["s_cand_valid", "axis_2"], ["best_cand"], keepdims=0),  # Eq. (3)
        _node("ArgMax", ["s_cand_valid"], ["win_cand"], axis=2, keepdims=0),  # lowest k of a tie
        _node("Shape", ["best_cand"], ["width_cand"], start=1, end=2),
        _node("Min", ["m", "width_cand"], ["m_i"]),
        _node("TopK", ["best_cand", "m_i"], ["grid_s", "pos"], axis=1, largest=1, sorted=1),  # [B, m]
        _node("GatherElements", ["id_cand", "pos"], ["grid_i"], axis=1),
        _node("GatherElements", ["win_cand", "pos"], ["grid_k"], axis=1),
    ]
    return nodes, inits


def _rest(name: str) -> list:
    """The items past the grid (fewer than a chunk): every one scored (Eq. 3), their top m."""
    return [
        _node("MatMul", [name, "valid_by_k"], ["s_rest"]),  # [B, r, K]
        _node("Where", ["mask_by_k", "s_rest", "minus_inf"], ["s_rest_valid"]),
        _node("ReduceMax", ["s_rest_valid", "axis_2"], ["best_rest"], keepdims=0),  # [B, r]
        _node("ArgMax", ["s_rest_valid"], ["win_rest"], axis=2, keepdims=0),
        _node("Min", ["m", f"rows_{name}"], ["m_r"]),
        _node("TopK", ["best_rest", "m_r"], ["rest_s", "pos_rest"], axis=1, largest=1, sorted=1),
        _node("Add", ["pos_rest", f"first_{name}"], ["rest_i"]),
        _node("GatherElements", ["win_rest", "pos_rest"], ["rest_k"], axis=1),
    ]


def _model(nodes: list, inits: list, K: int, d: int, props: dict) -> onnx.ModelProto:
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("interests", f32, ["B", K, d]),
              helper.make_tensor_value_info("interest_mask", TensorProto.BOOL, ["B", K]),
              helper.make_tensor_value_info("history", i64, ["B", "H"]),
              helper.make_tensor_value_info("n", i64, [1])]
    outputs = [helper.make_tensor_value_info("items", i64, ["B", "n"]),
               helper.make_tensor_value_info("scores", f32, ["B", "n"]),
               helper.make_tensor_value_info("interest", i64, ["B", "n"])]
    used = {i for node in nodes for i in node.input}  # onnxruntime warns of unused initializers
    graph = helper.make_graph(nodes, "mind_eq3_topn", inputs, outputs, [t for t in inits if t.name in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="mindref", producer_version=__version__,
                              doc_string="MIND retrieval: Eq. (3) over every item, history excluded, top n")
    helper.set_model_props(model, {"mindref_version": __version__, **props})
    return model


class TopNSession:
    """The top-n graph on onnxruntime, in runs of users sized for the provider.

    Per run, the inputs are copied to the device (interests, mask, history: B (K d 4 + K + 8 H)
    bytes) and the results back (B n 20 bytes); the catalogue is copied once, when the session is
    made, and stays on the device (on CUDA, through onnxruntime's IOBinding). Users per run: `users`
    if given, else on the CPU CPU_USERS (its cache), on CUDA as many as `budget` bytes of
    intermediates hold, and never so many that a tensor reaches INT32_ELEMENTS (users_per_run)."""

    def __init__(self, model: bytes | str, V: int, provider: str = "auto", threads: int | None = None,
                 users: int | None = None, precision: str = "fp32", budget: int = CUDA_BUDGET, **external):
        """external: make_session's `shared` and `folder` (a graph with external data). Prepacking
        stays off: the products read the (memory-mapped, shared) catalogue where it lies."""
        if users is not None and users < 1:
            raise ValueError(f"users per run must be at least 1, got {users}")
        graph = onnx.load_model_from_string(model) if isinstance(model, bytes) else \
            onnx.load(str(Path(model)), load_external_data=False)
        self.layout = graph_layout(graph)
        self.K = graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        self.d = graph.graph.input[0].type.tensor_type.shape.dim[2].dim_value
        self.session: ort.InferenceSession = make_session(model, provider, threads, prepack=False,
                                                          precision=precision, **external)
        self.V, self.users, self.budget, self.precision = V, users, budget, precision
        self.provider = provider_name(self.session)

    def users_per_run(self, n: int, H: int) -> int:
        """Users per session.run for top-n of histories H wide (see the class docstring)."""
        if self.users is not None:
            return self.users
        if self.provider == "cpu":
            return CPU_USERS
        layout, K, d, m = self.layout, self.K, self.d, n + H + 1
        if layout["form"] == "blocked":
            R = min(self.V, layout["block"])  # the widest block
            widest, per_user = K * R, 4 * (K * R + 3 * R)  # the [V_b, K, B] scores, then [B, V_b] passes
        else:
            G = self.V // layout["chunk"]
            C, r = (layout["chunk"], self.V % layout["chunk"]) if G else (0, self.V)
            kept = C * min(m, G)  # items re-scored
            candidates = min(m, kept) + min(m, r)
            widest = max(K * G, kept * d, candidates * (H + 1), r * K)
            # two segments of group scores [K B, G] (MAX_INPUTS and a running max each; the arena
            # reuses a segment's memory from the segment after), the re-scored chunks, the merge:
            # 9.2 MB a user measured at 1M items, chunk 32, on an H200 (docs/results.md)
            per_user = (4 * (2 * (MAX_INPUTS + 1) * K * G + kept * (2 * d + 3 * K) + r * K)
                        + 5 * candidates * (H + 1))
        return max(1, min(INT32_ELEMENTS // widest, self.budget // per_user))

    def run(self, V_u: np.ndarray, mask: np.ndarray, history: np.ndarray, n: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """items, scores, interest [B, min(n, V)]; excluded slots have score -inf."""
        if not mask[:, 0].all():
            raise ValueError("interest_mask: interest 0 must be valid in every row (K'_u >= 1, Eq. 9)")
        history = check_ids("history", np.ascontiguousarray(history, np.int64), self.V)
        feeds = {"interests": np.ascontiguousarray(V_u, np.float32), "interest_mask": mask.astype(bool),
                 "history": history}
        k = np.array([min(n, self.V)], np.int64)
        step = self.users_per_run(int(k[0]), history.shape[1])
        parts = [self._run({**{a: b[i:i + step] for a, b in feeds.items()}, "n": k})
                 for i in range(0, len(V_u), step)]
        return tuple(np.concatenate(x) for x in zip(*parts))

    def _run(self, feeds: dict) -> list[np.ndarray]:
        if self.provider == "cpu":
            return self.session.run(None, feeds)
        binding = self.session.io_binding()  # inputs in, [B, n] results out; the catalogue stays
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in ("items", "scores", "interest"):
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
