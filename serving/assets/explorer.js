// The explorer of one served model (/ui/NAME). It calls the server's REST API, as a program would:
//   GET  /v1/models/NAME             family, signatures, metadata (image shape, classes, defaults)
//   GET  /v1/models/NAME/examples    the server's test images (its --class-examples), for the gallery
//   GET  /v1/models/NAME/projection  their codings on two principal components, for the scatter plot
//   POST /v1/models/NAME:generate    the sample grid (format png)
//   POST /v1/models/NAME:predict     style mixing (mix_styles), reconstructions of uploads and drawings
//   POST /v1/models/NAME:interpolate a strip between two seeds or two images
//   POST /v1/models/NAME:arithmetic  decode(code(A) - code(B) + code(C))
//   POST /v1/models/NAME:detect      anomaly score, verdict and threshold
// The sections shown depend on what the model has; every 4xx message is shown as the server wrote it.
"use strict";

const NAME = decodeURIComponent(location.pathname.replace(/^\/ui\//, "").replace(/\/$/, ""));
const $ = (id) => document.getElementById(id);
let info = null;

function showError(message) {
  const errors = $("errors");
  errors.textContent = message;
  errors.hidden = !message;
}

// Requests in flight, on <body data-pending>: what a person sees as "still working" and a test waits for.
let pending = 0;
function setPending(change) {
  pending += change;
  document.body.dataset.pending = String(pending);
}

// The last request as a curl command (long base64 files shortened), for the "Use via API" box.
function showApiCall(verb, body) {
  const shortened = JSON.stringify(body, (key, value) =>
    typeof value === "string" && value.length > 64 ? `${value.slice(0, 40)}...(${value.length} characters)` : value);
  const quoted = shortened.replace(/'/g, "'\\''");  // inside the shell's single quotes
  $("api-call").textContent = `curl -s ${location.origin}/v1/models/${encodeURIComponent(NAME)}:${verb} \\\n  -d '${quoted}'`;
}

// Every request of the page: counted in flight, and a refusal's message (the server's "error") thrown.
async function request(url, options = {}) {
  setPending(+1);
  try {
    const reply = await fetch(url, options);
    let content;
    try {
      content = await reply.json();
    } catch {  // a proxy's HTML error page, say: say what came back rather than a JSON parser's complaint
      throw new Error(`HTTP ${reply.status} from ${url}: the reply is not JSON`);
    }
    if (!reply.ok) throw new Error(content.error || `HTTP ${reply.status}`);
    return {reply, content};
  } finally {
    setPending(-1);
  }
}

const fetchJson = async (url) => (await request(url)).content;

async function call(verb, body) {
  showApiCall(verb, body);
  const {reply, content} = await request(`/v1/models/${encodeURIComponent(NAME)}:${verb}`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  showError("");
  if (reply.headers.get("X-Model-Version")) $("version").textContent = reply.headers.get("X-Model-Version");
  return content;
}

// Runs a button's work, showing what went wrong instead of failing silently.
function action(id, work) {
  $(id).addEventListener("click", async () => {
    $(id).disabled = true;
    try { await work(); } catch (error) { showError(error.message); } finally { $(id).disabled = false; }
  });
}

const number = (id) => Number($(id).value);
const pngSource = (content) => "data:image/png;base64," + content.png_base64;

// Images (N, H, W, C) as nested arrays, values in [0, 1], side by side on a canvas.
function drawStrip(canvas, images, scale) {
  const [height, width, channels] = [images[0].length, images[0][0].length, images[0][0][0].length];
  const gap = 2;
  canvas.width = images.length * (width + gap) + gap;
  canvas.height = height + 2 * gap;
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  images.forEach((image, index) => {
    const pixels = context.createImageData(width, height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const value = image[y][x];
        const rgb = channels === 1 ? [value[0], value[0], value[0]] : value;
        for (let c = 0; c < 3; c++) pixels.data[4 * (y * width + x) + c] = Math.round(255 * Math.min(1, Math.max(0, rgb[c])));
        pixels.data[4 * (y * width + x) + 3] = 255;
      }
    }
    context.putImageData(pixels, gap + index * (width + gap), gap);
  });
  canvas.style.width = `${canvas.width * scale}px`;
  canvas.style.height = `${canvas.height * scale}px`;
}

const toUnit = (images) => info.metadata.pixel_range === "symmetric"
  ? images.map((image) => image.map((row) => row.map((pixel) => pixel.map((v) => (v + 1) / 2)))) : images;

function readFile(input) {
  return new Promise((resolve, reject) => {
    const file = input.files[0];
    if (!file) { reject(new Error(`choose a file for "${input.id}"`)); return; }
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);  // a data URL: the server decodes it in memory
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function zoom(img, factor) {
  img.onload = () => { img.style.width = `${img.naturalWidth * factor}px`; };
}

// ------------------------------------------------------------------------------------------- samples
async function drawSamples() {
  const body = {n: number("count"), seed: number("seed"), format: "png"};
  if (!$("steps-control").hidden) body.steps = number("steps");
  if (!$("label-control").hidden) {
    const value = $("label").value;  // "all": every class in turn over the grid
    body.labels = value === "all" ? [...Array($("label").options.length - 1).keys()] : [Number(value)];
  }
  if (!$("guidance-control").hidden) body.guidance = number("guidance");
  if (!$("truncation-control").hidden) body.truncation = number("truncation");
  const content = await call("generate", body);
  const grid = $("sample-grid");
  grid.dataset.n = content.n;
  grid.dataset.seed = body.seed;
  zoom(grid, 3);
  grid.src = pngSource(content);
}

async function mixStyles() {
  const layers = info.metadata.style_layers;
  const rows = [];
  for (let crossover = 0; crossover <= layers; crossover++) {
    const content = await call("predict", {signature_name: "mix_styles",
      inputs: {seed_a: number("mix-a"), seed_b: number("mix-b"), crossover}});
    rows.push(content.outputs[0]);
  }
  drawStrip($("mixing-strip"), rows, 3);
}

// ---------------------------------------------------------------------------------------- operands
// An image end of the interpolation or an operand of the arithmetic: a class (its mean coding), a test image
// (an index into the server's --class-examples) or an uploaded file. The field last used is the one sent
// (data-kind, highlighted); the gallery fills the active operand's test image and moves on to the next one.
const NEXT_OPERAND = {from: "to", to: "from", a: "b", b: "c", c: "a"};
let activeOperand = "from";

function activate(key) {
  activeOperand = key;
  document.querySelectorAll(".operand").forEach((element) => element.classList.toggle("active", element.id === `${key}-operand`));
  document.querySelectorAll(".target-name").forEach((element) => { element.textContent = key.length === 1 ? key.toUpperCase() : key; });
}

// The test image an operand names, shown beside its field.
async function preview(key) {
  const image = $(`${key}-preview`), text = $(`${key}-example`).value;
  image.hidden = true;
  if (!/^\d+$/.test(text)) return;
  const content = await fetchJson(`/v1/models/${encodeURIComponent(NAME)}/examples?indices=${text}`);
  image.src = pngSource(content.examples[0]);
  image.title = `test image ${text}: class ${content.examples[0].class}`;
  image.hidden = false;
}

// A test image picked in the gallery or the scatter plot goes to the active operand; the next one is active then.
function pick(index) {
  const key = activeOperand;
  if ((key === "from" || key === "to") && !$("ends-mode").hidden && $("ends").value !== "images") {
    $("ends").value = "images";  // a VAE shown between seeds: a picked image means "between images"
    $("ends").dispatchEvent(new Event("change"));
  }
  $(`${key}-example`).value = index;
  $(`${key}-operand`).dataset.kind = "example";
  preview(key).catch((error) => showError(error.message));
  activate(NEXT_OPERAND[key]);
}

function setUpOperands() {
  for (const key of Object.keys(NEXT_OPERAND)) {
    const slot = $(`${key}-operand`);
    const choose = (kind) => { slot.dataset.kind = kind; activate(key); };
    $(`${key}-class`).addEventListener("focus", () => choose("class"));
    $(`${key}-example`).addEventListener("focus", () => choose("example"));
    $(`${key}-example`).addEventListener("change", () => preview(key).catch((error) => showError(error.message)));
    $(`${key}-file`).addEventListener("change", () => choose($(`${key}-file`).files.length ? "file" : "class"));
  }
}

// A class as typed: an id (digits) or a class name.
function classValue(id) {
  const text = $(id).value.trim();
  return /^\d+$/.test(text) ? Number(text) : text;
}

async function operand(key) {
  const kind = $(`${key}-operand`).dataset.kind;
  if (kind === "file") return {png_base64: await readFile($(`${key}-file`))};
  if (kind === "example") {
    if ($(`${key}-example`).value === "") throw new Error(`${key}: pick a test image (click one above) or type its number`);
    return {example: number(`${key}-example`)};
  }
  return {class: classValue(`${key}-class`)};
}

async function showExamples() {
  const content = await fetchJson(`/v1/models/${encodeURIComponent(NAME)}/examples?per_class=2`);
  $("gallery").hidden = !content.examples.length;  // none without the server's --class-examples
  for (const example of content.examples) {
    const figure = document.createElement("figure");
    figure.dataset.index = example.index;
    figure.title = `test image ${example.index}: class ${example.class}`;
    const image = document.createElement("img");
    image.src = pngSource(example);
    image.alt = figure.title;
    const caption = document.createElement("figcaption");
    caption.textContent = `#${example.index} · ${example.class}`;
    figure.append(image, caption);
    figure.addEventListener("click", () => pick(example.index));
    $("examples").append(figure);
  }
}

// ---------------------------------------------------------------------------------------- projector
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
const colour = (label) => PALETTE[label % PALETTE.length];

async function showProjection() {
  const content = await fetchJson(`/v1/models/${encodeURIComponent(NAME)}/projection`);
  if (!content.x.length) return;  // a server without --class-examples
  $("projector").hidden = false;
  $("variance").textContent = `${Math.round(100 * (content.explained_variance[0] + (content.explained_variance[1] || 0)))}%`;
  content.class_names.forEach((name, label) => {
    const entry = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour(label);
    entry.append(swatch, name);
    $("legend").append(entry);
  });
  const canvas = $("projection"), context = canvas.getContext("2d"), margin = 10;
  const span = (values) => [Math.min(...values), Math.max(...values) - Math.min(...values) || 1];
  const [xMin, xSpan] = span(content.x), [yMin, ySpan] = span(content.y);
  const points = content.x.map((x, index) => ({index, label: content.labels[index],
    px: margin + (x - xMin) / xSpan * (canvas.width - 2 * margin),
    py: canvas.height - margin - (content.y[index] - yMin) / ySpan * (canvas.height - 2 * margin)}));
  canvas.dataset.points = points.length;
  const draw = (highlight) => {
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.globalAlpha = 0.6;
    for (const point of points) {
      context.fillStyle = colour(point.label);
      context.fillRect(point.px - 2, point.py - 2, 4, 4);
    }
    context.globalAlpha = 1;
    if (highlight) {
      context.strokeStyle = "#000";
      context.lineWidth = 2;
      context.beginPath();
      context.arc(highlight.px, highlight.py, 6, 0, 2 * Math.PI);
      context.stroke();
    }
  };
  draw(null);
  const nearest = (event) => {
    const r = canvas.getBoundingClientRect();
    const [x, y] = [(event.clientX - r.left) * canvas.width / r.width, (event.clientY - r.top) * canvas.height / r.height];
    let best = null, bestDistance = 64;  // within 8 px
    for (const point of points) {
      const distance = (point.px - x) ** 2 + (point.py - y) ** 2;
      if (distance < bestDistance) { best = point; bestDistance = distance; }
    }
    return best;
  };
  canvas.addEventListener("mousemove", (event) => {
    const point = nearest(event);
    draw(point);
    $("projection-hover").textContent = point ? `test image #${point.index} · class ${content.class_names[point.label]}` : "";
  });
  canvas.addEventListener("click", (event) => {
    const point = nearest(event);
    if (point) pick(point.index);
  });
}

// ------------------------------------------------------------------------------------- interpolation
async function interpolate() {
  const body = {frames: number("frames"), format: "png"};
  if (!$("seed-ends").hidden) {
    body.seeds = [number("from-seed"), number("to-seed")];
    if (!$("steps-control").hidden) body.steps = number("steps");
  } else {
    body.ends = [await operand("from"), await operand("to")];
  }
  const content = await call("interpolate", body);
  const strip = $("interpolation-strip");
  strip.dataset.n = content.n;
  zoom(strip, 3);
  strip.src = pngSource(content);
}

// ---------------------------------------------------------------------------------------- arithmetic
async function computeArithmetic() {
  const content = await call("arithmetic", {a: await operand("a"), b: await operand("b"), c: await operand("c"),
                                            format: "png"});
  const result = $("arithmetic-result");
  zoom(result, 3);
  result.src = pngSource(content);
}

// ------------------------------------------------------------------------------- drawing and anomaly
function setUpPad() {
  const pad = $("pad");
  const context = pad.getContext("2d");
  const clear = () => { context.fillStyle = "#000"; context.fillRect(0, 0, pad.width, pad.height); };
  clear();
  let drawing = false;
  const at = (event) => { const r = pad.getBoundingClientRect(); return [event.clientX - r.left, event.clientY - r.top]; };
  pad.addEventListener("pointerdown", (event) => { drawing = true; context.beginPath(); context.moveTo(...at(event)); });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    context.lineWidth = pad.width / 12; context.lineCap = "round"; context.strokeStyle = "#fff";
    context.lineTo(...at(event)); context.stroke();
  });
  ["pointerup", "pointerleave"].forEach((name) => pad.addEventListener(name, () => { drawing = false; }));
  $("clear").addEventListener("click", clear);
}

// The drawing at the model's size, as a PNG data URL (the browser averages the pixels as it shrinks them).
function padImage() {
  const [height, width] = info.metadata.image_shape;
  const small = document.createElement("canvas");
  small.width = width; small.height = height;
  small.getContext("2d").drawImage($("pad"), 0, 0, width, height);
  return small.toDataURL("image/png");
}

async function check(image) {
  const invert = $("invert").checked;
  $("verdict").textContent = "";  // no stale verdict while this one is computed
  $("score").textContent = "checking...";
  const reconstruction = await call("predict", {signature_name: "reconstruct", png_base64: [image], invert});
  drawStrip($("reconstruction"), toUnit(reconstruction.outputs), 4);
  if (!info.signatures.anomaly_score || !info.metadata.anomaly) {
    $("verdict").textContent = "";
    $("score").textContent = "this model carries no anomaly threshold";
    return;
  }
  const detection = await call("detect", {png_base64: [image], invert});
  const anomalous = detection.anomaly[0];
  $("verdict").textContent = anomalous ? "anomaly" : "normal";
  $("verdict").className = "verdict " + (anomalous ? "anomaly" : "normal");
  $("score").textContent = `score ${detection.scores[0].toPrecision(4)} (threshold ${detection.threshold.toPrecision(4)}, ` +
    `set for ${100 * info.metadata.anomaly.target_false_positive_rate}% false positives)`;
}

// ---------------------------------------------------------------------------------------------- start
async function start() {
  const reply = await fetch(`/v1/models/${encodeURIComponent(NAME)}`);
  info = await reply.json();
  if (!reply.ok) { showError(info.error || `HTTP ${reply.status}`); return; }
  document.title = `${NAME} · latentforge explorer`;
  $("title").textContent = NAME;
  $("family").textContent = info.family;
  $("version").textContent = info.version;
  const signatures = info.signatures, metadata = info.metadata;
  const generate = signatures[metadata.generate_signature || "generate"] || signatures.sample;
  if (info.generative && generate) {
    $("samples").hidden = false;
    $("count").max = info.limits.max_generated;
    const inputs = generate.inputs;
    if (inputs.steps) { $("steps-control").hidden = false; $("steps").value = (metadata.generate_defaults || {}).steps || metadata.sample_steps; $("steps").max = metadata.timesteps; }
    if (inputs.labels) {
      $("label-control").hidden = false;
      const names = metadata.class_names || [...Array(metadata.num_classes).keys()].map(String);
      $("label").add(new Option("every class in turn", "all"));
      names.forEach((name, id) => $("label").add(new Option(name, String(id))));
    }
    if (inputs.guidance) { $("guidance-control").hidden = false; $("guidance").value = (metadata.generate_defaults || {}).guidance ?? 0; }
    if (inputs.truncation) { $("truncation-control").hidden = false; $("truncation").value = (metadata.generate_defaults || {}).truncation ?? 1; }
    action("draw", drawSamples);
  }
  if (signatures.mix_styles) { $("mixing").hidden = false; action("mix", mixStyles); }
  const latent = signatures.generate_from_codings || signatures.generate_from_noise || (info.family === "vae" && signatures.decode);
  const encodes = signatures.encode && signatures.decode;
  if (latent || encodes) {
    $("interpolation").hidden = false;
    (latent ? $("seed-ends") : $("image-ends")).hidden = false;
    if (latent && encodes) {  // a VAE: between seeds (its prior) or between images (their codings)
      $("ends-mode").hidden = false;
      $("ends").addEventListener("change", () => {
        $("seed-ends").hidden = $("ends").value !== "seeds";
        $("image-ends").hidden = $("ends").value !== "images";
      });
    }
    action("interpolate", interpolate);
  }
  if (encodes) {
    $("arithmetic").hidden = false;
    action("compute", computeArithmetic);
    setUpOperands();
    activate("from");
    // Test images are extras: a server whose --class-examples do not fit this model says so, the rest still works.
    await showExamples().catch((error) => showError(error.message));
    await showProjection().catch((error) => showError(error.message));
  }
  if (signatures.reconstruct) {
    $("anomaly").hidden = false;
    setUpPad();
    action("check", () => check(padImage()));
    $("upload").addEventListener("change", async () => {
      try { await check(await readFile($("upload"))); } catch (error) { showError(error.message); }
    });
  }
  if (info.generative && generate) await drawSamples();  // the page opens on a grid
}

start().catch((error) => showError(error.message));
