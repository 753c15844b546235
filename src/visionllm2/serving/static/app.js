// VisionLLM v2 web demo: canvas visual prompts + OpenAI-style chat against /v1/chat/completions.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const state = {
  model: null,
  image: null, // HTMLImageElement of the upload
  dataURL: null, // sent to the server as the image_url of the first user message
  scale: 1, // canvas pixels per image pixel
  region: null, // {kind, data} in image pixels, or null
  drawing: null, // points of the box/scribble being drawn
  history: [], // OpenAI messages so far
  busy: false,
};

function tool() {
  return document.querySelector('input[name="tool"]:checked').value;
}

function addMessage(kind, text) {
  const div = document.createElement("div");
  div.className = `msg ${kind}`;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

// -- canvas -------------------------------------------------------------------------------
function redraw() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image) {
    ctx.fillStyle = "#999";
    ctx.font = "16px sans-serif";
    ctx.fillText("Choose an image to start.", 20, 30);
    return;
  }
  ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  const r = state.region;
  const pts = state.drawing;
  ctx.lineWidth = 3;
  ctx.strokeStyle = "#ff2d55";
  ctx.fillStyle = "#ff2d55";
  const s = state.scale;
  if (r && r.kind === "point") {
    ctx.beginPath();
    ctx.arc(r.data[0] * s, r.data[1] * s, 6, 0, 2 * Math.PI);
    ctx.fill();
  } else if (r && r.kind === "box") {
    const [x0, y0, x1, y1] = r.data;
    ctx.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
  } else if (r && r.kind === "scribble") {
    strokePath(r.data.map(([x, y]) => [x * s, y * s]));
  }
  if (pts && pts.length) {
    if (tool() === "box" && pts.length > 1) {
      const [a, b] = [pts[0], pts[pts.length - 1]];
      ctx.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    } else if (tool() === "scribble") {
      strokePath(pts);
    }
  }
}

function strokePath(points) {
  ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.stroke();
}

function canvasPoint(ev) {
  const rect = canvas.getBoundingClientRect();
  const x = ((ev.clientX - rect.left) * canvas.width) / rect.width;
  const y = ((ev.clientY - rect.top) * canvas.height) / rect.height;
  return [Math.max(0, Math.min(canvas.width, x)), Math.max(0, Math.min(canvas.height, y))];
}

function toImage([x, y]) {
  // Visual prompts travel in pixels of the original image.
  return [Math.round((x / state.scale) * 10) / 10, Math.round((y / state.scale) * 10) / 10];
}

function setRegion(region) {
  state.region = region;
  $("region-info").textContent = region
    ? `Visual prompt: ${region.kind} ${JSON.stringify(region.data).slice(0, 80)}`
    : "No visual prompt.";
  redraw();
}

canvas.addEventListener("pointerdown", (ev) => {
  if (!state.image || tool() === "none") return;
  const p = canvasPoint(ev);
  if (tool() === "point") {
    setRegion({ kind: "point", data: toImage(p) });
    return;
  }
  state.drawing = [p];
  canvas.setPointerCapture(ev.pointerId);
});

canvas.addEventListener("pointermove", (ev) => {
  if (!state.drawing) return;
  state.drawing.push(canvasPoint(ev));
  redraw();
});

canvas.addEventListener("pointerup", () => {
  const pts = state.drawing;
  state.drawing = null;
  if (!pts) return;
  if (tool() === "box") {
    const [a, b] = [toImage(pts[0]), toImage(pts[pts.length - 1])];
    const box = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
    if (box[2] - box[0] >= 1 && box[3] - box[1] >= 1) setRegion({ kind: "box", data: box });
    else redraw();
  } else if (tool() === "scribble") {
    setRegion({ kind: "scribble", data: pts.map(toImage) });
  }
});

$("clear-region").addEventListener("click", () => setRegion(null));

// -- image upload -------------------------------------------------------------------------
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const img = new Image();
    img.onload = () => {
      state.image = img;
      state.dataURL = reader.result;
      state.scale = Math.min(512 / img.naturalWidth, 512 / img.naturalHeight);
      canvas.width = Math.max(1, Math.round(img.naturalWidth * state.scale));
      canvas.height = Math.max(1, Math.round(img.naturalHeight * state.scale));
      resetChat();
      setRegion(null);
      canvas.dataset.loaded = "1";
    };
    img.onerror = () => addMessage("error", "This file is not an image the browser can read.");
    img.src = reader.result;
  };
  reader.readAsDataURL(file);
});

// -- chat ---------------------------------------------------------------------------------
function resetChat() {
  state.history = [];
  $("log").replaceChildren();
  $("rendered").hidden = true;
  $("generated").replaceChildren();
  $("detections").hidden = true;
}

$("reset").addEventListener("click", () => {
  resetChat();
  setRegion(null);
});

function userMessage(text) {
  const parts = [];
  if (state.dataURL && !state.history.length) {
    parts.push({ type: "image_url", image_url: { url: state.dataURL } });
  }
  parts.push({ type: "text", text });
  if (state.region) parts.push({ type: "region", region: state.region });
  return { role: "user", content: parts };
}

function showResult(extra) {
  const rendered = $("rendered");
  if (extra.rendered_png_base64) {
    rendered.src = `data:image/png;base64,${extra.rendered_png_base64}`;
    rendered.hidden = false;
  }
  const gen = $("generated");
  gen.replaceChildren();
  for (const im of extra.images || []) {
    if (!im.png_base64) continue;
    const el = document.createElement("img");
    el.src = `data:image/png;base64,${im.png_base64}`;
    el.alt = `${im.family} image`;
    el.className = "generated";
    gen.appendChild(el);
  }
  const body = $("detections").querySelector("tbody");
  body.replaceChildren();
  for (const d of extra.detections || []) {
    const tr = document.createElement("tr");
    tr.className = "det";
    const cells = [
      d.label || "(unnamed)",
      d.score.toFixed(2),
      d.box.map((v) => v.toFixed(1)).join(", "),
      d.mask ? "yes" : "",
      d.keypoints ? Object.keys(d.keypoints).length : "",
    ];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  $("detections").hidden = !(extra.detections || []).length;
}

$("chat-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.busy) return;
  state.busy = true;
  $("send").disabled = true;
  const message = userMessage(text);
  addMessage("user", text + (state.region ? `  [${state.region.kind}]` : ""));
  const pending = addMessage("assistant", "…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        model: state.model,
        messages: [...state.history, message],
        max_tokens: Number($("max-tokens").value) || 64,
        visionllm2: { render: true },
      }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
    const answer = body.choices[0].message.content;
    pending.textContent = answer || "(empty answer)";
    state.history.push(message, { role: "assistant", content: answer });
    showResult(body.visionllm2 || {});
    $("prompt").value = "";
    setRegion(null); // a visual prompt belongs to the turn it was sent with
  } catch (err) {
    pending.className = "msg error";
    pending.textContent = `Error: ${err.message}`;
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
});

// -- start --------------------------------------------------------------------------------
fetch("/v1/models")
  .then((r) => r.json())
  .then((body) => {
    state.model = body.data[0].id;
    $("model-name").textContent = `model: ${state.model}`;
  })
  .catch(() => ($("model-name").textContent = "server unreachable"));
redraw();
