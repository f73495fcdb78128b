"""Real ports as regression tests: torch-rechub 0.9.0's own routing code, run through the kit,
gets the diagnosis its code implies (torch_rechub/basic/layers.py, CapsuleNetwork.forward: the
softmax over behaviours at line 685, padding zeroed after it at 686, the update under `if i < 2`
at 689, a fresh torch.randn draw at 679); and a port with DeepMatch's conventions gets its own.

Needs torch and torch-rechub (`pip install torch==2.13.0 torch-rechub==0.9.0`, which .ci/run
installs); without them these tests skip, except under CI=true, where they fail."""
import os
from unittest import mock

import numpy as np
import pytest
from test_conformance import routing_port

from mindref import conformance as C

if os.environ.get("CI") == "true":
    import torch  # noqa: F401 - CI installs them: a missing one is a failure, not a skip
    from torch_rechub.basic.layers import CapsuleNetwork
else:
    torch = pytest.importorskip("torch")
    CapsuleNetwork = pytest.importorskip("torch_rechub.basic.layers").CapsuleNetwork


def rechub_routing(e, S, b0, bmask, cmask, iterations, fresh_draw=False):
    """torch-rechub's CapsuleNetwork (bilinear_type=0: MIND's shared S), in float64, with the
    kit's b0 in place of its torch.randn draw unless fresh_draw; interests beyond K'_u zeroed
    afterwards, as torch-rechub's MIND.user_tower does."""
    B, L, d = e.shape
    K = b0.shape[1]
    net = CapsuleNetwork(d, L, bilinear_type=0, interest_num=K, routing_times=int(iterations)).double()
    with torch.no_grad():
        net.linear.weight.copy_(torch.as_tensor(S))
        randn = torch.randn
        draw = ((lambda *shape, **kw: randn(*shape, **kw, dtype=torch.float64)) if fresh_draw
                else (lambda *shape, **kw: torch.as_tensor(b0.copy())))
        with mock.patch.object(torch, "randn", draw):
            u = net(torch.as_tensor(e), torch.as_tensor(bmask.astype(np.int64)))
    return u.numpy() * cmask[:, :, None]


def test_torch_rechub_routing_is_diagnosed():
    with pytest.raises(C.ConformanceError) as err:
        C.check_routing(rechub_routing, max_examples=60)
    said = str(err.value.diagnosis)
    for words in ("softmax over behaviours", "take softmax mass", "first two iterations"):
        assert words in said, said


def test_torch_rechub_routing_as_it_runs_draws_afresh_each_call():
    with pytest.raises(C.ConformanceError) as err:
        C.check_routing(lambda *a: rechub_routing(*a, fresh_draw=True), max_examples=20,
                        conventions={"squash": "1e-9"})  # its epsilon declared, the draw is what is left
    assert err.value.kind == "inconsistent" and "fresh random draw" in str(err.value.diagnosis)


class DeepMatchLike:
    """DeepMatch's conventions (deepmatch/layers/core.py, docs/decisions.md): the softmax over
    behaviours with padding masked before it (exact), an epsilon in the squash, K'_u from
    log2(1 + n), and the routing logits kept from call to call."""

    conventions = {"routing": {"softmax_axis": "behaviours"}}

    def __init__(self):
        self.logits = {}

    def squash(self, z):
        s = np.sum(z * z, -1, keepdims=True)
        return s / (1 + s) / np.sqrt(s + 1e-8) * z

    def interest_count(self, n, K):
        return np.clip(np.floor(np.log(1 + n) / np.log(2)), 1, K).astype(int)

    def routing(self, e, S, b0, bmask, cmask, iterations):
        b = self.logits.get(b0.shape, b0)
        u = routing_port(e, S, b, bmask, cmask, iterations, axis="behaviours")
        self.logits[b0.shape] = b + np.einsum("bkd,bld->bkl", u, e @ S.T)  # assign_add, kept
        return u


def test_a_port_with_deepmatch_conventions_is_diagnosed_layer_by_layer():
    rows = {r["layer"]: r for r in C.run_adapter(DeepMatchLike(), max_examples=40)}
    # its epsilon shows at small norms under the float64 default tolerance, and is named
    assert rows["squash"]["result"] == "FAIL" and "epsilon 1e-8" in rows["squash"]["detail"]
    assert rows["interest_count"]["result"] == "FAIL" and "DeepMatch" in rows["interest_count"]["detail"]
    assert rows["routing"]["result"] == "FAIL" and "carried between calls" in rows["routing"]["detail"]


def test_torch_rechub_routing_passes_once_its_conventions_are_declared():
    """Its choices are all in the catalogue: declared, the real code matches mindref's variant."""
    declared = {"padding": "mass", "updates": "first-2", "squash": "1e-9"}
    assert C.check_routing(rechub_routing, softmax_axis="behaviours", conventions=declared,
                           max_examples=60) == 60
