// tlserve status page. Plain JavaScript, no build step and nothing from elsewhere: it reads the
// server's /v1 API and /ui/api/* and writes every label and text with textContent (never HTML).
"use strict";

const state = { token: sessionStorage.getItem("tlserve-token") || "", models: [], model: null, version: null,
                previous: null };

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

class Unauthorised extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    document.getElementById("token-form").hidden = false;
    throw new Unauthorised("this server needs a bearer token");
  }
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function percent(x) { return (100 * x).toFixed(1) + " %"; }
function ms(seconds) { return seconds === null ? "–" : (1000 * seconds).toFixed(seconds < 0.01 ? 2 : 1) + " ms"; }

// --- models ---------------------------------------------------------------------------------

async function loadModels() {
  const listed = await apiJson("/v1/models");
  state.models = listed.models || [];
  const cards = document.getElementById("models");
  cards.replaceChildren();
  for (const model of state.models) {
    const versions = model.versions || [model.version];
    const select = el("select", { "aria-label": "version of " + model.name });
    for (const version of versions.slice().reverse()) select.append(el("option", { value: version, text: version }));
    select.value = model.version;
    const card = el("div", { class: "card", "data-model": model.name },
      el("h3", { text: model.name }),
      el("div", { class: "meta" }, document.createTextNode(`${model.mode} · ${(model.labels || []).length} labels · version`),
         select),
      el("div", { class: "labels" }, ...(model.labels || []).map((label) => el("span", { class: "label-chip", text: label }))));
    card.addEventListener("click", (event) => { if (event.target !== select) choose(model.name, select.value); });
    select.addEventListener("change", () => choose(model.name, select.value));
    cards.append(card);
  }
  if (!state.model && state.models.length) choose(state.models[0].name, state.models[0].version);
}

function choose(model, version) {
  state.model = model;
  state.version = version;
  for (const card of document.querySelectorAll(".card")) card.classList.toggle("selected", card.dataset.model === model);
  document.getElementById("classify-target").textContent = `with ${model}, version ${version}`;
  loadReport();
}

// --- classify -------------------------------------------------------------------------------

// Words as the latin tokeniser reads them: runs of letters, digits and "_" (CJK one character each).
const WORD = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}]|[\p{L}\p{M}\p{N}_]+/gu;

// The text with the explained words marked: blue for, red against, stronger for a larger contribution.
function explainedText(text, explanation) {
  const node = el("div", { class: "text" });
  const words = new Map((explanation.words || []).map((w) => [w.word, w.contribution || 0]));
  const largest = Math.max(1e-9, ...[...words.values()].map(Math.abs));
  let at = 0;
  for (const match of text.matchAll(WORD)) {
    const key = match[0].normalize("NFKC").toLowerCase();
    if (!words.has(key)) continue;
    node.append(text.slice(at, match.index));
    const contribution = words.get(key);
    const mark = el("mark", { "data-word": key, title: `${explanation.label}: ${(100 * contribution).toFixed(1)} ` +
                                                       "points lower without this word",
                              text: match[0] });
    const strength = (0.15 + 0.6 * Math.abs(contribution) / largest).toFixed(2);
    mark.style.backgroundColor = contribution >= 0 ? `rgba(47, 111, 222, ${strength})`  // CSSOM, as CSP wants
                                                   : `rgba(180, 35, 24, ${strength})`;
    node.append(mark);
    at = match.index + match[0].length;
  }
  node.append(text.slice(at));
  return node;
}

async function classify(event) {
  event.preventDefault();
  const texts = document.getElementById("texts").value.split("\n").filter((line) => line.trim());
  const answers = document.getElementById("answers");
  if (!state.model || !texts.length) return;
  const explain = document.getElementById("explain").checked ? 5 : 0;
  const button = document.getElementById("classify");
  button.disabled = true;
  try {
    const path = `/v1/models/${encodeURIComponent(state.model)}/versions/${state.version}:classify`;
    const results = [];
    const step = explain ? 32 : texts.length;  // the server explains at most 32 texts per call
    for (let start = 0; start < texts.length; start += step) {
      const body = await apiJson(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify({ texts: texts.slice(start, start + step), topK: 0,
                                                                explain }) });
      results.push(...body.results);
    }
    answers.replaceChildren();
    results.forEach((result, i) => {
      const labels = result.labels;
      const best = labels[0];
      const answer = el("div", { class: "answer" },
        result.explanation ? explainedText(texts[i], result.explanation) : el("div", { class: "text", text: texts[i] }),
        el("div", { class: "top", "data-label": best.label,
                    text: `${best.label} · ${percent(best.probability || 0)}` }));
      for (const entry of labels) {
        const p = entry.probability || 0;
        const fill = el("span");
        fill.style.width = `${(100 * p).toFixed(2)}%`;  // through CSSOM: the page's CSP allows no inline style
        const bar = el("div", { class: "bar" }, fill);
        answer.append(el("div", { class: "bar-row" }, el("span", { class: "bar-name", text: entry.label, title: entry.label }),
                         bar, el("span", { class: "bar-value", text: percent(p) })));
      }
      const tokens = result.tokenCount || 0;
      answer.append(el("div", { class: "muted", text: `${tokens} tokens, ${percent(result.oovFraction || 0)} out of vocabulary` }));
      if (result.explanation && (result.explanation.words || []).length) {
        const why = result.explanation.words.map((w) => `${w.word} ${(w.contribution || 0) >= 0 ? "+" : ""}` +
                                                          `${(100 * (w.contribution || 0)).toFixed(1)}`);
        answer.append(el("div", { class: "why muted", text: `why (points of ${best.label} owed to each word): ` +
                                                             why.join(", ") }));
      }
      answers.append(answer);
    });
  } catch (error) {
    answers.replaceChildren(el("p", { class: "error", text: String(error.message || error) }));
  } finally {
    button.disabled = false;
  }
}

// --- report ---------------------------------------------------------------------------------

function table(headings, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { text: h })))),
            el("tbody", {}, ...rows.map((row) => el("tr", {}, ...row.map((cell) => el("td", { text: String(cell) }))))));
}

async function loadReport() {
  const target = document.getElementById("report");
  document.getElementById("report-target").textContent = `of ${state.model}, version ${state.version}`;
  const base = `/ui/api/models/${encodeURIComponent(state.model)}/versions/${state.version}`;
  let report;
  try {
    report = await apiJson(base + "/report");
  } catch (error) {
    target.replaceChildren(el("p", { class: "error", text: String(error.message || error) }));
    return;
  }
  const parts = [];
  const test = report.test || {};
  const calibration = report.calibration || {};
  const stats = el("div", { class: "stats" });
  const stat = (value, label) => stats.append(el("div", { class: "stat" }, el("b", { text: value }), el("span", { text: label })));
  if (test.accuracy !== undefined) stat(test.accuracy.toFixed(4), `test accuracy (${test.examples} texts)`);
  if (test.macro_f1 !== undefined) stat(test.macro_f1.toFixed(4), "macro-F1");
  if (calibration.ece_after !== undefined) stat(`${calibration.ece_before.toFixed(3)} → ${calibration.ece_after.toFixed(3)}`,
                                               "calibration error (ECE), before → after");
  if (report.data && report.data.examples) stat(String(report.data.examples.train), "training texts");
  if (report.mode) stat(report.mode, "mode");
  parts.push(stats);
  if ((report.findings || []).length) {
    parts.push(el("h3", { text: "Findings" }), el("ul", { class: "findings" }, ...report.findings.map((f) => el("li", { text: f }))));
  }
  const comparison = report.comparison && report.comparison.systems;
  if (comparison) {
    parts.push(el("h3", { text: "Compared on the same split" }),
               table(["system", "accuracy", "macro-F1"], Object.entries(comparison).map(([name, s]) => [
                 name, s.accuracy.toFixed(4), s.macro_f1.toFixed(4)])));
  }
  const perClass = test.per_class;
  if (perClass) {
    parts.push(el("h3", { text: "Per label" }),
               table(["label", "precision", "recall", "F1", "support"], Object.entries(perClass).map(([label, s]) => [
                 label, s.precision.toFixed(3), s.recall.toFixed(3), s.f1.toFixed(3), s.support])));
  }
  const figures = el("div", { class: "figures" });
  const captions = { "confusion.png": "Confusion", "training_curves.png": "Training curves",
                     "learning_curve.png": "Learning curve", "reliability.png": "Reliability (calibration)" };
  for (const name of report.figures || []) {
    const image = el("img", { alt: captions[name] || name, "data-figure": name });
    figures.append(el("figure", {}, image, el("figcaption", { text: captions[name] || name })));
    api(`${base}/figures/${name}`).then((response) => response.blob()).then((blob) => {
      image.src = URL.createObjectURL(blob);
    }).catch(() => image.replaceWith(el("p", { class: "error", text: `${name} could not be loaded` })));
  }
  parts.push(figures);
  target.replaceChildren(...parts);
}

// --- live figures ---------------------------------------------------------------------------

function quantile(bounds, counts, q) {
  // Counts are cumulative per bucket (the last one +Inf); linear inside the bucket, as Prometheus does.
  const total = counts[counts.length - 1];
  if (!total) return null;
  const rank = q * total;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const low = i === 0 ? 0 : bounds[i - 1];
      const below = i === 0 ? 0 : counts[i - 1];
      const inside = counts[i] - below;
      return inside ? low + (bounds[i] - low) * (rank - below) / inside : bounds[i];
    }
  }
  return bounds[bounds.length - 1];
}

async function refreshLive() {
  try {
    const ready = await fetch("/v2/health/ready");
    const pill = document.getElementById("server-state");
    pill.textContent = ready.ok ? "serving" : "not ready";
    pill.className = "pill " + (ready.ok ? "ok" : "bad");
    const now = { at: performance.now(), snapshot: await apiJson("/ui/api/stats") };
    const before = state.previous;
    const rows = [];
    for (const [name, m] of Object.entries(now.snapshot.models).sort()) {
      const p = before && before.snapshot.models[name];
      const seconds = before ? (now.at - before.at) / 1000 : 0;
      const windowed = p && m.calls > p.calls;
      const counts = windowed ? m.latency.cumulative.map((c, i) => c - p.latency.cumulative[i]) : m.latency.cumulative;
      const batches = windowed && m.batches > p.batches ? [m.batch_sum - p.batch_sum, m.batches - p.batches] : [m.batch_sum, m.batches];
      const tokens = windowed && m.tokens > p.tokens ? [m.oov_tokens - p.oov_tokens, m.tokens - p.tokens] : [m.oov_tokens, m.tokens];
      rows.push([name, p && seconds ? ((m.calls - p.calls) / seconds).toFixed(1) : "–", String(m.failed), String(m.refused),
                 ms(quantile(m.latency.bounds, counts, 0.5)), ms(quantile(m.latency.bounds, counts, 0.99)),
                 batches[1] ? (batches[0] / batches[1]).toFixed(1) : "–", tokens[1] ? percent(tokens[0] / tokens[1]) : "–",
                 String(m.calls)]);
    }
    state.previous = now;
    const body = document.querySelector("#live tbody");
    body.replaceChildren(...rows.map((row) => el("tr", { "data-model": row[0] }, ...row.map((cell) => el("td", { text: cell })))));
  } catch (error) {
    if (!(error instanceof Unauthorised)) document.getElementById("server-state").textContent = "unreachable";
  }
}

// --- start ----------------------------------------------------------------------------------

async function start() {
  try {
    await loadModels();
  } catch (error) {
    if (!(error instanceof Unauthorised)) {
      document.getElementById("models").replaceChildren(el("p", { class: "error", text: String(error.message || error) }));
    }
  }
}

document.getElementById("classify-form").addEventListener("submit", classify);
document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("tlserve-token", state.token);
  document.getElementById("token-form").hidden = true;
  start();
});
start();
refreshLive();
setInterval(refreshLive, 2000);
