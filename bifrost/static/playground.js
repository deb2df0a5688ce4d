// The development playground: subscribe to the page's channel and show what arrives; the
// form asks the server to sign a broadcast token, then posts it to /broadcast as an
// application's server would. The secret never reaches the browser.
"use strict";

const PING_MS = 10000;
const MAX_RETRY_S = 10;
const channel = new URLSearchParams(location.search).get("channel") || "playground";
let retryDelay = 1;
let received = 0;

function byId(id) {
  return document.getElementById(id);
}

function setStatus(text, state) {
  const status = byId("socket-status");
  status.textContent = text;
  status.className = `live ${state || ""}`;
}

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function pretty(data) {
  if (typeof data === "string") {
    try {
      return JSON.stringify(JSON.parse(data), null, 2);
    } catch {
      return data;
    }
  }
  return JSON.stringify(data, null, 2);
}

function showEvent(message) {
  received += 1;
  byId("count").textContent = String(received);
  byId("no-events").hidden = true;
  const item = document.createElement("li");
  item.className = "event";
  item.dataset.event = message.event;
  const meta = document.createElement("div");
  meta.className = "meta";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = message.event;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString("en-GB");
  meta.append(name, time);
  const data = document.createElement("pre");
  data.className = "data";
  data.textContent = pretty(message.data);
  item.append(meta, data);
  byId("events").prepend(item);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/subscribe`);
  let pinger;

  ws.onopen = async () => {
    try {
      const response = await fetch(`/test/token?channel=${encodeURIComponent(channel)}`);
      const { token, error } = await response.json();
      if (!response.ok) throw new Error(error);
      ws.send(JSON.stringify({ event: "authenticate", data: token }));
      pinger = setInterval(() => ws.send(JSON.stringify({ event: "ping" })), PING_MS);
    } catch (error) {
      setStatus(`no token: ${error.message}`, "down");
      ws.close();
    }
  };

  ws.onmessage = (frame) => {
    const message = JSON.parse(frame.data);
    if (message.event === "subscribed") {
      retryDelay = 1;
      setStatus(`subscribed to ${JSON.parse(message.data).channel}`, "ok");
    } else if (message.event !== "pong") {
      showEvent(message);
    }
  };

  ws.onclose = (event) => {
    clearInterval(pinger);
    const why = [event.code, event.reason].filter(Boolean).join(" ");
    setStatus(`disconnected (${why}), reconnecting in ${retryDelay} s`, "down");
    setTimeout(connect, retryDelay * 1000);
    retryDelay = Math.min(retryDelay * 2, MAX_RETRY_S);
  };
}

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

// A Python string literal: single quotes read best around JSON, when nothing needs escaping.
function pythonString(text) {
  return /['\\\n]/.test(text) ? JSON.stringify(text) : `'${text}'`;
}

function showSnippets() {
  const event = byId("event").value;
  const data = byId("data").value;
  byId("snippets").textContent = [
    "# command line (JWT_SECRET and BIFROST_URL set)",
    `bifrost broadcast ${shellQuote(channel)} ${shellQuote(event)} ${shellQuote(data)}`,
    "",
    "# Python",
    "from bifrost.client import BifrostClient",
    `BifrostClient().broadcast(${pythonString(channel)}, ${pythonString(event)}, ${pythonString(data)})`,
  ].join("\n");
}

async function broadcast(submitted) {
  submitted.preventDefault();
  const answer = byId("answer");
  const send = byId("send");
  send.disabled = true;
  try {
    const { token } = await postJSON("/test/broadcast-token", {
      channel, event: byId("event").value, data: byId("data").value,
    });
    const { deliveries } = await postJSON("/broadcast", { token });
    answer.textContent = `Delivered to ${deliveries} socket${deliveries === 1 ? "" : "s"}.`;
    answer.className = "ok";
  } catch (error) {
    answer.textContent = `Refused: ${error.message}`;
    answer.className = "bad";
  } finally {
    send.disabled = false;
  }
}

for (const element of document.querySelectorAll(".channel-name")) element.textContent = channel;
byId("channel").value = channel;
byId("broadcast-form").addEventListener("submit", broadcast);
byId("event").addEventListener("input", showSnippets);
byId("data").addEventListener("input", showSnippets);
showSnippets();
connect();
