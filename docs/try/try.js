// The "Try MIND" page (docs/try.md): the exported ONNX graphs of a model trained on MovieLens-100K,
// run in the page by onnxruntime-web (WebAssembly). This file only moves data: it turns the reader's
// history into the graphs' inputs and draws their outputs. Every number shown comes out of the two
// graphs `mindref export --web` writes (export/web.py): the user tower (Eqs. 4-9: K'_u, the routing
// weights, the interest capsules) and the exact top-n (Eq. 3), never from JavaScript arithmetic.
//
// window.mindrefTry.compute(ids) is what the page runs on every change; window.MINDREF_TRY_RESULT
// holds its last result (tests/test_site.py reads it and compares with Python's onnxruntime).
"use strict";

(function () {
  const TOP_N = 10; // merged results shown (Eq. 3)
  const NEAREST = 5; // items shown per interest
  const PRESETS = [ // MovieLens-100K movie ids
    ["Star Wars trilogy", "50,172,181"],
    ["Sci-fi, then comedy and action (8)", "50,172,181,1,121,117,300,288"],
    ["Hitchcock, noir and Disney (16: K'u = K)", "483,484,479,480,489,488,134,178,99,132,404,418,420,432,501,1"],
    ["One movie", "1"],
  ];
  const state = { tower: null, topn: null, meta: null, index: null,
                  timings: { load_ms: null, first_result_ms: null, last_compute_ms: null } };
  const $ = (id) => document.getElementById(id);

  function say(text, kind) {
    const line = $("try-status");
    line.textContent = text;
    line.className = kind ? `try-${kind}` : "";
  }

  async function bytesOf(name) {
    if (location.protocol === "file:") { // a page from a file cannot fetch: the same bytes from model.js
      const embedded = window.MINDREF_MODEL[name];
      return typeof embedded === "string" ? Uint8Array.from(atob(embedded), (c) => c.charCodeAt(0)) : embedded;
    }
    const response = await fetch(`try/model/${name}`);
    if (!response.ok) throw new Error(`try/model/${name}: ${response.status} ${response.statusText}`);
    return name.endsWith(".json") ? response.json() : new Uint8Array(await response.arrayBuffer());
  }

  function script(src) { // a classic script loads from a file too
    return new Promise((resolve, reject) => {
      const tag = Object.assign(document.createElement("script"), { src, onload: resolve,
        onerror: () => reject(new Error(`${src} did not load`)) });
      document.head.append(tag);
    });
  }

  async function load() {
    const t0 = performance.now();
    if (location.protocol === "file:") { // no fetch from a file: the same bytes from classic scripts
      if (!window.MINDREF_MODEL) await script("try/model/model.js");
      if (!window.ORT_FILE) await script("try/ort-file.js");
      const wasm = Uint8Array.from(atob(window.ORT_FILE.wasm), (c) => c.charCodeAt(0));
      ort.env.wasm.wasmPaths = {
        mjs: URL.createObjectURL(new Blob([window.ORT_FILE.mjs], { type: "text/javascript" })),
        wasm: URL.createObjectURL(new Blob([wasm], { type: "application/wasm" })) };
    }
    ort.env.wasm.numThreads = 1; // no worker threads: no cross-origin isolation needed
    if (location.protocol !== "file:") ort.env.wasm.wasmPaths = new URL("try/", location.href).href;
    state.meta = await bytesOf("items.json");
    state.index = new Map(state.meta.items.map((row, id) => [row[0], id]));
    const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
    state.tower = await ort.InferenceSession.create(await bytesOf("tower.onnx"), options);
    state.topn = await ort.InferenceSession.create(await bytesOf("topn.onnx"), options);
    state.timings.load_ms = performance.now() - t0;
  }

  // the request as the CLI reads it (export/serve.py: request_ids): raw ids, each in the catalogue
  function parse(text) {
    const raw = text.split(",").map((s) => s.trim()).filter((s) => s.length);
    if (!raw.length) return { error: "history: empty (a user needs at least one behaviour)" };
    const unknown = raw.filter((r) => !state.index.has(r) || r === state.meta.items[0][0]);
    if (unknown.length) {
      return { error: `item '${unknown[0]}' is not in this bundle's catalog (${state.meta.num_items - 1} items)` +
               (unknown.length > 1 ? `; also unknown: ${unknown.slice(1).join(", ")}` : "") };
    }
    return { raw, ids: raw.map((r) => state.index.get(r)) };
  }

  function int64(values, dims) {
    return new ort.Tensor("int64", BigInt64Array.from(values.map((v) => BigInt(v))), dims);
  }

  async function topn(interests, mask, history, n) {
    const out = await state.topn.run({ interests, interest_mask: mask, history: int64(history, [1, history.length]),
                                       n: int64([n], [1]) });
    return { items: Array.from(out.items.data, Number), scores: Array.from(out.scores.data),
             interest: Array.from(out.interest.data, Number) };
  }

  // one user through the two graphs: the tower reads the latest L behaviours, the top-n excludes every one
  async function compute(text) {
    const t0 = performance.now();
    const request = parse(text);
    if (request.error) return { error: request.error };
    const { K, max_len: L, dim, profile_width: P } = state.meta;
    const read = request.ids.slice(-L);
    const feeds = { item_ids: int64(read, [1, read.length]) };
    if (P > 0) feeds.profile_ids = int64(new Array(P).fill(0), [1, P]); // profile unknown, as the CLI
    const tower = await state.tower.run(feeds);
    const mask = Array.from(tower.interest_mask.data, Boolean);
    const Ku = mask.filter(Boolean).length;
    const w = Array.from(tower.routing_weights.data); // [1, K, n_u]
    const weights = [...Array(Ku).keys()].map((k) => w.slice(k * read.length, (k + 1) * read.length));
    const top = await topn(tower.interests, tower.interest_mask, request.ids, TOP_N);
    const V = Array.from(tower.interests.data);
    const nearest = [];
    for (let k = 0; k < Ku; k++) { // interest k alone: its vector in slot 0, the only one valid
      const one = new Float32Array(K * dim);
      one.set(V.slice(k * dim, (k + 1) * dim), 0);
      const only = new ort.Tensor("bool", Uint8Array.from([...Array(K).keys()].map((j) => (j === 0 ? 1 : 0))), [1, K]);
      nearest.push(await topn(new ort.Tensor("float32", one, [1, K, dim]), only, request.ids, NEAREST));
    }
    const note = request.ids.length > L ? `${request.ids.length} behaviours given; the tower reads the latest ${L} ` +
      "(L = max_len, as trained); every one given is excluded from the results" : "";
    state.timings.last_compute_ms = performance.now() - t0;
    return { history: request.raw, read: read.map((id) => state.meta.items[id][0]), K, L, K_u: Ku, mask, weights,
             items: top.items.map((id) => state.meta.items[id][0]), ids: top.items, scores: top.scores,
             interest: top.interest, nearest: nearest.map((r) => ({ ids: r.items, scores: r.scores })), note };
  }

  function title(id) {
    const [raw, name, labels] = state.meta.items[id];
    return `${name || raw}${labels.length ? `  (${labels.join(", ")})` : ""}`;
  }

  function draw(result) {
    const out = $("try-results");
    out.replaceChildren();
    if (result.error) {
      say(result.error, "error");
      const line = document.createElement("p");
      line.className = "try-error";
      line.textContent = `Nothing to show: ${result.error}.`;
      out.append(line);
      return;
    }
    say(result.note || `${result.history.length} behaviours -> K'u = ${result.K_u} of K = ${result.K} interests ` +
        `(K'u = max(1, min(K, floor(log2 ${result.read.length}))), Eq. 9)`, result.note ? "note" : "");
    const head = document.createElement("h3");
    head.textContent = `Routing weights w_ij (Eq. 5): ${result.read.length} behaviours x ${result.K_u} interests`;
    const table = document.createElement("table");
    table.id = "try-weights";
    const header = table.insertRow();
    header.insertCell().textContent = "behaviour";
    for (let k = 0; k < result.K_u; k++) header.insertCell().textContent = `interest ${k}`;
    const ids = result.read.map((raw) => state.index.get(raw));
    ids.forEach((id, j) => {
      const row = table.insertRow();
      row.insertCell().textContent = title(id);
      for (let k = 0; k < result.K_u; k++) {
        const cell = row.insertCell();
        const value = result.weights[k][j];
        cell.textContent = value.toFixed(3);
        cell.style.background = `rgba(63, 81, 181, ${value.toFixed(3)})`;
        cell.style.color = value > 0.5 ? "white" : "inherit";
      }
    });
    const per = document.createElement("div");
    per.id = "try-interests";
    result.nearest.forEach((r, k) => {
      const box = document.createElement("div");
      box.className = "try-interest";
      const h = document.createElement("h4");
      h.textContent = `interest ${k}: nearest items`;
      const list = document.createElement("ol");
      r.ids.forEach((id, i) => { list.append(Object.assign(document.createElement("li"),
        { textContent: `${title(id)}  (${r.scores[i].toFixed(3)})` })); });
      box.append(h, list);
      per.append(box);
    });
    const merged = document.createElement("h3");
    merged.textContent = `Top ${TOP_N}, merged by Eq. (3): max_k e_i . v_k, history excluded`;
    const top = document.createElement("ol");
    top.id = "try-top";
    result.ids.forEach((id, i) => { top.append(Object.assign(document.createElement("li"),
      { textContent: `${title(id)}  score ${result.scores[i].toFixed(3)}, interest ${result.interest[i]}` })); });
    out.append(head, table, per, merged, top);
  }

  async function update() {
    const text = $("try-ids").value;
    let result;
    try {
      result = await compute(text);
    } catch (err) { // a runtime failure is a line on the page, not a blank panel
      result = { error: `the runtime failed: ${err.message || err}` };
    }
    if (state.timings.first_result_ms === null && !result.error) { // since the page was opened
      state.timings.first_result_ms = performance.now();
    }
    result.timings = { ...state.timings };
    window.MINDREF_TRY_RESULT = result;
    draw(result);
    document.dispatchEvent(new CustomEvent("mindref-try-result", { detail: result }));
    return result;
  }

  function add(raw) {
    const ids = $("try-ids").value.split(",").map((s) => s.trim()).filter((s) => s.length);
    ids.push(raw);
    $("try-ids").value = ids.join(",");
    return update();
  }

  function controls() {
    const list = $("try-titles");
    state.meta.items.forEach((row, id) => {
      if (id === 0) return;
      const option = document.createElement("option");
      option.value = `${row[1] || row[0]} [${row[0]}]`;
      list.append(option);
    });
    $("try-search").addEventListener("change", (event) => {
      const match = /\[([^\]]+)\]$/.exec(event.target.value);
      if (match && state.index.has(match[1])) { add(match[1]); event.target.value = ""; }
      else say(`no title matches '${event.target.value}': pick one from the list`, "error");
    });
    $("try-ids").addEventListener("change", update);
    $("try-run").addEventListener("click", update);
    const presets = $("try-presets");
    for (const [name, ids] of PRESETS) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = name;
      button.addEventListener("click", () => { $("try-ids").value = ids; update(); });
      presets.append(button);
    }
  }

  async function main() {
    if (!$("try-mind")) return;
    if (typeof ort === "undefined") { say("onnxruntime-web did not load (try/ort.wasm.min.js)", "error"); return; }
    say("loading the model and onnxruntime-web ...");
    try {
      await load();
    } catch (err) {
      say(`could not load the model: ${err.message || err}`, "error");
      return;
    }
    controls();
    window.mindrefTry = { compute, update, add, timings: state.timings, meta: state.meta };
    $("try-ids").value = PRESETS[1][1];
    await update();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
