"""Where the graphs run (export/providers.py, export/runtime.py): CUDA sessions ask for every
result-changing option explicitly (no TF32 unless precision='tf32'), read them back, and refuse a
runtime that ignored one; runs are sized per provider. Without a GPU, onnxruntime's CUDA side is
stood in for by a recording fake."""
import numpy as np
import pytest
from conftest import require

ort = require("onnxruntime")
from mindref.export import providers, runtime  # noqa: E402
from mindref.export.providers import CUDA_EP, cuda_options, tower_users  # noqa: E402


class FakeCudaSession:
    """Records what InferenceSession was asked for and reports the CUDA provider as loaded, with
    the options it was given (or `reported`, to play a runtime that ignores one)."""

    asked: list = []
    reported: dict | None = None

    def __init__(self, model, options, providers):
        FakeCudaSession.asked.append(providers)
        self.options = dict(providers[0][1])

    def get_providers(self):
        return [CUDA_EP, "CPUExecutionProvider"]

    def get_provider_options(self):
        return {CUDA_EP: FakeCudaSession.reported or self.options}


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_EP, "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession)
    FakeCudaSession.asked, FakeCudaSession.reported = [], None
    return FakeCudaSession


@pytest.mark.parametrize("precision, tf32", [("fp32", "0"), ("tf32", "1")])
def test_cuda_sessions_ask_for_every_result_changing_option(fake_cuda, precision, tf32):
    session = runtime.make_session(b"graph", "cuda", precision=precision)
    (name, options), cpu = fake_cuda.asked[-1]
    assert name == CUDA_EP and cpu == "CPUExecutionProvider"
    assert options["use_tf32"] == tf32 and options["cudnn_conv_algo_search"] == "DEFAULT"
    assert providers.session_options(session) == options == cuda_options(precision)
    assert providers.provider_name(session) == "cuda"


def test_the_default_is_exact(fake_cuda):
    runtime.make_session(b"graph", "auto")
    assert fake_cuda.asked[-1][0][1]["use_tf32"] == "0"


def test_a_runtime_that_ignores_an_option_is_refused(fake_cuda):
    fake_cuda.reported = {**cuda_options("fp32"), "use_tf32": "1"}  # e.g. a build that ignores use_tf32
    with pytest.raises(RuntimeError, match="use_tf32.*results would not be fp32"):
        runtime.make_session(b"graph", "cuda")


def test_bad_precisions_and_providers_are_named():
    with pytest.raises(ValueError, match="precision must be one of"):
        providers.check_provider("cuda", "fp16")
    with pytest.raises(ValueError, match="provider must be one of"):
        providers.check_provider("tpu")
    with pytest.raises(ValueError, match="at least 1"):
        tower_users("cpu", 0)


def test_tower_runs_are_sized_per_provider():
    from mindref.model import SERVING_CHUNK
    assert tower_users("cpu") == SERVING_CHUNK == providers.CPU_TOWER_USERS
    assert tower_users("cuda") == providers.CUDA_TOWER_USERS > SERVING_CHUNK
    assert tower_users("cuda", 5) == tower_users("cpu", 5) == 5


def test_tf32_on_the_cpu_computes_fp32():
    """The CPU has no reduced-precision MatMul: a 'tf32' session gives the fp32 answer bit for bit."""
    from onnx import TensorProto, helper, numpy_helper

    from mindref.export.tower import IR_VERSION, OPSET
    W = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
                              [numpy_helper.from_array(W, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    x = np.random.default_rng(1).normal(size=(8, 64)).astype(np.float32)
    outs = [runtime.make_session(model.SerializeToString(), "cpu", precision=p).run(None, {"x": x})[0]
            for p in ("fp32", "tf32")]
    np.testing.assert_array_equal(*outs)
