// The admin page: every user's sessions, kept live from /api/v1/admin/events.
// Loads a snapshot (with its last event id), then applies events on top of it, so no
// event between the two is lost; after the stream dropped (a network gap, a hub
// restart) it loads a new snapshot and follows from there. Every number on the page
// (sessions, running, free capacity) is counted from that state at each render, never
// kept from the server-rendered HTML. Filtering and sorting happen here, on the client.
"use strict";
(() => {
  const sessions = new Map();          // session_id -> admin view (see Session.to_admin)
  let clockSkew = 0;                   // server time - browser time, from the snapshot
  let capacityTotal = 0;               // the hub's session capacity (0: no limit)
  let source = null;                   // the open event stream
  let sortKey = "created_at", sortDir = 1;
  const tbody = document.querySelector("#sessions tbody");
  const filter = document.getElementById("filter");
  const statusFilter = document.getElementById("status-filter");
  const live = document.getElementById("live");
  const ENDED = new Set(["stopped", "culled"]);
  const ACTIVE = new Set(["pending", "running", "stopping"]);  // they hold a worker
  const now = () => Date.now() / 1000 + clockSkew;

  function matches(s) {
    const q = filter.value.trim().toLowerCase();
    if (statusFilter.value && s.status !== statusFilter.value) return false;
    if (!q) return true;
    return [s.user_name, s.full_name, s.session_id, s.project_name, s.status]
      .some((v) => (v || "").toLowerCase().includes(q));
  }

  function value(s, key) {
    const t = now();
    if (key === "age") return t - s.created_at;
    if (key === "idle") return t - s.last_activity;
    return s[key] ?? "";
  }

  function row(s) {
    const t = now();
    const end = PS.el("button", { class: "danger", type: "button", textContent: "End" });
    end.disabled = !["pending", "running"].includes(s.status);
    end.addEventListener("click", () => endSession(s, end));
    const memory = PS.el("td", { class: "memory", title: PS.memoryTitle(s) },
      PS.el("span", { class: "mem-now" }, PS.mib(s.mem_used)));
    memory.append(PS.sparkline(s.mem_history));
    const who = PS.el("td", { class: "user" }, s.user_name);
    if (s.full_name && s.full_name !== s.user_name) {
      who.append(PS.el("div", { class: "full-name" }, s.full_name));
    }
    const last = s.last_command
      ? `${s.last_command} (${s.last_command_ms < 1000 ? s.last_command_ms.toFixed(0) + " ms"
        : (s.last_command_ms / 1000).toFixed(1) + " s"})` : "";
    const lastCell = PS.el("td", { class: "last" }, last);
    if (s.last_error) {
      // why the session's last failed command failed (PHOEBE's own message)
      lastCell.append(PS.el("div", { class: "last-error", title: s.last_error }, s.last_error));
    }
    return PS.el("tr", { "data-session-id": s.session_id },
      who,
      PS.el("td", { class: "mono", title: s.session_id }, s.session_id.slice(0, 8)),
      PS.el("td", { class: "project" }, s.project_name || ""),
      PS.el("td", {}, PS.el("span", { class: `status ${s.status}`, title: s.reason || "" }, s.status)),
      PS.el("td", {}, PS.duration(t - s.created_at)),
      PS.el("td", {}, PS.duration(t - s.last_activity)),
      memory,
      PS.el("td", {}, String(s.command_count ?? 0)),
      lastCell,
      PS.el("td", { class: "end" }, end));
  }

  function render(flashId) {
    const shown = [...sessions.values()].filter(matches).sort((a, b) => {
      const x = value(a, sortKey), y = value(b, sortKey);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    tbody.replaceChildren(...shown.map((s) => {
      const tr = row(s);
      if (s.session_id === flashId) tr.classList.add("flash");
      return tr;
    }));
    const all = [...sessions.values()];
    const active = all.filter((s) => ACTIVE.has(s.status)).length;
    document.getElementById("count").textContent = String(sessions.size);
    document.getElementById("running").textContent =
      String(all.filter((s) => s.status === "running").length);
    document.getElementById("capacity").textContent = capacityTotal
      ? `${Math.max(0, capacityTotal - active)} free of ${capacityTotal}` : "no limit";
    document.getElementById("no-sessions").hidden = sessions.size > 0;
  }

  async function endSession(s, button) {
    const project = s.project_name ? ` (${s.project_name})` : "";
    if (!confirm(`End session ${s.session_id}${project} of ${s.user_name}?\n` +
      "Its worker stops at once; a command it is running is lost.")) return;
    button.disabled = true;
    try {
      await PS.api("DELETE", `api/v1/admin/sessions/${encodeURIComponent(s.session_id)}`);
    } catch (err) {
      button.disabled = false;
      alert(`Could not end the session: ${err.message}`);
    }
  }

  function apply(type, data) {
    if (type === "sessions_sampled") {
      for (const { session_id, mem_used, mem_pss, mem_rss } of data.samples) {
        const s = sessions.get(session_id);
        if (!s) continue;
        Object.assign(s, { mem_used, mem_pss, mem_rss });
        s.mem_history = (s.mem_history || []).concat([[data.t, mem_used]]).slice(-120);
      }
      render();
      return;
    }
    if (type === "session_updated") {
      const s = sessions.get(data.session_id);
      if (s) Object.assign(s, data);
      render();
      return;
    }
    // lifecycle events carry the whole admin view
    if (ENDED.has(data.status)) sessions.delete(data.session_id);
    else sessions.set(data.session_id, data);
    render(type === "session_started" ? data.session_id : undefined);
  }

  // The state from a new snapshot, then its events from the snapshot's last event id.
  // Called at load and whenever the stream comes back after dropping: events lost in
  // between (or a restarted hub's new ids) can then not leave the page stale.
  async function sync() {
    const snap = await PS.api("GET", "api/v1/admin/sessions");
    clockSkew = snap.now - Date.now() / 1000;
    capacityTotal = (snap.capacity && snap.capacity.total_ports) || 0;
    sessions.clear();
    // the same rows as the live events leave: sessions that ended by a stop or a cull
    // (kept by the hub for their 410 answers) are not shown, failures are
    for (const s of snap.sessions) if (!ENDED.has(s.status)) sessions.set(s.session_id, s);
    render();
    if (source) source.close();
    const types = ["session_started", "session_stopping", "session_stopped", "session_failed",
      "session_culled", "session_updated", "sessions_sampled"];
    let dropped = false;
    const mine = PS.follow(`api/v1/admin/events?last_event_id=${snap.last_event_id}`, types,
      apply, (on) => {
        if (source !== mine) return;
        live.textContent = on ? "live" : "reconnecting…";
        live.className = on ? "live on" : "live off";
        if (!on) dropped = true;
        else if (dropped) sync().catch(failed);
      });
    source = mine;
  }

  function failed(err) {
    live.textContent = `error: ${err.message}`;
    live.className = "live off";
  }

  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      sortDir = sortKey === th.dataset.sort ? -sortDir : 1;
      sortKey = th.dataset.sort;
      document.querySelectorAll("th[data-sort]").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      render();
    });
  }
  filter.addEventListener("input", () => render());
  statusFilter.addEventListener("change", () => render());
  setInterval(() => render(), 5000);   // ages and idle times move on
  sync().catch(failed);
})();
