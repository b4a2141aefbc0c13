// One dead letter, whole (texts cut only past 64 KB), with Reload and Delete. The page lays
// out a row or a block for each field; this fills them from the record's JSON.
"use strict";

const id = new URLSearchParams(location.search).get("id") || "";

async function load() {
  document.getElementById("record-id").textContent = id;
  try {
    const r = await mt.api("/api/dead/record?id=" + encodeURIComponent(id));
    for (const node of document.querySelectorAll("main [data-field]")) {  // laid out by the page, one per field
      node.replaceChildren(mt.field(r[node.dataset.field], node.dataset.kind));
    }
    document.getElementById("fields").hidden = false;
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
