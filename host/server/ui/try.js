// The try-it page: asks the node (`GET /t`) which routes and models the
// caller may use, and gives each route a form. The bundled examples get
// their own views; any other module a generic one.

import { busy, call, el, meta, NodeError, showError, tabStore } from "/ui/common.js";

const routes = document.getElementById("routes");

/** The views of the bundled examples, by the example a module runs. */
const VIEWS = {
  "image-classify": imageView,
  "text-embed": textView,
  "speech-detect": speechView,
};

const SUMMARIES = {
  "image-classify": "A PNG or JPEG photo in, the five likeliest ImageNet classes out (EfficientNet-Lite0).",
  "text-embed": "Sentences in, sentence embeddings out (all-MiniLM-L6-v2); here, how close each pair is.",
  "speech-detect": "A WAV recording in, where the speech is out (Silero VAD).",
};

function key() {
  return tabStore.get("key");
}

async function load() {
  const who = document.getElementById("who");
  const problem = document.getElementById("access-error");
  const form = document.getElementById("key-form");
  const actions = document.getElementById("key-actions");
  problem.hidden = true;
  routes.replaceChildren();
  document.getElementById("models").hidden = true;
  let catalog;
  try {
    catalog = (await call("/t", { token: key() })).data;
  } catch (error) {
    who.textContent = key() ? "The node refused the key." : "This node needs a tenant API key to show its routes.";
    problem.hidden = false;
    showError(problem, error);
    form.hidden = false;
    actions.hidden = true;
    document.getElementById("key").focus();
    return;
  }
  form.hidden = true;
  actions.hidden = false;
  who.replaceChildren(
    "Tenant ",
    el("strong", {}, catalog.tenant),
    key() ? " (with the key you gave)." : catalog.open ? ": open to requests without a key." : ".",
  );
  if (catalog.modules.length === 0) {
    routes.append(el("section", { class: "panel" }, el("p", {}, "This tenant has no routes yet.")));
  }
  for (const module of catalog.modules) {
    routes.append(moduleCard(module));
  }
  const models = document.getElementById("model-list");
  models.replaceChildren(
    ...catalog.models.map((model) =>
      el("li", {}, el("strong", {}, model.name), ` (version ${model.versions.join(", ")}) at `, el("code", {}, model.route)),
    ),
  );
  document.getElementById("models").hidden = catalog.models.length === 0;
}

function moduleCard(module) {
  const view = VIEWS[module.example] || genericView;
  const titleId = `route-${module.id}`;
  const card = el(
    "article",
    { class: "panel", "aria-labelledby": titleId, "data-module": module.id },
    el("h2", { id: titleId }, module.id),
    el("p", {}, el("code", {}, `POST ${module.route}`)),
    SUMMARIES[module.example] ? el("p", { class: "muted" }, SUMMARIES[module.example]) : null,
    module.models.length ? el("p", { class: "muted" }, `Models: ${module.models.join(", ")}`) : null,
  );
  view(card, module);
  return card;
}

/** Sends `body` to `module`'s route with the tab's key. */
function send(module, body, contentType, suffix = "", method = "POST") {
  return call(module.route + suffix, { method, body, contentType, token: key() });
}

function resultArea() {
  return el("div", { class: "result", "aria-live": "polite" });
}

// image-classify: a photo, shown with its five likeliest classes as bars.
function imageView(card, module) {
  const inputId = `${module.id}-file`;
  const input = el("input", { id: inputId, type: "file", accept: "image/png,image/jpeg" });
  const drop = el("div", { class: "drop" }, el("label", { for: inputId }, "Choose or drop a photo"), input);
  const preview = el("img", { class: "preview", alt: "", hidden: true });
  const result = resultArea();
  let shown;
  const classify = async (file) => {
    if (shown) URL.revokeObjectURL(shown);
    shown = URL.createObjectURL(file);
    preview.src = shown;
    preview.alt = `The photo sent: ${file.name}`;
    preview.hidden = false;
    result.replaceChildren(el("p", { class: "muted" }, "Classifying…"));
    try {
      const answer = await busy(input, () => send(module, file, file.type || "application/octet-stream"));
      const top = Array.isArray(answer.data.top) ? answer.data.top : [];
      result.replaceChildren(bars(top, "Likeliest classes"), meta(answer.ms, answer.requestId));
    } catch (error) {
      showError(result, error);
    }
  };
  input.addEventListener("change", () => input.files[0] && classify(input.files[0]));
  dropTarget(drop, (file) => classify(file));
  card.append(drop, preview, result);
}

function bars(top, label) {
  return el(
    "ol",
    { class: "bars", "aria-label": label },
    top.map((entry) => {
      const score = Number(entry.score) || 0;
      const percent = Math.max(0, Math.min(100, score * 100));
      // Set through the CSSOM: the page's policy refuses style attributes.
      const fill = el("span", { class: "fill" });
      fill.style.width = `${percent}%`;
      return el(
        "li",
        {},
        el("span", { class: "name" }, entry.label ?? `class ${entry.index}`),
        el("span", { class: "track", "aria-hidden": "true" }, fill),
        el("span", { class: "value" }, `${percent.toFixed(1)}%`),
      );
    }),
  );
}

function dropTarget(zone, onFile) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) onFile(file);
  });
}

// text-embed: sentences, one request each, and the cosine similarity of
// every pair.
function textView(card, module) {
  const inputId = `${module.id}-text`;
  const text = el("textarea", { id: inputId, rows: 4 });
  text.value = "A cat sits on the mat\nA kitten rests on a rug\nQuarterly revenue grew";
  const button = el("button", { type: "submit" }, "Compare");
  const result = resultArea();
  const form = el(
    "form",
    {},
    el("label", { for: inputId }, "Sentences, one per line"),
    text,
    el("div", { class: "row" }, button),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const sentences = text.value.split("\n").map((line) => line.trim()).filter(Boolean);
    if (sentences.length === 0) {
      showError(result, "Write at least one sentence.");
      return;
    }
    result.replaceChildren(el("p", { class: "muted" }, "Embedding…"));
    try {
      const answers = await busy(button, () =>
        Promise.all(sentences.map((sentence) => send(module, sentence, "text/plain; charset=utf-8"))),
      );
      const vectors = answers.map((answer) => answer.data.embedding);
      if (!vectors.every(Array.isArray)) throw new Error("an answer had no embedding");
      result.replaceChildren(
        ...similarity(sentences, vectors),
        el("ul", { class: "meta" }, answers.map((a, i) => el("li", {}, `${i + 1}: ${a.ms.toFixed(0)} ms · request id ${a.requestId}`))),
      );
    } catch (error) {
      showError(result, error);
    }
  });
  card.append(form, result);
}

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

function similarity(sentences, vectors) {
  if (sentences.length === 1) {
    return [el("p", {}, `One sentence: an embedding of ${vectors[0].length} numbers. Add a line to compare.`)];
  }
  let best = null;
  const matrix = vectors.map((a, i) => vectors.map((b, j) => {
    const value = cosine(a, b);
    if (i < j && (!best || value > best.value)) best = { i, j, value };
    return value;
  }));
  const short = (s) => (s.length > 40 ? `${s.slice(0, 39)}…` : s);
  const table = el(
    "table",
    { "aria-label": "Cosine similarity of each pair of sentences" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "sentence"), sentences.map((_, j) => el("th", { scope: "col" }, String(j + 1))))),
    el(
      "tbody",
      {},
      matrix.map((row, i) =>
        el(
          "tr",
          {},
          el("th", { scope: "row" }, `${i + 1}. ${short(sentences[i])}`),
          row.map((value, j) => {
            const closest = best && ((i === best.i && j === best.j) || (i === best.j && j === best.i));
            return el("td", { class: closest ? "num closest" : "num" }, value.toFixed(3));
          }),
        ),
      ),
    ),
  );
  return [
    el("p", { class: "closest-pair" }, `Closest: ${best.i + 1} and ${best.j + 1}, “${sentences[best.i]}” and “${sentences[best.j]}” (${best.value.toFixed(3)})`),
    el("div", { class: "table-wrap" }, table),
  ];
}

// speech-detect: a WAV file or a recording, its waveform with the speech
// shaded.
function speechView(card, module) {
  const inputId = `${module.id}-file`;
  const input = el("input", { id: inputId, type: "file", accept: ".wav,audio/wav,audio/x-wav,audio/wave" });
  const drop = el("div", { class: "drop" }, el("label", { for: inputId }, "Choose or drop a WAV recording"), input);
  const result = resultArea();
  const detect = async (blob, name) => {
    result.replaceChildren(el("p", { class: "muted" }, `Looking for speech in ${name}…`));
    try {
      const bytes = await blob.arrayBuffer();
      const answer = await busy(input, () => send(module, bytes, "audio/wav"));
      const segments = Array.isArray(answer.data.segments) ? answer.data.segments : [];
      const canvas = el("canvas", { class: "wave", role: "img", "aria-label": `Waveform of ${name} with ${segments.length} speech segments shaded` });
      result.replaceChildren(
        canvas,
        el("p", { class: "segment-count" }, `${segments.length} speech ${segments.length === 1 ? "segment" : "segments"}`),
        el("ol", { class: "segments" }, segments.map((s) => el("li", {}, `${(s.start_ms / 1000).toFixed(2)} s – ${(s.end_ms / 1000).toFixed(2)} s`))),
        meta(answer.ms, answer.requestId),
      );
      drawWave(canvas, bytes, segments).catch((error) => {
        canvas.replaceWith(el("p", { class: "muted" }, `The waveform cannot be drawn here: ${error.message}`));
      });
    } catch (error) {
      showError(result, error);
    }
  };
  input.addEventListener("change", () => input.files[0] && detect(input.files[0], input.files[0].name));
  dropTarget(drop, (file) => detect(file, file.name));
  card.append(drop);
  if (navigator.mediaDevices && window.MediaRecorder && window.OfflineAudioContext) {
    card.append(recorder((wav) => detect(wav, "the recording")));
  }
  card.append(result);
}

/** A button that records from the microphone and hands over a 16 kHz
 * mono WAV, the format the guest reads. */
function recorder(onWav) {
  const button = el("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Record from the microphone");
  const status = el("span", { class: "muted", "aria-live": "polite" });
  let recording = null;
  button.addEventListener("click", async () => {
    if (recording) {
      recording.stop();
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const chunks = [];
      recording = new MediaRecorder(stream);
      recording.addEventListener("dataavailable", (event) => chunks.push(event.data));
      recording.addEventListener("stop", async () => {
        stream.getTracks().forEach((track) => track.stop());
        recording = null;
        button.textContent = "Record from the microphone";
        button.setAttribute("aria-pressed", "false");
        status.textContent = "";
        try {
          onWav(await toWav(new Blob(chunks)));
        } catch (error) {
          status.textContent = `The recording cannot be read: ${error.message}`;
        }
      });
      recording.start();
      button.textContent = "Stop recording";
      button.setAttribute("aria-pressed", "true");
      status.textContent = "Recording…";
    } catch (error) {
      status.textContent = `The microphone is not available: ${error.message}`;
    }
  });
  return el("div", { class: "row" }, button, status);
}

/** Decodes audio without an output device: an offline context needs none. */
function decodeAudio(bytes) {
  return new OfflineAudioContext(1, 1, 16000).decodeAudioData(bytes);
}

async function toWav(blob) {
  const decoded = await decodeAudio(await blob.arrayBuffer());
  const rate = 16000;
  const offline = new OfflineAudioContext(1, Math.ceil(decoded.duration * rate), rate);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const samples = (await offline.startRendering()).getChannelData(0);
  const wav = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (at, s) => [...s].forEach((c, i) => wav.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF");
  wav.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  wav.setUint32(16, 16, true);
  wav.setUint16(20, 1, true);
  wav.setUint16(22, 1, true);
  wav.setUint32(24, rate, true);
  wav.setUint32(28, rate * 2, true);
  wav.setUint16(32, 2, true);
  wav.setUint16(34, 16, true);
  text(36, "data");
  wav.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => wav.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new Blob([wav], { type: "audio/wav" });
}

async function drawWave(canvas, bytes, segments) {
  // Decoding takes the buffer over: it gets a copy, the request had its own.
  const audio = await decodeAudio(bytes.slice(0));
  const samples = audio.getChannelData(0);
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const style = getComputedStyle(document.documentElement);
  const totalMs = audio.duration * 1000;
  context.fillStyle = style.getPropertyValue("--speech").trim();
  for (const s of segments) {
    const x0 = (s.start_ms / totalMs) * width;
    const x1 = (s.end_ms / totalMs) * width;
    context.fillRect(x0, 0, Math.max(1, x1 - x0), height);
  }
  context.strokeStyle = style.getPropertyValue("--text").trim();
  context.beginPath();
  const step = samples.length / width;
  for (let x = 0; x < width; x++) {
    let low = 0;
    let high = 0;
    for (let i = Math.floor(x * step); i < Math.floor((x + 1) * step); i++) {
      low = Math.min(low, samples[i]);
      high = Math.max(high, samples[i]);
    }
    context.moveTo(x + 0.5, ((1 - high) / 2) * height);
    context.lineTo(x + 0.5, ((1 - low) / 2) * height);
  }
  context.stroke();
}

// Any other module: a body as text or a file, its content type, and the
// answer shown as JSON, text or an image.
function genericView(card, module) {
  const id = (name) => `${module.id}-${name}`;
  const text = el("textarea", { id: id("text"), rows: 3 });
  const file = el("input", { id: id("file"), type: "file" });
  const type = el("input", { id: id("type"), type: "text", value: "text/plain; charset=utf-8", spellcheck: "false" });
  const suffix = el("input", { id: id("path"), type: "text", placeholder: "/", spellcheck: "false" });
  const method = el("select", { id: id("method") }, el("option", {}, "POST"), el("option", {}, "GET"));
  const button = el("button", { type: "submit" }, "Send");
  const result = resultArea();
  file.addEventListener("change", () => {
    if (file.files[0]) type.value = file.files[0].type || "application/octet-stream";
  });
  const form = el(
    "form",
    {},
    el("label", { for: id("text") }, "Body as text"),
    text,
    el("label", { for: id("file") }, "Or a file as the body"),
    file,
    el("label", { for: id("type") }, "Content type"),
    type,
    el("label", { for: id("path") }, `Path after ${module.route} (optional)`),
    suffix,
    el("label", { for: id("method") }, "Method"),
    method,
    el("div", { class: "row" }, button),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const path = suffix.value.trim();
    if (path && !path.startsWith("/")) {
      showError(result, "The path after the route starts with /.");
      return;
    }
    const get = method.value === "GET";
    const body = get ? undefined : file.files[0] || text.value;
    result.replaceChildren(el("p", { class: "muted" }, "Sending…"));
    try {
      const answer = await busy(button, () => send(module, body, get ? undefined : type.value, path, method.value));
      result.replaceChildren(shownBody(answer), meta(answer.ms, answer.requestId, answer.status));
    } catch (error) {
      showError(result, error);
    }
  });
  card.append(form, result);
}

function shownBody(answer) {
  if (answer.data instanceof Blob) {
    const url = URL.createObjectURL(answer.data);
    if (answer.type.startsWith("image/")) return el("img", { class: "preview", src: url, alt: "The image the module answered" });
    return el("p", {}, `${answer.data.size} bytes of ${answer.type}: `, el("a", { href: url, download: "answer" }, "save them"));
  }
  const shown = typeof answer.data === "string" ? answer.data : JSON.stringify(answer.data, null, 2);
  return el("pre", { class: "body" }, shown);
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  tabStore.set("key", document.getElementById("key").value.trim());
  document.getElementById("key").value = "";
  load();
});
document.getElementById("forget-key").addEventListener("click", () => {
  tabStore.set("key", "");
  load();
});
document.getElementById("change-key").addEventListener("click", () => {
  document.getElementById("key-form").hidden = false;
  document.getElementById("key").focus();
});

load().catch((error) => showError(document.getElementById("access-error"), error instanceof NodeError ? error : String(error)));
