"""onnxruntime inference of the exported user tower: CUDA when it really loads, else the CPU.

onnxruntime-gpu lists CUDAExecutionProvider as available even on machines without the CUDA and
cuDNN libraries; asking for it there logs a page of errors and silently falls back. We ask with the
logger silenced and then read which providers the session actually got. CUDA sessions are exact
by default (no TF32) and pass every result-changing option explicitly (export/providers.py).

TowerSession validates every request before it reaches the graph (which cannot raise: Gather
wraps negative ids, and an all-padding history would route nothing), so a bad request is an
error that names the problem, never a silent wrong answer.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from mindref.checks import check_ids
from mindref.model import MINDConfig

from .providers import CPU_EP as _CPU
from .providers import CUDA_EP as _CUDA
from .providers import PROVIDERS, check_provider, cuda_options, provider_name, session_options, tower_users
from .tower import INPUT_ITEMS, INPUT_PROFILE, field_input

__all__ = ["PROVIDERS", "TowerOutput", "TowerSession", "check_request", "cuda_needs", "make_session"]
_DEFAULT_SEVERITY = 2  # onnxruntime's default logger severity (warnings)


class TowerOutput(NamedTuple):
    interests: np.ndarray  # [B, K, d] float32, zero beyond K'_u
    mask: np.ndarray  # [B, K] bool
    weights: np.ndarray  # [B, K, L] routing weights of the last iteration


def make_session(model: bytes | str, provider: str = "auto", threads: int | None = None,
                 shared: dict[str, np.ndarray] | None = None, folder: str | None = None,
                 prepack: bool = True, precision: str = "fp32") -> ort.InferenceSession:
    """An InferenceSession on CUDA if provider is 'auto' and CUDA really loads (or 'cuda', which
    raises when it does not), else on the CPU. threads: intra-op threads (None: onnxruntime's).
    precision: 'fp32' (exact) or 'tf32' (CUDA's tensor-core MatMul; no effect on the CPU).

    shared: arrays for the graph's external initializers, used in place (not copied: they may be
    memory-mapped, mindref.export.arrays); folder: where a graph given as bytes has its external
    data. prepack=False keeps onnxruntime from copying a constant MatMul operand into its own
    packed layout (a second, private copy of the catalogue per worker; export/topn.py)."""
    check_provider(provider, precision)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    # onnxruntime uses each OrtValue's memory in place but keeps no reference to it: the session
    # object holds them (each OrtValue holds its array, which holds its mapping) for its lifetime
    values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a, np.float32))
              for name, a in (shared or {}).items()}
    for name, value in values.items():
        options.add_initializer(name, value)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if provider == "cpu" or _CUDA not in ort.get_available_providers():
        if provider == "cuda":
            raise RuntimeError("provider 'cuda': this onnxruntime has no CUDA provider "
                               "(pip install 'mindref[export-gpu]' in an environment without onnxruntime)")
        return _holding(ort.InferenceSession(model, options, providers=[_CPU]), values)
    ort.set_default_logger_severity(4)  # the failed CUDA load is expected on CPU-only machines
    try:
        session = ort.InferenceSession(model, options, providers=[(_CUDA, cuda_options(precision)), _CPU])
    finally:
        ort.set_default_logger_severity(_DEFAULT_SEVERITY)
    if provider == "cuda" and _CUDA not in session.get_providers():
        raise RuntimeError(f"provider 'cuda': the CUDA provider did not load ({cuda_needs()}); use "
                           "provider 'auto' or 'cpu'")
    if _CUDA in session.get_providers():  # read back: a runtime that ignored an option is refused
        asked, got = cuda_options(precision), session_options(session)
        wrong = {k: got.get(k) for k, v in asked.items() if got.get(k) != v}
        if wrong:
            raise RuntimeError(f"the CUDA provider runs with {wrong}, not the {asked} mindref asked for "
                               f"(onnxruntime {ort.__version__}); results would not be {precision}")
    return _holding(session, values)


def cuda_needs() -> str:
    """The CUDA libraries this onnxruntime build was made for, as its package records them."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return "the CUDA and cuDNN libraries of this onnxruntime build are needed"
    cuda, cudnn = getattr(info, "cuda_version", None), getattr(info, "cudnn_version", None)
    if not cuda:
        return "this onnxruntime was not built with CUDA"
    libraries = f"CUDA {cuda}" + (f" and cuDNN {cudnn}" if cudnn else " and its cuDNN")
    return f"onnxruntime {ort.__version__} needs the {libraries} libraries"


def _holding(session: ort.InferenceSession, values: dict) -> ort.InferenceSession:
    session.mindref_initializers = values
    return session


class TowerSession:
    """The ONNX user tower behind the same contract as mindref.model.user_vectors."""

    def __init__(self, model: bytes | str, cfg: MINDConfig, item_fields: tuple, provider: str = "auto",
                 threads: int | None = None, chunk: int | None = None, precision: str = "fp32", **external):
        """chunk: users per session.run (None: the provider's, providers.tower_users); external:
        make_session's `shared` and `folder` (a graph with external data)."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be at least 1 user, got {chunk}")
        self.cfg, self.precision = cfg, precision
        self.session = make_session(model, provider, threads, precision=precision, **external)
        self.chunk = tower_users(self.provider, chunk)  # users per session.run (docs/results.md)
        inputs = {i.name for i in self.session.get_inputs()}
        self.item_fields = tuple(item_fields)  # for callers (e.g. describing items)
        # the side fields the graph takes as inputs: only items='features' graphs pool from them
        self._fed_fields = tuple((field_input(f), table) for f, table in enumerate(self.item_fields)
                                 if field_input(f) in inputs)

    @property
    def provider(self) -> str:
        """'cuda' or 'cpu': where the graph really runs."""
        return provider_name(self.session)

    def feeds(self, hist: np.ndarray, profile: np.ndarray | None = None) -> dict:
        """The graph's inputs for histories hist [B, L] and profiles [B, P], validated."""
        hist, profile = check_request(self.cfg, hist, profile)
        feeds = {INPUT_ITEMS: hist}
        feeds.update({name: table[hist] for name, table in self._fed_fields})
        if self.cfg.profile_sizes:
            feeds[INPUT_PROFILE] = profile
        return feeds

    def run(self, hist: np.ndarray, profile: np.ndarray | None = None) -> TowerOutput:
        """V_u [B, K, d], the interest mask [B, K] and the routing weights [B, K, L], computed
        self.chunk users a run (on the CPU a run's working set stays in cache; on CUDA runs are
        large, so that the per-op launch costs are spread over many users)."""
        feeds = self.feeds(hist, profile)
        parts = [self.session.run(None, {k: v[i:i + self.chunk] for k, v in feeds.items()})
                 for i in range(0, len(feeds[INPUT_ITEMS]), self.chunk)]
        return TowerOutput(*(np.concatenate(x) for x in zip(*parts)))


def check_request(cfg: MINDConfig, hist, profile=None) -> tuple[np.ndarray, np.ndarray]:
    """hist [B, L] int ids in [0, V) with at least one behaviour per row and L <= max_len;
    profile [B, P] int ids in range (None: all unknown). Returns both as int64."""
    hist = np.asarray(hist)
    if hist.ndim != 2:
        raise ValueError(f"history: expected shape [B, L], got {list(hist.shape)}")
    hist = check_ids("history", hist, cfg.num_items).astype(np.int64)
    if hist.shape[1] > cfg.max_len:
        raise ValueError(f"history: length {hist.shape[1]} exceeds the trained maximum {cfg.max_len} "
                         "(keep the latest max_len behaviours: mindref.data.pad)")
    empty = np.flatnonzero(~(hist != 0).any(1))
    if hist.shape[0] == 0 or empty.size:
        raise ValueError("history: row " + (f"{empty[0]} is all padding" if empty.size else "count is 0")
                         + " (a user needs at least one behaviour)")
    P = len(cfg.profile_sizes)
    profile = np.zeros((hist.shape[0], P), np.int64) if profile is None else np.asarray(profile)
    if profile.shape != (hist.shape[0], P):
        raise ValueError(f"profile: expected shape [{hist.shape[0]}, {P}], got {list(profile.shape)}")
    for p, rows in enumerate(cfg.profile_sizes):
        check_ids(f"profile field {p}", profile[:, p], rows)
    return hist, profile.astype(np.int64)
