// sluice web chat: a plain client of the OpenAI-compatible API of the server that serves
// it (`POST v1/chat/completions` with `stream: true`, `GET v1/models`). No framework:
// the state is a list of conversations kept in localStorage; the page re-renders one
// conversation at a time and, while a reply streams, only that reply's element.

import { renderMarkdown } from "./markdown.js";

const KEYS = {
  conversations: "sluice.conversations",
  current: "sluice.current",
  settings: "sluice.settings",
  apiKey: "sluice.apiKey",
};
const DEFAULT_SETTINGS = { temperature: 0.7, top_p: 0.95, max_tokens: 512, seed: "" };

const $ = (id) => document.getElementById(id);
const els = {
  sidebar: $("sidebar"),
  backdrop: $("backdrop"),
  convList: $("conv-list"),
  newChat: $("new-chat"),
  openSidebar: $("open-sidebar"),
  closeSidebar: $("close-sidebar"),
  model: $("model-name"),
  status: $("status"),
  chat: document.querySelector(".chat"),
  systemBox: $("system-box"),
  system: $("system"),
  messages: $("messages"),
  empty: $("empty"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  settings: $("settings"),
  openSettings: $("open-settings"),
  temperature: $("temperature"),
  topP: $("top-p"),
  maxTokens: $("max-tokens"),
  seed: $("seed"),
  settingsKey: $("settings-key"),
  clearAll: $("clear-all"),
  keyDialog: $("key-dialog"),
  keyReason: $("key-reason"),
  apiKey: $("api-key"),
};

// ---------------------------------------------------------------------------
// State and storage

function readJson(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key));
    return v ?? fallback;
  } catch {
    return fallback;
  }
}

let conversations = readJson(KEYS.conversations, []);
if (!Array.isArray(conversations)) conversations = [];
let settings = { ...DEFAULT_SETTINGS, ...readJson(KEYS.settings, {}) };
let apiKey = localStorage.getItem(KEYS.apiKey) || "";
let modelName = null;
let current = null; // the open conversation (an element of `conversations`)
let inflight = null; // { controller, conv, msg, el } while a reply streams
let pendingRetry = null; // what to run once an API key is entered

function saveAll() {
  try {
    localStorage.setItem(KEYS.conversations, JSON.stringify(conversations));
    if (current) localStorage.setItem(KEYS.current, current.id);
  } catch (e) {
    setStatus(`Could not save conversations in this browser: ${e.message}`);
  }
}

function saveSettings() {
  try {
    localStorage.setItem(KEYS.settings, JSON.stringify(settings));
    if (apiKey) localStorage.setItem(KEYS.apiKey, apiKey);
    else localStorage.removeItem(KEYS.apiKey);
  } catch (e) {
    setStatus(`Could not save settings: ${e.message}`);
  }
}

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

function newConversation() {
  const conv = { id: newId(), title: "", system: current?.system ?? "", messages: [], updated: Date.now() };
  conversations.unshift(conv);
  return conv;
}

function titleOf(conv) {
  const first = conv.messages.find((m) => m.role === "user");
  if (!first) return "New conversation";
  const t = first.content.replace(/\s+/g, " ").trim();
  return t.length > 48 ? t.slice(0, 47) + "\u2026" : t;
}

function setStatus(text) {
  els.status.textContent = text || "";
}

// ---------------------------------------------------------------------------
// Rendering

function renderSidebar() {
  els.convList.replaceChildren();
  for (const conv of conversations) {
    const li = document.createElement("li");
    if (conv === current) li.setAttribute("aria-current", "true");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = titleOf(conv);
    open.title = titleOf(conv);
    open.addEventListener("click", () => {
      openConversation(conv);
      closeSidebar();
      els.input.focus();
    });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "\u00d7";
    del.setAttribute("aria-label", `Delete conversation: ${titleOf(conv)}`);
    del.addEventListener("click", () => deleteConversation(conv));
    li.append(open, del);
    els.convList.append(li);
  }
}

function formatStats(s) {
  if (!s) return "";
  const parts = [];
  if (s.ttft_ms == null && s.elapsed_ms != null) {
    return `waiting for the first token\u2026 ${Math.floor(s.elapsed_ms / 1000)} s`;
  }
  if (s.ttft_ms != null) parts.push(`first token ${s.ttft_ms < 1000 ? Math.round(s.ttft_ms) + " ms" : (s.ttft_ms / 1000).toFixed(2) + " s"}`);
  if (s.tok_s != null) parts.push(`${s.tok_s.toFixed(1)} tokens/s`);
  if (s.tokens != null) parts.push(`${s.tokens} tokens`);
  if (s.prompt_tokens != null) parts.push(`prompt ${s.prompt_tokens} tokens`);
  if (s.finish === "length") parts.push("cut at max tokens");
  if (s.stopped) parts.push("stopped");
  return parts.join(" \u00b7 ");
}

function isLastAssistant(conv, msg) {
  return conv.messages[conv.messages.length - 1] === msg && msg.role === "assistant";
}

function messageElement(conv, msg) {
  const el = document.createElement("article");
  el.className = `msg ${msg.role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = msg.role === "user" ? "You" : msg.model || modelName || "Assistant";
  const body = document.createElement("div");
  body.className = "body";
  el.append(who, body);
  if (msg.role === "assistant") {
    const stats = document.createElement("div");
    stats.className = "stats";
    const error = document.createElement("div");
    error.className = "error";
    error.setAttribute("role", "alert");
    el.append(error, stats);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  el.append(actions);
  fillMessage(el, conv, msg);
  return el;
}

function actionButton(label, aria, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "link";
  b.textContent = label;
  if (aria) b.setAttribute("aria-label", aria);
  b.addEventListener("click", onClick);
  return b;
}

// (Re)draws one message's body, error, figures and buttons from its state.
function fillMessage(el, conv, msg) {
  const body = el.querySelector(".body");
  if (msg.role === "user") {
    body.textContent = msg.content;
  } else {
    body.innerHTML = renderMarkdown(msg.content);
    body.classList.toggle("waiting", !!msg.streaming && !msg.content);
    body.hidden = !msg.content && !msg.streaming;
    const error = el.querySelector(".error");
    error.textContent = msg.error || "";
    error.hidden = !msg.error;
    el.querySelector(".stats").textContent = formatStats(msg.stats);
    el.setAttribute("aria-busy", msg.streaming ? "true" : "false");
  }
  const actions = el.querySelector(".actions");
  actions.replaceChildren();
  if (msg.streaming) return;
  if (msg.role === "user") {
    actions.append(actionButton("Edit", "Edit and resend this message", () => startEdit(el, conv, msg)));
  } else {
    if (msg.content) {
      actions.append(actionButton("Copy", "Copy this reply", (ev) => copyText(msg.content, ev.currentTarget)));
    }
    if (isLastAssistant(conv, msg)) {
      actions.append(actionButton("Regenerate", "Regenerate this reply", () => regenerate()));
    }
  }
}

function renderConversation() {
  els.messages.replaceChildren();
  for (const msg of current.messages) els.messages.append(messageElement(current, msg));
  els.empty.hidden = current.messages.length > 0;
  els.system.value = current.system || "";
  if (current.system) els.systemBox.open = true;
  renderSidebar();
  scrollToEnd(true);
}

function scrollToEnd(force) {
  const c = els.chat;
  // Follow the reply only when the reader is already near the end.
  if (force || c.scrollHeight - c.scrollTop - c.clientHeight < 120) c.scrollTop = c.scrollHeight;
}

function openConversation(conv) {
  if (inflight) stop();
  current = conv;
  saveAll();
  renderConversation();
}

function deleteConversation(conv) {
  if (!confirm(`Delete the conversation \u201c${titleOf(conv)}\u201d?`)) return;
  if (inflight && inflight.conv === conv) stop();
  conversations = conversations.filter((c) => c !== conv);
  if (current === conv) current = conversations[0] || newConversation();
  saveAll();
  renderConversation();
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  if (busy) els.stop.focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------
// Talking to the server

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function errorFrom(resp) {
  const text = await resp.text().catch(() => "");
  let message = text.trim() || resp.statusText || "no details";
  let code = null;
  try {
    const j = JSON.parse(text);
    if (j && j.error) {
      message = typeof j.error === "string" ? j.error : j.error.message || message;
      code = j.error.code ?? null;
    }
  } catch {
    /* not JSON: keep the text */
  }
  return new ApiError(resp.status, message, code);
}

// A readable sentence for any failure, with what to do about it.
function explain(err) {
  if (err instanceof ApiError) {
    switch (err.status) {
      case 401:
        return `The server needs an API key (401): ${err.message}`;
      case 429:
        return `The server is busy (429): ${err.message} Try again in a moment.`;
      case 400:
      case 413:
        if (err.code === "context_length_exceeded" || /context|too long|too large/i.test(err.message)) {
          return `Too long for the model (${err.status}): ${err.message} Start a new conversation, shorten it, or lower Max tokens in Settings.`;
        }
        return `The server rejected the request (${err.status}): ${err.message}`;
      default:
        return `Error ${err.status || ""}: ${err.message}`.replace("Error :", "Error:");
    }
  }
  if (err instanceof TypeError) {
    return "Server unreachable: the request could not be sent or the connection dropped. Is `sluice serve` still running?";
  }
  return `Error: ${err.message || err}`;
}

async function loadModel() {
  try {
    const resp = await fetch("v1/models", { headers: headers() });
    if (resp.status === 401) {
      els.model.textContent = "API key needed";
      askForKey("This server asks for an API key.", loadModel);
      return;
    }
    if (!resp.ok) throw await errorFrom(resp);
    const list = await resp.json();
    modelName = list?.data?.[0]?.id ?? null;
    els.model.textContent = modelName ? `Model: ${modelName}` : "no model listed";
    setStatus("");
  } catch (e) {
    els.model.textContent = "offline";
    setStatus(explain(e));
  }
}

// Reads an SSE body: `data: {json}` events, `data: [DONE]` at the end.
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (!line.startsWith("data:")) continue; // comments, event names, blank separators
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
  throw new Error("the connection closed before the reply finished (did the server stop?)");
}

function requestMessages(conv, upTo) {
  const out = [];
  if (conv.system && conv.system.trim()) out.push({ role: "system", content: conv.system });
  for (const m of conv.messages) {
    if (m === upTo) break;
    // A reply that failed before any text is only shown, never sent back.
    if (m.role === "assistant" && !m.content) continue;
    out.push({ role: m.role, content: m.content });
  }
  return out;
}

function requestBody(conv, msg) {
  const body = {
    messages: requestMessages(conv, msg),
    stream: true,
    stream_options: { include_usage: true },
  };
  if (modelName) body.model = modelName;
  const num = (v) => (v === "" || v == null ? null : Number(v));
  const t = num(settings.temperature);
  if (t != null && Number.isFinite(t)) body.temperature = t;
  const p = num(settings.top_p);
  if (p != null && Number.isFinite(p)) body.top_p = p;
  const mt = num(settings.max_tokens);
  if (mt != null && Number.isInteger(mt) && mt > 0) body.max_tokens = mt;
  const seed = num(settings.seed);
  if (seed != null && Number.isInteger(seed)) body.seed = seed;
  return body;
}

// Streams a reply into `msg` (the last message of `conv`).
async function generate(conv, msg) {
  const controller = new AbortController();
  msg.content = "";
  msg.error = null;
  msg.stats = null;
  msg.streaming = true;
  msg.model = modelName;
  let el = els.messages.lastElementChild;
  if (!el || current !== conv) el = null;
  inflight = { controller, conv, msg, el };
  setBusy(true);
  if (el) fillMessage(el, conv, msg);
  scrollToEnd(true);

  const t0 = performance.now();
  let tFirst = null;
  let tLast = null;
  let chunks = 0;
  let usage = null;
  let finish = null;
  let frame = 0;
  const redraw = () => {
    frame = 0;
    const now = performance.now();
    msg.stats = {
      ttft_ms: tFirst != null ? tFirst - t0 : null,
      tok_s: chunks > 1 && tLast > tFirst ? ((chunks - 1) * 1000) / (tLast - tFirst) : null,
      tokens: chunks || null,
      elapsed_ms: now - t0,
    };
    if (inflight?.el) {
      fillMessage(inflight.el, conv, msg);
      scrollToEnd(false);
    }
  };
  // Until the first token, show the time waited, so a slow prompt is not a silent stall.
  const ticker = setInterval(() => tFirst == null && redraw(), 1000);
  try {
    const resp = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(requestBody(conv, msg)),
      signal: controller.signal,
    });
    if (!resp.ok) throw await errorFrom(resp);
    for await (const ev of sseEvents(resp)) {
      if (ev.error) throw new ApiError(ev.error.code === "server_overloaded" ? 429 : 0, ev.error.message || "the server reported an error", ev.error.code);
      if (ev.usage) usage = ev.usage;
      const choice = ev.choices?.[0];
      if (!choice) continue;
      const delta = choice.delta?.content;
      if (delta) {
        const now = performance.now();
        if (tFirst == null) tFirst = now;
        tLast = now;
        chunks += 1;
        msg.content += delta;
        if (!frame) frame = requestAnimationFrame(redraw);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  } catch (e) {
    if (e.name === "AbortError") {
      msg.stopped = true;
    } else {
      msg.error = explain(e);
      if (e instanceof ApiError && e.status === 401) {
        pendingRetry = () => regenerate();
        askForKey(e.message, null);
      }
    }
  } finally {
    clearInterval(ticker);
    if (frame) cancelAnimationFrame(frame);
    msg.streaming = false;
    const tokens = usage?.completion_tokens ?? chunks;
    const tEnd = tLast ?? performance.now();
    msg.stats = {
      ttft_ms: tFirst != null ? tFirst - t0 : null,
      tok_s: tokens > 1 && tFirst != null && tEnd > tFirst ? ((tokens - 1) * 1000) / (tEnd - tFirst) : null,
      tokens: tFirst != null || usage ? tokens : null,
      prompt_tokens: usage?.prompt_tokens ?? null,
      finish,
      stopped: !!msg.stopped,
    };
    if (!msg.content && !msg.error && !msg.stopped) msg.error = "The model returned an empty reply.";
    const elNow = inflight?.el;
    inflight = null;
    conv.updated = Date.now();
    saveAll();
    setBusy(false);
    if (elNow && current === conv) {
      fillMessage(elNow, conv, msg);
      scrollToEnd(false);
    }
    if (current === conv) {
      renderSidebar();
      // Earlier replies lose their Regenerate button.
      refreshActions();
    }
  }
}

function refreshActions() {
  const nodes = els.messages.children;
  current.messages.forEach((m, i) => {
    if (nodes[i] && !m.streaming) fillMessage(nodes[i], current, m);
  });
}

function stop() {
  if (inflight) inflight.controller.abort();
}

function send(text) {
  if (inflight) return;
  const conv = current;
  conv.messages.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "" };
  conv.messages.push(reply);
  els.empty.hidden = true;
  els.messages.append(messageElement(conv, conv.messages[conv.messages.length - 2]));
  els.messages.append(messageElement(conv, reply));
  saveAll();
  renderSidebar();
  generate(conv, reply);
}

function regenerate() {
  if (inflight) return;
  const conv = current;
  const last = conv.messages[conv.messages.length - 1];
  if (!last) return;
  if (last.role === "assistant") {
    conv.messages.pop();
    els.messages.lastElementChild?.remove();
  }
  if (conv.messages.length === 0) return;
  const reply = { role: "assistant", content: "" };
  conv.messages.push(reply);
  els.messages.append(messageElement(conv, reply));
  generate(conv, reply);
}

function startEdit(el, conv, msg) {
  if (inflight) return;
  const body = el.querySelector(".body");
  const actions = el.querySelector(".actions");
  const box = document.createElement("div");
  box.className = "edit-box";
  const label = document.createElement("label");
  label.className = "sr-only";
  const id = `edit-${newId()}`;
  label.htmlFor = id;
  label.textContent = "Edit message";
  const ta = document.createElement("textarea");
  ta.id = id;
  ta.value = msg.content;
  const row = document.createElement("div");
  row.className = "row";
  const cancel = actionButton("Cancel", null, () => {
    box.remove();
    body.hidden = false;
    actions.hidden = false;
  });
  const ok = document.createElement("button");
  ok.type = "button";
  ok.className = "primary";
  ok.textContent = "Send";
  ok.setAttribute("aria-label", "Send the edited message");
  const submit = () => {
    const text = ta.value.trim();
    if (!text || inflight) return;
    const idx = conv.messages.indexOf(msg);
    msg.content = text;
    conv.messages.splice(idx + 1);
    renderConversation();
    regenerate();
  };
  ok.addEventListener("click", submit);
  ta.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      submit();
    } else if (ev.key === "Escape") {
      ev.preventDefault();
      cancel.click();
    }
  });
  row.append(cancel, ok);
  box.append(label, ta, row);
  body.hidden = true;
  actions.hidden = true;
  el.insertBefore(box, actions);
  ta.focus();
}

async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // No async clipboard (plain http on another host): the old way.
    const ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    document.body.append(ta);
    ta.select();
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    ta.remove();
  }
  if (button) {
    const old = button.textContent;
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = old), 1500);
  }
}

function askForKey(reason, then) {
  els.keyReason.textContent = reason || "This server asks for an API key.";
  els.apiKey.value = apiKey;
  if (then) pendingRetry = then;
  if (!els.keyDialog.open) els.keyDialog.showModal();
}

// ---------------------------------------------------------------------------
// Settings, sidebar, keyboard

function fillSettings() {
  els.temperature.value = settings.temperature;
  els.topP.value = settings.top_p;
  els.maxTokens.value = settings.max_tokens ?? "";
  els.seed.value = settings.seed ?? "";
  els.settingsKey.value = apiKey;
}

function readSettings() {
  settings = {
    temperature: els.temperature.value,
    top_p: els.topP.value,
    max_tokens: els.maxTokens.value,
    seed: els.seed.value,
  };
  const key = els.settingsKey.value.trim();
  const changed = key !== apiKey;
  apiKey = key;
  saveSettings();
  if (changed) loadModel();
}

function openSidebar() {
  els.sidebar.classList.add("open");
  els.backdrop.hidden = false;
  els.openSidebar.setAttribute("aria-expanded", "true");
  els.newChat.focus();
}

function closeSidebar() {
  if (!els.sidebar.classList.contains("open")) return;
  els.sidebar.classList.remove("open");
  els.backdrop.hidden = true;
  els.openSidebar.setAttribute("aria-expanded", "false");
}

function autoGrow() {
  els.input.style.height = "auto";
  els.input.style.height = `${els.input.scrollHeight + 2}px`;
}

els.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = els.input.value.trim();
  if (!text || inflight) return;
  els.input.value = "";
  autoGrow();
  send(text);
});
els.input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    els.composer.requestSubmit();
  }
});
els.input.addEventListener("input", autoGrow);
els.stop.addEventListener("click", () => {
  stop();
  els.input.focus();
});
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && inflight && !document.querySelector("dialog[open]")) {
    ev.preventDefault();
    stop();
    els.input.focus();
  } else if (ev.key === "Escape") {
    closeSidebar();
  }
});
els.newChat.addEventListener("click", () => {
  if (inflight) stop();
  // Reuse an empty conversation instead of piling them up.
  current = conversations.find((c) => c.messages.length === 0) || newConversation();
  saveAll();
  renderConversation();
  closeSidebar();
  els.input.focus();
});
els.openSidebar.addEventListener("click", openSidebar);
els.closeSidebar.addEventListener("click", closeSidebar);
els.backdrop.addEventListener("click", closeSidebar);
els.system.addEventListener("input", () => {
  current.system = els.system.value;
  saveAll();
});
els.messages.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.copy-code");
  if (b) copyText(b.closest(".code-block").querySelector("code").textContent, b);
});
els.openSettings.addEventListener("click", () => {
  fillSettings();
  els.settings.showModal();
});
els.settings.addEventListener("close", readSettings);
els.clearAll.addEventListener("click", () => {
  if (!confirm("Delete every saved conversation?")) return;
  if (inflight) stop();
  conversations = [];
  current = newConversation();
  saveAll();
  renderConversation();
  els.settings.close();
});
els.keyDialog.addEventListener("close", () => {
  const retry = pendingRetry;
  pendingRetry = null;
  if (els.keyDialog.returnValue !== "ok") return;
  apiKey = els.apiKey.value.trim();
  saveSettings();
  if (retry) retry();
  if (retry !== loadModel) loadModel();
});
window.addEventListener("beforeunload", saveAll);

// Start: reopen the last conversation.
const lastId = localStorage.getItem(KEYS.current);
current = conversations.find((c) => c.id === lastId) || conversations.find((c) => c.messages.length === 0) || newConversation();
for (const c of conversations) {
  // A reply cut by a reload is no longer streaming.
  for (const m of c.messages) if (m.streaming) (m.streaming = false), (m.stopped = true);
}
renderConversation();
loadModel();
els.input.focus();
