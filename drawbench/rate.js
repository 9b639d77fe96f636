// The rater's page. Every answer belongs to the comparison on screen: a comparison's prompt, images and buttons are
// drawn together once its own images are decoded, its buttons are enabled only then, and the vote sent names the
// comparison it answers. Text from the session (prompts, names) is only ever set as text, never as HTML.
"use strict";

const app = document.getElementById("app");
const QUESTIONS = [["quality", "Which set of images is of ", "higher quality", "?"],
                   ["alignment", "Which set of images ", "better represents the text", "?"]];
const CHOICES = ["left", "same", "right"];
const LABELS = {left: "◀  Left set", same: "Indifferent", right: "Right set  ▶"};
const KEYS = {a: ["quality", "left"], s: ["quality", "same"], d: ["quality", "right"],
              j: ["alignment", "left"], k: ["alignment", "same"], l: ["alignment", "right"]};
const KEY_OF = {quality: ["A", "S", "D"], alignment: ["J", "K", "L"]};

let session = null;       // what the sign-in page needs to know (GET /api/session)
let state = null;         // the rater's progress and comparison (from the server)
let screen = null;        // the comparison on screen: {cid, answers, ready, revise, practice, shownAt, view}
let generation = 0;       // bumps whenever the screen changes; a render that was overtaken stops
let busy = false;         // a vote is on its way
let zoom = null;          // {index} while the side-by-side zoom is open
const prefetched = [];    // images fetched ahead (kept referenced until the next comparison)

// ---------------------------------------------------------------------------------------------- helpers
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)};
  const resp = await fetch(path, {credentials: "same-origin", cache: "no-store", ...opts});
  let data = {};
  try { data = await resp.json(); } catch (e) { data = {error: `The server answered ${resp.status}.`}; }
  return {ok: resp.ok, status: resp.status, data};
}

function show(...nodes) {
  generation += 1;
  screen = null;
  zoom = null;
  app.replaceChildren(...nodes);
}

function practiced() { return state && localStorage.getItem(`drawbench-practiced:${state.rater}`) === "1"; }

function minutes(n) { return n === 1 ? "about 1 minute" : `about ${n} minutes`; }

// ---------------------------------------------------------------------------------------------- sign-in
async function start() {
  const r = await api("/api/session");
  if (!r.ok) { show(el("p", {class: "error", text: r.data.error || "The study could not be loaded."})); return; }
  session = r.data.session;
  const params = Object.fromEntries(new URLSearchParams(location.search));
  // a crowd link names its participant: it signs in whoever the cookie says (two people may share a browser)
  const byLink = session.crowd && params[session.crowd.param];
  if (r.data.state && !byLink) { enter(r.data.state); return; }
  if (session.crowd) {
    const s = await api("/api/sign-in", {params});
    if (s.ok) { enter(s.data.state); return; }
    show(el("div", {class: "card"}, el("h1", {text: "Image comparison"}),
            el("p", {class: "error", text: s.data.error})));
    return;
  }
  signInPage();
}

function signInPage(message) {
  const err = el("p", {class: "error", id: "sign-in-error", role: "alert", text: message || ""});
  const name = el("input", {id: "name", name: "name", autocomplete: "name", maxlength: "80"});
  // a one-time code, not a password: browsers do not offer to save it
  const code = session.has_codes ? el("input", {id: "code", name: "access-code", type: "text", maxlength: "64",
    autocomplete: "one-time-code", autocapitalize: "none", spellcheck: "false", inputmode: "text"}) : null;
  const form = el("form", {id: "sign-in", onsubmit: async (e) => {
    e.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    const r = await api("/api/sign-in", {name: name.value, code: code ? code.value : ""});
    button.disabled = false;
    if (r.ok) enter(r.data.state); else err.textContent = r.data.error;
  }},
    el("label", {for: "name", text: "Your name"}), name,
    code && el("label", {for: "code", text: "Access code"}), code,
    el("div", {class: "actions"}, el("button", {type: "submit", class: "primary", text: "Start rating"})), err);
  show(el("div", {class: "card"},
    el("h1", {text: "Image comparison"}),
    el("p", {text: "You will see a text prompt and two sets of images made from it, and answer two questions: " +
             "which set has higher image quality, and which set better represents the text. There are no right " +
             "answers; go with your first impression."}),
    el("p", {text: `${session.total} comparisons, ${minutes(session.minutes)} in all. You can stop and come back ` +
             "later: you continue where you stopped."}),
    session.open ? el("p", {class: "warning", text: "This is an open session: anyone with this link can rate, " +
      "under any name. Your name is only used to let you continue where you stopped."}) : null,
    form));
  name.focus();
}

async function signOut() {
  await api("/api/sign-out", {});
  location.reload();
}

// ---------------------------------------------------------------------------------------------- flow
function enter(s) {
  state = s;
  if (!s.comparison) { donePage(); return; }
  if (s.done === 0 && !practiced()) { instructions(); return; }
  showComparison(s.comparison, {});
}

function instructions() {
  const keys = el("ul", {},
    el("li", {text: "Quality: A = left set, S = indifferent, D = right set."}),
    el("li", {text: "Text: J = left set, K = indifferent, L = right set."}),
    el("li", {text: "Enter submits. Z (or a click on an image) shows the two sets' images side by side, large; " +
                    "← and → move through them, Esc closes."}));
  show(el("div", {class: "card", id: "instructions"},
    el("h1", {text: "How it works"}),
    el("p", {text: `You will compare ${state.total} pairs of image sets, ${minutes(state.minutes_left)} in all. ` +
                   "Each time, read the prompt, look at both sets, and answer:"}),
    el("ol", {}, el("li", {text: "Which set of images is of higher quality?"}),
                 el("li", {text: "Which set of images better represents the text?"})),
    el("p", {text: "Choose Indifferent when neither set is better. Your answers are saved as you go; you can stop " +
                   "and come back, and go back to change an answer."}),
    keys,
    el("div", {class: "actions"}, el("button", {id: "practice", class: "primary", text: "Try one practice comparison",
                                             onclick: practice}))));
}

function noiseSet(urls) {
  // the practice's obviously worse set: noise images of the real images' size, drawn here
  return urls.map(() => {
    const c = document.createElement("canvas");
    c.width = c.height = 64;
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(64, 64);
    for (let i = 0; i < img.data.length; i += 1) img.data[i] = (i % 4 === 3) ? 255 : Math.floor(Math.random() * 256);
    ctx.putImageData(img, 0, 0);
    return c.toDataURL("image/png");
  });
}

function practice() {
  const p = state.practice;
  const view = {id: "practice", prompt: p.prompt, left: p.images, right: noiseSet(p.images), position: 0};
  showComparison(view, {practice: true});
}

function practiceDone() {
  localStorage.setItem(`drawbench-practiced:${state.rater}`, "1");
  show(el("div", {class: "card"},
    el("h1", {text: "Practice done"}),
    el("p", {text: "Here the right set was noise, so it was clearly worse on both questions. In the study the sets " +
                   "are much closer: go with your own judgement. Nothing from the practice was recorded."}),
    el("div", {class: "actions"}, el("button", {id: "begin", class: "primary", text: "Start rating",
                                             onclick: () => showComparison(state.comparison, {})}))));
}

function donePage() {
  const c = state.completion || {};
  show(el("div", {class: "card", id: "done"},
    el("h1", {text: `All ${state.total} comparisons are done. Thank you!`}),
    c.code ? el("p", {text: "Your completion code:"}) : null,
    c.code ? el("p", {class: "code", id: "completion-code", text: c.code}) : null,
    c.url ? el("p", {}, el("a", {href: c.url, id: "completion-link",
                                 text: `Return to ${c.platform} to finish`})) : null,
    el("div", {class: "actions"},
       state.previous ? el("button", {id: "previous", text: "◀ Review my last answer",
                                      onclick: () => review(state.previous)}) : null,
       el("button", {text: "Sign out", onclick: signOut}))));
}

async function review(cid) {
  const r = await api(`/api/review/${encodeURIComponent(cid)}`);
  if (!r.ok) { flash(r.data.error); return; }
  showComparison(r.data, {revise: true});
}

// ---------------------------------------------------------------------------------------------- a comparison
function imageGrid(urls, side, view) {
  const cols = urls.length > 1 ? 2 : 1;
  const rows = Math.ceil(urls.length / cols);
  const grid = el("div", {class: "grid"});
  grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
  grid.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
  const imgs = urls.map((u, k) => el("img", {src: u, alt: `${side} set, image ${k + 1}`, "data-side": side,
                                             "data-index": String(k), onclick: () => openZoom(k, view)}));
  grid.append(...imgs);
  return {node: el("section", {class: "set", "data-side": side},
                   el("h2", {text: side === "left" ? "Left set" : "Right set"}), grid), imgs};
}

async function showComparison(view, opts) {
  show(el("div", {class: "loading", id: "loading", text: "Loading the next comparison…"}));
  const mine = generation;
  const left = imageGrid(view.left, "left", view), right = imageGrid(view.right, "right", view);
  const imgs = left.imgs.concat(right.imgs);
  const loaded = await Promise.all(imgs.map((img) => img.decode().then(() => true, () => false)));
  if (mine !== generation) return;  // the rater moved on meanwhile
  if (loaded.includes(false)) {
    show(el("p", {class: "error", text: "An image did not load. Check your connection and reload the page."}));
    return;
  }
  const answers = Object.assign({quality: null, alignment: null}, view.answers || {});
  const buttons = [];
  const questions = QUESTIONS.map(([q, before, bold, after]) => el("div", {class: "question", "data-q": q},
    el("span", {}, before, el("strong", {text: bold}), after),
    ...CHOICES.map((choice, i) => {
      const b = el("button", {type: "button", "data-q": q, "data-choice": choice, "aria-pressed": "false",
                              disabled: true, onclick: () => answer(view.id, q, choice)},
                   LABELS[choice], el("kbd", {text: KEY_OF[q][i]}));
      buttons.push(b);
      return b;
    })));
  const submit = el("button", {type: "button", id: "submit", class: "primary", disabled: true,
                               onclick: () => submitVote(view.id)}, opts.revise ? "Save change" : "Submit",
                    el("kbd", {text: "⏎"}));
  const prev = opts.practice ? null : (opts.revise ? view.previous : state.previous);
  const nav = el("div", {class: "nav"},
    prev ? el("button", {type: "button", id: "previous", text: "◀ Previous", onclick: () => review(prev)}) :
      el("span"),
    el("span", {class: "hint", id: "hint"}),
    submit);
  const total = state.total, done = state.done;
  const top = el("div", {class: "top"},
    el("progress", {max: String(total), value: String(done)}),
    el("span", {id: "progress", text: opts.practice ? "Practice" :
      `${done} of ${total} comparisons done · ${minutes(state.minutes_left)} left`}),
    opts.revise ? el("button", {type: "button", id: "back-to-current", text: "Back to where I was",
                                onclick: () => enter(state)}) : null,
    el("button", {type: "button", id: "sign-out", text: "Sign out", onclick: signOut}));
  const prompt = el("div", {id: "prompt"},
    el("span", {class: "label", text: opts.practice ? "Practice prompt" :
      (opts.revise ? "Prompt · changing an earlier answer" : "Prompt")}),
    el("span", {class: "text", text: view.prompt}));
  const root = el("div", {id: "comparison", "data-comparison": view.id, style: "display: contents"},
    top, prompt, el("div", {class: "sets"}, left.node, right.node), el("div", {class: "questions"}, ...questions),
    nav);
  show(root);
  const me = generation;
  screen = {cid: view.id, answers, ready: false, revise: !!opts.revise, practice: !!opts.practice, view,
            buttons, submit, shownAt: 0};
  // The images are decoded, so they are painted in the same frame as the prompt and these buttons: the inputs are
  // enabled with them, and a click from now on answers this comparison.
  screen.ready = true;
  screen.shownAt = performance.now();
  root.setAttribute("data-ready", "true");
  refresh();
  requestAnimationFrame(() => {
    if (me === generation && !opts.practice && !opts.revise && state.upcoming) fetchAhead(state.upcoming);
  });
}

function fetchAhead(view) {
  prefetched.length = 0;
  for (const u of view.left.concat(view.right)) { const im = new Image(); im.src = u; prefetched.push(im); }
}

function refresh() {
  if (!screen) return;
  for (const b of screen.buttons) {
    b.disabled = !screen.ready;
    b.setAttribute("aria-pressed", String(screen.answers[b.dataset.q] === b.dataset.choice));
  }
  const complete = screen.answers.quality && screen.answers.alignment;
  screen.submit.disabled = !screen.ready || !complete;
  const hint = document.getElementById("hint");
  if (hint) hint.textContent = complete ? "" : "Answer both questions, then submit (keys A S D and J K L, then Enter).";
}

function answer(cid, q, choice) {
  if (!screen || screen.cid !== cid || !screen.ready || busy) return;  // a click meant for another comparison
  screen.answers[q] = choice;
  refresh();
}

function flash(message) {
  const hint = document.getElementById("hint");
  if (hint) { hint.textContent = message; hint.classList.add("error"); }
}

async function submitVote(cid) {
  if (!screen || screen.cid !== cid || !screen.ready || busy) return;
  const {answers, revise, practice, shownAt} = screen;
  if (!answers.quality || !answers.alignment) return;
  if (practice) { practiceDone(); return; }
  const vote = {comparison: cid, quality: answers.quality, alignment: answers.alignment, revise,
                seconds: Math.round((performance.now() - shownAt) / 10) / 100};
  busy = true;
  show(el("div", {class: "loading", id: "loading", text: "Saving…"}));  // the answered comparison is gone at once
  let r = null;
  for (let attempt = 0; attempt < 5; attempt += 1) {  // the same vote again is harmless: the store keys it
    try { r = await api("/api/vote", vote); } catch (e) { r = null; }
    if (r && r.status !== 502 && r.status !== 503) break;
    await new Promise((ok) => setTimeout(ok, 1000 * (attempt + 1)));
  }
  busy = false;
  if (!r) { show(el("p", {class: "error", text: "Your answer could not be saved: the server is not reachable. " +
                                               "Reload the page to try again."})); return; }
  if (r.status === 401) { signInPage(r.data.error); return; }
  if (!r.ok) { enter(state); flash(r.data.error || "Your answer was not saved."); return; }
  enter(r.data.state);
}

// ---------------------------------------------------------------------------------------------- zoom
function openZoom(k, view) {
  if (!screen || screen.view !== view) return;
  zoom = {index: k, view};
  drawZoom();
}

function drawZoom() {
  document.getElementById("zoom")?.remove();
  if (!zoom) return;
  const {index, view} = zoom;
  const n = view.left.length;
  const close = el("button", {type: "button", text: "Close (Esc)", onclick: () => { zoom = null; drawZoom(); }});
  document.body.append(el("div", {class: "zoom", id: "zoom"},
    el("div", {class: "bar"}, el("span", {text: `Image ${index + 1} of ${n}: left set | right set  (← → to move)`}),
       close),
    el("img", {src: view.left[index], alt: `left set, image ${index + 1}`}),
    el("img", {src: view.right[index], alt: `right set, image ${index + 1}`})));
}

// ---------------------------------------------------------------------------------------------- keys
document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const key = e.key.toLowerCase();
  if (zoom) {
    const n = zoom.view.left.length;
    if (key === "escape" || key === "z") { zoom = null; drawZoom(); e.preventDefault(); return; }
    if (key === "arrowright") { zoom.index = (zoom.index + 1) % n; drawZoom(); return; }
    if (key === "arrowleft") { zoom.index = (zoom.index + n - 1) % n; drawZoom(); return; }
  }
  if (!screen) return;
  if (key === "z" && screen.ready) { openZoom(0, screen.view); return; }
  if (KEYS[key]) { answer(screen.cid, ...KEYS[key]); e.preventDefault(); return; }
  if (key === "enter") { e.preventDefault(); submitVote(screen.cid); }
});

start();
