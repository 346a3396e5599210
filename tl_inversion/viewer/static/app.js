// tl-inversion live preimage viewer: plain JavaScript, no build step, no external files.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, current: null, pinned: 0 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text, st) {
  $("status").textContent = text;
  $("status").dataset.state = st;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let resp;
  try { resp = await fetch(path, opts); } catch (e) { throw new Error("the viewer server cannot be reached: " + e.message); }
  const data = await resp.json().catch(() => ({ error: "the server answered " + resp.status + " without JSON" }));
  if (!resp.ok) throw new Error(data.error || ("request failed with status " + resp.status));
  return data;
}

// ---- controls ----------------------------------------------------------------------
async function init() {
  try {
    state.info = await api("/api/info");
  } catch (e) { showError(e.message); return; }
  const info = state.info;
  $("task-name").textContent = "(" + info.task + ")";
  for (const s of info.sites) $("site").append(el("option", { value: s.name }, s.name));
  for (const p of info.positions) $("position-names").append(el("option", { value: p }));
  for (let i = 0; i < info.n_ctx; i++) $("position-names").append(el("option", { value: String(i) }));
  $("query").value = info.default_query || "";
  if (info.input_chars) $("query").title = "characters: " + info.input_chars;
  $("n-samples").max = info.max_samples;
  $("n-samples").title = "at most " + info.max_samples + " (the viewer's cap)";
  for (let l = 0; l < info.n_layers; l++) $("att-layer").append(el("option", { value: l }, String(l)));
  for (let h = 0; h < info.n_heads; h++) $("att-head").append(el("option", { value: h }, String(h)));
  updateEpsilonPlaceholder();
}

function updateEpsilonPlaceholder() {
  if (state.info) $("epsilon").placeholder = String(state.info.default_epsilon[$("metric").value]);
}

function request() {
  const n = $("n-samples").value.trim();
  return {
    text: $("query").value,
    site: $("site").value,
    position: $("position").value,
    schedule: $("schedule-mode").value === "auto" ? "auto" : $("temperatures").value,
    metric: $("metric").value,
    epsilon: $("epsilon").value.trim() || null,
    n_samples: n === "" ? null : Number(n),
    seed: Number($("seed").value || 0),
  };
}

async function onSample(ev) {
  ev.preventDefault();
  showError("");
  const body = request();
  if (body.n_samples !== null && !Number.isInteger(body.n_samples)) {
    showError("number of samples must be a whole number"); return;
  }
  const t0 = performance.now();
  $("sample").disabled = true;
  setStatus("sampling...", "busy");
  const timer = setInterval(() => setStatus("sampling... " + ((performance.now() - t0) / 1000).toFixed(0) + " s", "busy"), 1000);
  try {
    const data = await api("/api/sample", body);
    data.request = body;
    state.current = data;
    const view = renderView(data);
    $("current").replaceChildren(...view.childNodes);
    const ms = performance.now() - t0;
    window.tliLastSampleMs = ms;
    setStatus("done: " + data.pool.n + " samples in " + (ms / 1000).toFixed(2) + " s", "done");
    $("pin").disabled = false;
    $("csv").disabled = false;
  } catch (e) {
    showError(e.message);
    setStatus("error", "error");
  } finally {
    clearInterval(timer);
    $("sample").disabled = false;
  }
}

// ---- one view --------------------------------------------------------------------------
const fmt = (x, d = 3) => (x === null || x === undefined ? "inf" : Number(x).toFixed(d));
const pct = (x) => (100 * x).toFixed(1) + "%";

function colourStyle(v, vmax) {
  if (v === null || v === undefined || vmax <= 0) return "";
  const a = Math.min(Math.abs(v) / vmax, 1);
  return v > 0 ? `background: rgba(220, 38, 38, ${a.toFixed(3)})` : `background: rgba(37, 99, 235, ${a.toFixed(3)})`;
}

function renderQuery(q) {
  const att = q.attention;
  const amax = att ? Math.max(...att, 1e-9) : 0;
  const line = el("div", { class: "seq query-seq" });
  q.tokens.forEach((t, i) => {
    const cls = ["tok"];
    let title = "pos " + i;
    let style = "";
    if (i === q.position) { cls.push("qpos"); title += ", queried position"; }
    if (att) { style = `background: rgba(22, 163, 74, ${(att[i] / amax).toFixed(3)})`; title += ", attention " + att[i].toFixed(3); }
    line.append(el("span", { class: cls.join(" "), style, title, "data-pos": i }, t));
  });
  const box = el("div", { class: "query" }, el("b", {}, "query "), line);
  if (att) box.append(el("div", { class: "legend" },
    "green shading: this head's attention from the queried position (darkest = " + amax.toFixed(3) + ")"));
  return box;
}

function renderHistogram(pool, eps) {
  const h = pool.histogram, W = 300, H = 70, n = h.counts.length;
  const cmax = Math.max(...h.counts, 1), hi = h.edges[n];
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H + 14); svg.setAttribute("class", "hist");
  const ns = "http://www.w3.org/2000/svg";
  h.counts.forEach((c, i) => {
    const r = document.createElementNS(ns, "rect");
    const bh = (c / cmax) * H;
    r.setAttribute("x", (i * W) / n); r.setAttribute("width", W / n - 1);
    r.setAttribute("y", H - bh); r.setAttribute("height", bh);
    r.setAttribute("class", h.edges[i + 1] <= eps + 1e-12 ? "in" : "out");
    const tt = document.createElementNS(ns, "title");
    tt.textContent = `D in [${h.edges[i].toFixed(3)}, ${h.edges[i + 1].toFixed(3)}): ${c}`;
    r.append(tt); svg.append(r);
  });
  const x = (eps / hi) * W, line = document.createElementNS(ns, "line");
  line.setAttribute("x1", x); line.setAttribute("x2", x); line.setAttribute("y1", 0); line.setAttribute("y2", H);
  line.setAttribute("class", "eps"); svg.append(line);
  for (const [val, anchor, px] of [[0, "start", 0], [hi, "end", W]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", px); t.setAttribute("y", H + 12); t.setAttribute("text-anchor", anchor);
    t.textContent = "D = " + val.toFixed(2); svg.append(t);
  }
  const cap = "histogram of D over the whole pool (" + pool.n + " samples" +
    (pool.n_inf ? ", " + pool.n_inf + " with no usable position left out" : "") + "); line: \u03b5";
  return el("figure", { class: "histogram" }, svg, el("figcaption", {}, cap));
}

function renderRows(data) {
  const rows = data.rows, eps = data.settings.epsilon;
  let vmax = 0, dmax = eps * 2;
  for (const r of rows) {
    for (const c of r.colour || []) vmax = Math.max(vmax, Math.abs(c));
    if (r.distance !== null) dmax = Math.max(dmax, r.distance);
  }
  const list = el("div", { class: "samples" });
  let ruled = false;
  rows.forEach((r, i) => {
    if (!r.in_preimage && !ruled) {
      ruled = true;
      list.append(el("div", { class: "eps-rule" }, "\u03b5 = " + eps + ": above inside the preimage, below outside"));
    }
    const seq = el("span", { class: "seq" });
    r.tokens.forEach((t, p) => {
      if (p === 0) return; // BOS
      const cls = ["tok"];
      let title = "pos " + p;
      if (p === r.matched_pos) { cls.push("match"); title += ", matched position"; }
      const c = r.colour ? r.colour[p - 1] : null;
      if (c !== null && c !== undefined) title += ", p(z_q) - p(z_BOS) = " + (c >= 0 ? "+" : "") + c.toFixed(3);
      seq.append(el("span", { class: cls.join(" "), style: colourStyle(c, vmax), title }, t));
    });
    const w = r.distance === null ? 100 : Math.min(100, (100 * r.distance) / dmax);
    const bar = el("span", { class: "dbar", title: "D = " + fmt(r.distance, 4) },
      el("span", { class: r.in_preimage ? "fill in" : "fill out", style: `width: ${w.toFixed(1)}%` }),
      el("span", { class: "epsmark", style: `left: ${((100 * eps) / dmax).toFixed(1)}%` }));
    const row = el("div", { class: "sample-row" + (r.in_preimage ? " in" : " out") + (r.valid ? "" : " invalid"),
      "data-text": r.text },
      el("span", { class: "idx" }, String(i)), bar, el("span", { class: "dval" }, fmt(r.distance)), seq,
      r.count > 1 ? el("span", { class: "count", title: "occurs " + r.count + " times in the pool" }, "\u00d7" + r.count) : null,
      r.valid ? null : el("span", { class: "badge", title: "breaks the task grammar" }, "invalid"));
    list.append(row);
  });
  const legend = el("div", { class: "legend" }, "token colour: p(token | prefix, z_q) \u2212 p(token | prefix, z_BOS), one scale for all samples ",
    el("span", { class: "scale" }, el("span", {}, "\u2212" + vmax.toFixed(2)), el("span", { class: "grad" }),
      el("span", {}, "+" + vmax.toFixed(2))),
    " (red: the activation made the token likelier; blue: less likely). Boxed: matched position. Bar: D (tick at \u03b5).");
  return [legend, list];
}

function renderView(data) {
  const s = data.settings, pool = data.pool;
  const sched = s.schedule.map(([t, z]) => (z ? `T=${t}+noise ${z}` : `T=${t}`)).join(", ");
  const head = el("div", { class: "view-head" },
    el("div", { class: "title" }, el("b", {}, s.site), " @ ", el("b", {}, String(s.position)),
      " (index " + data.query.position + ")"),
    el("div", {}, `${s.metric === "l2" ? "D = ||z - z_q|| / ||z_q||" : "D = 1 - cos(z, z_q)"}, \u03b5 = ${s.epsilon}, seed ${s.seed}; ${sched}`));
  const readout = el("div", { class: "readout" },
    el("div", { class: "in-fraction" }, `in preimage: ${pct(pool.in_preimage_fraction)} of ${pool.n} samples ` +
      `(${pool.n_distinct} distinct); well-formed: ${pct(pool.valid_fraction)}`));
  for (const c of data.consistency) {
    readout.append(el("div", { class: "consistency" }, c.error ? `${c.feature}: ${c.error}` :
      `${c.feature} = ${c.query_value} in the query: ` + (c.n ? `${c.n_agree} of ${c.n} in-preimage well-formed samples agree (${pct(c.consistency)})`
        : "no in-preimage well-formed samples")));
  }
  const view = el("div", {}, head, renderQuery(data.query));
  for (const w of data.warnings) view.append(el("div", { class: "warning" }, "warning: " + w));
  view.append(readout, renderHistogram(pool, s.epsilon));
  if (data.note) view.append(el("div", { class: "note" }, data.note));
  view.append(...renderRows(data));
  return view;
}

// ---- pin, CSV ------------------------------------------------------------------------
function onPin() {
  if (!state.current) return;
  state.pinned += 1;
  const col = el("div", { class: "column pinned" });
  const close = el("button", { type: "button", class: "unpin", title: "remove this pinned view" }, "\u00d7 unpin");
  close.addEventListener("click", () => col.remove());
  col.append(el("div", { class: "pin-label" }, "pinned " + state.pinned + ": " + state.current.query.text + " ", close),
    renderView(state.current));
  $("columns").append(col);
}

function csvField(v) {
  const s = String(v);
  return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function onCsv() {
  if (!state.current) return;
  const lines = ["text,distance,matched_pos,in_preimage,valid,count"];
  for (const r of state.current.rows) {
    lines.push([r.text, r.distance === null ? "inf" : r.distance, r.matched_pos, r.in_preimage, r.valid, r.count]
      .map(csvField).join(","));
  }
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "preimage_samples.csv" });
  document.body.append(a); a.click(); a.remove();
}

// ---- attention tab -----------------------------------------------------------------------
async function onAttention() {
  showError("");
  try {
    const data = await api("/api/attention", { text: $("query").value });
    const l = Number($("att-layer").value), h = Number($("att-head").value);
    const pat = data.patterns[l][h];
    const table = el("table", { class: "attn" });
    table.append(el("tr", {}, el("th", {}, "q \\ k"), ...data.tokens.map((t, i) => el("th", { title: "pos " + i }, t))));
    pat.forEach((row, qi) => {
      table.append(el("tr", {}, el("th", { title: "pos " + qi }, data.tokens[qi]),
        ...row.map((a, k) => el("td", { style: `background: rgba(22, 163, 74, ${a.toFixed(3)})`,
          title: `from ${qi} to ${k}: ${a.toFixed(3)}` }, a >= 0.005 ? a.toFixed(2) : ""))));
    });
    $("attention").replaceChildren(el("p", {}, `layer ${l}, head ${h}: row = attending (query) position, column = attended position`), table);
  } catch (e) { showError(e.message); }
}

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  $("tab-preimage").hidden = name !== "preimage";
  $("tab-attention").hidden = name !== "attention";
  if (name === "attention") onAttention();
}

$("controls").addEventListener("submit", onSample);
$("pin").addEventListener("click", onPin);
$("csv").addEventListener("click", onCsv);
$("metric").addEventListener("change", updateEpsilonPlaceholder);
$("schedule-mode").addEventListener("change", () => { $("temperatures").hidden = $("schedule-mode").value === "auto"; });
$("att-show").addEventListener("click", onAttention);
$("att-layer").addEventListener("change", onAttention);
$("att-head").addEventListener("change", onAttention);
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
init();
