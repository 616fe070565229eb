// The user page: the user's own sessions (live from /api/v1/events) and checkpoints.
// Start a session (with a project name, or from a checkpoint), end one, copy its full
// id, get a PhoebeClient(...) snippet that attaches a notebook to it (for this hub's
// auth mode), delete checkpoints.
"use strict";
(() => {
  const tbody = document.querySelector("#sessions tbody");
  const line = document.getElementById("status-line");
  const checkpointLine = document.getElementById("checkpoint-line");
  const notebook = document.getElementById("notebook");
  const sessions = new Map();
  let chosen = null;                   // the session the snippet is for (null: the newest)

  // Copy text to the clipboard; the fallback serves pages without the async clipboard.
  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (err) {
      const area = PS.el("textarea", { value: text, readOnly: true });
      document.body.append(area);
      area.select();
      const done = document.execCommand("copy");
      area.remove();
      return done;
    }
  }

  function copyButton(label, text) {
    const button = PS.el("button", { class: "secondary copy", type: "button", textContent: label });
    button.addEventListener("click", async () => {
      const ok = await copy(typeof text === "function" ? text() : text);
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => { button.textContent = label; }, 1500);
    });
    return button;
  }

  // What PhoebeClient needs in each auth mode (docs/client.md): nothing inside a
  // notebook of the same JupyterHub; the URL alone with no auth; the URL and a login
  // (or a token) in jwt mode; the URL and the site's token in external mode.
  function snippet(sessionId) {
    // JSON strings are Python string literals too (quotes and backslashes escaped)
    const url = JSON.stringify(new URL(PS.base, window.location.href).href);
    const mode = document.body.dataset.mode;
    const user = JSON.stringify(notebook.dataset.userName || "");
    const sid = `session_id=${JSON.stringify(sessionId)}`;
    const head = ["from phoebe_spawner.client import PhoebeClient", ""];
    let args;
    if (mode === "hub") {
      head.push("# in a notebook of this JupyterHub: the client finds the hub and your token");
      args = [sid];
    } else if (mode === "jwt") {
      head.unshift("from getpass import getpass");
      args = [url, `email=${user}`, "password=getpass()", sid];
    } else if (mode === "external") {
      head.push("TOKEN = \"...\"  # your access token from your site's login");
      args = [url, "token=TOKEN", sid];
    } else {
      args = [url, sid];
    }
    const call = args.length === 1 ? `client = PhoebeClient(${args[0]})`
      : ["client = PhoebeClient(", ...args.map((a) => `    ${a},`), ")"].join("\n");
    return [...head, call, "client.get_value(\"period@binary\")"].join("\n");
  }

  function hint(mode) {
    if (mode === "hub") return "Paste it into a notebook of this JupyterHub.";
    if (mode === "jwt") return "Paste it into a notebook or script; it asks for your password.";
    if (mode === "external") return "Paste it into a notebook or script, with your site's access token.";
    return "Paste it into a notebook or script on a machine that reaches this hub.";
  }

  function renderSnippet() {
    const running = [...sessions.values()].filter((s) => s.status === "running")
      .sort((a, b) => b.created_at - a.created_at);
    const s = running.find((r) => r.session_id === chosen) || running[0];
    notebook.hidden = !s;
    if (!s) return;
    document.getElementById("snippet").textContent = snippet(s.session_id);
    document.getElementById("snippet-hint").textContent =
      `For session ${s.session_id}${s.project_name ? ` (${s.project_name})` : ""}. ` +
      hint(document.body.dataset.mode) +
      " Closing that client leaves the session running.";
    for (const tr of tbody.children) tr.classList.toggle("chosen", tr.dataset.sessionId === s.session_id);
  }

  function row(s) {
    const end = PS.el("button", { class: "danger", type: "button", textContent: "End" });
    end.disabled = !["pending", "running"].includes(s.status);
    end.addEventListener("click", async () => {
      end.disabled = true;
      try { await PS.api("POST", `dash/end-session/${encodeURIComponent(s.session_id)}`); }
      catch (err) { line.textContent = `Could not end the session: ${err.message}`; end.disabled = false; }
      await refresh();
    });
    const use = PS.el("button", { class: "secondary use", type: "button", textContent: "Snippet" });
    use.disabled = s.status !== "running";
    use.addEventListener("click", () => { chosen = s.session_id; renderSnippet(); });
    const t = Date.now() / 1000;
    return PS.el("tr", { "data-session-id": s.session_id },
      PS.el("td", { class: "session" }, PS.el("span", { class: "mono session-id" }, s.session_id),
        copyButton("Copy", s.session_id)),
      PS.el("td", {}, s.project_name || ""),
      PS.el("td", {}, PS.el("span", { class: `status ${s.status}`, title: s.reason || "" }, s.status)),
      PS.el("td", {}, `${PS.duration(t - s.created_at)} ago`),
      PS.el("td", {}, PS.duration(t - s.last_activity)),
      PS.el("td", { title: PS.memoryTitle(s) }, PS.mib(s.mem_used)),
      PS.el("td", {}, String(s.command_count ?? 0)),
      PS.el("td", { class: "actions" }, use, end));
  }

  function render() {
    const list = [...sessions.values()].sort((a, b) => a.created_at - b.created_at);
    tbody.replaceChildren(...list.map(row));
    document.getElementById("no-sessions").hidden = list.length > 0;
    renderSnippet();
  }

  async function refresh() {
    const all = await PS.api("GET", "dash/sessions");
    sessions.clear();
    for (const s of Object.values(all)) sessions.set(s.session_id, s);
    render();
  }

  // Start a session (`meta`: its metadata); true once it started.
  async function start(meta) {
    line.textContent = "Starting a session…";
    try {
      const s = await PS.api("POST", "dash/start-session", meta || {});
      chosen = s.session_id;
      line.textContent = `Session ${s.session_id} is ${s.status}.`;
    } catch (err) {
      line.textContent = `Could not start a session: ${err.message}`;
      await refresh();
      return false;
    }
    await refresh();
    return true;
  }

  async function deleteCheckpoint(tr, button) {
    const name = tr.dataset.name;
    if (!confirm(`Delete checkpoint ${name}? Its saved bundle is removed for good.`)) return;
    button.disabled = true;
    try {
      await PS.api("DELETE", `api/v1/checkpoints/${encodeURIComponent(tr.dataset.checkpointId)}`);
      tr.remove();
      checkpointLine.textContent = `Deleted checkpoint ${name}.`;
      document.getElementById("no-checkpoints").hidden =
        document.querySelectorAll("#checkpoints tbody tr").length > 0;
    } catch (err) {
      button.disabled = false;
      checkpointLine.textContent = `Could not delete checkpoint ${name}: ${err.message}`;
    }
  }

  document.getElementById("start-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const field = document.getElementById("project-name");
    const project = field.value.trim();
    if (await start(project ? { project_name: project } : {})) field.value = "";
  });
  const copySnippet = copyButton("Copy", () => document.getElementById("snippet").textContent);
  copySnippet.id = "copy-snippet";
  document.getElementById("copy-snippet").replaceWith(copySnippet);
  for (const tr of document.querySelectorAll("#checkpoints tbody tr")) {
    const id = tr.dataset.checkpointId;
    const from = PS.el("button", { type: "button", textContent: "Start from it" });
    from.addEventListener("click", () => start({ checkpoint_id: id }));
    const del = PS.el("button", { class: "danger", type: "button", textContent: "Delete" });
    del.addEventListener("click", () => deleteCheckpoint(tr, del));
    tr.lastElementChild.replaceChildren(from, del);
  }
  for (const cell of document.querySelectorAll("td.time")) {
    cell.textContent = new Date(Number(cell.dataset.t) * 1000).toLocaleString();
  }
  const types = ["session_started", "session_stopping", "session_stopped", "session_failed",
    "session_culled"];
  PS.follow("api/v1/events", types, () => refresh().catch(() => {}));
  refresh().catch((err) => { line.textContent = err.message; });
  setInterval(() => render(), 5000);                        // ages and idle times move on
  setInterval(() => refresh().catch(() => {}), 30000);      // memory and commands too
})();
