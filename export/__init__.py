"""mindref.export: serving MIND (3.5). The user tower as ONNX (onnx.helper, pinned IR and opset),
run by onnxruntime (CUDA when it really loads, else the CPU); multi-interest retrieval with Annoy
merged by Eq. (3); bundles with checksums; serving from raw ids and `explain`.

Needs the export extra: pip install 'mindref[export]'.
"""
from .bundle import Bundle, BundleError, export_bundle, load_bundle
from .retrieval import METRICS, SEARCHES, ItemIndex, Retrieved, Retriever, eq3
from .runtime import TowerOutput, TowerSession, check_request, make_session
from .serve import (
    Explanation,
    describe,
    encode,
    explain,
    explain_text,
    explanation,
    recommend,
    recommend_stream,
)
from .topn import TopNSession, build_topn
from .tower import IR_VERSION, OPSET, build_tower

__all__ = ["IR_VERSION", "METRICS", "OPSET", "SEARCHES", "Bundle", "BundleError", "Explanation",
           "ItemIndex", "Retrieved", "Retriever", "TopNSession", "TowerOutput", "TowerSession", "build_topn",
           "build_tower", "check_request", "describe", "encode", "eq3", "explain", "explain_text",
           "explanation", "export_bundle", "load_bundle", "make_session", "recommend", "recommend_stream"]
