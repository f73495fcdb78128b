"""The "Try MIND" page's files, put into the built site by docs/build_site.py:

    site/try.html                  docs/try.md (the page), rendered by MkDocs like every page
    site/try/try.js                docs/try/try.js (reads the history, runs the graphs, draws)
    site/try/ort.wasm.min.js       onnxruntime-web's WebAssembly build, and its loader and binary
    site/try/ort-wasm-simd-threaded.{mjs,wasm}
    site/try/ort-file.js           the same loader and binary in one script, for the page opened
                                   from a file (file://)
    site/try/model/                a web bundle (export/web.py): tower.onnx, topn.onnx, items.json,
                                   model.js

onnxruntime-web comes from npm, pinned in docs/try/package-lock.json (`npm ci` runs here when
docs/try/node_modules lacks it; Node and npm from the system's packages). The model is trained on
MovieLens-100K (the shared data) once and kept in build/try-run; its web bundle is exported into
the site at every build, so the page serves exactly what `mindref export --web` writes.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PACKAGE = DOCS / "try"
ORT_DIST = PACKAGE / "node_modules" / "onnxruntime-web" / "dist"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
RUN = ROOT / "build" / "try-run"
# the page's model: L = 20 so that K'_u (Eq. 9) reaches K = 4 at 16 behaviours
TRAIN = ["--data-format", "ml-100k", "--max-len", "20", "--epochs", "3"]


def onnxruntime_web() -> Path:
    """onnxruntime-web's dist folder, installed from the lockfile by `npm ci` when missing."""
    if not all((ORT_DIST / f).is_file() for f in ORT_FILES):
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("the Try MIND page needs onnxruntime-web from npm: install Node.js and npm "
                               "(apt-get install nodejs npm), then build again")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PACKAGE, check=True)
    return ORT_DIST


def web_model(out: Path, run: Path = RUN) -> dict:
    """Train the page's model once (into `run`), and export its web bundle into `out`."""
    from mindref import checkpoint
    from mindref.cli import main
    from mindref.commands import _run_data
    from mindref.export.web import export_web

    if not (run / "config.json").is_file():
        if main(["train", *TRAIN, "--out", str(run)]) != 0:
            raise RuntimeError(f"training the Try MIND page's model into {run} failed (is the shared "
                               "MovieLens-100K data there? set MINDREF_DATA)")
    params, cfg, manifest, _ = checkpoint.load(run)
    ds, _, _ = _run_data(manifest, None)
    return export_web(out, params, cfg, ds, force=True)


def install(site: Path) -> dict:
    """Put the page's runtime and model into a built site; returns the web bundle's record."""
    target = site / "try"
    target.mkdir(parents=True, exist_ok=True)
    dist = onnxruntime_web()
    for name in ORT_FILES:
        shutil.copy2(dist / name, target / name)
    shutil.copy2(PACKAGE / "try.js", target / "try.js")
    file_runtime(target)
    return web_model(target / "model")


def file_runtime(target: Path) -> None:
    """try/ort-file.js: onnxruntime-web's loader and WebAssembly binary inside one classic script,
    for the page opened from a file (a browser fetches nothing and imports no module from file://;
    the page turns these into blob: URLs). Served over HTTP, the page loads the files themselves."""
    glue = (target / ORT_FILES[1]).read_text(encoding="utf-8")
    wasm = base64.b64encode((target / ORT_FILES[2]).read_bytes()).decode()
    (target / "ort-file.js").write_text(f"window.ORT_FILE = {{mjs: {json.dumps(glue)}, wasm: \"{wasm}\"}};\n")
