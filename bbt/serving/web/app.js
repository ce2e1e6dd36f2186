// The drop box: send the photo to POST classify, draw a box per face, highlight the cards of the actors named.
//
// Reporting a wrong answer (only when <meta name="bbt-feedback" content="on">; nothing is sent or kept otherwise).
// Stable hooks, for people and for tests that click through:
//   button.wrong[data-face="N"][data-box="x,y,w,h"]  "wrong?" in face N's table row (1-based; the box as /classify
//                                                    answered it); it opens #feedback. Absent when feedback is off.
//   #feedback-choices button[data-label=L]           the right answer: a person of the cast or unknown
//                                                    ("not one of the four"); the model's own answer is disabled
// The cast (a card and a feedback choice per person, their initials and colours) is the served model's classes,
// which the server puts in <meta name="bbt-cast">.
//   #feedback-consent-text                           says what will be kept and where, before anything is sent
//   #feedback-keep, #feedback-cancel                 "Keep it" sends POST feedback; "Cancel" (or Escape) sends nothing
//   #feedback-status[data-state]                     sending | stored | error | cancelled; "Stored ..." once kept
"use strict";

const UNKNOWN = "unknown";
const CANT_TELL = "cant_tell";
const CAST = JSON.parse(document.querySelector('meta[name="bbt-cast"]').content);
const NUMBERS = ["none", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
  "twelve"];
// "the four" while the cast is four; "the 13" past twelve.
const THE_CAST = `the ${NUMBERS[CAST.length] ?? CAST.length}`;
// A colour per person by place in the cast (the first four keep the colours they always had), then by hue.
const COLOURS = ["#7c3aed", "#2563eb", "#0d9488", "#dc2626", "#b45309", "#db2777", "#4d7c0f", "#0369a1"];

function title(name) {
  return name.charAt(0).toUpperCase() + name.slice(1);
}

function listed(names) {
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names[names.length - 1]}` : names.join("");
}
// Every answer that names no actor, as the page draws it: its words, its class (the box's style, the table row's)
// and its sentence in the summary. Any other label is an actor's name; a new kind of answer is one more entry.
const NOT_NAMED = {
  [UNKNOWN]: {
    words: `not one of ${THE_CAST}`,
    className: "unknown",
    summary: (n, all) => (all
      ? `Not one of ${THE_CAST}: ${n === 1 ? "this face is" : "these faces are"} not ${listed(CAST.map(title))}.`
      : `${n} face${n > 1 ? "s are" : " is"} not one of ${THE_CAST}.`),
  },
  [CANT_TELL]: {
    words: "can't tell",
    className: "cant-tell",
    summary: (n, all) => (all
      ? `Can't tell: the model cannot judge ${n === 1 ? "this face" : "these faces"} (too small, too blurred, or `
        + "where the four and strangers look alike; the table says which)."
      : `${n} face${n > 1 ? "s" : ""} the model cannot judge (can't tell).`),
  },
};

function isNamed(face) {
  return !(face.label in NOT_NAMED);
}

// One spelling of every answer, everywhere on the page.
function displayName(label) {
  return NOT_NAMED[label]?.words ?? title(label);
}

// A card per person (initial, name, colour) and a feedback choice per person, before "not one of them".
function showCast() {
  const cards = document.querySelector(".cards");
  cards.style.setProperty("--cast", String(Math.min(CAST.length, 6)));
  cards.replaceChildren(...CAST.map((name, i) => {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.actor = name;
    const avatar = Object.assign(document.createElement("span"), { className: "avatar", textContent: title(name[0]) });
    avatar.style.background = COLOURS[i] ?? `hsl(${(i * 137) % 360} 55% 42%)`;
    card.append(avatar, Object.assign(document.createElement("h2"), { textContent: title(name) }),
      Object.assign(document.createElement("p"), { className: "score" }));
    return card;
  }));
  const unknown = document.querySelector('#feedback-choices button[data-label="unknown"]');
  unknown.textContent = displayName(UNKNOWN);
  unknown.before(...CAST.map((name) => {
    const choice = Object.assign(document.createElement("button"), { type: "button", textContent: title(name) });
    choice.dataset.label = name;
    return choice;
  }));
}
showCast();

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
  delete stage.dataset.tags;
  document.querySelectorAll(".card").forEach((card) => {
    card.classList.remove("best");
    card.querySelector(".score").textContent = "";
  });
}

function drawBoxes(faces, size) {
  faces.forEach((face, i) => {
    const box = document.createElement("div");
    box.className = `box ${NOT_NAMED[face.label]?.className ?? ""}`;
    // Percentages of the image keep the boxes right at any display size.
    box.style.left = `${(100 * face.box.x) / size.width}%`;
    box.style.top = `${(100 * face.box.y) / size.height}%`;
    box.style.width = `${(100 * face.box.w) / size.width}%`;
    box.style.height = `${(100 * face.box.h) / size.height}%`;
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.dataset.full = isNamed(face)
      ? `${i + 1}. ${displayName(face.label)} ${percent(face.confidence)}`
      : `${i + 1}. ${displayName(face.label)}`;
    tag.dataset.short = `${i + 1}`;
    tag.title = tag.dataset.full;
    tag.textContent = tag.dataset.full;
    box.appendChild(tag);
    stage.appendChild(box);
  });
  layoutTags();
}

// Every tag inside the photo and none over another, even in a crowded group photo. Each tag takes the first free
// place around its face: above it, below it, beside it, inside it, moved into the photo where it would stick out;
// a place over no face beats one over a face. When some full answer finds no free place, every tag shows only its
// number, which leads to its row in the table (the full answer is the tag's title), and numbers may also stack
// further above or below their face. Laid out again whenever the photo loads or changes size.
function layoutTags() {
  const tags = [...stage.querySelectorAll(".box .tag")];
  delete stage.dataset.tags;
  if (!tags.length || !photo.complete || !photo.naturalWidth) return;
  const area = photo.getBoundingClientRect();
  const faces = tags.map((tag) => tag.parentElement.getBoundingClientRect());
  for (const kind of ["full", "short"]) {
    tags.forEach((tag) => {
      tag.textContent = tag.dataset[kind];
      tag.classList.toggle("short", kind === "short");
    });
    const sizes = tags.map((tag) => tag.getBoundingClientRect());
    const placed = [];
    const allFree = sizes.every((size, i) => {
      const place = freePlace(faces[i], size, area, faces, placed, kind === "short" ? 8 : 0);
      placed.push(place.rect);
      return place.free;
    });
    if (allFree || kind === "short") {
      tags.forEach((tag, i) => {
        const box = tag.parentElement;
        tag.style.left = `${placed[i].left - faces[i].left - box.clientLeft}px`;
        tag.style.top = `${placed[i].top - faces[i].top - box.clientTop}px`;
        tag.style.bottom = "auto";
      });
      stage.dataset.tags = kind;
      return;
    }
  }
}

function overlaps(a, b) {
  return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
}

// The first place for a tag of `size` by `face` that is inside `area` and clear of the `placed` tags (over no face
// if one is); else the first place, marked not free.
function freePlace(face, size, area, faces, placed, stacks) {
  const { width: w, height: h } = size;
  const spots = [
    [face.left, face.top - h], [face.right - w, face.top - h], [face.left, face.bottom], [face.right - w, face.bottom],
    [face.left - w, face.top], [face.right, face.top], [face.left, face.top],
  ];
  for (let k = 1; k <= stacks; k += 1) {
    spots.push([face.left, face.top - h - k * (h + 1)], [face.left, face.bottom + k * (h + 1)]);
  }
  const rects = spots.map(([x, y]) => {
    const left = Math.max(area.left, Math.min(x, area.right - w));
    const top = Math.max(area.top, Math.min(y, area.bottom - h));
    return { left, top, right: left + w, bottom: top + h };
  });
  const inside = (r) => r.right <= area.right + 0.5 && r.bottom <= area.bottom + 0.5;
  const clear = rects.filter((r) => inside(r) && !placed.some((p) => overlaps(r, p)));
  const rect = clear.find((r) => !faces.some((f) => overlaps(r, f))) ?? clear[0];
  return rect ? { rect, free: true } : { rect: rects[0], free: false };
}

function fillTable(faces) {
  const classes = Object.keys(faces[0].probabilities);
  const head = document.querySelector("#probabilities thead");
  const body = document.querySelector("#probabilities tbody");
  head.innerHTML = "";
  body.innerHTML = "";
  const digits = distanceDigits(faces);
  document.getElementById("threshold").textContent = faces[0].threshold.toFixed(digits);
  const headRow = head.insertRow();
  // A header with a short form (an actor's initial, as on the cards) shows it on a phone; the full one stays for
  // screen readers.
  const header = (text, short = "") => {
    const th = headRow.appendChild(document.createElement("th"));
    if (!short) th.textContent = text;
    else {
      th.append(Object.assign(document.createElement("span"), { className: "short", textContent: short }),
        Object.assign(document.createElement("span"), { className: "full", textContent: text }));
      th.firstChild.setAttribute("aria-hidden", "true");
    }
  };
  header("#");
  header("Answer");
  header("Distance", "Dist.");
  classes.forEach((c) => header(displayName(c), displayName(c)[0]));
  if (feedbackOn) header("");
  faces.forEach((face, i) => {
    const row = body.insertRow();
    if (!isNamed(face)) row.classList.add(NOT_NAMED[face.label].className);
    row.insertCell().textContent = String(i + 1);
    const answerCell = row.insertCell();
    inTwoLines(answerCell, displayName(face.label));
    if (face.reason) answerCell.title = face.reason;
    const distance = row.insertCell();
    // Every face's distance is measured and shown; a face the model cannot judge (too small, blurred, or in the
    // band) is answered by its reason, not by the threshold: the title says which.
    distance.textContent = face.distance.toFixed(digits);
    distance.title = face.label === CANT_TELL ? `can't tell: ${face.reason}`
      : `${face.distance <= face.threshold ? "within" : "over"} the threshold ${face.threshold.toFixed(digits)}`;
    classes.forEach((c) => {
      const cell = row.insertCell();
      cell.textContent = percent(face.probabilities[c]);
      // Only a named face's percentage reads as its answer; an unnamed face's percentages are no answer.
      if (isNamed(face) && c === face.label) cell.classList.add("top");
    });
    if (feedbackOn) row.insertCell().appendChild(wrongButton(face, i + 1));
  });
}

// The fewest decimals (at least 3) at which every distance shown compares with the threshold shown as the model
// compared them: 0.539 and 0.538 must not both read 0.54 beside "named when at most 0.54".
function distanceDigits(faces) {
  const shownAs = (value, digits) => Number(value.toFixed(digits));
  let digits = 3;
  while (digits < 6 && !faces.every((f) =>
    (shownAs(f.distance, digits) <= shownAs(f.threshold, digits)) === (f.distance <= f.threshold))) digits += 1;
  return digits;
}

// In a narrow column an answer breaks at most once: "not one of / the four", never a word a line.
function inTwoLines(cell, text) {
  const words = text.split(" ");
  const half = Math.ceil(words.length / 2);
  [words.slice(0, half), words.slice(half)].filter((part) => part.length).forEach((part, i) => {
    if (i) cell.append(" ");
    const span = document.createElement("span");
    span.className = "nowrap";
    span.textContent = part.join(" ");
    cell.append(span);
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
  const names = faces.map((f, i) => isNamed(f)
    ? `${i + 1}. ${displayName(f.label)} (${percent(f.confidence)})` : `${i + 1}. ${displayName(f.label)}`).join(", ");
  document.getElementById("caption").textContent = `${faces.length} face${faces.length > 1 ? "s" : ""}: ${names}`;
  const named = faces.filter(isNamed);
  const others = Object.entries(NOT_NAMED).map(([label, kind]) => {
    const n = faces.filter((f) => f.label === label).length;
    return n ? kind.summary(n, n === faces.length) : "";
  });
  const namedList = named.map((f) => `${displayName(f.label)} (${percent(f.confidence)})`).join(", ");
  showMessage([named.length ? `${namedList}.` : "", ...others].filter(Boolean).join(" "), "ok");
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
  return isNamed(face) ? `${displayName(face.label)}, ${percent(face.confidence)}` : displayName(face.label);
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

// The photo's size changes with the window and with the table beside it (a "reported" button widens the table).
photo.addEventListener("load", layoutTags);
new ResizeObserver(layoutTags).observe(photo);
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
