// bbt review: one queued face at a time; a verdict per key (a key per person of the cast, shown on its button,
// U: not one of the cast, X: unusable, N: the note, Z: undo, arrows: move), or a new person's name typed in.
// Each verdict is saved by the server when given.
// G switches to the groups: the detections nobody reviewed, clustered; one verdict for a group's selected faces.
"use strict";

// Key -> verdict: the people's keys come from the server (/api/queue's `people`: the cast, then new names).
let KEYS = { u: "stranger", x: "unusable" };
const $ = (id) => document.getElementById(id);
// This run's token: the server takes a write only with it (bbt/review/guard.py).
const TOKEN = document.querySelector('meta[name="bbt-token"]').content;
let queue = null;   // the server's /api/queue answer
let current = null; // the item shown (/api/items/{n})
let position = 0;

function say(text, ok = false) {
  const message = $("message");
  message.textContent = text;
  message.className = ok ? "message ok" : "message";
  message.hidden = !text;
}

async function call(url, options = {}) {
  if (options.method && options.method !== "GET") {
    options = { ...options, headers: { ...options.headers, "X-BBT-Token": TOKEN } };
  }
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `${url}: HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function firstPending(from) {
  const items = queue.items;
  for (let i = 0; i < items.length; i++) {
    const n = (from + i) % items.length;
    if (!items[n].verdict) return n;
  }
  return -1;
}

function showProgress() {
  $("progress").textContent = `${queue.done} of ${queue.total} judged`;
  $("undo").disabled = !queue.can_undo;
  showPeople();
  $("enrol").textContent = queue.enrol;
  $("enrol").hidden = !queue.enrol;
}

function title(name) {
  return name.charAt(0).toUpperCase() + name.slice(1);
}

// A button per person, with its key; the keys the keyboard handlers read.
function showPeople() {
  KEYS = { u: "stranger", x: "unusable" };
  const buttons = queue.people.map((person) => {
    if (person.key) KEYS[person.key] = person.name;
    const button = document.createElement("button");
    button.dataset.verdict = person.name;
    if (person.key) {
      const key = document.createElement("kbd");
      key.textContent = person.key.toUpperCase();
      button.append(key, " ");
    }
    button.append(title(person.name) + (person.in_cast ? "" : " (new)"));
    button.addEventListener("click", () => judge(person.name));
    return button;
  });
  $("people").replaceChildren(...buttons);
  $("group-keys").textContent = queue.people.filter((p) => p.key).map((p) => `${p.key.toUpperCase()} ${p.name}`)
    .join(", ");
  if (current) markGiven();
}

function markGiven() {
  document.querySelectorAll("[data-verdict]").forEach((button) => {
    button.setAttribute("aria-pressed", String(button.dataset.verdict === current.verdict));
  });
}

function placeBox() {
  if (!current) return;
  const photo = $("photo");
  const scale = photo.clientWidth / current.width;
  const box = $("box").style;
  box.left = `${current.box.x * scale}px`;
  box.top = `${current.box.y * scale}px`;
  box.width = `${current.box.w * scale}px`;
  box.height = `${current.box.h * scale}px`;
}

function named(label) {
  if (label === "cant_tell") return "can't tell";
  return label === current?.unknown || label === "unknown" || label === "stranger" ? "not one of the cast" : label;
}

// The latest show(): arrows pressed fast ask for several items at once, and an older answer arriving late must
// not replace the item the reviewer moved to.
let showing = 0;

async function show(n) {
  position = n;
  const ticket = ++showing;
  const item = await call(`api/items/${n}`);
  if (ticket !== showing) return;
  current = item;
  $("crop").src = `api/items/${n}/crop.jpg`;
  $("photo").src = `api/items/${n}/photo.jpg`;
  $("image-name").textContent = `${current.image} (item ${n + 1} of ${queue.total}, ${current.source})`;
  $("why").textContent = current.why;
  $("current").textContent = current.current + (current.suggestion ? `; suggested: ${named(current.suggestion)}` : "");
  const answer = current.answer;
  // A can't-tell answer's reason, unless "why it is here" already says it.
  const reason = answer && answer.reason && !current.why.includes(answer.reason) ? `: ${answer.reason}` : "";
  $("answer").textContent = answer
    ? `${named(answer.label)}${reason} (closest: ${answer.closest_actor}, ${(answer.confidence * 100).toFixed(0)}%)`
    : `no answer: ${current.answer_problem}`;
  $("given-line").hidden = !current.verdict;
  $("given").textContent = current.verdict || "";
  markGiven();
  $("note").value = "";
}

async function refresh(showFrom) {
  queue = await call("api/queue");
  showProgress();
  $("main").hidden = queue.total === 0;
  $("empty").hidden = queue.total !== 0;
  if (queue.total === 0) return;
  const next = firstPending(showFrom);
  if (next < 0) {
    say(`All ${queue.total} faces judged. Now: dvc add data && dvc repro`, true);
    await show(Math.min(showFrom, queue.total - 1));
  } else {
    await show(next);
  }
}

async function judge(verdict) {
  if (!current || current.verdict) return;
  try {
    queue = await call("api/verdict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key: current.key, verdict, note: $("note").value, image: current.image,
                             box: current.box }),
    });
    say(`saved: ${current.image} is ${named(verdict)}`, true);
    await refresh(position);
  } catch (err) {
    say(err.message);
  }
}

async function undo() {
  try {
    const answer = await call("api/undo", { method: "POST" });
    const n = answer.items.findIndex((item) => item.key === answer.undone);
    say(`undone: item ${n + 1}`, true);
    await refresh(n);
  } catch (err) {
    say(err.message);
  }
}

function move(step) {
  if (!queue || queue.total === 0) return;
  show((position + step + queue.total) % queue.total).catch((err) => say(err.message));
}

let groups = null;       // the server's /api/groups answer
let groupAt = 0;         // the group shown
let mode = "faces";      // or "groups"
const left = new Set();  // keys of the shown group's faces the reviewer left out

function pendingGroups() {
  return groups.groups.filter((group) => group.pending.length > 0);
}

async function loadGroups() {
  groups = await call("api/groups");
  queue = await call("api/queue");
  showProgress();
}

function showGroup() {
  const open = pendingGroups();
  const grid = $("grid");
  grid.replaceChildren();
  $("group-undo").disabled = !queue.can_undo;
  if (groups.problem && groups.groups.length === 0) {
    $("group-title").textContent = `No groups: ${groups.problem}`;
    return;
  }
  if (open.length === 0) { $("group-title").textContent = "Every group is judged."; $("group-proposal").textContent = ""; return; }
  groupAt = Math.min(groupAt, open.length - 1);
  const group = open[groupAt];
  $("group-title").textContent = `Group ${groupAt + 1} of ${open.length} (${group.id}, ${group.kind}): ` +
    `${group.pending.length} faces`;
  const said = group.says === group.verdict ? group.says : `${group.says} (verdict: ${named(group.verdict)})`;
  $("group-proposal").textContent = `proposal: ${said}, median distance ${group.distance.toFixed(2)} ` +
    `(threshold ${group.threshold.toFixed(2)}); ${(group.agreement * 100).toFixed(0)}% of the faces alone agree; ` +
    `${group.outliers.length} marked odd (dashed)`;
  group.keys.forEach((key, i) => {
    if (!group.pending.includes(key)) return;
    const button = document.createElement("button");
    button.dataset.key = key;
    button.setAttribute("aria-pressed", String(!left.has(key)));
    if (group.outliers.includes(key)) button.classList.add("odd");
    const img = document.createElement("img");
    img.src = `api/items/${group.items[i]}/crop.jpg`;
    img.alt = `face ${i + 1} of the group`;
    button.append(img);
    button.addEventListener("click", () => {
      if (left.has(key)) left.delete(key); else left.add(key);
      button.setAttribute("aria-pressed", String(!left.has(key)));
    });
    grid.append(button);
  });
}

async function judgeGroup(verdict) {
  const open = pendingGroups();
  if (open.length === 0) return;
  const group = open[groupAt];
  const keys = group.pending.filter((key) => !left.has(key));
  try {
    await call("api/group-verdict", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ group: group.id, keys, verdict: verdict || group.verdict }),
    });
    say(`saved: ${keys.length} faces of ${group.id} are ${verdict || group.verdict}`, true);
    left.clear();
    await loadGroups();
    showGroup();
  } catch (err) {
    say(err.message);
  }
}

async function undoInGroups() {
  try {
    const answer = await call("api/undo", { method: "POST" });
    say(`undone: ${answer.undone_group || answer.undone} (${answer.undone_faces} faces)`, true);
    left.clear();
    await loadGroups();
    showGroup();
  } catch (err) {
    say(err.message);
  }
}

function moveGroup(step) {
  const open = pendingGroups();
  if (open.length === 0) return;
  groupAt = (groupAt + step + open.length) % open.length;
  left.clear();
  showGroup();
}

async function switchMode() {
  mode = mode === "faces" ? "groups" : "faces";
  $("mode-name").textContent = mode === "faces" ? "groups" : "one face at a time";
  $("groups-view").hidden = mode !== "groups";
  if (mode === "groups") {
    $("main").hidden = true;
    $("empty").hidden = true;
    await loadGroups();
    showGroup();
  } else {
    await refresh(0);
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target === $("group-new-name")) return;
  if (mode === "groups") {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (event.key === "Enter") { event.preventDefault(); judgeGroup(null); }
    else if (KEYS[key]) judgeGroup(KEYS[key]);
    else if (key === "z") undoInGroups();
    else if (key === "g") switchMode().catch((err) => say(err.message));
    else if (event.key === "ArrowRight") moveGroup(1);
    else if (event.key === "ArrowLeft") moveGroup(-1);
    return;
  }
  if (event.target === $("note")) {
    if (event.key === "Escape" || event.key === "Enter") $("note").blur();
    return;
  }
  if (event.target === $("new-name")) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (KEYS[key]) judge(KEYS[key]);
  else if (key === "z") undo();
  else if (key === "n") { event.preventDefault(); $("note").focus(); }
  else if (key === "g") switchMode().catch((err) => say(err.message));
  else if (event.key === "ArrowRight") move(1);
  else if (event.key === "ArrowLeft") move(-1);
});
// A new name: typed in, sent as the verdict (the server checks it is a name); the page then says to add it to the
// cast in params.yaml.
$("naming").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("new-name").value.trim().toLowerCase();
  if (name) judge(name).then(() => { $("new-name").value = ""; $("new-name").blur(); });
});
$("group-naming").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("group-new-name").value.trim().toLowerCase();
  if (name) judgeGroup(name).then(() => { $("group-new-name").value = ""; $("group-new-name").blur(); });
});
$("mode").addEventListener("click", () => switchMode().catch((err) => say(err.message)));
$("group-accept").addEventListener("click", () => judgeGroup(null));
$("group-next").addEventListener("click", () => moveGroup(1));
$("group-prev").addEventListener("click", () => moveGroup(-1));
$("group-undo").addEventListener("click", undoInGroups);
document.querySelectorAll(".verdicts > [data-verdict]").forEach((button) => {
  button.addEventListener("click", () => judge(button.dataset.verdict));
});
$("undo").addEventListener("click", undo);
$("next").addEventListener("click", () => move(1));
$("prev").addEventListener("click", () => move(-1));
$("photo").addEventListener("load", placeBox);
window.addEventListener("resize", placeBox);
refresh(0).catch((err) => say(err.message));
