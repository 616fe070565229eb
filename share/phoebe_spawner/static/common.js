// Shared helpers of the pages: API calls with the XSRF token, formatting, the memory
// plot with its scales, and a live event stream that reconnects. No framework, no CDN.
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

  // A memory value in MiB as text: one decimal below 10 MiB (a forked session's few MiB).
  function mib(value) {
    const v = Number(value) || 0;
    return `${v < 10 ? v.toFixed(1) : v.toFixed(0)} MiB`;
  }

  // The tooltip of a memory value: what mem_used is, and PSS and RSS beside it.
  function memoryTitle(s) {
    const parts = [`private memory (USS): ${mib(s.mem_used)}`];
    if (s.mem_pss) parts.push(`PSS: ${mib(s.mem_pss)} (with its share of shared pages)`);
    if (s.mem_rss) parts.push(`RSS: ${mib(s.mem_rss)} (shared pages counted in full)`);
    return parts.join("\n");
  }

  // A line plot of [[unix time, MiB], ...] (the admin page's memory history) with its
  // scales: the value axis from 0 MiB to the highest sample (labelled in MiB), the time
  // axis from the first sample (labelled with how long ago) to the last ("now").
  function sparkline(points, width = 150, height = 42) {
    const ns = "http://www.w3.org/2000/svg";
    const node = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      return n;
    };
    const svg = node("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}` });
    if (!points || points.length < 2) return svg;
    const left = 44, top = 4, right = width - 2, bottom = height - 12;
    const ts = points.map((p) => p[0]), ms = points.map((p) => p[1]);
    const t0 = Math.min(...ts), t1 = Math.max(...ts), m1 = Math.max(...ms, 1);
    const x = (t) => left + (t - t0) / (t1 - t0 || 1) * (right - left);
    const y = (m) => bottom - m / m1 * (bottom - top);
    svg.append(node("path", { class: "axis",
      d: `M${left},${top} V${bottom} H${right}` }));
    svg.append(node("text", { class: "y-max", x: left - 3, y: top + 6, "text-anchor": "end" },
      mib(m1)));
    svg.append(node("text", { class: "y-min", x: left - 3, y: bottom, "text-anchor": "end" },
      "0 MiB"));
    svg.append(node("text", { class: "x-start", x: left, y: height - 1 },
      `${duration(t1 - t0)} ago`));
    svg.append(node("text", { class: "x-end", x: right, y: height - 1, "text-anchor": "end" },
      "now"));
    svg.append(node("polyline", {
      points: points.map(([t, m]) => `${x(t).toFixed(1)},${y(m).toFixed(1)}`).join(" "),
    }));
    svg.append(node("title", {},
      `private memory: ${mib(ms[ms.length - 1])} now, highest ${mib(m1)}, ` +
      `over the last ${duration(t1 - t0)}`));
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

  return { api, duration, el, mib, memoryTitle, sparkline, follow, base };
})();
