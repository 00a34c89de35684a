// The page's behaviour: /info -> model panel, /search -> thumbnails, /probe -> clean vs attacked.
// Plain DOM code, no framework: the page must work offline and without a build step.
// Each request first clears what the previous one showed, and only the latest request of a panel may show its
// answer or its error, so nothing on screen belongs to another request.
"use strict";

const KEY_STORAGE = "robust-retrieval.api-key";
const $ = (id) => document.getElementById(id);
let query = null; // the chosen query image (a File)
let info = null;
const latest = { search: 0, probe: 0 }; // the request number each panel shows

// ---- errors, worded as the API words them ------------------------------------------------------------------------

async function apiError(response) {
  let code = "http_error";
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch (_) { /* not JSON: keep the status text */ }
  let text = `${response.status} ${code}: ${message}`;
  const retry = response.headers.get("Retry-After");
  if (response.status === 429 || (response.status === 503 && retry)) {
    text += retry ? ` (retry in ${retry} s)` : " (retry later)";
  }
  if (response.status === 401 || response.status === 403) text += ". Check the API key above.";
  return text;
}

function showError(box, text) {
  box.textContent = text;
  box.hidden = !text;
}

async function call(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`the service did not answer (${err.message})`);
  }
  if (!response.ok) throw new Error(await apiError(response));
  return response.json();
}

// ---- model panel -------------------------------------------------------------------------------------------------

const fmt = (value, digits) => (value === null || value === undefined ? "not recorded" : Number(value).toFixed(digits));

function eps255(eps) {
  return eps === null || eps === undefined ? null : Math.round(eps * 255);
}

async function loadInfo() {
  const status = $("model-status");
  for (let attempt = 0; ; attempt++) {
    try {
      info = await call("/info");
      break;
    } catch (err) {
      status.textContent = `Waiting for the service: ${err.message}`;
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * (attempt + 1))));
    }
  }
  const { model, index } = info;
  $("model-id").textContent = `${model.id} (${model.arch}, ${model.embedding_dim}-d, ${model.input_size}x${model.input_size})`;
  $("model-method").textContent = model.method || "not recorded";
  $("model-eps").textContent = model.eps === null || model.eps === undefined ? "not recorded" : `${eps255(model.eps)}/255`;
  $("model-r1").textContent = fmt(model.recall_at_1, 3);
  showRobustness($("model-robustness"), model);
  const previews = index.thumbnails ? "" : ", no thumbnails";
  $("index-facts").textContent = `${index.count.toLocaleString("en")} items, ${index.type || "unknown type"}${previews}`;
  $("model-facts").hidden = false;
  status.textContent = "";
  if (info.probe_enabled) setUpProbe();
}

// One line per protocol evaluate measured: "ERS (rob28): 40.1 (38.0-42.1), PGD 32 steps x 1 start", then the
// queries (and date) they were measured on.
function showRobustness(box, model) {
  const measured = model.robustness;
  const line = (text, className = "") => Object.assign(document.createElement("span"), { textContent: text, className });
  if (!measured) {
    box.replaceChildren(model.ers === null || model.ers === undefined
      ? line("not recorded")
      : line(`ERS ${fmt(model.ers, 1)} (protocol not recorded)`));
    return;
  }
  const lines = Object.entries(measured.protocols || {}).map(([protocol, result]) => {
    const [lo, hi] = result.ers_interval || [];
    const interval = lo === undefined ? "" : ` (${fmt(lo, 1)}-${fmt(hi, 1)})`;
    const item = line(`ERS (${protocol}): ${fmt(result.ers, 1)}${interval}${result.attacker ? `, ${result.attacker}` : ""}`);
    item.dataset.protocol = protocol;
    return item;
  });
  const queries = measured.queries ?? Object.values(measured.protocols || {}).map((r) => r.queries).find((q) => q);
  const about = [queries ? `${queries} queries` : "", measured.date ? `measured ${measured.date.slice(0, 10)}` : ""];
  lines.push(line(about.filter(Boolean).join(", ") || "queries not recorded", "note"));
  box.replaceChildren(...lines);
}

// ---- query image -------------------------------------------------------------------------------------------------

function setQuery(file) {
  query = file;
  const preview = $("query-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = `Your query image (${file.name})`;
}

function setUpDrop() {
  const zone = $("drop-zone");
  const input = $("image-input");
  input.addEventListener("change", () => input.files[0] && setQuery(input.files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (!file) return;
    setQuery(file);
    $("search-form").requestSubmit();
  });
}

function topK() {
  const k = Number.parseInt($("top-k").value, 10);
  return Number.isFinite(k) ? k : 10;
}

// ---- rankings ----------------------------------------------------------------------------------------------------

// "Ankle boot" where the index names the label, else "label 9" (indexes built without names), else "no label".
function labelText(hit) {
  const label = hit.label === null || hit.label === undefined ? "no label" : `label ${hit.label}`;
  return { short: hit.class_name || label, full: hit.class_name ? `${hit.class_name} (${label})` : label };
}

function hitItem(hit, mark) {
  const item = document.createElement("li");
  item.className = "hit";
  item.dataset.id = hit.id;
  item.dataset.rank = hit.rank;
  item.dataset.label = hit.label ?? "";
  item.dataset.className = hit.class_name ?? "";
  const label = labelText(hit);
  const image = document.createElement("img");
  image.src = `/items/${encodeURIComponent(hit.id)}/thumbnail`;
  image.alt = `Gallery item ${hit.id}, ${label.full}`;
  image.loading = "lazy";
  image.addEventListener("error", () => image.replaceWith(Object.assign(document.createElement("span"), {
    className: "no-thumbnail", textContent: `item ${hit.id} (no thumbnail)`,
  })));
  const caption = document.createElement("p");
  caption.innerHTML = '<span class="rank"></span> <span class="label"></span> <span class="score"></span>';
  caption.querySelector(".rank").textContent = `#${hit.rank}`;
  caption.querySelector(".label").textContent = label.short;
  caption.querySelector(".label").title = label.full;
  caption.querySelector(".score").textContent = `score ${hit.score.toFixed(3)}`;
  item.append(image, caption);
  if (mark) {
    item.classList.add("moved");
    item.dataset.moved = mark;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = mark;
    caption.append(" ", badge);
  }
  return item;
}

function render(list, hits, markOf = () => "") {
  list.replaceChildren(...hits.map((hit) => hitItem(hit, markOf(hit))));
}

function clearSearch() {
  showError($("search-error"), "");
  $("search-output").hidden = true;
  $("search-results").replaceChildren();
}

async function search(event) {
  event.preventDefault();
  const ticket = ++latest.search;
  const box = $("search-error");
  clearSearch();
  if (!query) {
    showError(box, "Choose or drop a query image first.");
    $("image-input").focus();
    return;
  }
  const form = new FormData();
  form.append("image", query, query.name);
  form.append("top_k", String(topK()));
  const button = $("search-button");
  button.disabled = true;
  try {
    const body = await call("/search", { method: "POST", body: form });
    if (ticket !== latest.search) return;
    render($("search-results"), body.results);
    $("search-output").hidden = false;
  } catch (err) {
    if (ticket === latest.search) showError(box, err.message);
  } finally {
    if (ticket === latest.search) button.disabled = false;
  }
}

// ---- probe -------------------------------------------------------------------------------------------------------

function setUpProbe() {
  const attack = $("attack");
  attack.replaceChildren(...info.attacks.map((name) => new Option(name, name, name === "QA-", name === "QA-")));
  const eps = eps255(info.model.eps);
  if (eps !== null) $("eps").value = eps;
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    $("probe-status").textContent = "API key forgotten.";
  });
  $("probe-form").addEventListener("submit", probe);
  $("probe").hidden = false;
}

function dataUrl(base64) {
  return `data:image/png;base64,${base64}`;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("could not decode an image of the probe answer"));
    image.src = src;
  });
}

// The perturbation adv - clean is at most eps per pixel (a few grey levels): it is scaled so its largest value fills
// the range around mid-grey, and the factor is printed next to it.
async function perturbation(cleanSrc, adversarialSrc) {
  const [clean, adversarial] = await Promise.all([loadImage(cleanSrc), loadImage(adversarialSrc)]);
  const canvas = document.createElement("canvas");
  canvas.width = clean.naturalWidth;
  canvas.height = clean.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(clean, 0, 0);
  const a = context.getImageData(0, 0, canvas.width, canvas.height);
  context.drawImage(adversarial, 0, 0);
  const b = context.getImageData(0, 0, canvas.width, canvas.height);
  let largest = 0;
  for (let i = 0; i < a.data.length; i += 4) {
    for (let c = 0; c < 3; c++) largest = Math.max(largest, Math.abs(b.data[i + c] - a.data[i + c]));
  }
  const gain = largest ? 127 / largest : 1;
  for (let i = 0; i < a.data.length; i += 4) {
    for (let c = 0; c < 3; c++) b.data[i + c] = 128 + gain * (b.data[i + c] - a.data[i + c]);
    b.data[i + 3] = 255;
  }
  context.putImageData(b, 0, 0);
  return { src: canvas.toDataURL("image/png"), gain, largest };
}

function moves(clean, adversarial) {
  const before = new Map(clean.map((hit) => [hit.id, hit.rank]));
  const after = new Map(adversarial.map((hit) => [hit.id, hit.rank]));
  const cleanMark = (hit) => (after.has(hit.id) ? "" : "dropped out");
  const attackedMark = (hit) => {
    if (!before.has(hit.id)) return "new";
    const shift = before.get(hit.id) - hit.rank;
    return shift > 0 ? `up ${shift}` : shift < 0 ? `down ${-shift}` : "";
  };
  return { cleanMark, attackedMark };
}

function clearProbe() {
  showError($("probe-error"), "");
  $("probe-status").textContent = "";
  $("probe-output").hidden = true;
  for (const id of ["probe-clean-hits", "probe-adversarial-hits"]) $(id).replaceChildren();
  for (const id of ["probe-clean", "probe-adversarial", "probe-perturbation"]) $(id).removeAttribute("src");
}

async function probe(event) {
  event.preventDefault();
  const ticket = ++latest.probe;
  const box = $("probe-error");
  const status = $("probe-status");
  clearProbe();
  if (!query) {
    showError(box, "Choose or drop a query image in the search form first.");
    $("image-input").focus();
    return;
  }
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  const form = new FormData();
  form.append("image", query, query.name);
  form.append("attack", $("attack").value);
  if ($("eps").value !== "") form.append("eps", String(Number($("eps").value) / 255));
  form.append("steps", $("steps").value || "32");
  form.append("top_k", String(topK()));
  form.append("return_image", "true");
  const button = $("probe-button");
  button.disabled = true;
  status.textContent = "Attacking the query…";
  try {
    const report = await call("/probe", { method: "POST", body: form, headers: key ? { "X-API-Key": key } : {} });
    if (ticket !== latest.probe) return;
    await showProbe(report);
    status.textContent = `Probe finished in ${(report.took_ms / 1000).toFixed(1)} s.`;
  } catch (err) {
    if (ticket !== latest.probe) return;
    clearProbe();
    showError(box, err.message);
    if (/^40[13] /.test(err.message)) $("api-key").focus();
  } finally {
    if (ticket === latest.probe) button.disabled = false;
  }
}

async function showProbe(report) {
  const clean = dataUrl(report.clean_image_png);
  const adversarial = dataUrl(report.adversarial_image_png);
  const diff = await perturbation(clean, adversarial);
  const eps = `${Math.round(report.eps * 255)}/255`;
  $("probe-clean").src = clean;
  $("probe-adversarial").src = adversarial;
  $("probe-adversarial").alt = `Adversarial query (${report.attack}, eps ${eps}, ${report.steps} steps)`;
  $("probe-perturbation").src = diff.src;
  $("probe-perturbation").alt = `Perturbation amplified ${diff.gain.toFixed(1)} times; mid-grey is no change, `
    + `largest change ${diff.largest}/255`;
  $("perturbation-caption").textContent = `Perturbation ×${diff.gain.toFixed(1)} (max ${diff.largest}/255)`;
  $("probe-changed").textContent = report.top1_changed ? "yes" : "no";
  $("probe-rank-after").textContent = String(report.clean_top1_rank_after);
  const flip = report.flip;
  $("probe-min-eps").textContent = flip.min_flip_eps === null
    ? `none up to ${eps}`
    : `${Math.round(flip.min_flip_eps * 255)}/255${flip.truncated ? " (upper bound: time limit reached)" : ""}`;
  $("probe-overlap").textContent = report.overlap_at_k.toFixed(2);
  $("probe-shift").textContent = report.embedding_shift.toFixed(3);
  const { cleanMark, attackedMark } = moves(report.clean, report.adversarial);
  render($("probe-clean-hits"), report.clean, cleanMark);
  render($("probe-adversarial-hits"), report.adversarial, attackedMark);
  $("probe-output").hidden = false;
}

// ---- start -------------------------------------------------------------------------------------------------------

setUpDrop();
$("search-form").addEventListener("submit", search);
loadInfo();
