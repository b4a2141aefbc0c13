// One dead letter, whole (texts cut only past 64 KB), with Reload and Delete.
"use strict";

const id = new URLSearchParams(location.search).get("id") || "";

function field(name, value) {
  return [mt.el("dt", {}, name), mt.el("dd", {}, value)];
}

async function load() {
  document.getElementById("record-id").textContent = id;
  try {
    const r = await mt.api("/api/dead/record?id=" + encodeURIComponent(id));
    document.getElementById("fields").replaceChildren(
      ...field("Channel", String(r.channel)),
      ...field("Reason", mt.shown(r.reason)),
      ...field("Device", r.device),
      ...field("First failed", mt.time(r.first_failed)),
      ...field("Last failed", mt.time(r.last_failed)),
      ...field("Failures", String(r.failures)),
      ...field("Task size", mt.size(r.data.size)));
    document.getElementById("data").replaceChildren(mt.shown(r.data));
    document.getElementById("result").replaceChildren(mt.shown(r.result));
    document.getElementById("traceback").replaceChildren(mt.shown(r.traceback));
    document.getElementById("reload").disabled = false;
    document.getElementById("delete").disabled = false;
    mt.status("");
  } catch (error) {
    mt.status(error.message, true);
  }
}

for (const action of ["reload", "delete"]) {
  document.getElementById(action).onclick = () => {
    mt.confirm((action === "reload" ? "Reload" : "Delete") + " this dead letter?", async () => {
      const reply = await mt.api("/api/dead/" + action, { ids: [id] });
      mt.notice((action === "reload" ? "reloaded " : "deleted ") + reply.moved + " dead letter(s)", reply.moved === 0);
      document.getElementById("reload").disabled = true;
      document.getElementById("delete").disabled = true;
    });
  };
}

load();
