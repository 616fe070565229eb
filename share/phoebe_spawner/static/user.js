// The user page: the user's own sessions (live from /api/v1/events) and checkpoints;
// start a session (optionally from a checkpoint) and end one.
"use strict";
(() => {
  const tbody = document.querySelector("#sessions tbody");
  const line = document.getElementById("status-line");
  const sessions = new Map();

  function row(s) {
    const end = PS.el("button", { class: "danger", type: "button", textContent: "End" });
    end.disabled = !["pending", "running"].includes(s.status);
    end.addEventListener("click", async () => {
      end.disabled = true;
      try { await PS.api("POST", `dash/end-session/${encodeURIComponent(s.session_id)}`); }
      catch (err) { line.textContent = `Could not end the session: ${err.message}`; end.disabled = false; }
      await refresh();
    });
    const t = Date.now() / 1000;
    return PS.el("tr", { "data-session-id": s.session_id },
      PS.el("td", { class: "mono", title: s.session_id }, s.session_id.slice(0, 8)),
      PS.el("td", {}, s.project_name || ""),
      PS.el("td", {}, PS.el("span", { class: `status ${s.status}`, title: s.reason || "" }, s.status)),
      PS.el("td", {}, `${PS.duration(t - s.created_at)} ago`),
      PS.el("td", {}, PS.duration(t - s.last_activity)),
      PS.el("td", {}, `${(s.mem_used || 0).toFixed(0)} MiB`),
      PS.el("td", {}, String(s.command_count ?? 0)),
      PS.el("td", {}, end));
  }

  function render() {
    const list = [...sessions.values()].sort((a, b) => a.created_at - b.created_at);
    tbody.replaceChildren(...list.map(row));
    document.getElementById("no-sessions").hidden = list.length > 0;
  }

  async function refresh() {
    const all = await PS.api("GET", "dash/sessions");
    sessions.clear();
    for (const s of Object.values(all)) sessions.set(s.session_id, s);
    render();
  }

  async function start(meta) {
    line.textContent = "Starting a session…";
    try {
      const s = await PS.api("POST", "dash/start-session", meta || {});
      line.textContent = `Session ${s.session_id.slice(0, 8)} is ${s.status}.`;
    } catch (err) {
      line.textContent = `Could not start a session: ${err.message}`;
    }
    await refresh();
  }

  document.getElementById("start-session").addEventListener("click", () => start());
  for (const tr of document.querySelectorAll("#checkpoints tbody tr")) {
    const id = tr.dataset.checkpointId;
    const cell = tr.lastElementChild;
    const button = PS.el("button", { type: "button", textContent: "Start from it" });
    button.addEventListener("click", () => start({ checkpoint_id: id }));
    cell.replaceChildren(button);
  }
  for (const cell of document.querySelectorAll("td.time")) {
    cell.textContent = new Date(Number(cell.dataset.t) * 1000).toLocaleString();
  }
  const types = ["session_started", "session_stopping", "session_stopped", "session_failed",
    "session_culled"];
  PS.follow("api/v1/events", types, () => refresh().catch(() => {}));
  refresh().catch((err) => { line.textContent = err.message; });
  setInterval(() => render(), 5000);
})();
