"""The page ``GET /`` serves: drop images (or pick them), see each one's heat map, score and decision.

Plain HTML and JavaScript, no external resource (the service may run where nothing else can be reached).
Each image goes to ``POST /predict`` as the multipart field ``file``; results are listed newest first.
Opening ``/#data:image/png;base64,...`` scores that image on load (the tests drive the page this way in
headless Chromium, which cannot drop files).

A service started with an API key answers the page's requests with 401 until the page has the key: it asks
for it once (a password field) and keeps it in the tab's session storage, sending it as
``Authorization: Bearer KEY``. ``/#key=KEY`` (or ``/#key=KEY&data:image/...``) fills it in for scripts; the
fragment never reaches the server, and the page removes it from the address bar.
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>msacl: anomaly heat maps</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1000px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
#info { color: #555; font-size: 0.9em; min-height: 1.2em; }
#drop { border: 2px dashed #888; border-radius: 8px; padding: 2em; text-align: center; margin: 1em 0;
        background: #fafafa; cursor: pointer; }
#drop.over { background: #e8f0ff; border-color: #3367d6; }
.result { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin: 0.8em 0; }
.result img { max-width: 100%; display: block; margin-top: 0.5em; }
.abnormal { color: #b00020; font-weight: bold; }
.normal { color: #0a7d32; font-weight: bold; }
.error { color: #8a4b00; }
#keyform { margin: 0.8em 0; padding: 0.8em; border: 1px solid #e0b000; background: #fff8e0; border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.9em; }
td { padding: 1px 10px 1px 0; }
</style>
</head>
<body>
<h1>msacl: anomaly heat maps</h1>
<div id="info">connecting...</div>
<form id="keyform" hidden>
  <label for="key">This service needs its API key:</label>
  <input id="key" type="password" autocomplete="current-password" size="32">
  <button type="submit">Use key</button>
</form>
<div id="drop" tabindex="0">Drop PNG, JPEG, TIFF or DICOM images here, or click to choose them.
  <input id="pick" type="file" multiple accept=".png,.jpg,.jpeg,.tif,.tiff,.bmp,.webp,.dcm,.dicom,image/*"
         style="display:none">
</div>
<div id="results"></div>
<script>
"use strict";
const info = document.getElementById("info");
const drop = document.getElementById("drop");
const pick = document.getElementById("pick");
const results = document.getElementById("results");
const keyform = document.getElementById("keyform");
const keyInput = document.getElementById("key");
let apiKey = sessionStorage.getItem("msacl-key") || "";

function authHeaders() { return apiKey ? { "Authorization": "Bearer " + apiKey } : {}; }

function askForKey(why) {
  apiKey = "";
  sessionStorage.removeItem("msacl-key");
  info.textContent = why;
  keyform.hidden = false;
  keyInput.focus();
}

keyform.addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey = keyInput.value.trim();
  sessionStorage.setItem("msacl-key", apiKey);
  keyInput.value = "";
  keyform.hidden = true;
  health();
});

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function fmt(v, digits) {
  return (v === null || v === undefined) ? "n/a" : Number(v).toPrecision(digits || 4);
}

async function health() {
  try {
    const r = await fetch("/health", { headers: authHeaders() });
    const h = await r.json();
    if (r.status === 503) { info.textContent = "model loading..."; setTimeout(health, 500); return; }
    if (!r.ok) { info.textContent = "model failed to load: " + h.detail; return; }
    if (h.auth_required && !h.run) {
      askForKey(apiKey ? "that key was refused; enter the service's API key" : "enter the service's API key");
      return;
    }
    let t = "run " + h.run + " (" + h.detector + ", " + h.image_size + " px)";
    if (h.image) t += "; abnormal if score > " + fmt(h.image.threshold) + " (false-positive rate <= " + h.fpr +
                      ", calibrated on " + h.image.n + " normal images)";
    else t += "; no calibration: scores only";
    info.textContent = t;
  } catch (e) { info.textContent = "service not reachable: " + e; setTimeout(health, 1000); }
}

async function predict(file) {
  const box = document.createElement("div");
  box.className = "result";
  box.appendChild(text("div", file.name + ": scoring..."));
  results.prepend(box);
  const form = new FormData();
  form.append("file", file, file.name);
  let r, body;
  try {
    r = await fetch("/predict", { method: "POST", body: form, headers: authHeaders() });
    body = await r.json();
  } catch (e) {
    box.replaceChildren(text("div", file.name + ": request failed: " + e, "error"));
    return;
  }
  if (!r.ok) {
    box.replaceChildren(text("div", file.name + ": " + r.status + " " + (body.detail || ""), "error"));
    box.dataset.status = String(r.status);
    if (r.status === 401) askForKey("the service refused the request: enter its API key, then drop the image again");
    return;
  }
  const head = text("div", "");
  head.appendChild(text("span", body.file + "  "));
  if (body.decision) head.appendChild(text("span", body.decision.toUpperCase(), body.decision));
  const rows = [["score", fmt(body.score)], ["threshold", fmt(body.threshold)],
                ["target false-positive rate", body.fpr], ["flagged share", fmt(body.lesion_fraction, 3)],
                ["size", body.width + " x " + body.height]];
  if (body.note) rows.push(["note", body.note]);
  const table = document.createElement("table");
  for (const [k, v] of rows) {
    const tr = document.createElement("tr");
    tr.appendChild(text("td", k));
    tr.appendChild(text("td", String(v)));
    table.appendChild(tr);
  }
  box.replaceChildren(head, table);
  box.dataset.status = "200";
  box.dataset.decision = body.decision || "";
  box.dataset.score = String(body.score);
  if (body.heatmap_png) {
    const img = document.createElement("img");
    img.alt = "heat map of " + body.file;
    img.src = "data:image/png;base64," + body.heatmap_png;
    box.appendChild(img);
  }
}

async function handle(files) { for (const f of files) await predict(f); }

drop.addEventListener("click", () => pick.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") pick.click(); });
pick.addEventListener("change", () => handle(pick.files));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  handle(e.dataTransfer.files);
});

let h = decodeURIComponent(location.hash.slice(1));
if (h.startsWith("key=")) {
  const cut = h.indexOf("&");
  apiKey = cut < 0 ? h.slice(4) : h.slice(4, cut);
  sessionStorage.setItem("msacl-key", apiKey);
  h = cut < 0 ? "" : h.slice(cut + 1);
  history.replaceState(null, "", location.pathname);
}
health().then(async () => {
  if (h.startsWith("data:image/")) {
    const blob = await (await fetch(h)).blob();
    await predict(new File([blob], "from-url." + blob.type.split("/")[1], { type: blob.type }));
  }
});
</script>
</body>
</html>
"""
