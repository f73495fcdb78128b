"""The conformance kit: check another MIND implementation against mindref, layer by layer, and
say where it goes wrong.

    from mindref import conformance
    conformance.check_routing(my_routing, conventions={"axis": "interests"})   # raises ConformanceError

Each check_* takes the other implementation as a plain callable on NumPy arrays (convert to and
from your framework's tensors inside it), drives it with generated inputs (shapes, masks,
padding, zero vectors, negative scores, large and tiny magnitudes), compares it with mindref in
float64 within each function's error bound, and on a difference raises ConformanceError with
the minimal differing example (Hypothesis shrinks it), the first stage of the layer that
diverges (designed probe inputs, one stage at a time: localise.py) and, where the catalogue of
the public ports' mistakes reproduces it within the same bound, the mistake by name. `vjp`
callables are optional: they get the forward's inputs and the output cotangent and return the
input gradients, compared with mindref's hand-written backward passes.

Every call of the candidate gets fresh inputs and is made twice: an implementation that keeps
state between calls or draws afresh at inference is caught as "inconsistent between calls".

Signatures expected (B batch, L behaviours, K interests, d size; masks are bool):
    pooling(item_table, field_table, item_ids [N], field_ids [N, F]) -> e [N, d]
    sampled_softmax(v, e_pos, e_neg, pos_ids, neg_ids, log_q_pos, log_q_neg) -> loss;
                                                       vjp(..., dloss) -> (dv, de_pos, de_neg)
    squash(z [N, d]) -> c [N, d];                      vjp(z, dc) -> dz
    interest_count(lengths [B] int, K) -> [B] int      (K'_u, Eq. 9)
    routing(e [B, L, d], S [d, d], b0 [B, K, L], behaviour_mask [B, L], capsule_mask [B, K],
            iterations) -> u [B, K, d];                vjp(..., du) -> (de, dS)
    attention(V [B, K, d], e [B, d], capsule_mask [B, K]) -> v [B, d];   vjp(..., dv) -> (dV, de)
    make_tower(params, cfg, item_fields) -> tower(hist [B, L] int, profile [B, P] int)
                                          -> (V [B, K, d], mask [B, K])

The package, by concern: errors (the one error type), conventions (the names a port declares),
bounds (error bounds), strategies and runner (generated inputs, calling the port, comparing),
checks_capsules and checks_layers (one check per layer), localise and tower_probes (the first
stage that diverges), catalogue (the public ports' mistakes), adapter (`mindref conform`).
Needs Hypothesis (pip install 'mindref[conformance]'); mindref's model code does not. The guide:
docs/conformance.md.
"""
from .adapter import LAYERS, check_layer, layers, load, run_adapter
from .checks_capsules import check_interest_count, check_routing, check_squash
from .checks_layers import check_attention, check_pooling, check_sampled_softmax, check_user_tower
from .errors import KINDS, ConformanceError

__all__ = ["KINDS", "LAYERS", "ConformanceError", "check_attention", "check_interest_count", "check_layer",
           "check_pooling", "check_routing", "check_sampled_softmax", "check_squash", "check_user_tower",
           "layers",
           "load", "run_adapter"]
