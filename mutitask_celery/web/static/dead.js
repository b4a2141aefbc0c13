// The dead-letter store, a page at a time: filter by channel, select, reload or delete.
"use strict";

const LIMIT = 50;
const state = { channel: "", offset: 0, total: 0 };

function selected() {
  return [...document.querySelectorAll("#records tbody input[type=checkbox]:checked")].map((box) => box.value);
}

function updateButtons() {
  const some = selected().length > 0;
  document.getElementById("reload-selected").disabled = !some;
  document.getElementById("delete-selected").disabled = !some;
  document.getElementById("reload-channel").disabled = state.channel === "";
  document.getElementById("delete-channel").disabled = state.channel === "";
}

const columns = mt.columns("records");

function row(r) {
  const box = mt.el("input", { type: "checkbox", value: r.id });
  box.setAttribute("aria-label", "select " + r.id);
  const view = mt.el("a", { href: "/dead/record?id=" + encodeURIComponent(r.id) }, "view");
  return mt.el("tr", { "data-id": r.id },
    mt.el("td", {}, box),
    ...columns.map((th) => mt.el("td", {}, mt.field(r[th.dataset.field], th.dataset.kind))),
    mt.el("td", {}, view));
}

function channels(list) {
  const select = document.getElementById("channel");
  const options = [mt.el("option", { value: "" }, "all")];
  for (const c of list) options.push(mt.el("option", { value: String(c) }, "channel " + c));
  select.replaceChildren(...options);
  select.value = state.channel;
}

async function load() {
  const query = new URLSearchParams({ offset: state.offset, limit: LIMIT });
  if (state.channel !== "") query.set("channel", state.channel);
  try {
    const page = await mt.api("/api/dead?" + query);
    state.total = page.total;
    channels(page.channels);
    const body = document.querySelector("#records tbody");
    const rows = page.records.map(row);
    body.replaceChildren(...(rows.length ? rows : [mt.el("tr", {}, mt.el("td", { colSpan: columns.length + 2, className: "none" }, "no dead letters"))]));
    document.getElementById("total").textContent = "(" + mt.number(page.total) + ")";
    const last = Math.min(page.total, state.offset + page.records.length);
    document.getElementById("range").textContent = page.total ? (state.offset + 1) + "–" + last + " of " + mt.number(page.total) : "";
    document.getElementById("previous").disabled = state.offset === 0;
    document.getElementById("next").disabled = last >= page.total;
    document.getElementById("select-all").checked = false;
    updateButtons();
    mt.status("updated " + new Date().toLocaleTimeString());
  } catch (error) {
    mt.status("cannot read the dead letters: " + error.message, true);
  }
}

function act(action, body, what) {
  const verb = action === "reload" ? "Reload" : "Delete";
  mt.confirm(verb + " " + what + "?", async () => {
    const reply = await mt.api("/api/dead/" + action, body);
    mt.notice((action === "reload" ? "reloaded " : "deleted ") + reply.moved + " dead letter(s)");
    if (state.offset >= state.total - reply.moved) state.offset = Math.max(0, state.offset - LIMIT);
    load();
  });
}

document.getElementById("channel").onchange = (event) => { state.channel = event.target.value; state.offset = 0; load(); };
document.getElementById("previous").onclick = () => { state.offset = Math.max(0, state.offset - LIMIT); load(); };
document.getElementById("next").onclick = () => { state.offset += LIMIT; load(); };
document.getElementById("select-all").onchange = (event) => {
  document.querySelectorAll("#records tbody input[type=checkbox]").forEach((box) => { box.checked = event.target.checked; });
  updateButtons();
};
document.querySelector("#records tbody").addEventListener("change", updateButtons);
for (const action of ["reload", "delete"]) {
  document.getElementById(action + "-selected").onclick = () => {
    const ids = selected();
    act(action, { ids }, ids.length + " selected dead letter(s)");
  };
  document.getElementById(action + "-channel").onclick = () => {
    act(action, { channel: Number(state.channel) }, "every dead letter of channel " + state.channel);
  };
}

const asked = new URLSearchParams(location.search).get("channel");
if (asked) state.channel = asked;
load();
