"""mindref.export: serving MIND (3.5). The user tower as ONNX (onnx.helper, pinned IR and opset),
run by onnxruntime (CUDA when it really loads, else the CPU); multi-interest retrieval with Annoy
merged by Eq. (3); bundles with checksums; serving from raw ids and `explain`; pictures (plots).

Needs the export extra: pip install 'mindref[export]'. The names below are imported on first use
(PEP 562), so that a module that needs no ONNX (plots: matplotlib only) imports without it.
"""
from importlib import import_module

_WHERE = {
    "bundle": ("Bundle", "BundleError", "export_bundle", "load_bundle"),
    "retrieval": ("METRICS", "SEARCHES", "ItemIndex", "Retrieved", "Retriever", "eq3"),
    "runtime": ("TowerOutput", "TowerSession", "check_request", "make_session"),
    "serve": ("Explanation", "describe", "encode", "explain", "explain_text", "explanation", "recommend",
              "recommend_stream"),
    "topn": ("TopNSession", "build_topn"),
    "tower": ("IR_VERSION", "OPSET", "build_tower"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE[name]}", __name__), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
