// The drop box: send the photo to POST classify, draw a box per face, highlight the cards of the actors named.
//
// Reporting a wrong answer (only when <meta name="bbt-feedback" content="on">; nothing is sent or kept otherwise).
// Stable hooks, for people and for tests that click through:
//   button.wrong[data-face="N"][data-box="x,y,w,h"]  "wrong?" in face N's table row (1-based; the box as /classify
//                                                    answered it); it opens #feedback. Absent when feedback is off.
//   #feedback-choices button[data-label=L]           the right answer: howard, leonard, raj, sheldon or unknown
//                                                    ("not one of the four"); the model's own answer is disabled
//   #feedback-consent-text                           says what will be kept and where, before anything is sent
//   #feedback-keep, #feedback-cancel                 "Keep it" sends POST feedback; "Cancel" (or Escape) sends nothing
//   #feedback-status[data-state]                     sending | stored | error | cancelled; "Stored ..." once kept
"use strict";

const UNKNOWN = "unknown";
// One spelling of every answer, everywhere on the page.
function displayName(label) {
  return label === UNKNOWN ? "not one of the four" : label.charAt(0).toUpperCase() + label.slice(1);
}

const maxBytes = Number(document.querySelector('meta[name="bbt-max-upload-bytes"]').content) || 10 * 1024 * 1024;
const dropzone = document.getElementById("dropzone");
const input = document.getElementById("file");
const message = document.getElementById("message");
const result = document.getElementById("result");
const stage = document.getElementById("stage");
const photo = document.getElementById("photo");
const feedbackOn = document.querySelector('meta[name="bbt-feedback"]')?.content === "on";
let photoUrl = null;
let shown = null; // the photo on the page and its answer: {file, answer}

document.getElementById("max-size").textContent = `${(maxBytes / 1024 / 1024).toFixed(0)} MB`;

function showMessage(text, kind) {
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = !text;
}

function percent(p) {
  return `${Math.round(p * 100)}%`;
}

function clearResult() {
  result.hidden = true;
  shown = null;
  closeFeedback();
  showFeedbackStatus("", "");
  stage.querySelectorAll(".box").forEach((box) => box.remove());
  document.querySelectorAll(".card").forEach((card) => {
    card.classList.remove("best");
    card.querySelector(".score").textContent = "";
  });
}

function drawBoxes(faces, size) {
  faces.forEach((face, i) => {
    const box = document.createElement("div");
    box.className = `box ${face.label === UNKNOWN ? "unknown" : ""}`;
    // Percentages of the image keep the boxes right at any display size.
    box.style.left = `${(100 * face.box.x) / size.width}%`;
    box.style.top = `${(100 * face.box.y) / size.height}%`;
    box.style.width = `${(100 * face.box.w) / size.width}%`;
    box.style.height = `${(100 * face.box.h) / size.height}%`;
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.dataset.full = face.label === UNKNOWN
      ? `${i + 1}. ${displayName(face.label)}`
      : `${i + 1}. ${displayName(face.label)} ${percent(face.confidence)}`;
    tag.dataset.short = `${i + 1}`;
    tag.title = tag.dataset.full;
    tag.textContent = tag.dataset.full;
    box.appendChild(tag);
    stage.appendChild(box);
  });
  declutterTags();
}

// Small faces close together (a group photo) would hide each other's tags: when any two full tags overlap,
// every tag shows only its number, which leads to its row in the table (the full answer is the tag's title),
// and a number that would still cover another is lifted above it.
function declutterTags() {
  const tags = [...stage.querySelectorAll(".box .tag")];
  tags.forEach((tag) => {
    tag.textContent = tag.dataset.full;
    tag.classList.remove("short");
    tag.style.transform = "";
  });
  const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const rects = tags.map((tag) => tag.getBoundingClientRect());
  if (!rects.some((a, i) => rects.slice(i + 1).some((b) => overlap(a, b)))) return;
  const placed = [];
  tags.forEach((tag) => {
    tag.textContent = tag.dataset.short;
    tag.classList.add("short");
    const rect = tag.getBoundingClientRect();
    let lift = 0;
    const at = () => ({ left: rect.left, right: rect.right, top: rect.top - lift, bottom: rect.bottom - lift });
    while (placed.some((p) => overlap(at(), p))) lift += rect.height + 1;
    tag.style.transform = lift ? `translateY(-${lift}px)` : "";
    placed.push(at());
  });
}

function fillTable(faces) {
  const classes = Object.keys(faces[0].probabilities);
  const head = document.querySelector("#probabilities thead");
  const body = document.querySelector("#probabilities tbody");
  head.innerHTML = "";
  body.innerHTML = "";
  document.getElementById("threshold").textContent = faces[0].threshold.toFixed(2);
  const headRow = head.insertRow();
  ["#", "Answer", "Distance", ...classes.map(displayName), ...(feedbackOn ? [""] : [])].forEach((name) => {
    const th = document.createElement("th");
    th.textContent = name;
    headRow.appendChild(th);
  });
  faces.forEach((face, i) => {
    const row = body.insertRow();
    if (face.label === UNKNOWN) row.classList.add("unknown");
    row.insertCell().textContent = String(i + 1);
    row.insertCell().textContent = displayName(face.label);
    const distance = row.insertCell();
    distance.textContent = face.distance.toFixed(2);
    distance.title = `${face.distance <= face.threshold ? "within" : "over"} the threshold ${face.threshold.toFixed(2)}`;
    classes.forEach((c) => {
      const cell = row.insertCell();
      cell.textContent = percent(face.probabilities[c]);
      if (c === face.closest_actor) cell.classList.add("top");
    });
    if (feedbackOn) row.insertCell().appendChild(wrongButton(face, i + 1));
  });
}

// Only faces given an actor's name light up that actor's card; a face that is not one of the four lights none.
function highlightCards(faces) {
  document.querySelectorAll(".card").forEach((card) => {
    const named = faces.filter((f) => f.label === card.dataset.actor);
    if (!named.length) return;
    card.classList.add("best");
    const best = Math.max(...named.map((f) => f.confidence));
    card.querySelector(".score").textContent =
      named.length > 1 ? `${named.length} faces, up to ${percent(best)}` : percent(best);
  });
}

function showResult(answer) {
  const faces = answer.faces;
  document.getElementById("model").textContent =
    `Model ${answer.model.name} version ${answer.model.version}; image ${answer.image.width}×${answer.image.height} px.`;
  result.hidden = false;
  if (!faces.length) {
    document.getElementById("caption").textContent = "No face found.";
    document.querySelector("#probabilities thead").innerHTML = "";
    document.querySelector("#probabilities tbody").innerHTML = "";
    showMessage("No face found: try a photo where a face looks at the camera with both eyes visible.", "warning");
    return;
  }
  drawBoxes(faces, answer.image);
  fillTable(faces);
  highlightCards(faces);
  const names = faces.map((f, i) => f.label === UNKNOWN
    ? `${i + 1}. ${displayName(f.label)}` : `${i + 1}. ${displayName(f.label)} (${percent(f.confidence)})`).join(", ");
  document.getElementById("caption").textContent = `${faces.length} face${faces.length > 1 ? "s" : ""}: ${names}`;
  const named = faces.filter((f) => f.label !== UNKNOWN);
  const others = faces.length - named.length;
  const strangers = others === 0 ? "" : others === 1 ? "1 face is not one of the four." : `${others} faces are not one of the four.`;
  showMessage(named.length
    ? `${named.map((f) => `${displayName(f.label)} (${percent(f.confidence)})`).join(", ")}. ${strangers}`.trim()
    : `Not one of the four: ${faces.length === 1 ? "this face is" : "these faces are"} not Howard, Leonard, Raj or Sheldon.`,
    "ok");
}

async function classify(file) {
  clearResult();
  if (!file) return;
  if (file.size > maxBytes) {
    showMessage(`${file.name} is too large (${(file.size / 1024 / 1024).toFixed(1)} MB): the limit is ` +
      `${(maxBytes / 1024 / 1024).toFixed(0)} MB. Resize it or export it as JPEG.`, "error");
    return;
  }
  showMessage(`Looking at ${file.name}…`, "busy");
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  photo.src = photoUrl;
  const form = new FormData();
  form.append("image", file, file.name);
  let response;
  try {
    response = await fetch("classify", { method: "POST", body: form });
  } catch (err) {
    showMessage(`The server could not be reached (${err.message}). Try again in a moment.`, "error");
    return;
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch (err) {
    answer = null;
  }
  if (!response.ok) {
    const why = answer && answer.error ? answer.error : `the server answered ${response.status}`;
    showMessage(`${file.name} could not be classified: ${why}`, "error");
    return;
  }
  shown = { file, answer };
  showResult(answer);
}

// ---- "wrong?": report one face's answer, with consent -------------------------------------------------------

const feedback = document.getElementById("feedback");
const feedbackStatus = document.getElementById("feedback-status");
const consent = document.getElementById("feedback-consent");
const keepButton = document.getElementById("feedback-keep");
let reporting = null; // {face, number, button, label} while the form is open

function wrongButton(face, number) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "wrong";
  button.textContent = "wrong?";
  button.dataset.face = String(number);
  button.dataset.box = [face.box.x, face.box.y, face.box.w, face.box.h].join(",");
  button.title = `Face ${number} is not ${displayName(face.label)}? Tell us who it is.`;
  button.setAttribute("aria-label", `Face ${number}: report the answer ${displayName(face.label)} as wrong`);
  button.addEventListener("click", () => openFeedback(face, number, button));
  return button;
}

function answerText(face) {
  return face.label === UNKNOWN ? displayName(face.label) : `${displayName(face.label)}, ${percent(face.confidence)}`;
}

function openFeedback(face, number, button) {
  reporting = { face, number, button, label: null };
  document.getElementById("feedback-title").textContent = `Face ${number}: the model says ${answerText(face)}.`;
  document.querySelectorAll("#feedback-choices button").forEach((choice) => {
    choice.disabled = choice.dataset.label === face.label; // not a correction
    choice.setAttribute("aria-pressed", "false");
  });
  document.getElementById("feedback-choose").hidden = false;
  consent.hidden = true;
  keepButton.disabled = false;
  showFeedbackStatus("", "");
  feedback.hidden = false;
  document.querySelector("#feedback-choices button:not([disabled])").focus();
}

function chooseLabel(label) {
  if (!reporting) return;
  reporting.label = label;
  document.querySelectorAll("#feedback-choices button").forEach((choice) =>
    choice.setAttribute("aria-pressed", String(choice.dataset.label === label)));
  const version = shown ? shown.answer.model.version : "?";
  document.getElementById("feedback-consent-text").textContent =
    `If you choose "Keep it", this server keeps, to retrain the model: the photo, the box of face ` +
    `${reporting.number}, the model's answer (${answerText(reporting.face)}), your answer ` +
    `(${displayName(label)}) and the model version (${version}). Nothing is kept if you cancel.`;
  consent.hidden = false;
  keepButton.focus();
}

function closeFeedback() {
  feedback.hidden = true;
  reporting = null;
}

function cancelFeedback() {
  if (!reporting) return;
  const button = reporting.button;
  closeFeedback();
  showFeedbackStatus("Cancelled: nothing was sent or kept.", "cancelled");
  button.focus();
}

function showFeedbackStatus(text, state) {
  feedbackStatus.textContent = text;
  feedbackStatus.dataset.state = state;
  feedbackStatus.hidden = !text;
}

async function keepFeedback() {
  if (!reporting || !reporting.label || !shown) return;
  const { face, button, label } = reporting;
  const form = new FormData();
  form.append("image", shown.file, shown.file.name);
  ["x", "y", "w", "h"].forEach((key) => form.append(key, String(face.box[key])));
  form.append("label", label);
  form.append("consent", "true");
  keepButton.disabled = true;
  showFeedbackStatus("Sending your report…", "sending");
  let response = null;
  let body = null;
  try {
    response = await fetch("feedback", { method: "POST", body: form });
    body = await response.json();
  } catch (err) {
    body = body || { error: response ? `the server answered ${response.status}` : `no answer (${err.message})` };
  }
  closeFeedback();
  if (response && response.status === 201) {
    showFeedbackStatus(`Stored: thank you. Face ${button.dataset.face} is kept as ${displayName(label)} ` +
      `(report ${body.id}).`, "stored");
    button.disabled = true;
    button.textContent = "reported";
  } else {
    const why = body && body.error ? body.error : `the server answered ${response ? response.status : "nothing"}`;
    showFeedbackStatus(`Your report was not kept: ${why}`, "error");
  }
  button.focus();
}

document.querySelectorAll("#feedback-choices button").forEach((choice) =>
  choice.addEventListener("click", () => chooseLabel(choice.dataset.label)));
keepButton.addEventListener("click", keepFeedback);
document.getElementById("feedback-cancel").addEventListener("click", cancelFeedback);
feedback.addEventListener("keydown", (event) => {
  if (event.key === "Escape") cancelFeedback();
});

photo.addEventListener("load", declutterTags);
window.addEventListener("resize", declutterTags);
photo.addEventListener("error", () => {
  if (!result.hidden) showMessage(`${message.textContent} (Your browser cannot display this format.)`, "ok");
});
input.addEventListener("change", () => {
  const file = input.files[0];
  input.value = ""; // choosing the same file again must trigger another upload
  classify(file);
});
dropzone.addEventListener("click", (event) => {
  if (event.target.tagName !== "LABEL") input.click();
});
dropzone.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    input.click();
  }
});
["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (event) => {
  event.preventDefault();
  dropzone.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, () => dropzone.classList.remove("over")));
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  classify(event.dataTransfer.files[0]);
});
