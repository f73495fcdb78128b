"""The serving user tower (MIND 3.5) as an ONNX graph, built node by node with onnx.helper.

    inputs   item_ids        int64 [B, L]        behaviour item ids, 0 = padding (L <= max_len)
             field_<f>_ids   int64 [B, L, F_f]   items='features' only: each item side field's ids
                                                 of those items (item_fields[f][item_ids])
             profile_ids     int64 [B, P]        (only when the model has profile fields)
    outputs  interests       float32 [B, K, d]   V_u, zero beyond K'_u
             interest_mask   bool [B, K]         capsule j is valid iff j < K'_u (Eq. 9)
             routing_weights float32 [B, K, L]   w_ij of the last routing iteration (Eq. 5)

The graph is the NumPy serving path (mindref.model.serving_tower) written out: pooling (3.2) and
e_hat = S e_i (by default S e_i of every catalog item, precomputed into a table), r unrolled
routing iterations from the stored logit draw b_ij (Eqs. 5-8), squash (Eq. 7), the profile
concatenation and the ReLU layers. Three choices keep it exact, not close:
- K'_u = max(1, min(K, floor(log2 n))) is computed by integer comparisons: capsule j >= 1 is valid
  iff n >= 2^(j+1). A float log2 would put n = 8 at 2.9999998 and lose a capsule.
- masked softmax gives masked entries exactly 0, as masked_softmax does.
- the softmax and the squash come in two forms of the same function. The general ("shifted") form
  is the NumPy code's: logits shifted by their max before Exp, z scaled by max |z_k| before it is
  squared. When the parameters prove every logit |b_ij| < LOGIT_RANGE and every ||z_j|| <
  NORM_RANGE (routing_bounds), the graph uses the short ("unshifted") form, with fewer passes over
  [B, K, L] and [B, K, d] (docs/results.md): softmax is shift-invariant, and
  z / (n + 1/n) = z sqrt(s) / (1 + s) with s = ||z||^2. metadata_props "routing_form" says which.

The graph cannot raise: ids out of range, negative ids (Gather wraps them), an all-padding history
or L > max_len must be refused before it runs (mindref.export.runtime.TowerSession does).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mindref import __version__
from mindref.checks import check_float
from mindref.model import MINDConfig, catalog, num_dense

# onnx 1.23 stamps IR 14 by default, which onnxruntime 1.31 refuses; IR 10 / opset 21 load in
# onnxruntime >= 1.20 and in onnx's ReferenceEvaluator.
IR_VERSION = 10
OPSET = 21
INPUT_ITEMS, INPUT_PROFILE = "item_ids", "profile_ids"
OUTPUTS = ("interests", "interest_mask", "routing_weights")
ITEM_MODES = ("table", "features")
TABLE = "item_S_e"  # the initializer of S e_i [V, d] (items='table')
LOGIT_RANGE = 60.0  # |b| < 60: e^b and sums of max_len of them stay normal, finite float32 (e^88.7 overflows)
NORM_RANGE = 1e18  # ||z|| < 1e18: ||z||^2 stays finite in float32 (max 3.4e38)


def field_input(f: int) -> str:
    return f"field_{f}_ids"


class _Builder:
    """Collects nodes and initializers; every op returns the name of its (single) output."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def named(self, name: str, op_type: str, *inputs: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name


def build_tower(params: dict, cfg: MINDConfig, item_fields: tuple, items: str = "table") -> onnx.ModelProto:
    """The ONNX user tower of a trained model over a catalog's item side fields ([V, F_f] each).

    items='table' (default, measured faster: docs/results.md): S e_i of every item is computed
    once here, in NumPy (the model's own f_item), and the graph gathers it by item id; the graph's
    only item input is item_ids. items='features': the graph pools e_i from field_<f>_ids inputs
    itself (3.2), for callers who feed item features rather than ids of a fixed catalog."""
    if items not in ITEM_MODES:
        raise ValueError(f"items must be one of {ITEM_MODES}, got {items!r}")
    if len(item_fields) != len(cfg.field_sizes):
        raise ValueError(f"the model has {len(cfg.field_sizes)} item side fields, got {len(item_fields)}")
    for name, value in params.items():
        check_float(name, value)  # a NaN would reach every user silently
    g = _Builder()
    f32 = {k: np.asarray(v, np.float32) for k, v in params.items()}
    c = _Constants(g)
    table = catalog(f32, item_fields, cfg.num_items)[1] if items == "table" else None  # [V, d]  S e_i
    if table is not None:
        e_hat = g.op("Gather", g.const(TABLE, table), INPUT_ITEMS)  # [B, L, d]
    else:
        e_hat = _behaviours(g, c, f32, cfg)  # [B, L, d]
    max_logit, max_norm = routing_bounds(f32, cfg, table)
    form = "unshifted" if max_logit < LOGIT_RANGE and max_norm < NORM_RANGE else "shifted"
    bmask = g.op("Not", g.op("Equal", INPUT_ITEMS, c["zero_i"]))  # [B, L]
    cmask = _capsule_mask(g, c, cfg, bmask)  # [B, K] bool
    u, w = _routing(g, f32, cfg, c, e_hat, bmask, cmask, form)  # [B, K, d], [B, K, L]
    x = _profile(g, c, f32, cfg, u) if cfg.profile_sizes else u
    for n in range(num_dense(cfg)):
        x = g.op("Add", g.op("MatMul", x, g.const(f"dense_W_{n}", f32[f"dense_W_{n}"])),
                 g.const(f"dense_b_{n}", f32[f"dense_b_{n}"]))
        if n < num_dense(cfg) - 1:
            x = g.op("Relu", x)
    mask_f = g.op("Unsqueeze", g.op("Cast", cmask, to=TensorProto.FLOAT), c["last"])  # [B, K, 1]
    g.named("interests", "Mul", x, mask_f)
    g.named("interest_mask", "Identity", cmask)
    g.named("routing_weights", "Identity", w)
    return _model(g, cfg, tuple(f.shape[1] for f in item_fields) if items == "features" else (), items, form)


def routing_bounds(f32: dict, cfg: MINDConfig, table: np.ndarray | None = None) -> tuple[float, float]:
    """Upper bounds on |b_ij| and ||z_j|| for every request the graph can get.

    Every e_hat_i = S e_i has norm <= h: the table's largest row or, pooled from features,
    ||S||_2 times the largest embedding row (e_i is an average of rows). ||u_j|| < 1 after the
    squash (Eq. 7), so each of the r - 1 updates (Eq. 8) moves b_ij by at most h from the stored
    draw, and z_j (Eq. 6) sums at most max_len behaviours with weights <= 1."""
    if table is not None:
        h = float(np.linalg.norm(table.astype(np.float64), axis=1).max())
    else:
        rows = max(float(np.linalg.norm(t.astype(np.float64), axis=1).max())
                   for k, t in f32.items() if k == "item_emb" or k.startswith("field_emb_"))
        h = float(np.linalg.norm(f32["S"].astype(np.float64), 2)) * rows
    max_logit = float(np.abs(f32["serving_logits"]).max()) + (cfg.iterations - 1) * h
    return max_logit, cfg.max_len * h


class _Constants:
    """Shared scalar and axis initializers, each added to the graph on first use (onnxruntime
    warns about unused initializers)."""

    VALUES = {"zero_i": np.array(0, np.int64), "zero": np.array(0, np.float32),
              "one": np.array(1, np.float32), "tiny": np.array(np.finfo(np.float32).tiny, np.float32),
              "neg_inf": np.array(-np.inf, np.float32), "last": np.array([-1], np.int64),
              "ax1": np.array([1], np.int64), "ax2": np.array([2], np.int64)}

    def __init__(self, g: _Builder):
        self.g, self.names = g, {}

    def __getitem__(self, key: str) -> str:
        if key not in self.names:
            self.names[key] = self.g.const(f"const_{key}", self.VALUES[key])
        return self.names[key]


def _pool_field(g: _Builder, c: _Constants, table: str, ids: str) -> tuple[str, str]:
    """One field's masked mean [B, L, d] over its F ids [B, L, F], and whether any id is present
    [B, L, 1] (3.2; embedding.pooling_weights)."""
    valid = g.op("Cast", g.op("Not", g.op("Equal", ids, c["zero_i"])), to=TensorProto.FLOAT)  # [B, L, F]
    count = g.op("ReduceSum", valid, c["last"], keepdims=1)  # [B, L, 1]
    emb = g.op("Gather", table, ids)  # [B, L, F, d]
    total = g.op("ReduceSum", g.op("Mul", emb, g.op("Unsqueeze", valid, c["last"])), c["ax2"],
                 keepdims=0)  # [B, L, d]
    mean = g.op("Div", total, g.op("Max", count, c["one"]))
    return mean, g.op("Cast", g.op("Greater", count, c["zero"]), to=TensorProto.FLOAT)


def _behaviours(g: _Builder, c: _Constants, f32: dict, cfg: MINDConfig) -> str:
    """e_i = f_item(F_i) pooled over the present fields (3.2), mapped by S: e_hat [B, L, d]."""
    item_ids3 = g.op("Unsqueeze", INPUT_ITEMS, c["last"])  # [B, L, 1]
    fields = [("item_emb", item_ids3)]
    fields += [(f"field_emb_{f}", field_input(f)) for f in range(len(cfg.field_sizes))]
    means, present = zip(*(_pool_field(g, c, g.const(name, f32[name]), ids) for name, ids in fields))
    total = means[0] if len(means) == 1 else g.op("Sum", *means)
    n_present = present[0] if len(present) == 1 else g.op("Sum", *present)
    e = g.op("Div", total, g.op("Max", n_present, c["one"]))  # [B, L, d]
    return g.op("MatMul", e, g.const("S_T", np.ascontiguousarray(f32["S"].T)))  # [B, L, d]  S e_i


def _capsule_mask(g: _Builder, c: _Constants, cfg: MINDConfig, bmask: str) -> str:
    """[B, K] bool, Eq. (9) exactly: capsule 0 needs n >= 1, capsule j >= 1 needs n >= 2^(j+1)."""
    n = g.op("ReduceSum", g.op("Cast", bmask, to=TensorProto.INT64), c["ax1"], keepdims=1)  # [B, 1]
    need = [1] + [2 ** (j + 1) if cfg.dynamic_k else 1 for j in range(1, cfg.K)]
    return g.op("GreaterOrEqual", n, g.const("capsule_needs", np.array(need, np.int64)))


def _routing(g: _Builder, f32: dict, cfg: MINDConfig, c: _Constants, e_hat: str, bmask: str, cmask: str,
             form: str) -> tuple[str, str]:
    """r iterations of Eqs. (5)-(8) from the stored draw b_ij [K, :L]; returns u and the last w."""
    mask = g.op("And", g.op("Unsqueeze", cmask, c["ax2"]), g.op("Unsqueeze", bmask, c["ax1"]))  # [B, K, L]
    if form == "unshifted":
        mask = g.op("Cast", mask, to=TensorProto.FLOAT)
    softmax, squash = (_softmax, _squash) if form == "unshifted" else (_masked_softmax, _scaled_squash)
    L = g.op("Shape", INPUT_ITEMS, start=1, end=2)  # [1]
    stored = g.const("serving_logits", f32["serving_logits"])  # [K, max_len]
    b = g.op("Slice", stored, g.const("zero_1", np.array([0], np.int64)), L, c["ax1"])  # [K, L]
    axis = c["ax1"] if cfg.softmax_axis == "interests" else c["ax2"]
    e_hat_T = g.op("Transpose", e_hat, perm=[0, 2, 1])  # [B, d, L]
    for t in range(cfg.iterations):
        w = softmax(g, c, b, mask, axis)  # [B, K, L]  Eq. (5)
        u = squash(g, c, g.op("MatMul", w, e_hat))  # [B, K, d]  Eqs. (6)-(7)
        if t < cfg.iterations - 1:
            b = g.op("Add", b, g.op("MatMul", u, e_hat_T))  # [B, K, L]  Eq. (8)
    return u, w


def _softmax(g: _Builder, c: _Constants, b: str, mask: str, axis: str) -> str:
    """The masked softmax for |b| < LOGIT_RANGE: mask [B, K, L] float, masked entries exactly 0,
    an all-masked slice all 0 (0 / tiny); any valid slice sums to >= e^-60, far above tiny."""
    ex = g.op("Mul", g.op("Exp", b), mask)  # [B, K, L]
    return g.op("Div", ex, g.op("Max", g.op("ReduceSum", ex, axis, keepdims=1), c["tiny"]))


def _masked_softmax(g: _Builder, c: _Constants, b: str, mask: str, axis: str) -> str:
    """mindref.softmax.masked_softmax: masked entries exactly 0, an all-masked slice all 0."""
    x = g.op("Where", mask, b, c["neg_inf"])  # [B, K, L]
    m = g.op("ReduceMax", x, axis, keepdims=1)
    m = g.op("Where", g.op("IsInf", m), c["zero"], m)
    ex = g.op("Exp", g.op("Sub", x, m))
    den = g.op("ReduceSum", ex, axis, keepdims=1)
    den = g.op("Where", g.op("Equal", den, c["zero"]), c["one"], den)
    return g.op("Div", ex, den)


def _squash(g: _Builder, c: _Constants, z: str) -> str:
    """Eq. (7) for ||z|| < NORM_RANGE: c = z sqrt(s) / (1 + s), s = ||z||^2 (0 at z = 0)."""
    s = g.op("ReduceSumSquare", z, c["last"], keepdims=1)  # [B, K, 1]
    return g.op("Mul", z, g.op("Div", g.op("Sqrt", s), g.op("Add", s, c["one"])))


def _scaled_squash(g: _Builder, c: _Constants, z: str) -> str:
    """Eq. (7) as mindref.squash computes it: c = z / (n + 1/n), n = ||z|| on z scaled by max |z_k|."""
    m = g.op("ReduceMax", g.op("Abs", z), c["last"], keepdims=1)  # [B, K, 1]
    safe = g.op("Where", g.op("Greater", m, c["zero"]), m, c["one"])
    scaled = g.op("Div", z, safe)
    n = g.op("Mul", m, g.op("Sqrt", g.op("ReduceSum", g.op("Mul", scaled, scaled), c["last"], keepdims=1)))
    r = g.op("Div", c["one"], g.op("Max", n, c["tiny"]))
    s = g.op("Where", g.op("Greater", n, c["zero"]), g.op("Div", c["one"], g.op("Add", n, r)), c["zero"])
    return g.op("Mul", s, z)


def _profile(g: _Builder, c: _Constants, f32: dict, cfg: MINDConfig, u: str) -> str:
    """concat(u_j, profile embedding) [B, K, d + P dp]; profile id 0 (unknown) embeds to 0."""
    parts = []
    for p in range(len(cfg.profile_sizes)):
        col = g.op("Gather", INPUT_PROFILE, g.const(f"profile_col_{p}", np.array(p, np.int64)), axis=1)  # [B]
        emb = g.op("Gather", g.const(f"profile_emb_{p}", f32[f"profile_emb_{p}"]), col)  # [B, dp]
        known = g.op("Cast", g.op("Not", g.op("Equal", col, c["zero_i"])), to=TensorProto.FLOAT)
        parts.append(g.op("Mul", emb, g.op("Unsqueeze", known, c["last"])))
    prof = g.op("Concat", *parts, axis=-1)  # [B, P dp]
    width = cfg.profile_dim * len(cfg.profile_sizes)
    shape = g.op("Concat", g.op("Shape", INPUT_PROFILE, start=0, end=1),
                 g.const("profile_tail", np.array([cfg.K, width], np.int64)), axis=0)
    return g.op("Concat", u, g.op("Expand", g.op("Unsqueeze", prof, c["ax1"]), shape), axis=-1)


def _model(g: _Builder, cfg: MINDConfig, field_widths: tuple, items: str, form: str) -> onnx.ModelProto:
    i64, f32, flag = TensorProto.INT64, TensorProto.FLOAT, TensorProto.BOOL
    inputs = [helper.make_tensor_value_info(INPUT_ITEMS, i64, ["B", "L"])]
    inputs += [helper.make_tensor_value_info(field_input(f), i64, ["B", "L", int(w)])
               for f, w in enumerate(field_widths)]
    if cfg.profile_sizes:
        inputs.append(helper.make_tensor_value_info(INPUT_PROFILE, i64, ["B", len(cfg.profile_sizes)]))
    outputs = [helper.make_tensor_value_info("interests", f32, ["B", cfg.K, cfg.dim]),
               helper.make_tensor_value_info("interest_mask", flag, ["B", cfg.K]),
               helper.make_tensor_value_info("routing_weights", f32, ["B", cfg.K, "L"])]
    graph = helper.make_graph(g.nodes, "mind_user_tower", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="mindref", producer_version=__version__,
                              doc_string="MIND user tower (Li et al., CIKM 2019), serving path")
    helper.set_model_props(model, {"mindref_version": __version__,
                                   "config": json.dumps(cfg.to_dict()),
                                   "items": items,
                                   "routing_form": form,
                                   "field_widths": json.dumps([int(w) for w in field_widths])})
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
