// The overview: channels with their rate plots, devices with their buttons, the
// latest dead letters; read again every two seconds.
"use strict";

const EVERY = 2000;
const SPAN = 600;  // seconds of history a plot shows, at most (the page's process keeps as much)
const MIN_SPAN = 60;  // ... at least: a run of a few seconds is not one spike at the edge

function plot(points, now) {
  const canvas = mt.el("canvas", { width: 240, height: 40, className: "plot" });
  const g = canvas.getContext("2d");
  const top = Math.max(1, ...points.map((p) => p[1]));
  const span = Math.min(SPAN, Math.max(MIN_SPAN, points.length ? now - points[0][0] : 0));
  const x = (t) => canvas.width * (1 - (now - t) / span);
  const y = (rate) => canvas.height - 1 - (canvas.height - 12) * (rate / top);
  g.strokeStyle = "#ccc";
  g.strokeRect(0.5, 0.5, canvas.width - 1, canvas.height - 1);
  if (points.length) {
    g.beginPath();
    g.moveTo(x(points[0][0]), y(0));
    for (const [t, rate] of points) g.lineTo(x(t), y(rate));
    g.lineTo(x(points[points.length - 1][0]), y(0));
    g.closePath();
    g.fillStyle = "rgba(42, 111, 176, 0.25)";
    g.fill();
    g.beginPath();
    points.forEach(([t, rate], i) => (i === 0 ? g.moveTo(x(t), y(rate)) : g.lineTo(x(t), y(rate))));
    g.strokeStyle = "#2a6fb0";
    g.lineWidth = 1.5;
    g.stroke();
  }
  g.fillStyle = "#555";
  g.font = "10px system-ui, sans-serif";
  const label = "peak " + top.toFixed(1) + "/s, last " + mt.duration(span);
  g.fillText(points.length ? label : "no samples yet", 4, 10);
  canvas.setAttribute("aria-label", "rate, " + label);
  return canvas;
}

function rate(value) {
  return value === null || value === undefined ? "—" : value.toFixed(1) + "/s";
}

function channelRow(c, now) {
  return mt.el("tr", { "data-channel": c.channel },
    mt.el("td", {}, c.channel),
    mt.el("td", {}, mt.number(c.published)),
    mt.el("td", { className: "done" }, mt.number(c.succeeded)),
    mt.el("td", {}, mt.number(c.failed)),
    mt.el("td", {}, mt.number(c.run_twice)),
    mt.el("td", {}, mt.number(c.outstanding)),
    mt.el("td", {}, mt.number(c.channel_size)),
    mt.el("td", {}, rate(c.rate)),
    mt.el("td", {}, c.rate_limit === null ? "none" : rate(c.rate_limit)),
    mt.el("td", {}, c.outstanding === 0 ? "—" : mt.duration(c.seconds_left)),
    mt.el("td", {}, plot(c.history, now)),
    mt.el("td", { className: "buttons" }, c.outstanding === 0 ? "" :
      mt.el("button", { type: "button", "data-cancel": c.channel }, "Cancel")));
}

function deviceButton(action, name) {
  return mt.el("button", { type: "button", "data-action": action, "data-devices": name },
    action[0].toUpperCase() + action.slice(1));
}

function deviceRow(d, now) {
  return mt.el("tr", { "data-device": d.name, className: "state-" + d.state },
    mt.el("td", {}, d.name),
    mt.el("td", { className: "state" }, d.state),
    mt.el("td", {}, d.channels.join(", ") || "—"),
    mt.el("td", {}, mt.number(d.in_hand)),
    mt.el("td", {}, mt.number(d.done)),
    mt.el("td", {}, mt.ago(d.last_heard, now)),
    mt.el("td", { className: "buttons" },
      deviceButton("pause", d.name), " ", deviceButton("start", d.name), " ", deviceButton("stop", d.name)));
}

const deadColumns = mt.columns("recent");

function deadRow(r) {
  const href = "/dead/record?id=" + encodeURIComponent(r.id);
  return mt.el("tr", { "data-id": r.id }, ...deadColumns.map((th) => {
    const shown = mt.field(r[th.dataset.field], th.dataset.kind);
    return mt.el("td", {}, th.dataset.field === "data" ? mt.el("a", { href }, shown) : shown);  // the task links to its record
  }));
}

function fill(id, rows, empty, columns) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...(rows.length ? rows : [mt.el("tr", {}, mt.el("td", { colSpan: columns, className: "none" }, empty))]));
}

async function refresh() {
  try {
    const data = await mt.api("/api/overview");
    fill("channels", data.channels.map((c) => channelRow(c, data.now)), "no channel has run yet", 12);
    fill("devices", data.devices.map((d) => deviceRow(d, data.now)), "no device has started yet", 7);
    fill("recent", data.dead_letters.records.map(deadRow), "no dead letters", deadColumns.length);
    document.getElementById("dead-total").textContent = "(all " + mt.number(data.dead_letters.total) + ")";
    mt.status("updated " + new Date().toLocaleTimeString());
  } catch (error) {
    mt.status("cannot read the books: " + error.message, true);
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-cancel]");
  if (!button) return;
  const channel = Number(button.dataset.cancel);
  mt.confirm("Cancel channel " + channel + "'s run? Its waiting tasks are recorded cancelled and never run; "
    + "running ones end as they will.", async () => {
    const reply = await mt.api("/api/channels/cancel", { channel });
    mt.notice("channel " + channel + " cancelled: " + mt.number(reply.dropped) + " waiting task(s) dropped, "
      + mt.number(reply.running) + " in devices' hands left to end");
    refresh();
  });
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const action = button.dataset.action;
  const who = button.dataset.devices;
  const act = async () => {
    const reply = await mt.api("/api/devices/" + action, { devices: who === "all" ? "all" : [who] });
    const stopping = Object.entries(reply.stopping || {}).map(([name, runs]) =>
      name + " is still stopping: it runs " + (runs.join("; ") || "no task the books know of"));
    const confirmed = reply.confirmed.join(", ") || (stopping.length ? "none yet" : "no device answered");
    mt.notice([action + ": " + confirmed, ...stopping].join(". "), !reply.confirmed.length);
    refresh();
  };
  if (action === "stop") mt.confirm("Stop " + (who === "all" ? "every device" : who) + "? Its process ends.", act);
  else act().catch((error) => mt.notice(error.message, true));
});

refresh();
setInterval(refresh, EVERY);
