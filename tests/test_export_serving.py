"""Bundles, multi-interest retrieval (Eq. 3 merge, Annoy vs exact) and the serving CLI."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import require

from mindref import checkpoint
from mindref.cli import main
from mindref.data import leave_one_out, synthetic
from mindref.model import MINDConfig
from mindref.train import fit

require("onnx")
require("onnxruntime")
require("annoy")
from mindref.export import (  # noqa: E402
    BundleError,
    ItemIndex,  # noqa: E402
    Retriever,
    export_bundle,
    load_bundle,
    recommend,
)

SPEC = {"format": "synthetic", "users": 300, "seed": 4, "protocol": "loo", "max_len": 30}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on the embedded synthetic data, its checkpoint and its bundle."""
    ds = synthetic(num_users=300, seed=4)
    train, _, test = leave_one_out(ds, 30)
    cfg = MINDConfig(num_items=ds.num_items, field_sizes=ds.field_sizes, profile_sizes=ds.profile_sizes,
                     dim=16, K=4, hidden=(32,), max_len=30, seed=5)
    state = fit(cfg, ds, train, epochs=2, batch_size=128, num_neg=64)
    root = tmp_path_factory.mktemp("serving")
    checkpoint.save(root / "model", state.params, cfg, SPEC)
    export_bundle(root / "bundle", state.params, cfg, ds, n_trees=20, seed=0)
    return ds, test, cfg, state.params, root


def test_exact_retrieval_obeys_eq3(trained):
    ds, test, cfg, _, root = trained
    bundle = load_bundle(root / "bundle", "cpu")
    hist = test.hist[:40]
    out = bundle.tower.run(hist, ds.profiles[test.users[:40]])
    for b, r in enumerate(bundle.retriever.retrieve(out.interests, out.mask, hist, n=25, exact=True)):
        valid = np.flatnonzero(out.mask[b])
        all_scores = out.interests[b][valid] @ bundle.E.T  # [K'u, V]
        best = all_scores.max(0)
        best[0] = -np.inf
        best[hist[b][hist[b] != 0]] = -np.inf
        np.testing.assert_allclose(r.scores, np.sort(best)[::-1][:25], rtol=1e-6)  # the true top 25
        np.testing.assert_allclose(r.scores, best[r.items], rtol=1e-6)  # score = max_k, Eq. (3)
        assert np.all(np.diff(r.scores) <= 0) and len(set(r.items.tolist())) == 25
        assert not np.isin(r.items, hist[b]).any() and 0 not in r.items
        np.testing.assert_array_equal(valid[all_scores[:, r.items].argmax(0)], r.interests)


def test_annoy_recall_against_exact(trained):
    """Annoy (20 trees, default search) finds >= 90% of the exact top 50 on a trained model;
    every returned score is still exact (Eq. 3 re-scoring)."""
    ds, test, _, _, root = trained
    bundle = load_bundle(root / "bundle", "cpu")
    hist = test.hist[:100]
    out = bundle.tower.run(hist, ds.profiles[test.users[:100]])
    exact = bundle.retriever.retrieve(out.interests, out.mask, hist, n=50, exact=True)
    approx = bundle.retriever.retrieve(out.interests, out.mask, hist, n=50, exact=False)
    recall = np.mean([len(set(a.items) & set(e.items)) / 50 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall
    for a, b in zip(approx, range(100)):
        s = np.where(out.mask[b][:, None], out.interests[b] @ bundle.E[a.items].T, -np.inf).max(0)
        np.testing.assert_allclose(a.scores, s, rtol=1e-6)
        assert not np.isin(a.items, hist[b]).any() and 0 not in a.items


def test_auto_search_is_exact_for_small_catalogs(trained):
    ds, test, _, _, root = trained
    bundle = load_bundle(root / "bundle", "cpu")
    out = bundle.tower.run(test.hist[:5], ds.profiles[test.users[:5]])
    auto = bundle.retriever.retrieve(out.interests, out.mask, test.hist[:5], 20)
    exact = bundle.retriever.retrieve(out.interests, out.mask, test.hist[:5], 20, exact=True)
    assert all(np.array_equal(a.items, e.items) for a, e in zip(auto, exact))
    bundle.retriever.exact_below = 10  # a "large" catalog: auto asks the index
    approx = bundle.retriever.retrieve(out.interests, out.mask, test.hist[:5], 20)
    assert all(len(a.items) == 20 for a in approx)


def test_padding_is_never_retrieved_and_tiny_catalogs_work():
    E = np.zeros((4, 3), np.float32)
    E[1:] = np.eye(3)
    V = -np.ones((1, 2, 3), np.float32)  # every real item scores -1, below the padding row's 0
    for metric in ("angular", "dot"):
        r = Retriever(E, ItemIndex.build(E, 3, metric=metric), oversample=1)
        for exact in (True, False):
            got = r.retrieve(V, np.array([[True, False]]), np.array([[2]]), n=10, exact=exact)[0]
            assert sorted(got.items.tolist()) == [1, 3]


def test_retrieval_is_deterministic_across_processes(trained):
    root = trained[4]
    cmd = [sys.executable, "-m", "mindref", "retrieve", "--bundle", str(root / "bundle"), "--history",
           "1,2,3,25,26,27,40,41", "-n", "30", "--json"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(json.loads(runs[0])["items"]) == 30
    # the same vectors, trees and seed give the same index bytes
    a, b = root / "a.ann", root / "b.ann"
    E = np.load(root / "bundle" / "item_vectors.npy")
    ItemIndex.build(E, 5, seed=1).save(a)
    code = (f"import numpy as np; from mindref.export import ItemIndex; "
            f"E = np.load({str(root / 'bundle' / 'item_vectors.npy')!r}); "
            f"ItemIndex.build(E, 5, seed=1).save({str(b)!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert a.read_bytes() == b.read_bytes()


def test_bundle_tower_equals_the_numpy_model(trained):
    from mindref.model import user_vectors
    ds, test, cfg, params, root = trained
    bundle = load_bundle(root / "bundle", "cpu")
    assert bundle.manifest["onnx"]["items"] == "table" and bundle.manifest["annoy"]["metric"] == "angular"
    hist, prof = test.hist[:64], ds.profiles[test.users[:64]]
    V_np, mask_np = user_vectors(params, cfg, ds.item_fields, hist, prof)
    out = bundle.tower.run(hist, prof)
    np.testing.assert_array_equal(out.mask, mask_np)
    assert np.abs(out.interests - V_np).max() <= 1e-5


BUNDLE_FILES = ["tower.onnx", "topn.onnx", "topn_cuda.onnx", "item_vectors.npy", "item_table.npy",
                "items.ann", "item_fields.npz", "items.json"]


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_each_bundle_file_is_verified(trained, tmp_path, name):
    """Every file in turn: truncated, one bit flipped, deleted: refused, naming the file."""
    import shutil
    for damage, message in ((lambda p: p.write_bytes(p.read_bytes()[:-7]), "bytes, the manifest says"),
                            (_flip, "checksum differs"), (lambda p: p.unlink(), "missing")):
        bundle = tmp_path / f"b-{message[:5]}"
        shutil.copytree(trained[4] / "bundle", bundle)
        damage(bundle / name)
        with pytest.raises(BundleError, match=f"{name}: .*{message}"):
            load_bundle(bundle, "cpu")


def _write_in_place(path, row, values):
    """Overwrite one row of a [V, d] float32 .npy in place (mindref itself never writes in place)."""
    from mindref.export.arrays import npy_data_offset
    offset = npy_data_offset(path.read_bytes()[:4096])
    with open(path, "r+b") as f:
        f.seek(offset + row * values.size * 4)
        f.write(np.asarray(values, "<f4").tobytes())


def test_bundle_arrays_are_mapped_once_and_used_in_place(trained, tmp_path):
    """The graphs hold no vectors: tower.onnx and topn.onnx point into item_table.npy and
    item_vectors.npy, which the load maps read-only; NumPy and onnxruntime use those very pages (no
    copy per process). Shown by writing into the files in place after loading, the one change a
    mapping cannot guard against: NumPy's search, the top-n graph and the tower all see it."""
    import shutil
    ds, test, cfg, _, root = trained
    path = tmp_path / "b"
    shutil.copytree(root / "bundle", path)
    vectors = cfg.num_items * cfg.dim * 4  # bytes of E, and of the S e_i table
    assert max((path / g).stat().st_size for g in ("tower.onnx", "topn.onnx")) < vectors / 4
    bundle = load_bundle(path, "cpu")
    assert not bundle.E.flags.writeable
    hist = test.hist[:1]
    out = bundle.tower.run(hist)
    first = bundle.retriever.retrieve(out.interests, out.mask, hist, 5, "onnx")[0]
    outsider = max(set(range(1, cfg.num_items)) - set(hist[0].tolist()) - set(first.items.tolist()))
    _write_in_place(path / "item_vectors.npy", outsider, 1e3 * out.interests[0, 0])
    for search in ("onnx", "exact"):
        assert bundle.retriever.retrieve(out.interests, out.mask, hist, 5, search)[0].items[0] == outsider
    _write_in_place(path / "item_table.npy", int(hist[0][hist[0] != 0][0]), np.ones(cfg.dim))
    assert not np.allclose(bundle.tower.run(hist).interests, out.interests)


def test_a_catalogue_in_many_blocks_is_served_from_the_mapped_rows(trained, tmp_path, monkeypatch):
    """topn.onnx's blocks each point at their own rows of item_vectors.npy; the load hands each
    block a view of those rows (no copy), so the graph equals NumPy's exact search and sees a write
    into the last block's rows; an initializer pointing between rows is refused."""
    import onnx

    from mindref.export import topn
    ds, test, cfg, params, _ = trained
    monkeypatch.setattr(topn, "BLOCK", 7)  # a catalogue of cfg.num_items items in blocks of 7
    export_bundle(tmp_path / "b", params, cfg, ds, n_trees=5, seed=0)
    graph = onnx.load(str(tmp_path / "b" / "topn.onnx"), load_external_data=False)
    offsets = [int(e.value) for t in graph.graph.initializer for e in t.external_data if e.key == "offset"]
    assert len(offsets) == -(-cfg.num_items // 7) and offsets == sorted(set(offsets))
    bundle = load_bundle(tmp_path / "b", "cpu")
    held = bundle.retriever.topn.session.mindref_initializers
    assert all(np.shares_memory(v.numpy(), bundle.E) for v in held.values())
    out = bundle.tower.run(test.hist[:20])
    for got, want in zip(bundle.retriever.retrieve(out.interests, out.mask, test.hist[:20], 10, "onnx"),
                         bundle.retriever.retrieve(out.interests, out.mask, test.hist[:20], 10, "exact")):
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
    last = cfg.num_items - 1
    _write_in_place(tmp_path / "b" / "item_vectors.npy", last, 1e3 * out.interests[0, 0])
    top = bundle.retriever.retrieve(out.interests[:1], out.mask[:1], test.hist[:1], 1, "onnx")[0]
    assert top.items[0] == last
    for t in graph.graph.initializer:
        for e in t.external_data:
            if e.key == "offset" and t.name == "item_vectors_1":
                e.value = str(int(e.value) + 4)  # half a row off
    from mindref.export.bundle import _external
    with pytest.raises(BundleError, match="item_vectors_1 points to 'item_vectors.npy'.*not a run of rows"):
        _external(tmp_path / "b" / "topn.onnx", graph.SerializeToString(),
                  {"item_vectors.npy": (bundle.E, offsets[0])})


def test_a_bundle_replaced_after_loading_leaves_the_loaded_one_as_it_was(trained, tmp_path):
    """Replacing the files (as `export --force` does: new files renamed over the old ones) does not
    reach a loaded bundle: its mappings stay on the files it verified."""
    import shutil
    ds, test, cfg, params, root = trained
    path = tmp_path / "b"
    shutil.copytree(root / "bundle", path)
    bundle = load_bundle(path, "cpu")
    hist = test.hist[:3]
    out = bundle.tower.run(hist)
    before = bundle.retriever.retrieve(out.interests, out.mask, hist, 5, "onnx")
    other = {k: (v + 0.5 if k == "item_emb" else v) for k, v in params.items()}
    export_bundle(path, other, cfg, ds, n_trees=2, overwrite=True)
    assert not np.array_equal(load_bundle(path, "cpu").E, bundle.E)
    np.testing.assert_array_equal(bundle.tower.run(hist).interests, out.interests)
    after = bundle.retriever.retrieve(out.interests, out.mask, hist, 5, "onnx")
    assert [a.items.tolist() for a in after] == [b.items.tolist() for b in before]


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "manifest.json").write_text("{not json"), "manifest.json: not valid JSON"),
    (lambda b: (b / "manifest.json").unlink(), "manifest.json: missing"),
    (lambda b: _edit_manifest(b, schema_version=99), "schema version 99"),
])
def test_damaged_bundles_are_refused_by_file(trained, tmp_path, damage, message):
    import shutil
    bundle = tmp_path / "b"
    shutil.copytree(trained[4] / "bundle", bundle)
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle, "cpu")


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _edit_manifest(bundle, **changes):
    m = json.loads((bundle / "manifest.json").read_text())
    m.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_non_finite_parameters_are_not_exported(trained, tmp_path):
    ds, _, cfg, params, _ = trained
    bad = dict(params, S=params["S"].copy())
    bad["S"][0, 0] = np.nan
    with pytest.raises(ValueError, match="S: contains NaN or inf"):
        export_bundle(tmp_path / "b", bad, cfg, ds)
    assert not (tmp_path / "b").exists()


def test_raw_ids_and_requests(trained):
    ds, _, _, _, root = trained
    bundle = load_bundle(root / "bundle", "cpu")
    res = recommend(bundle, [["1", "2", "3"], [str(i) for i in range(1, 60)]], [["1"], ["?"]], n=5)
    assert [len(r["items"]) for r in res] == [5, 5] and res[0]["interests"] == 1
    assert res[1]["interests"] == 4  # 59 behaviours, the latest 30 kept: K'u = min(4, log2 30)
    with pytest.raises(ValueError, match="not in this bundle's catalog"):
        recommend(bundle, [["1", "999999"]])
    with pytest.raises(ValueError, match="history: empty"):
        recommend(bundle, [[]])
    with pytest.raises(ValueError, match="profile segment: unknown value"):
        recommend(bundle, [["1"]], [["nope"]])


def test_cli_export_retrieve_explain(trained, tmp_path, capsys):
    root = trained[4]
    assert main(["export", "--model", str(root / "model"), "--out", str(tmp_path / "b")]) == 0
    assert main(["export", "--model", str(root / "model"), "--out", str(tmp_path / "b")]) == 2
    assert "exists" in capsys.readouterr().err
    bundle = str(tmp_path / "b")
    assert main(["retrieve", "--bundle", bundle, "--history", "1,2,3,4", "-n", "7", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 7
    assert main(["explain", "--bundle", bundle, "--history", ",".join(map(str, range(1, 20)))]) == 0
    text = capsys.readouterr().out
    assert "K'u = 4 of K = 4" in text and text.count("interest ") >= 4
    assert text.startswith("19 behaviours -> ")  # all read: L = 30
    assert main(["explain", "--bundle", bundle, "--history", ",".join(map(str, range(1, 41)))]) == 0
    assert capsys.readouterr().out.startswith("40 behaviours given, the tower reads the latest 30 (L =")
    users = tmp_path / "users.jsonl"
    users.write_text("\n".join(json.dumps({"user": u, "history": list(range(1 + u, 9 + u))})
                               for u in range(5)))
    out = tmp_path / "res.jsonl"
    assert main(["retrieve", "--bundle", str(tmp_path / "b"), "--users", str(users), "--out", str(out),
                 "--batch-size", "2", "-n", "4"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["user"] for x in lines] == list(range(5)) and all(len(x["items"]) == 4 for x in lines)
    users.write_text('{"user": 1, "history": [1, 2]}\n{"user": 2, "history": [1, 99999]}\n')
    assert main(["retrieve", "--bundle", str(tmp_path / "b"), "--users", str(users), "--out",
                 str(tmp_path / "bad.jsonl")]) == 0  # the bad line is recorded, the other served
    assert "line 2 (user 2): item 99999 is not in this bundle" in capsys.readouterr().err
    written = [json.loads(x) for x in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert len(written[0]["items"]) == 50 and written[1]["line"] == 2 and "99999" in written[1]["error"]
    assert not (tmp_path / ".bad.jsonl.part").exists()


def test_retrieve_prints_a_header_and_interests_count_from_0_everywhere(trained, capsys):
    bundle = str(trained[4] / "bundle")
    assert main(["retrieve", "--bundle", bundle, "--history", ",".join(map(str, range(1, 20))), "-n", "9",
                 "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert main(["retrieve", "--bundle", bundle, "--history", ",".join(map(str, range(1, 20))),
                 "-n", "9"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["rank", "score", "interest", "item"]
    assert [int(r.split()[2]) for r in rows] == as_json["interest"]  # the same numbers, from 0


def test_explain_plot_draws_the_routing_weights(trained, tmp_path, capsys, monkeypatch):
    """`explain --plot`: a PNG of w_ij; without matplotlib, one line that names the extra."""
    bundle = str(trained[4] / "bundle")
    history = ",".join(map(str, range(1, 20)))
    if importlib.util.find_spec("matplotlib") is None and os.environ.get("CI") != "true":
        pytest.skip("needs matplotlib (the plots extra)")
    png = tmp_path / "interests.png"
    assert main(["explain", "--bundle", bundle, "--history", history, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "routing weights of 19 behaviours over 4 interests" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert main(["explain", "--bundle", bundle, "--history", history, "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'mindref[plots]'" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_explain_plot_never_writes_into_the_bundle(trained, capsys):
    bundle = trained[4] / "bundle"
    before = (bundle / "items.json").read_bytes()
    assert main(["explain", "--bundle", str(bundle), "--history", "1,2,3", "--plot",
                 str(bundle / "items.json")]) == 2
    assert "--plot" in capsys.readouterr().err and (bundle / "items.json").read_bytes() == before


def test_the_bundle_holds_each_providers_form(trained, tmp_path, monkeypatch):
    """topn.onnx in the CPU's form, topn_cuda.onnx in CUDA's (the pruned form here, its threshold
    lowered for a small catalogue), both pointing into item_vectors.npy and giving the same answers;
    each provider loads its own graph, an older bundle's topn.onnx serves CUDA too."""
    import onnx

    from mindref.export import topn
    from mindref.export.arrays import VECTORS_FILE, npy_data_offset
    from mindref.export.bundle import TOPN, TOPN_CUDA, _external, topn_graph
    ds, test, cfg, params, _ = trained
    monkeypatch.setattr(topn, "PRUNED_FROM", 1)
    export_bundle(tmp_path / "b", params, cfg, ds, n_trees=5, seed=0)
    forms = {name: topn.graph_layout(onnx.load(str(tmp_path / "b" / name), load_external_data=False))["form"]
             for name in (TOPN, TOPN_CUDA)}
    assert forms == {TOPN: "blocked", TOPN_CUDA: "pruned"}
    bundle = load_bundle(tmp_path / "b", "cpu")
    out = bundle.tower.run(test.hist[:30])
    arrays = {VECTORS_FILE: (bundle.E, npy_data_offset((tmp_path / "b" / VECTORS_FILE).read_bytes()))}
    data = (tmp_path / "b" / TOPN_CUDA).read_bytes()
    external = _external(tmp_path / "b" / TOPN_CUDA, data, arrays)
    pruned = topn.TopNSession(data, cfg.num_items, "cpu", **external)
    got = pruned.run(out.interests, out.mask, test.hist[:30], 20)
    want = bundle.retriever.topn.run(out.interests, out.mask, test.hist[:30], 20)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    assert topn_graph("cuda", {TOPN, TOPN_CUDA}) == TOPN_CUDA and topn_graph("cpu", {TOPN, TOPN_CUDA}) == TOPN
    assert topn_graph("cuda", {TOPN}) == TOPN and topn_graph("cpu", set()) is None


def test_the_serving_precision_is_the_bundles_unless_asked(trained, tmp_path):
    ds, _, cfg, params, _ = trained
    export_bundle(tmp_path / "b", params, cfg, ds, n_trees=5, seed=0, precision="tf32")
    assert load_bundle(tmp_path / "b", "cpu").tower.precision == "tf32"
    bundle = load_bundle(tmp_path / "b", "cpu", precision="fp32", users=3)
    assert bundle.tower.precision == bundle.retriever.topn.precision == "fp32"
    assert bundle.tower.chunk == bundle.retriever.topn.users_per_run(50, 10) == 3
    with pytest.raises(ValueError, match="precision must be one of"):
        export_bundle(tmp_path / "c", params, cfg, ds, precision="fp16")


def test_the_web_bundle_serves_what_the_bundle_serves(trained, tmp_path, capsys):
    """`mindref export --web` (export/web.py): one file per graph, initializers inside, and the same
    answers as the full bundle's tower and exact top-n; an existing folder only with --force."""
    import onnxruntime as ort
    ds, test, cfg, params, root = trained
    from mindref.export.web import export_web
    record = export_web(tmp_path / "web", params, cfg, ds)
    assert sorted(p.name for p in (tmp_path / "web").iterdir()) == ["items.json", "model.js", "topn.onnx",
                                                                     "tower.onnx"]
    assert record["files"]["tower.onnx"]["bytes"] == (tmp_path / "web" / "tower.onnx").stat().st_size
    tower, topn = (ort.InferenceSession(str(tmp_path / "web" / f), providers=["CPUExecutionProvider"])
                   for f in ("tower.onnx", "topn.onnx"))
    bundle = load_bundle(root / "bundle", "cpu")
    hist = test.hist[:8]
    profile = ds.profiles[test.users[:8]]
    V, mask, _ = tower.run(None, {"item_ids": hist, "profile_ids": profile})
    out = bundle.tower.run(hist, profile)
    np.testing.assert_allclose(V, out.interests, rtol=0, atol=1e-6)
    items, scores, _ = topn.run(None, {"interests": V, "interest_mask": mask, "history": hist,
                                       "n": np.array([20], np.int64)})
    want = bundle.retriever.retrieve(out.interests, out.mask, hist, 20, "exact")
    assert [list(r) for r in items] == [w.items.tolist() for w in want]
    meta = json.loads((tmp_path / "web" / "items.json").read_text())
    assert len(meta["items"]) == cfg.num_items and meta["K"] == cfg.K and meta["max_len"] == cfg.max_len
    with pytest.raises(FileExistsError, match="pass --force"):
        export_web(tmp_path / "web", params, cfg, ds)
    export_web(tmp_path / "web", params, cfg, ds, force=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        export_web(tmp_path / "mine", params, cfg, ds, force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
