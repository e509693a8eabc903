// SwarmDirector dashboard: polls `/api/status` once a second, keeps a
// rolling window in memory and draws one small <canvas> chart per metric.
// No libraries and nothing fetched from elsewhere: the server's CSP forbids it.
//
// For tests: every chart carries `data-points` (samples it holds),
// `data-max` (largest value in the window, all lines) and `data-max-<line>`
// per line; `body[data-polls]` counts successful polls.
"use strict";

(() => {
  const POLL_MS = 1000;
  const WINDOW_S = 180;
  const TIMEOUT_MS = 5000;
  const KEY_STORE = "swarmd.dashboard.key";

  // High-contrast colours on white; the limit is a dashed grey ceiling.
  const C = {
    limit: "#6b7280",
    inflight: "#1f4e9c",
    queued: "#d95f02",
    tput: "#1b7f5a",
    p50: "#1f4e9c",
    p99: "#b3261e",
    rej: "#b3261e",
    tmo: "#7a3fb0",
    cpu: "#1f4e9c",
    rss: "#1b7f5a",
    size: "#6b7280",
    idle: "#1b7f5a",
    inuse: "#d95f02",
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

  // --- the API key: `?key=` once, then sessionStorage (this tab only) ---

  let key = "";
  try {
    key = sessionStorage.getItem(KEY_STORE) || "";
  } catch (_) {
    // Storage can be disabled; the key then lives only in this page.
  }
  const params = new URLSearchParams(location.search);
  if (params.has("key")) {
    setKey(params.get("key"));
    // Take the key out of the address bar (and out of screenshots, history).
    params.delete("key");
    const q = params.toString();
    history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + location.hash);
  }

  function setKey(k) {
    key = (k || "").trim();
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch (_) {
      /* see above */
    }
  }

  // --- formatting ---

  function fmt(v, digits) {
    v = num(v);
    if (v === null) return "–";
    const a = Math.abs(v);
    // Big numbers must fit their card: 12,345 → 12.3k.
    if (a >= 10000) return `${(v / 1000).toFixed(a >= 100000 ? 0 : 1)}k`;
    if (digits === 0 || a >= 100) return String(Math.round(v));
    if (a >= 10) return v.toFixed(1);
    return v.toFixed(digits === undefined ? 2 : digits);
  }

  function fmtUptime(s) {
    s = Math.floor(s || 0);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return `${m}m ${s % 60}s`;
  }

  // 1, 2, 4, 6, 8 × 10^k at or above v: the axis and its midpoint stay round.
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v * 0.999) return m * p;
    return 10 * p;
  }

  // --- charts ---

  class Chart {
    // lines: [{key, label, color, digits, dash, ceiling}]; a `ceiling` line
    // (a limit) does not stretch the scale when it is far above the others,
    // so a limit of 1024 does not flatten a queue of 30; it is pinned to the
    // top and marked with an arrow instead.
    constructor(card, scope, metric, lines, unit) {
      this.lines = lines;
      this.unit = unit || "";
      this.t = [];
      this.v = lines.map(() => []);
      this.canvas = el("canvas", "chart");
      this.canvas.dataset.scope = scope;
      this.canvas.dataset.metric = metric;
      this.canvas.setAttribute("role", "img");
      this.canvas.setAttribute("aria-label", `${scope} ${metric}`);
      card.appendChild(this.canvas);
      this.mark();
    }

    push(t, values) {
      this.t.push(t);
      values.forEach((x, i) => this.v[i].push(num(x)));
      this.trim(t);
    }

    trim(now) {
      let drop = 0;
      while (drop < this.t.length && this.t[drop] < now - WINDOW_S) drop++;
      if (drop) {
        this.t.splice(0, drop);
        this.v.forEach((a) => a.splice(0, drop));
      }
      this.mark();
    }

    mark() {
      const ds = this.canvas.dataset;
      ds.points = String(this.t.length);
      let all = null;
      this.lines.forEach((l, i) => {
        const m = this.max(i);
        this.canvas.setAttribute(`data-max-${l.key}`, m === null ? "" : String(m));
        if (m !== null && (all === null || m > all)) all = m;
      });
      ds.max = all === null ? "" : String(all);
    }

    max(i) {
      let m = null;
      for (const x of this.v[i]) if (x !== null && (m === null || x > m)) m = x;
      return m;
    }

    draw(now) {
      const cv = this.canvas;
      const w = cv.clientWidth;
      const h = cv.clientHeight;
      if (!w || !h) return; // folded away
      const dpr = window.devicePixelRatio || 1;
      if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
        cv.width = Math.round(w * dpr);
        cv.height = Math.round(h * dpr);
      }
      const g = cv.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      g.font = "11px system-ui, sans-serif";
      g.textBaseline = "middle";

      const L = 40, R = 6, T = 18, B = 14;
      const pw = w - L - R, ph = h - T - B;

      // Scale: everything but far-off ceilings.
      let top = 0;
      let ceilings = 0;
      this.lines.forEach((l, i) => {
        const m = this.max(i);
        if (m === null) return;
        if (l.ceiling) ceilings = Math.max(ceilings, m);
        else top = Math.max(top, m);
      });
      const pinned = ceilings > Math.max(top, 10) * 3;
      const ymax = niceCeil(pinned ? top : Math.max(top, ceilings));
      const y = (v) => T + ph - (Math.min(v, ymax) / ymax) * ph;
      const x = (t) => L + pw - ((now - t) / WINDOW_S) * pw;

      // Grid and axes.
      g.strokeStyle = "#e3e6eb";
      g.fillStyle = "#5b6270";
      g.lineWidth = 1;
      g.textAlign = "right";
      for (const f of [0, 0.5, 1]) {
        const yy = Math.round(T + ph - f * ph) + 0.5;
        g.beginPath();
        g.moveTo(L, yy);
        g.lineTo(L + pw, yy);
        g.stroke();
        g.fillText(fmt(ymax * f, ymax < 10 ? 1 : 0), L - 4, yy);
      }
      g.textAlign = "center";
      g.textBaseline = "alphabetic";
      for (const s of [180, 120, 60]) g.fillText(`-${s / 60}m`, x(now - s), h - 2);
      g.textAlign = "right";
      g.fillText("now", L + pw, h - 2);

      // Lines, with gaps where a value is missing; ceilings last, dashed
      // over the rest, so a limit stays visible when in flight reaches it.
      const order = this.lines.map((l, i) => i);
      order.sort((a, b) => !!this.lines[a].ceiling - !!this.lines[b].ceiling);
      order.forEach((i) => {
        const l = this.lines[i];
        const vals = this.v[i];
        g.strokeStyle = l.color;
        g.lineWidth = l.ceiling ? 1.5 : 2;
        g.setLineDash(l.ceiling ? [5, 3] : []);
        g.beginPath();
        let pen = false;
        for (let k = 0; k < vals.length; k++) {
          if (vals[k] === null) {
            pen = false;
            continue;
          }
          const xx = x(this.t[k]);
          const yy = y(vals[k]);
          if (pen) g.lineTo(xx, yy);
          else g.moveTo(xx, yy);
          pen = true;
        }
        // A single sample is a dot, not an invisible zero-length line.
        if (vals.length === 1 && vals[0] !== null) g.arc(x(this.t[0]), y(vals[0]), 1.5, 0, 7);
        g.stroke();
      });
      g.setLineDash([]);

      // Legend with the latest values; where that does not fit, the labels
      // alone (the card's big numbers carry the values).
      g.textAlign = "left";
      g.textBaseline = "middle";
      const legend = (withValues) =>
        this.lines.map((l, i) => {
          const vals = this.v[i];
          const last = vals.length ? vals[vals.length - 1] : null;
          // "↑": above the chart's scale, pinned to its top.
          const off = l.ceiling && pinned ? ` ${fmt(last, l.digits)}↑` : "";
          return withValues && !off ? `${l.label} ${fmt(last, l.digits)}` : l.label + off;
        });
      const width = (texts) => texts.reduce((a, t) => a + 25 + g.measureText(t).width, 0);
      let texts = legend(true);
      if (width(texts) > w - L) texts = legend(false);
      let lx = L;
      this.lines.forEach((l, i) => {
        g.fillStyle = l.color;
        g.fillRect(lx, 6, 10, 3);
        g.fillStyle = "#14171c";
        g.fillText(texts[i], lx + 13, 8);
        lx += 25 + g.measureText(texts[i]).width;
      });
    }
  }

  // A card: title, big number(s), chart.
  function card(row, title, scope, metric, lines, bigs) {
    const c = el("div", "card");
    c.appendChild(el("h2", null, title));
    const big = el("div", "big");
    const spans = bigs.map(([, caption]) => {
      const v = el("span", null, "–");
      big.appendChild(v);
      big.appendChild(el("small", null, caption));
      return v;
    });
    c.appendChild(big);
    row.appendChild(c);
    const chart = new Chart(c, scope, metric, lines);
    return {
      chart,
      set(values) {
        bigs.forEach(([digits], i) => (spans[i].textContent = fmt(values[i], digits)));
      },
    };
  }

  // --- the process row ---

  const proc = (() => {
    const row = $("process");
    const label = el("div", "label");
    label.appendChild(el("div", "name", "process"));
    const sub = el("div", "sub", "");
    label.appendChild(sub);
    row.appendChild(label);
    return {
      sub,
      cpu: card(row, "CPU", "process", "cpu",
        [{ key: "cpu", label: "CPU %", color: C.cpu, digits: 1 }], [[1, "% of all cores"]]),
      rss: card(row, "Memory", "process", "rss",
        [{ key: "rss", label: "RSS MiB", color: C.rss, digits: 0 }], [[0, "MiB resident"]]),
      db: card(row, "Database pool", "process", "database",
        [
          { key: "max", label: "max", color: C.limit, digits: 0, ceiling: true },
          { key: "size", label: "size", color: C.size, digits: 0 },
          { key: "idle", label: "idle", color: C.idle, digits: 0 },
          { key: "inuse", label: "in use", color: C.inuse, digits: 0 },
        ],
        [[0, "in use"], [0, "idle"], [0, "size"], [0, "max"]]),
      global: card(row, "All pools", "process", "global",
        [
          { key: "cap", label: "cap", color: C.limit, digits: 0, ceiling: true },
          { key: "inflight", label: "in flight", color: C.inflight, digits: 0 },
          { key: "queued", label: "queued", color: C.queued, digits: 0 },
        ],
        [[0, "in flight"], [0, "queued"]]),
    };
  })();

  // --- pools ---

  const pools = new Map(); // name → {row, cards…, prev, active}

  function poolRow(name) {
    let p = pools.get(name);
    if (p) return p;
    const row = el("section", "row idle");
    row.dataset.pool = name;
    const label = el("div", "label");
    label.appendChild(el("div", "name", name));
    const sub = el("div", "sub", "");
    label.appendChild(sub);
    // The department's token budget, when it has one.
    const tokens = el("div", "sub tokens", "");
    tokens.hidden = true;
    label.appendChild(tokens);
    label.appendChild(el("span", "idle-note", "idle"));
    const shed = el("span", "badge", "shedding");
    shed.hidden = true;
    label.appendChild(shed);
    row.appendChild(label);
    // Folded rows open on click, for a look at a quiet pool.
    row.addEventListener("click", () => {
      if (row.classList.contains("idle")) {
        p.active = true;
        row.classList.remove("idle");
        drawAll();
      }
    });
    p = {
      row,
      sub,
      tokens,
      shed,
      prev: null,
      active: false,
      conc: card(row, "Concurrency", name, "concurrency",
        [
          { key: "limit", label: "limit", color: C.limit, digits: 0, ceiling: true },
          { key: "inflight", label: "in flight", color: C.inflight, digits: 0 },
          { key: "queued", label: "queued", color: C.queued, digits: 0 },
        ],
        [[0, "queued"], [0, "in flight"], [0, "limit"]]),
      tput: card(row, "Throughput", name, "throughput",
        [{ key: "tput", label: "done/s", color: C.tput, digits: 1 }], [[1, "tasks/s"]]),
      lat: card(row, "Latency, end to end (last ~10 s)", name, "latency",
        [
          { key: "p50", label: "p50 ms", color: C.p50, digits: 0 },
          { key: "p99", label: "p99 ms", color: C.p99, digits: 0 },
        ],
        [[0, "ms p50"], [0, "ms p99"]]),
      err: card(row, "Refused and timed out", name, "errors",
        [
          { key: "rejected", label: "refused/s", color: C.rej, digits: 1 },
          { key: "timedout", label: "timed out/s", color: C.tmo, digits: 1 },
        ],
        [[1, "refused/s"], [1, "timed out/s"]]),
    };
    pools.set(name, p);
    $("pools").appendChild(row);
    return p;
  }

  // Per-second rate of a counter between two polls; null across a restart.
  const rate = (now, before, dt) =>
    before === null || dt <= 0 || now < before ? null : (now - before) / dt;

  function ingestPool(ps, up, t) {
    const p = poolRow(ps.name);
    const lim = ps.limit || {};
    const done = (ps.succeeded || 0) + (ps.failed || 0) + (ps.timed_out || 0) + (ps.cancelled || 0);
    const prev = p.prev;
    const dt = prev ? up - prev.up : 0;
    const tput = rate(done, prev && prev.done, dt);
    const rej = rate(ps.rejected || 0, prev && prev.rejected, dt);
    const tmo = rate(ps.timed_out || 0, prev && prev.timed_out, dt);
    const accepted = ps.accepted || 0;
    // Any work since the page opened unfolds the pool, for good.
    if (!p.active && (ps.running > 0 || ps.queued > 0 ||
        (prev && (accepted !== prev.accepted || ps.rejected !== prev.rejected)))) {
      p.active = true;
      p.row.classList.remove("idle");
    }
    p.prev = { up, done, rejected: ps.rejected || 0, timed_out: ps.timed_out || 0, accepted };

    p.sub.textContent = `${ps.agent} · ${lim.algorithm || "?"}`;
    const budget = tokensText(ps.tokens);
    p.tokens.hidden = !budget;
    p.tokens.textContent = budget ? `tokens left: ${budget}` : "";
    p.shed.hidden = !ps.shedding;
    const inflight = num(lim.in_flight) !== null ? lim.in_flight : ps.running;
    const limit = num(lim.limit) !== null ? lim.limit : ps.concurrency;
    p.conc.chart.push(t, [limit, inflight, ps.queued]);
    p.conc.set([ps.queued, inflight, limit]);
    p.tput.chart.push(t, [tput]);
    p.tput.set([tput]);
    // `latency_ms` is newer than the rest of the status; "–" without it.
    const lat = ps.latency_ms || null;
    const p50 = lat && lat.count ? num(lat.p50) : null;
    const p99 = lat && lat.count ? num(lat.p99) : null;
    p.lat.chart.push(t, [p50, p99]);
    p.lat.set([p50, p99]);
    p.err.chart.push(t, [rej, tmo]);
    p.err.set([rej, tmo]);
  }

  // "750 of 1,000/min · 9,000 of 10,000/day" for a budget's windows.
  function tokensText(b) {
    if (!b) return "";
    const parts = [];
    for (const [w, unit] of [["minute", "min"], ["day", "day"]]) {
      const x = b[w];
      if (x) parts.push(`${(x.remaining || 0).toLocaleString("en")} of ${(x.limit || 0).toLocaleString("en")}/${unit}`);
    }
    return parts.join(" · ");
  }

  function ingest(st, t) {
    const up = num(st.uptime_s) || 0;
    $("meta").textContent =
      `v${st.version || "?"} · node ${st.node_id || "?"} · ${(st.database || {}).backend || "?"}` +
      ` · up ${fmtUptime(up)}${st.draining ? " · DRAINING" : ""}`;
    const res = st.resources || {};
    proc.sub.textContent = `${st.live_tasks || 0} live tasks`;
    proc.cpu.chart.push(t, [res.cpu_pct]);
    proc.cpu.set([res.cpu_pct]);
    proc.rss.chart.push(t, [res.rss_mib]);
    proc.rss.set([res.rss_mib]);
    const db = st.database || {};
    proc.db.chart.push(t, [db.max, db.size, db.idle, db.in_use]);
    proc.db.set([db.in_use, db.idle, db.size, db.max]);
    const gl = st.global || {};
    const list = Array.isArray(st.pools) ? st.pools : [];
    const queued = list.reduce((a, p) => a + (p.queued || 0), 0);
    proc.global.chart.push(t, [gl.limit, gl.in_flight, queued]);
    proc.global.set([gl.in_flight, queued]);
    for (const ps of list) ingestPool(ps, up, t);
    const tt = st.tenant_tokens || {};
    const names = Object.keys(tt).sort();
    const box = $("tenant-tokens");
    box.hidden = names.length === 0;
    box.textContent = names.length
      ? "tenants' tokens left: " + names.map((n) => `${n} ${tokensText(tt[n])}`).join("; ")
      : "";
  }

  function allCharts() {
    const out = [proc.cpu, proc.rss, proc.db, proc.global];
    for (const p of pools.values()) out.push(p.conc, p.tput, p.lat, p.err);
    return out.map((c) => c.chart);
  }

  // The name column is as wide as the longest name of an open row (rows
  // share it, so their charts line up): at least LABEL_MIN px, at most
  // LABEL_MAX px or LABEL_SHARE of the window, whichever is less. A name
  // that still does not fit is cut with an ellipsis, whole in its tooltip;
  // `data-fit` says which (`whole` or `clipped`).
  const LABEL_MIN = 150;
  const LABEL_MAX = 280;
  const LABEL_SHARE = 0.22;
  const LABEL_PAD = 6; // .label's horizontal padding, and a pixel of rounding
  let labelW = 0;
  function fitLabels() {
    const names = document.querySelectorAll("main .row:not(.idle) .label .name");
    let w = LABEL_MIN;
    for (const n of names) w = Math.max(w, n.scrollWidth + LABEL_PAD);
    w = Math.max(LABEL_MIN, Math.min(w, LABEL_MAX, Math.round(window.innerWidth * LABEL_SHARE)));
    if (w !== labelW) {
      labelW = w;
      document.querySelector("main").style.setProperty("--label-w", `${w}px`);
    }
    for (const n of names) {
      const clipped = n.scrollWidth > n.clientWidth;
      n.dataset.fit = clipped ? "clipped" : "whole";
      if (clipped) n.title = n.textContent;
      else n.removeAttribute("title");
    }
  }

  function drawAll() {
    fitLabels();
    const now = performance.now() / 1000;
    for (const c of allCharts()) c.draw(now);
  }

  // --- errors ---

  const banner = $("banner");
  function showBanner(text, auth) {
    banner.textContent = text;
    banner.classList.toggle("auth", !!auth);
    banner.hidden = false;
  }

  function showError(e) {
    if (e.status === 401 || e.status === 403) {
      showBanner(
        key
          ? `The API key was refused (${e.message}). Enter another one above.`
          : "This server needs an API key: enter it above, or open /dashboard?key=<key>.",
        true,
      );
      if (document.activeElement !== $("key")) $("key").focus();
    } else if (e.status) {
      showBanner(`GET /api/status answered ${e.status}: ${e.message}. Retrying every second.`);
    } else if (e.name === "AbortError") {
      showBanner(`GET /api/status took longer than ${TIMEOUT_MS / 1000} s. Retrying every second.`);
    } else {
      showBanner(`Cannot reach the server (${e.message}). Retrying every second; the charts show the last data.`);
    }
  }

  // --- polling ---

  let polls = 0;
  let lastOk = null;

  async function fetchStatus() {
    return fetchJson("api/status");
  }

  async function fetchJson(path) {
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(path, { headers, cache: "no-store", signal: ctl.signal });
      if (!r.ok) {
        let message = r.statusText || "error";
        try {
          const body = await r.json();
          if (body && body.message) message = body.message;
        } catch (_) {
          // Not our JSON envelope (a proxy's page, say): keep the status text.
        }
        const err = new Error(message);
        err.status = r.status;
        throw err;
      }
      return await r.json();
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    const started = performance.now();
    try {
      const st = await fetchStatus();
      const t = performance.now() / 1000;
      ingest(st, t);
      fillDepartments(st);
      polls += 1;
      lastOk = t;
      document.body.dataset.polls = String(polls);
      banner.hidden = true;
      drawAll();
    } catch (e) {
      showError(e);
    }
    // Trim even without new data, so a dead server's charts scroll away.
    const now = performance.now() / 1000;
    for (const c of allCharts()) c.trim(now);
    const age = $("age");
    if (lastOk === null) age.textContent = "";
    else {
      const a = now - lastOk;
      age.textContent = a < 2.5 ? "live" : `last data ${Math.round(a)} s ago`;
      age.classList.toggle("stale", a >= 2.5);
    }
    setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
  }

  // --- nodes (a cluster on PostgreSQL) ---

  // One line per node on the database: alive or dead, heartbeat age, and
  // the departments it runs or queues work in. Shown only on PostgreSQL,
  // where several nodes can share the database.
  function renderNodes(n) {
    const sec = $("nodes");
    if (!n || n.backend !== "postgres" || !Array.isArray(n.nodes)) {
      sec.hidden = true;
      return;
    }
    sec.hidden = false;
    sec.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = `nodes · ${n.nodes.filter((x) => x.alive).length} alive of ${n.nodes.length}`;
    sec.append(h);
    const table = document.createElement("table");
    for (const node of n.nodes) {
      const tr = document.createElement("tr");
      tr.dataset.node = node.node_id;
      tr.className = node.left ? "left" : node.alive ? "alive" : "dead";
      const busy = Object.entries(node.pools || {})
        .filter(([, p]) => p.running > 0 || p.queued > 0)
        .map(([name, p]) => `${name} ${p.running}/${p.limit} +${p.queued}`)
        .join(", ");
      const state = node.left ? "left" : node.alive ? `alive · beat ${node.heartbeat_age_ms} ms ago` : "dead";
      for (const text of [(node.this ? "▸ " : "") + node.node_id, node.address, state, busy || "idle"]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      table.append(tr);
    }
    sec.append(table);
  }

  async function pollNodes() {
    try {
      renderNodes(await fetchJson("api/nodes"));
    } catch (_) {
      // The status poll reports errors; an older server has no /api/nodes.
    }
    setTimeout(pollNodes, 2 * POLL_MS);
  }

  // --- key form ---

  $("key").value = key;
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    setKey($("key").value);
    banner.hidden = true;
  });
  $("forget").addEventListener("click", () => {
    setKey("");
    $("key").value = "";
  });
  window.addEventListener("resize", drawAll);

  // --- task explorer: recent tasks (filters, cursor pages) and a task's page ---
  //
  // `#tasks?status=&department=&tenant=&limit=&cursor=` is the list,
  // `#task=<id>` one task. Pages go by `next_cursor` (the API's keyset
  // pages), so a page costs the same with millions of tasks. The first
  // page refreshes every 2 s; older pages stay put. A task's page follows
  // its event stream (read with fetch, so the key goes in a header). For
  // tests: `#tasks[data-rows]`, `tr[data-task][data-status]`,
  // `#task[data-status][data-events]`.

  const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled"]);
  let listTimer = null;
  let cursors = [];   // cursors of the pages before this one
  let nextCursor = null;
  let streamCtl = null;

  function hashParams() {
    const h = location.hash.replace(/^#/, "");
    const [view, query] = h.split("?");
    return { view, q: new URLSearchParams(query || "") };
  }

  function listPath(cursor) {
    const q = new URLSearchParams();
    const status = $("f-status").value;
    const dep = $("f-department").value;
    const tenant = $("f-tenant").value.trim();
    if (status) q.set("status", status);
    if (dep) q.set("department", dep);
    if (tenant) q.set("tenant", tenant);
    q.set("limit", String(pageSize));
    if (cursor) q.set("cursor", cursor);
    return "api/tasks?" + q.toString();
  }

  let pageSize = 25;
  let cursor = "";

  async function loadList() {
    clearTimeout(listTimer);
    const err = $("tasks-error");
    try {
      const page = await fetchJson(listPath(cursor));
      renderList(page.tasks || []);
      nextCursor = page.next_cursor || null;
      $("t-older").disabled = !nextCursor;
      $("tasks").dataset.nextCursor = nextCursor || "";
      err.hidden = true;
    } catch (e) {
      err.textContent = `Cannot list tasks: ${e.message}`;
      err.hidden = false;
    }
    if (!cursor && hashParams().view !== "task") listTimer = setTimeout(loadList, 2 * POLL_MS);
  }

  function renderList(tasks) {
    const body = $("tasklist").tBodies[0];
    body.replaceChildren();
    for (const t of tasks) {
      const tr = el("tr");
      tr.dataset.task = t.id;
      tr.dataset.status = t.status;
      const id = el("td", "id");
      const a = el("a", "", t.id.slice(0, 8) + "…" + t.id.slice(-4));
      a.href = "#task=" + encodeURIComponent(t.id);
      a.title = t.id;
      id.append(a);
      tr.append(id);
      const total = t.timings && num(t.timings.total_ms);
      for (const [text, cls] of [
        [t.type, ""],
        [t.status, "st-" + t.status],
        [t.department, ""],
        [t.tenant, ""],
        [(t.created_at || "").replace("T", " ").replace("Z", ""), ""],
        [total === null || total === undefined ? "" : total.toFixed(1), ""],
        [t.waiting_for || "", ""],
      ]) tr.append(el("td", cls, text));
      body.append(tr);
    }
    $("tasks").dataset.rows = String(tasks.length);
  }

  function showList() {
    if (streamCtl) streamCtl.abort();
    $("task").hidden = true;
    $("tasks").hidden = false;
    const { q } = hashParams();
    for (const f of ["status", "department", "tenant"]) {
      if (q.has(f)) {
        const input = $("f-" + f);
        if (f === "department" && ![...input.options].some((o) => o.value === q.get(f))) {
          input.append(el("option", "", q.get(f)));
        }
        input.value = q.get(f);
      }
    }
    if (q.has("limit")) pageSize = Math.max(1, Math.min(500, parseInt(q.get("limit"), 10) || 25));
    cursor = q.get("cursor") || "";
    loadList();
  }

  function fillDepartments(st) {
    const sel = $("f-department");
    const have = new Set([...sel.options].map((o) => o.value));
    for (const p of st.pools || []) {
      if (!have.has(p.name)) sel.append(el("option", "", p.name));
    }
  }

  $("taskfilter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    cursors = [];
    cursor = "";
    loadList();
  });
  $("t-newest").addEventListener("click", () => {
    cursors = [];
    cursor = "";
    loadList();
  });
  $("t-older").addEventListener("click", () => {
    if (!nextCursor) return;
    cursors.push(cursor);
    cursor = nextCursor;
    loadList();
  });

  // One task: facts, a timeline of its stages, its outcome, live events.
  async function showTask(id) {
    clearTimeout(listTimer);
    $("tasks").hidden = true;
    const sec = $("task");
    sec.hidden = false;
    sec.dataset.events = "0";
    $("task-events").replaceChildren();
    $("task-action-result").textContent = "";
    try {
      renderTask(await fetchJson("api/tasks/" + encodeURIComponent(id)));
    } catch (e) {
      $("task-title").textContent = `task ${id}: ${e.message}`;
      sec.dataset.status = "error";
      return;
    }
    followEvents(id);
  }

  function renderTask(t) {
    const sec = $("task");
    sec.dataset.status = t.status;
    sec.dataset.task = t.id;
    $("task-title").textContent = `${t.type} · ${t.status} · ${t.id}`;
    const facts = $("task-facts");
    facts.replaceChildren();
    const fact = (k, v) => {
      if (v === null || v === undefined || v === "") return;
      facts.append(el("dt", "", k), el("dd", "", String(v)));
    };
    fact("status", t.status);
    fact("waiting for", t.waiting_for);
    fact("department", t.department);
    fact("agent / instance", `${t.agent} / ${t.instance || "–"}`);
    fact("tenant", t.tenant);
    fact("priority", t.priority);
    fact("attempts", t.attempts);
    fact("nodes (per attempt)", (t.nodes || []).join(", "));
    fact("created", t.created_at);
    fact("started", t.started_at);
    fact("finished", t.finished_at);
    fact("deadline", t.deadline_at);
    const tl = $("task-timeline");
    tl.replaceChildren();
    const tm = t.timings || {};
    const stages = ["admission", "persist", "queue", "run"]
      .map((s) => [s, num(tm[s + "_ms"])])
      .filter(([, v]) => v !== null);
    const total = stages.reduce((a, [, v]) => a + v, 0) || 1;
    for (const [s, v] of stages) {
      const d = el("div", "stage stage-" + s, `${s} ${v.toFixed(1)} ms`);
      d.dataset.stage = s;
      d.dataset.ms = String(v);
      d.style.flexGrow = String(Math.max(v / total, 0.02));
      d.title = `${s}: ${v.toFixed(3)} ms`;
      tl.append(d);
    }
    // Every attempt (retries, takeovers), oldest first.
    const rows = $("task-attempts").querySelector("tbody");
    rows.replaceChildren();
    for (const a of t.history || []) {
      const tr = el("tr", "");
      tr.dataset.attempt = String(a.attempt);
      tr.dataset.status = a.status;
      const err = a.error ? `${a.error.code}: ${a.error.message}` : "";
      for (const v of [a.attempt, a.status, a.node || "–", a.instance || "–", a.started_at || "–",
                       num(a.run_ms) === null ? "–" : num(a.run_ms).toFixed(1), err]) {
        tr.append(el("td", "", String(v)));
      }
      rows.append(tr);
    }
    if (t.run_after) fact("next attempt not before", t.run_after);
    const failed = t.error !== null && t.error !== undefined;
    $("task-outcome-title").textContent = failed ? "error" : "result";
    const out = failed ? t.error : t.result;
    $("task-outcome").textContent =
      out === null || out === undefined ? (TERMINAL.has(t.status) ? "–" : "(not yet)") : JSON.stringify(out, null, 2);
    $("task-cancel").disabled = TERMINAL.has(t.status);
    $("task-retry").disabled = !TERMINAL.has(t.status) || t.status === "succeeded";
  }

  function logEvent(kind, text) {
    const li = el("li", "", `${new Date().toISOString().slice(11, 23)} ${kind} ${text}`);
    li.dataset.kind = kind;
    $("task-events").append(li);
    const sec = $("task");
    sec.dataset.events = String(Number(sec.dataset.events || 0) + 1);
  }

  // Server-sent events over fetch: EventSource cannot send the key.
  async function followEvents(id) {
    if (streamCtl) streamCtl.abort();
    const ctl = new AbortController();
    streamCtl = ctl;
    const headers = { Accept: "text/event-stream" };
    if (key) headers.Authorization = `Bearer ${key}`;
    try {
      const r = await fetch("api/tasks/" + encodeURIComponent(id) + "/events", { headers, signal: ctl.signal });
      if (!r.ok || !r.body) {
        logEvent("error", `event stream: HTTP ${r.status}`);
        return;
      }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (!data.length) continue;
          let v = null;
          try {
            v = JSON.parse(data.join("\n"));
          } catch (_) {
            v = data.join("\n");
          }
          if (kind === "state" && v && v.status) {
            logEvent("state", v.status + (v.waiting_for ? ` (waiting for ${v.waiting_for})` : ""));
          } else if (kind === "progress") {
            logEvent("progress", JSON.stringify(v).slice(0, 200));
          } else if (kind === "result" && v && v.id) {
            logEvent("result", v.status);
            renderTask(v);
          } else {
            logEvent(kind, typeof v === "string" ? v : JSON.stringify(v).slice(0, 200));
          }
        }
      }
    } catch (e) {
      if (!ctl.signal.aborted) logEvent("error", `event stream: ${e.message}`);
    }
  }

  async function act(what) {
    const id = $("task").dataset.task;
    if (!id) return;
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    const out = $("task-action-result");
    try {
      const r = await fetch(`api/tasks/${encodeURIComponent(id)}/${what}`, { method: "POST", headers });
      const body = await r.json().catch(() => ({}));
      if (r.ok) {
        out.textContent = `${what}: ${r.status}`;
        if (body && body.id) renderTask(body);
        if (what === "retry") followEvents(id);
      } else {
        out.textContent = `${what}: ${r.status} ${body.error_code || ""} ${body.message || ""}`;
      }
    } catch (e) {
      out.textContent = `${what}: ${e.message}`;
    }
  }
  $("task-cancel").addEventListener("click", () => act("cancel"));
  $("task-retry").addEventListener("click", () => act("retry"));

  function route() {
    const { view } = hashParams();
    if (view.startsWith("task=")) showTask(decodeURIComponent(view.slice(5)));
    else showList();
  }
  window.addEventListener("hashchange", route);

  poll();
  pollNodes();
  route();
})();
