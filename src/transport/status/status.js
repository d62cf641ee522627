// The live status page: polls /status.json once a second, draws the last
// minutes from the node's own history, and follows one group over the
// node's /status/tail websocket. No library, nothing loaded from elsewhere.
"use strict";

const params = new URLSearchParams(location.search);
const key = params.get("key");
const withKey = (path) =>
  key ? path + (path.includes("?") ? "&" : "?") + "key=" + encodeURIComponent(key) : path;
const $ = (id) => document.getElementById(id);

const number = (n) => {
  if (n === undefined || n === null) return "–";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Math.round(n).toLocaleString("en");
};

function chart(canvas, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const all = series.flatMap((s) => s.points);
  const max = Math.max(1, ...all);
  ctx.strokeStyle = "#2a313b";
  ctx.fillStyle = "#8d97a5";
  ctx.font = "11px system-ui";
  ctx.beginPath();
  ctx.moveTo(0, h - 0.5);
  ctx.lineTo(w, h - 0.5);
  ctx.stroke();
  ctx.fillText(number(max), 4, 12);
  for (const s of series) {
    const n = s.points.length;
    if (n < 2) continue;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    s.points.forEach((v, i) => {
      const x = (i / (300 - 1)) * w + (w * (300 - n)) / (300 - 1);
      const y = h - 2 - (v / max) * (h - 16);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function render(s) {
  $("problem").hidden = true;
  $("node").textContent = s.node;
  $("facts").textContent =
    `wsrelay ${s.version} · io ${s.io} · ${s.workers} workers · up ${Math.floor(s.uptime_s / 60)} min · ` +
    `slow consumers: ${s.slow_policy} · at most ${number(s.max_connections)} connections`;
  const last = s.history.length ? s.history[s.history.length - 1] : null;
  $("events-in-rate").textContent = last ? number(last.events_in) : "–";
  $("deliveries-rate").textContent = last ? number(last.deliveries) : "–";
  $("connections").textContent = number(s.connections);
  $("groups").textContent = number(s.groups);
  $("dropped").textContent = number(s.totals.dropped);
  $("slow").textContent = number(s.totals.slow_closes);
  $("queued").textContent = number(s.totals.queued_frames);
  $("ready").textContent = s.ready ? "yes" : "NO";
  $("ready").className = "value " + (s.ready ? "up" : "down");
  $("parts").textContent = `Redis: ${s.redis} · broker: ${s.broker} · events in (total) ${number(
    s.totals.events_in
  )} · deliveries (total) ${number(s.totals.deliveries)} · unrouted ${number(s.totals.unrouted)} · refused clients ${number(
    s.totals.refused
  )}`;
  const rows = s.links.map((l) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of [
      [l.peer, ""],
      [l.direction, ""],
      [l.up ? "up" : "down", l.up ? "up" : "down"],
      [number(l.events_sent), ""],
      [number(l.events_received), ""],
    ]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    return tr;
  });
  const body = $("links");
  body.replaceChildren(...rows);
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 5;
    td.textContent = "no peer links";
    tr.appendChild(td);
    body.appendChild(tr);
  }
  const h = s.history;
  chart($("chart-in"), [{ color: "#5aa9ff", points: h.map((p) => p.events_in) }]);
  chart($("chart-out"), [{ color: "#3ecf8e", points: h.map((p) => p.deliveries) }]);
  chart($("chart-loss"), [
    { color: "#ff6b6b", points: h.map((p) => p.dropped) },
    { color: "#f5a623", points: h.map((p) => p.slow_closes) },
  ]);
  chart($("chart-conn"), [{ color: "#c792ea", points: h.map((p) => p.connections) }]);
}

async function refresh() {
  try {
    const r = await fetch(withKey("/status.json"), { cache: "no-store" });
    if (!r.ok) {
      const why = await r.text();
      throw new Error(`${r.status} ${why}`);
    }
    render(await r.json());
  } catch (e) {
    $("problem").hidden = false;
    $("problem").textContent = "cannot read the node's status: " + e.message;
  }
}

// === the tail ===

let tail = null;
let received = 0;
let dropped = 0;
let lastCount = 0;

function stopTail() {
  if (tail) {
    tail.onclose = null;
    tail.close();
    tail = null;
  }
  $("tail-stop").disabled = true;
  $("tail-state").textContent = "not following";
}

function startTail(group) {
  stopTail();
  received = 0;
  dropped = 0;
  lastCount = 0;
  $("tail-lines").replaceChildren();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}` + withKey("/status/tail?group=" + encodeURIComponent(group));
  const ws = new WebSocket(url);
  tail = ws;
  $("tail-state").textContent = "connecting…";
  $("tail-stop").disabled = false;
  ws.onmessage = (m) => {
    let v = null;
    try {
      v = JSON.parse(m.data);
    } catch (_) {}
    if (v && typeof v === "object" && !Array.isArray(v)) {
      if (typeof v.tail === "string" && Object.keys(v).length === 1) {
        $("tail-state").textContent = "following " + v.tail;
        return;
      }
      if (typeof v.dropped === "number" && Object.keys(v).length === 1) {
        dropped += v.dropped;
        $("tail-dropped").textContent = number(dropped);
        return;
      }
    }
    received += 1;
    const li = document.createElement("li");
    li.textContent = m.data.length > 2000 ? m.data.slice(0, 2000) + "…" : m.data;
    const list = $("tail-lines");
    list.prepend(li);
    while (list.childElementCount > 100) list.lastElementChild.remove();
  };
  ws.onclose = (e) => {
    $("tail-state").textContent = `closed (${e.code}${e.reason ? ": " + e.reason : ""})`;
    $("tail-stop").disabled = true;
    tail = null;
  };
}

setInterval(() => {
  $("tail-count").textContent = number(received);
  $("tail-rate").textContent = number(received - lastCount);
  lastCount = received;
}, 1000);

$("tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const group = $("tail-group").value.trim();
  if (group) startTail(group);
});
$("tail-stop").addEventListener("click", stopTail);

refresh();
setInterval(refresh, 1000);
