// The dead-letter store, a page at a time: filter it (channel, reason, device, a time window,
// the tasks' text), select and reload or delete, or reload or delete every record the filter
// names ("Reload these N": the count is asked of the server first, and shown to confirm).
"use strict";

const LIMIT = 50;
const FIELDS = ["channel", "reason", "device", "since", "until", "text"];  // the form's, as the API names them
const state = { filter: {}, offset: 0, total: 0 };

function selected() {
  return [...document.querySelectorAll("#records tbody input[type=checkbox]:checked")].map((box) => box.value);
}

function filtering() {
  return Object.keys(state.filter).length > 0;
}

function updateButtons() {
  const some = selected().length > 0;
  document.getElementById("reload-selected").disabled = !some;
  document.getElementById("delete-selected").disabled = !some;
  for (const action of ["reload", "delete"]) {
    const button = document.getElementById(action + "-matching");
    button.disabled = !filtering() || state.total === 0;
    button.textContent = (action === "reload" ? "Reload" : "Delete") + " these " + (filtering() ? mt.number(state.total) : "");
  }
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
  select.value = state.filter.channel || "";
}

// A time as typed: a date and time without a zone is the browser's local time, sent with its
// zone (the server's own may differ); a duration ("10m") or a time with a zone goes as typed.
function moment(value) {
  const local = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$/;
  if (!local.test(value)) return value;
  const when = new Date(value.length === 10 ? value + "T00:00" : value.replace(" ", "T"));
  return isNaN(when) ? value : when.toISOString();
}

// The filter as the API takes it: in a query (texts) or a body (channel a number).
function asked(body) {
  const out = {};
  for (const [name, value] of Object.entries(state.filter)) {
    out[name] = name === "since" || name === "until" ? moment(value) : value;
  }
  if (body && out.channel !== undefined) out.channel = Number(out.channel);
  return out;
}

function readForm() {
  state.filter = {};
  for (const name of FIELDS) {
    const value = document.getElementById(name).value.trim();
    if (value !== "") state.filter[name] = value;
  }
  state.offset = 0;
  history.replaceState(null, "", "/dead" + (filtering() ? "?" + new URLSearchParams(state.filter) : ""));
}

function fillForm() {
  for (const name of FIELDS) {
    if (name !== "channel") document.getElementById(name).value = state.filter[name] || "";
  }
}

async function load() {
  const query = new URLSearchParams({ offset: state.offset, limit: LIMIT, ...asked(false) });
  try {
    const page = await mt.api("/api/dead?" + query);
    state.total = page.total;
    channels(page.channels);
    const body = document.querySelector("#records tbody");
    const rows = page.records.map(row);
    const none = filtering() ? "no dead letter matches" : "no dead letters";
    body.replaceChildren(...(rows.length ? rows : [mt.el("tr", {}, mt.el("td", { colSpan: columns.length + 2, className: "none" }, none))]));
    document.getElementById("total").textContent = "(" + mt.number(page.total) + (filtering() ? " matching" : "") + ")";
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

// Every record the filter names: how many the server finds now (a dry run), then the question.
async function actOnMatching(action) {
  const body = asked(true);
  try {
    const count = await mt.api("/api/dead/" + action, { ...body, dry_run: true });
    act(action, body, "these " + mt.number(count.matching) + " dead letter(s)");
  } catch (error) {
    mt.notice(error.message, true);
  }
}

document.getElementById("filters").onsubmit = (event) => { event.preventDefault(); readForm(); load(); };
document.getElementById("channel").onchange = () => { readForm(); load(); };
document.getElementById("clear").onclick = () => {
  state.filter = {};
  fillForm();
  document.getElementById("channel").value = "";
  readForm();
  load();
};
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
  document.getElementById(action + "-matching").onclick = () => actOnMatching(action);
}

const given = new URLSearchParams(location.search);
for (const name of FIELDS) {
  if (given.get(name)) state.filter[name] = given.get(name);
}
fillForm();
load();
