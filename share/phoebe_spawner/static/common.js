// Shared helpers of the pages: API calls with the XSRF token, formatting, the memory
// sparkline, and a live event stream that reconnects. No framework, no CDN.
"use strict";
const PS = (() => {
  const body = document.body;
  const base = body.dataset.baseUrl || "/";
  const xsrf = body.dataset.xsrf || "";

  async function api(method, path, data) {
    const init = { method, credentials: "same-origin", headers: { "X-XSRFToken": xsrf } };
    if (data !== undefined) {
      init.body = JSON.stringify(data);
      init.headers["Content-Type"] = "application/json";
    }
    const r = await fetch(base + path, init);
    const text = await r.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
    if (!r.ok) {
      const err = new Error((json && json.detail) || `${r.status} ${r.statusText}`);
      err.status = r.status;
      throw err;
    }
    return json;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
    seconds = Math.max(0, seconds);
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
    return node;
  }

  // A small line plot of [[t, MiB], ...] (the admin page's memory history).
  function sparkline(points, width = 80, height = 20) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    if (!points || points.length < 2) return svg;
    const ts = points.map((p) => p[0]), ms = points.map((p) => p[1]);
    const t0 = Math.min(...ts), t1 = Math.max(...ts), m1 = Math.max(...ms, 1);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map(([t, m]) =>
      `${((t - t0) / (t1 - t0 || 1) * (width - 2) + 1).toFixed(1)},` +
      `${(height - 1 - m / m1 * (height - 2)).toFixed(1)}`).join(" "));
    svg.append(line);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${ms[ms.length - 1].toFixed(0)} MiB (max ${m1.toFixed(0)})`;
    svg.append(title);
    return svg;
  }

  // Follow an SSE stream; `onEvent(type, data)` for each event, `onState(bool)` on
  // (dis)connection. EventSource reconnects by itself, resuming with Last-Event-ID.
  // EventSource cannot send headers: the XSRF token goes in the query (JupyterHub's
  // cookie auth checks it on cross-mode GETs too).
  function follow(path, types, onEvent, onState) {
    const url = `${base}${path}${path.includes("?") ? "&" : "?"}_xsrf=${encodeURIComponent(xsrf)}`;
    const source = new EventSource(url, { withCredentials: true });
    source.onopen = () => onState && onState(true);
    source.onerror = () => onState && onState(false);
    for (const type of types) {
      source.addEventListener(type, (e) => onEvent(type, JSON.parse(e.data)));
    }
    return source;
  }

  return { api, duration, el, sparkline, follow, base };
})();
