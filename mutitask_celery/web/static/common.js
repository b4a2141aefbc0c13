// Shared by the pages: JSON calls with the CSRF token, elements built from text only
// (never markup from data), a confirmation bar, and the formats of numbers and times.
"use strict";

const mt = {};

mt.token = function () {
  const found = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
  return found ? decodeURIComponent(found.slice("_xsrf=".length)) : "";
};

mt.api = async function (path, body) {
  const options = { headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.headers["X-XSRFToken"] = mt.token();
    options.body = JSON.stringify(body);
  }
  const reply = await fetch(path, options);
  let data = null;
  try { data = await reply.json(); } catch (e) { data = null; }
  if (!reply.ok) {
    throw new Error((data && data.error) || reply.status + " " + reply.statusText);
  }
  return data;
};

// An element with text children (strings become text nodes, never HTML).
mt.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "className") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

mt.size = function (bytes) {  // decimal units: a 1,000,000-byte task is "1.0 MB"
  if (bytes < 1000) return bytes + " B";
  if (bytes < 1000 * 1000) return (bytes / 1000).toFixed(1) + " kB";
  return (bytes / 1000 / 1000).toFixed(1) + " MB";
};

// A text the server cut ({text, size, cut}): the text, then how big the whole is.
mt.shown = function (value, className) {
  if (!value) return mt.el("span", { className: "none" }, "—");
  const node = mt.el("span", { className: className || "" }, value.text);
  if (value.cut) node.append(mt.el("span", { className: "cut" }, " … (cut; " + mt.size(value.size) + " in all)"));
  return node;
};

// A dead-letter record's field as the pages show it, by its kind. The pages' headers and
// rows name each field and its kind (laid out from FailedTask.FIELDS in
// books/dead_letters.py), so a new field of a known kind shows without a change here.
mt.field = function (value, kind) {
  if (kind === "time") return mt.time(value);
  if (kind === "text") return mt.shown(value);
  if (kind === "value") return mt.shown(value, "task");
  if (kind === "size") return mt.size(value.size);
  return value === null || value === undefined ? "" : String(value);  // word, int
};

// The fields a table lists: its header cells that name one, in order.
mt.columns = function (table) {
  return [...document.querySelectorAll("#" + table + " thead th[data-field]")];
};

mt.time = function (seconds) {
  if (seconds === null || seconds === undefined) return "never";
  return new Date(seconds * 1000).toLocaleString();
};

mt.ago = function (seconds, now) {
  if (seconds === null || seconds === undefined) return "never";
  const gone = Math.max(0, now - seconds);
  if (gone < 2) return "now";
  if (gone < 120) return Math.round(gone) + " s ago";
  if (gone < 7200) return Math.round(gone / 60) + " min ago";
  return mt.time(seconds);
};

mt.duration = function (seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
};

mt.number = function (value) {
  return value === null || value === undefined ? "—" : Number(value).toLocaleString();
};

mt.status = function (text, bad) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = bad ? "bad" : "";
};

mt.notice = function (text, bad) {
  const node = document.getElementById("notice");
  node.textContent = text;
  node.className = "notice" + (bad ? " bad" : "");
  node.hidden = false;
};

// Ask before acting: a bar with the question, Yes and No.
mt.confirm = function (question, onYes) {
  const bar = document.getElementById("confirm");
  const yes = mt.el("button", { type: "button", className: "yes" }, "Yes");
  const no = mt.el("button", { type: "button" }, "No");
  bar.replaceChildren(mt.el("span", {}, question + " "), yes, " ", no);
  bar.hidden = false;
  no.onclick = () => { bar.hidden = true; };
  yes.onclick = async () => {
    bar.hidden = true;
    try { await onYes(); } catch (error) { mt.notice(error.message, true); }
  };
  yes.focus();
};
