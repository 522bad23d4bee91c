// PixArtSharp web page: talks only to this server (POST /v1/images/generations?stream=true, server-sent events).
"use strict";
const $ = (id) => document.getElementById(id);
let running = null; // { controller, jobId }
let schedulerDefaults = {}; // sampler name → { steps, guidance } on this model
let source = null; // image-to-image: { dataUrl, name } of the chosen file

// The server takes bodies up to 16 MiB; base64 makes a file 4/3 larger.
const MAX_SOURCE_BYTES = 12 * 1024 * 1024;

function authHeaders() {
  const t = $("token").value.trim() || sessionStorage.getItem("pixart-token") || "";
  return t ? { Authorization: "Bearer " + t } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(text, fraction) {
  $("status").textContent = text;
  if (fraction === null) $("progress").removeAttribute("value");
  else $("progress").value = fraction;
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { const e = await res.json(); if (e.error) msg = e.error.message; } catch { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

const snap32 = (v) => Math.min(2048, Math.max(256, Math.round(v / 32) * 32));

async function loadModel() {
  const health = await (await fetch("/health")).json();
  if (health.auth_required) {
    $("token-row").hidden = false;
    $("token").value = sessionStorage.getItem("pixart-token") || "";
  }
  let models;
  try { models = await (await api("/v1/models")).json(); }
  catch (e) { showError("Cannot read the model list: " + e.message); return; }
  showError("");
  const m = models.data[0];
  $("style").replaceChildren();
  $("aspect").replaceChildren(new Option("custom", ""));
  $("model").textContent = `${m.id} · ${m.scheduler} · default ${m.default_width}×${m.default_height}, ${m.default_steps} steps`;
  for (const s of m.styles) $("style").add(new Option(s, s));
  for (const b of m.aspect_ratios) {
    const w = snap32(b.width), h = snap32(b.height);
    $("aspect").add(new Option(`${b.ratio} — ${w}×${h}`, `${w}x${h}`));
  }
  $("width").value = snap32(m.default_width);
  $("height").value = snap32(m.default_height);
  $("aspect").value = `${$("width").value}x${$("height").value}`;
  if ($("aspect").selectedIndex < 0) $("aspect").value = "";
  $("steps").value = m.default_steps;
  $("guidance").value = m.default_guidance;
  schedulerDefaults = m.scheduler_defaults || {};
  const labels = { "lcm": "LCM", "dpm-solver": "DPM-Solver++", "sa-solver": "SA-Solver" };
  $("scheduler").replaceChildren(...m.schedulers.map((s) => new Option(labels[s] || s, s)));
  $("scheduler").value = m.scheduler;
}

function syncAspect() {
  const v = `${$("width").value}x${$("height").value}`;
  $("aspect").value = [...$("aspect").options].some((o) => o.value === v) ? v : "";
}

function request() {
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    style: $("style").value || undefined,
    steps: Number($("steps").value),
    guidance: Number($("guidance").value),
    n: Number($("n").value),
    scheduler: $("scheduler").value || undefined,
  };
  if (source) {
    // Image-to-image: the output has the (fitted) image's size, so no width, height or binning.
    body.image = source.dataUrl;
    body.strength = Number($("strength").value);
    body.resize_to_fit = $("fit").checked;
  } else {
    body.width = Number($("width").value);
    body.height = Number($("height").value);
    body.resolution_binning = $("binning").checked;
  }
  if ($("randomize").checked) {
    // A fresh seed each time, shown in the form so the run can be repeated with "randomize" off.
    $("seed").value = Math.floor(Math.random() * 2 ** 32);
  }
  body.seed = Number($("seed").value);
  return body;
}

function addToGallery(result) {
  $("empty").hidden = true;
  const cards = result.data.map((img, i) => {
    const bytes = Uint8Array.from(atob(img.b64_json), (c) => c.charCodeAt(0));
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    const card = document.createElement("figure");
    card.className = "card";
    const el = document.createElement("img");
    el.src = url;
    el.alt = img.revised_prompt;
    const meta = document.createElement("figcaption");
    meta.className = "meta";
    const seed = document.createElement("div");
    seed.textContent = `seed ${img.seed}` + (result.data.length > 1 ? ` · image ${i + 1}/${result.data.length}` : "");
    const params = document.createElement("pre");
    params.textContent = img.parameters;
    const link = document.createElement("a");
    link.href = url;
    link.download = `pixart-${img.seed}${result.data.length > 1 ? "-" + (i + 1) : ""}.png`;
    link.textContent = "Download PNG";
    meta.append(seed, params, link);
    card.append(el, meta);
    return card;
  });
  $("gallery").prepend(...cards); // newest request first, its images in order
}

function showPreview(url) {
  // A server started with --preview tiny sends each step's predicted image (a small JPEG data: URL).
  const img = $("live-preview");
  if (url) img.src = url;
  img.hidden = !url;
  if (!url) img.removeAttribute("src");
}

function onProgress(p) {
  if (running) running.jobId = p.id;
  if (p.preview) showPreview(p.preview);
  if (p.status === "queued") setStatus(`queued${p.queue_position ? " (position " + p.queue_position + ")" : ""}`, null);
  else if (p.status === "running" && p.phase === "encoding") setStatus(`encoding prompt (batch of ${p.batch_size})`, 0);
  else if (p.status === "running" && p.phase === "decoding") setStatus("decoding", 1);
  else if (p.status === "running") setStatus(`step ${p.step}/${p.total_steps}`, p.total_steps ? p.step / p.total_steps : 0);
}

async function generate(ev) {
  ev.preventDefault();
  if (running) return;
  showError("");
  if ($("token").value) sessionStorage.setItem("pixart-token", $("token").value.trim());
  const controller = new AbortController();
  running = { controller, jobId: null };
  $("generate").disabled = true;
  $("cancel").disabled = false;
  setStatus("sending", null);
  try {
    const res = await api("/v1/images/generations?stream=true", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request()),
      signal: controller.signal,
    });
    running.jobId = res.headers.get("X-Job-Id");
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", done = false;
    while (!done) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += chunk.value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (!data) continue;
        const payload = JSON.parse(data);
        if (name === "progress") onProgress(payload);
        else if (name === "result") { addToGallery(payload); setStatus(`done: ${payload.data.length} image(s)`, 1); done = true; }
        else if (name === "error") { showError(payload.error.message); setStatus(payload.error.code === "cancelled" ? "cancelled" : "failed", 0); done = true; }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") setStatus("cancelled", 0);
    else { showError(e.message); setStatus("failed", 0); }
  } finally {
    running = null;
    showPreview(null); // the gallery shows the result
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

function setSource(file) {
  showError("");
  if (!file) return;
  if (!["image/png", "image/jpeg", "image/webp"].includes(file.type)) { showError(`${file.name}: only PNG, JPEG and WebP images can be used.`); return; }
  if (file.size > MAX_SOURCE_BYTES) { showError(`${file.name} has ${file.size} bytes; the limit is ${MAX_SOURCE_BYTES}.`); return; }
  const reader = new FileReader();
  reader.onload = () => {
    source = { dataUrl: reader.result, name: file.name };
    $("source-preview").src = reader.result;
    $("source-preview").hidden = false;
    $("drop-text").textContent = file.name;
    syncSourceControls();
  };
  reader.onerror = () => showError(`Cannot read ${file.name}.`);
  reader.readAsDataURL(file);
}

function clearSource() {
  source = null;
  $("source").value = "";
  $("source-preview").hidden = true;
  $("source-preview").removeAttribute("src");
  $("drop-text").replaceChildren("Drop a PNG, JPEG or WebP here, or ", Object.assign(document.createElement("label"), { htmlFor: "source", className: "link", textContent: "choose a file" }));
  syncSourceControls();
}

function syncSourceControls() {
  $("i2i-controls").hidden = !source;
  for (const id of ["width", "height", "aspect", "binning"]) $(id).disabled = !!source;
}

async function cancel() {
  if (!running) return;
  const { controller, jobId } = running;
  try { if (jobId) await api(`/v1/jobs/${jobId}`, { method: "DELETE" }); } catch { /* already finished */ }
  controller.abort();
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("aspect").addEventListener("change", () => {
    if (!$("aspect").value) return;
    const [w, h] = $("aspect").value.split("x");
    $("width").value = w;
    $("height").value = h;
  });
  for (const id of ["width", "height"]) $(id).addEventListener("change", () => { $(id).value = snap32(Number($(id).value)); syncAspect(); });
  $("scheduler").addEventListener("change", () => {
    // Each sampler has its own defaults (LCM 4 steps without guidance, SA-Solver 25 steps at 3, …).
    const d = schedulerDefaults[$("scheduler").value];
    if (d) { $("steps").value = d.steps; $("guidance").value = d.guidance; }
  });
  $("source").addEventListener("change", () => setSource($("source").files[0]));
  $("clear-source").addEventListener("click", clearSource);
  $("strength").addEventListener("input", () => { $("strength-value").value = Number($("strength").value).toFixed(2); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setSource(e.dataTransfer.files[0]); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("source").click(); } });
  $("randomize").addEventListener("change", () => { $("seed").disabled = $("randomize").checked; });
  $("seed").disabled = $("randomize").checked;
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("pixart-token", $("token").value.trim());
    loadModel().catch((e) => showError(e.message));
  });
  loadModel().catch((e) => showError(e.message));
});
