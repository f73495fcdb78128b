"""The Try MIND page's weight and speed (docs/try.md): what a reader downloads, the time to the
first result and per recompute in headless Chromium, next to Python's onnxruntime for one user.

    python bench/try_page.py                     # builds the site into a temporary folder
    python bench/try_page.py --site site --repeats 20

Needs the docs extra, Chromium (Debian's package), Node.js/npm and the shared MovieLens-100K data.
Single-threaded on both sides: the page runs onnxruntime-web with one WebAssembly thread, and
Python's session here is given one intra-op thread too.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HISTORIES = ("50,172,181", "483,484,479,480,489,488,134,178,99,132,404,418,420,432,501,1")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def build(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("build_site", ROOT / "docs" / "build_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(out)


def weight(site: Path) -> dict:
    files = {p.name: p.stat().st_size for p in (site / "try").rglob("*")
             if p.is_file() and p.name != "model.js"}  # model.js: only for a page opened from a file
    files["try.html"] = (site / "try.html").stat().st_size
    return files


def python_one_user(site: Path, repeats: int) -> float:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    folder = site / "try" / "model"
    meta = json.loads((folder / "items.json").read_text())
    tower, topn = (ort.InferenceSession(str(folder / f), options, providers=["CPUExecutionProvider"])
                   for f in ("tower.onnx", "topn.onnx"))
    ids = np.array([[int(i) for i in HISTORIES[1].split(",")]], np.int64)
    feeds = {"item_ids": ids[:, -meta["max_len"]:]}
    if meta["profile_width"]:
        feeds["profile_ids"] = np.zeros((1, meta["profile_width"]), np.int64)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        v, m, _ = tower.run(None, feeds)
        topn.run(None, {"interests": v, "interest_mask": m, "history": ids, "n": np.array([10], np.int64)})
        for k in range(int(m.sum())):  # the page's per-interest lists: one more top-n each
            one = np.zeros_like(v)
            one[0, 0] = v[0, k]
            only = np.zeros_like(m)
            only[0, 0] = True
            topn.run(None, {"interests": one, "interest_mask": only, "history": ids,
                            "n": np.array([5], np.int64)})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, help="a built site (default: build one in a temporary folder)")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    tmp = None
    site = args.site
    if site is None:
        tmp = Path(tempfile.mkdtemp())
        site = build(tmp / "site")
    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/try.html"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            firsts, recomputes = [], []
            for _ in range(3):  # a fresh page each time: nothing cached between them
                context = browser.new_context()
                tab = context.new_page()
                tab.goto(url)
                tab.wait_for_function("window.MINDREF_TRY_RESULT !== undefined", timeout=120_000)
                firsts.append(tab.evaluate("window.MINDREF_TRY_RESULT.timings"))
                for r in range(args.repeats):
                    tab.evaluate("window.MINDREF_TRY_RESULT = undefined")
                    tab.fill("#try-ids", HISTORIES[r % 2])
                    tab.click("#try-run")
                    tab.wait_for_function("window.MINDREF_TRY_RESULT !== undefined")
                    if r % 2:  # the 16-behaviour history: K'_u = 4, five top-n runs
                        recomputes.append(tab.evaluate("window.MINDREF_TRY_RESULT.timings.last_compute_ms"))
                context.close()
            browser.close()
        sizes, python_ms = weight(site), python_one_user(site, args.repeats * 5)
    finally:
        httpd.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"page_weight_bytes": sizes, "page_weight_mib": round(sum(sizes.values()) / 2**20, 2),
                      "first_result_ms": statistics.median(f["first_result_ms"] for f in firsts),
                      "load_model_and_runtime_ms": statistics.median(f["load_ms"] for f in firsts),
                      "recompute_ms_K_u_4": statistics.median(recomputes),
                      "python_onnxruntime_ms_same_work": round(python_ms, 3)},
                     indent=2))


if __name__ == "__main__":
    sys.exit(main())
