"""Where the serving graphs run and how: the execution provider, every provider option that can
change a result, and how many users one run takes on each provider.

**Exact by default.** onnxruntime's CUDA provider runs MatMul and Gemm in TF32 (a 10-bit
mantissa on the tensor cores) unless told otherwise; measured on an H200 that moved the
interests by 2.9e-4 and the top-50 scores by 3.6e-4 against the CPU, and changed 0.13% of the
top-50 ids (docs/results.md). mindref therefore asks for every option that can change a result:

    precision 'fp32' (default)  use_tf32 = 0: IEEE float32 products, as on the CPU
    precision 'tf32'            use_tf32 = 1: the fast path, chosen explicitly; its recall@50
                                against fp32 is measured in docs/results.md
    cudnn_conv_algo_search      'DEFAULT' (a fixed heuristic, not a per-process benchmark)

and reads them back from the session (`session_options(session)`). The CPU provider has no
reduced-precision mode: 'tf32' there computes in float32, exactly like 'fp32'.

**Run sizes.** A run is one `session.run`; its size trades per-run overhead against the memory a
run's intermediates take. The CPU runs measured fastest in runs that keep a block's scores in
cache (32 users x 32,768 items, docs/results.md). A GPU wants runs as large as its memory budget
allows, under one hard limit: onnxruntime's CUDA kernels (and cuDNN's reductions) refuse or
overflow on tensors of 2^31 elements or more, so no intermediate may reach INT32_ELEMENTS.
"""
from __future__ import annotations

from mindref.model import SERVING_CHUNK

PROVIDERS = ("auto", "cuda", "cpu")
PRECISIONS = ("fp32", "tf32")
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"

INT32_ELEMENTS = 2**31 - 1  # the largest tensor (in elements) a CUDA kernel of onnxruntime indexes
CUDA_BUDGET = 8 * 2**30  # bytes of intermediates one CUDA run may hold (fits a 16 GB card beside the model)
CPU_TOWER_USERS = SERVING_CHUNK  # users per tower run on the CPU, as the NumPy path (stays in cache)
CUDA_TOWER_USERS = 16_384  # users per tower run on CUDA (measured: docs/results.md)


def check_provider(provider: str, precision: str = "fp32") -> None:
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def cuda_options(precision: str = "fp32", device_id: int = 0) -> dict[str, str]:
    """The CUDA provider's options, every one that can change a result set explicitly."""
    check_provider("cuda", precision)
    return {"device_id": str(device_id), "use_tf32": "1" if precision == "tf32" else "0",
            "cudnn_conv_algo_search": "DEFAULT",
            # not a result: the arena grows by what a run asks, not to the next power of two
            "arena_extend_strategy": "kSameAsRequested"}


def session_options(session) -> dict[str, str]:
    """The options the session's first provider really runs with (onnxruntime's own record)."""
    provider = session.get_providers()[0]
    return dict(session.get_provider_options().get(provider, {}))


def provider_name(session) -> str:
    """'cuda' or 'cpu': where the session's graph really runs."""
    return "cuda" if session.get_providers()[0] == CUDA_EP else "cpu"


def tower_users(provider: str, users: int | None = None) -> int:
    """Users per tower run: `users` when given (--batch-users), else the provider's measured size."""
    if users is not None:
        if users < 1:
            raise ValueError(f"users per run must be at least 1, got {users}")
        return users
    return CUDA_TOWER_USERS if provider == "cuda" else CPU_TOWER_USERS
