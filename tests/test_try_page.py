"""The Try MIND page (docs/try.md, issue 27) in a real browser gives Python's answers: headless
Chromium drives the page through fixed histories (one that reaches K'_u = K, one shorter than L,
one longer than L, unknown ids, an empty one), reads what onnxruntime-web computed, and compares it
with Python's onnxruntime on the same ONNX files: ids identical apart from exact ties, scores and
routing weights within 1e-5, K'_u equal; bad input is a line on the page, and the console stays free
of errors. A second runtime check runs the same graphs under Node.js when it is installed.

Needs what tests/test_site.py needs, plus Node.js/npm (onnxruntime-web from docs/try's lockfile) and
the shared MovieLens-100K data (the page's model is trained on it)."""
import json
import shutil
import subprocess

import numpy as np
import pytest
from test_site import MISSING, ROOT, browser, server, site  # noqa: F401  (fixtures)

ort = pytest.importorskip("onnxruntime")

HISTORIES = {
    "K'u = K (16 behaviours)": "483,484,479,480,489,488,134,178,99,132,404,418,420,432,501,1",
    "shorter than L (3)": "50,172,181",
    "longer than L (25)": ",".join(str(i) for i in range(100, 125)),
    "one behaviour": "1",
}


@pytest.fixture(scope="module")
def page(site, server, browser):  # noqa: F811
    tab = browser.new_page()
    errors = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(f"{server}/try.html")
    tab.wait_for_function("window.MINDREF_TRY_RESULT !== undefined", timeout=60_000)
    yield tab, errors
    tab.close()


def drive(tab, ids: str) -> dict:
    """Type the history into the page's box and press its button, as a reader does."""
    tab.evaluate("window.MINDREF_TRY_RESULT = undefined")
    tab.fill("#try-ids", ids)
    tab.click("#try-run")
    tab.wait_for_function("window.MINDREF_TRY_RESULT !== undefined", timeout=30_000)
    return tab.evaluate("window.MINDREF_TRY_RESULT")


def python_answer(model, meta: dict, ids: str) -> dict:
    """The same request through Python's onnxruntime on the same files (export/serve.py's encoding)."""
    tower, topn = model
    index = {row[0]: i for i, row in enumerate(meta["items"])}
    seq = [index[r] for r in ids.split(",")]
    read = np.array([seq[-meta["max_len"]:]], np.int64)
    feeds = {"item_ids": read}
    if meta["profile_width"]:
        feeds["profile_ids"] = np.zeros((1, meta["profile_width"]), np.int64)
    interests, mask, weights = tower.run(None, feeds)
    hist = np.array([seq], np.int64)
    items, scores, interest = topn.run(None, {"interests": interests, "interest_mask": mask, "history": hist,
                                              "n": np.array([10], np.int64)})
    K_u = int(mask.sum())
    return {"K_u": K_u, "weights": weights[0, :K_u], "ids": items[0], "scores": scores[0],
            "interest": interest[0]}


@pytest.fixture(scope="module")
def model(site):  # noqa: F811
    folder = site / "try" / "model"
    sessions = tuple(ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
                     for name in ("tower.onnx", "topn.onnx"))
    return sessions, json.loads((folder / "items.json").read_text())


@pytest.mark.parametrize("case", list(HISTORIES))
def test_the_page_gives_pythons_answers(page, model, case):
    tab, errors = page
    ids = HISTORIES[case]
    got = drive(tab, ids)
    sessions, meta = model
    want = python_answer(sessions, meta, ids)
    assert "error" not in got, got
    assert got["K_u"] == want["K_u"]
    if case.startswith("K'u = K"):
        assert got["K_u"] == meta["K"] == 4
    np.testing.assert_allclose(np.array(got["weights"]), want["weights"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=1e-5)
    same = np.array(got["ids"]) == want["ids"]
    tied = np.isclose(got["scores"], want["scores"], atol=1e-6)  # a swap is allowed only within a tie
    assert (same | tied).all(), (got["ids"], want["ids"].tolist())
    assert same.mean() >= 0.9
    assert got["interest"] == want["interest"].tolist() or not same.all()
    assert len(got["nearest"]) == got["K_u"] and all(len(r["ids"]) == 5 for r in got["nearest"])
    text = tab.inner_text("#try-results")
    assert "Routing weights" in text and "Top 10" in text  # drawn, not a blank panel
    if case.startswith("longer"):
        assert "25 behaviours given; the tower reads the latest 20" in tab.inner_text("#try-status")
    assert errors == []


@pytest.mark.parametrize("ids, message", [
    ("", "history: empty"),
    ("50,nope,172", "item 'nope' is not in this bundle's catalog (1682 items)"),
    ("99999", "item '99999' is not in this bundle's catalog"),
])
def test_bad_input_is_a_line_on_the_page_as_in_the_cli(page, ids, message):
    tab, errors = page
    got = drive(tab, ids)
    assert message in got["error"]
    assert message in tab.inner_text("#try-status") and message in tab.inner_text("#try-results")
    assert errors == []


def test_the_model_js_holds_the_same_bytes_as_the_onnx_files(site):  # noqa: F811
    import base64
    folder = site / "try" / "model"
    text = (folder / "model.js").read_text()
    embedded = json.loads(text[text.index("{"):text.rindex("}") + 1])
    for name in ("tower.onnx", "topn.onnx"):
        assert base64.b64decode(embedded[name]) == (folder / name).read_bytes()
    assert embedded["items.json"] == json.loads((folder / "items.json").read_text())


NODE_CHECK = r"""
const ort = require(process.argv[2]);
const fs = require("fs");
(async () => {
  ort.env.wasm.numThreads = 1;
  const dir = process.argv[3];
  const tower = await ort.InferenceSession.create(fs.readFileSync(`${dir}/tower.onnx`));
  const ids = process.argv[4].split(",").map((x) => BigInt(x));
  const feeds = { item_ids: new ort.Tensor("int64", BigInt64Array.from(ids), [1, ids.length]) };
  const P = Number(process.argv[5]);
  if (P > 0) feeds.profile_ids = new ort.Tensor("int64", new BigInt64Array(P), [1, P]);
  const out = await tower.run(feeds);
  console.log(JSON.stringify(Array.from(out.interests.data)));
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_same_tower_under_node_gives_pythons_interests(site, model, tmp_path):  # noqa: F811
    """The second runtime: onnxruntime-web's WebAssembly build under Node.js (no extra package:
    the lockfile's onnxruntime-web runs in Node as in a browser)."""
    sessions, meta = model
    script = tmp_path / "check.js"
    script.write_text(NODE_CHECK)
    ids = [int(i) for i in HISTORIES["shorter than L (3)"].split(",")]
    dist = ROOT / "docs" / "try" / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.js"
    done = subprocess.run(["node", str(script), str(dist), str(site / "try" / "model"),
                           ",".join(map(str, ids)), str(meta["profile_width"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.array(json.loads(done.stdout))
    feeds = {"item_ids": np.array([ids], np.int64)}
    if meta["profile_width"]:
        feeds["profile_ids"] = np.zeros((1, meta["profile_width"]), np.int64)
    want = sessions[0].run(None, feeds)[0].ravel()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_the_page_opened_from_a_file_gives_the_same_answers(site, browser, page):  # noqa: F811
    """file://: no fetch, no module import; the page loads the same bytes from two scripts."""
    served = drive(page[0], HISTORIES["K'u = K (16 behaviours)"])
    tab = browser.new_page()
    errors = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.goto((site / "try.html").as_uri())
    tab.wait_for_function("window.MINDREF_TRY_RESULT !== undefined", timeout=120_000)
    from_file = drive(tab, HISTORIES["K'u = K (16 behaviours)"])
    tab.close()
    assert from_file["ids"] == served["ids"] and from_file["K_u"] == served["K_u"] == 4
    np.testing.assert_allclose(from_file["scores"], served["scores"], rtol=0, atol=1e-6)
    assert errors == []
