/*
 * ml_persistence web UI (read-only). Plain browser JavaScript, no build step.
 *
 * Every string that comes from the database reaches the page through textContent,
 * createTextNode or setAttribute (see el() below); nothing is parsed as HTML.
 * Strings handed to Plotly (titles, trace names) go through escapeForPlotly first,
 * because Plotly renders a subset of HTML in them.
 */
(function () {
  'use strict';

  const POINTS = 2000;            // per-series resolution asked of the server
  const RUNS_REFRESH_MS = 5000;   // runs list auto-refresh
  const SERIES_CONCURRENCY = 2;   // metric series fetched at once: the first chart comes sooner
  const AXES = ['step', 'episode', 'time'];  // preference order for the default x axis
  const AXIS_LABELS = { step: 'step', episode: 'episode', time: 'time' };
  const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2',
    '#be185d', '#4d7c0f', '#7c3aed', '#b45309', '#0f766e', '#475569'];
  const FONT = '-apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
  const PLOTLY_CONFIG = {
    responsive: true,
    displaylogo: false,
    modeBarButtonsToRemove: ['lasso2d', 'select2d'],
  };
  const STATUS_HINTS = {
    running: 'The process is alive and the run is in progress.',
    crashed: 'The process died without ending the run (killed, out of memory, power loss).',
    stale: 'Marked running, but nothing was logged for a long time and its process cannot be checked from here.',
    interrupted: 'The run was interrupted.',
    failed: 'The run ended with an error.',
    completed: 'The run finished.',
  };

  const pollMs = () => Number(window.ML_UI_POLL_MS) || 2000;

  // ---------------------------------------------------------------- DOM helpers

  /** Create an element. attrs: class, dataset, on<event> handlers, DOM properties
   *  (checked, disabled, value, selected), everything else through setAttribute.
   *  Children: nodes, arrays, or anything else as a text node. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (key === 'class') {
          node.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : String(value);
        } else if (key === 'dataset') {
          for (const [k, v] of Object.entries(value)) {
            if (v !== null && v !== undefined) node.dataset[k] = String(v);
          }
        } else if (key.startsWith('on') && typeof value === 'function') {
          node.addEventListener(key.slice(2), value);
        } else if (key === 'checked' || key === 'disabled' || key === 'selected' || key === 'value') {
          node[key] = value;
        } else {
          node.setAttribute(key, value === true ? '' : String(value));
        }
      }
    }
    appendChildren(node, children);
    return node;
  }

  function appendChildren(node, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) appendChildren(node, child);
      else if (child instanceof Node) node.appendChild(child);
      else node.appendChild(document.createTextNode(String(child)));
    }
  }

  /** Replace a node's children (flattening arrays, skipping null/false like el()). */
  function setChildren(node, ...children) {
    node.textContent = '';
    appendChildren(node, children);
    return node;
  }

  /** Entity-escape a user string before Plotly sees it (it renders <b>, <a>, <br> ...). */
  function escapeForPlotly(value) {
    const map = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
    return String(value === null || value === undefined ? '' : value).replace(/[&<>"']/g, (c) => map[c]);
  }

  /** Only same-site paths and http(s) URLs end up in href/src. */
  function safeUrl(url) {
    if (typeof url !== 'string') return null;
    const s = url.trim();
    if (!s || /^[\\/]{2}/.test(s)) return null;
    if (/^[a-z][a-z0-9+.-]*:/i.test(s)) return /^https?:/i.test(s) ? s : null;
    return s;
  }

  function cssToken(value) {
    return String(value || 'unknown').toLowerCase().replace(/[^a-z0-9_-]+/g, '-');
  }

  // ---------------------------------------------------------------- formatting

  /** Numbers, or the "Infinity"/"-Infinity"/"NaN" strings the server uses for non-finite floats. */
  function toNumber(v) {
    if (typeof v === 'number') return v;
    if (typeof v === 'boolean') return v ? 1 : 0;
    if (v === 'Infinity' || v === 'inf') return Infinity;
    if (v === '-Infinity' || v === '-inf') return -Infinity;
    if (v === 'NaN' || v === 'nan') return NaN;
    return null;
  }

  function fmtNum(v) {
    if (v === null || v === undefined || v === '') return '—';
    const n = toNumber(v);
    if (n === null) return String(v);
    if (Number.isNaN(n)) return 'NaN';
    if (n === Infinity) return '∞';
    if (n === -Infinity) return '−∞';
    if (Number.isInteger(n) && Math.abs(n) < 1e15) return String(n);
    const a = Math.abs(n);
    if (a >= 1e-3 && a < 1e6) return String(Number(n.toPrecision(5)));
    return n.toExponential(3);
  }

  function fmtInt(v) {
    return v === null || v === undefined ? '—' : String(v);
  }

  /** 45.2s, 3m12s, 2h05m, 3d04h. */
  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    let s = toNumber(seconds);
    if (s === null || !Number.isFinite(s)) return '—';
    if (s < 0) s = 0;
    if (s < 59.95) return s.toFixed(1) + 's';
    const total = Math.round(s);
    const pad = (n) => String(n).padStart(2, '0');
    if (total < 3600) return Math.floor(total / 60) + 'm' + pad(total % 60) + 's';
    if (total < 86400) return Math.floor(total / 3600) + 'h' + pad(Math.floor((total % 3600) / 60)) + 'm';
    return Math.floor(total / 86400) + 'd' + pad(Math.floor((total % 86400) / 3600)) + 'h';
  }

  /** Parse the stored timestamp text ('2024-05-01 10:30:00.123456', local time, or ISO with offset). */
  function parseTimestamp(text) {
    if (typeof text !== 'string') return null;
    const m = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2})?)(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?$/i.exec(text.trim());
    if (!m) return null;
    let iso = m[1] + 'T' + m[2];
    if (m[3]) iso += m[3].slice(0, 4).padEnd(4, '0');
    if (m[4]) iso += /^z$/i.test(m[4]) ? 'Z' : m[4].slice(0, 3) + ':' + m[4].slice(-2);
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function fmtTime(text) {
    if (text === null || text === undefined || text === '') return '—';
    return String(text).replace('T', ' ').replace(/\.\d+/, '');
  }

  /** Stored duration, or for a running run the time since it started. */
  function effectiveDuration(exp) {
    if (exp.status === 'running') {
      const start = parseTimestamp(exp.start_time);
      if (start) return Math.max(0, (Date.now() - start.getTime()) / 1000);
    }
    const d = toNumber(exp.duration_seconds);
    return d === null || !Number.isFinite(d) ? null : d;
  }

  function formatValue(v) {
    if (v === null || v === undefined) return 'null';
    if (typeof v === 'string') return v;
    if (typeof v === 'number' || typeof v === 'boolean') return String(v);
    try { return JSON.stringify(v); } catch (e) { return String(v); }
  }

  // ---------------------------------------------------------------- smoothing

  /**
   * TensorBoard-style exponential moving average with debiasing.
   * values: array of numbers; null / non-finite entries are passed through as null and
   * do not affect the average. weight: 0 (no smoothing) .. <1.
   */
  function mlpSmooth(values, weight) {
    const w = Math.min(Math.max(Number(weight) || 0, 0), 0.999999);
    const out = new Array(values ? values.length : 0);
    let last = 0;
    let count = 0;
    for (let i = 0; i < out.length; i++) {
      const v = values[i];
      if (typeof v !== 'number' || !Number.isFinite(v)) {
        out[i] = null;
        continue;
      }
      last = last * w + (1 - w) * v;
      count += 1;
      const debias = w === 0 ? 1 : 1 - Math.pow(w, count);
      // Rounded to 12 digits: a constant series must stay exactly constant, or autoscaling
      // magnifies float noise into spikes.
      out[i] = Number((last / debias).toPrecision(12));
    }
    return out;
  }
  window.mlpSmooth = mlpSmooth;

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, status, body) {
      super(message);
      this.status = status;
      this.body = body || null;   // the error answer's JSON (a filter error's position is there)
    }
  }

  async function api(path, signal) {
    let resp;
    try {
      resp = await fetch(path, { signal, headers: { Accept: 'application/json' }, credentials: 'same-origin' });
    } catch (e) {
      if (e && e.name === 'AbortError') throw e;
      throw new ApiError('Could not reach the server (' + (e && e.message ? e.message : 'network error') + ').', 0);
    }
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      const msg = body && typeof body.error === 'string' ? body.error : 'HTTP ' + resp.status + ' ' + resp.statusText;
      throw new ApiError(msg, resp.status, body);
    }
    if (body === null) throw new ApiError('The server sent an unreadable answer for ' + path + '.', resp.status);
    return body;
  }

  function isAbort(e) {
    return e && e.name === 'AbortError';
  }

  /** Run async tasks with at most `limit` in flight. */
  async function pool(items, limit, fn) {
    let next = 0;
    const workers = [];
    for (let w = 0; w < Math.min(limit, items.length); w++) {
      workers.push((async () => {
        while (next < items.length) {
          const item = items[next++];
          await fn(item);
        }
      })());
    }
    await Promise.all(workers);
  }

  // ---------------------------------------------------------------- page plumbing

  const appEl = () => document.getElementById('app');
  let lastUpdated = 0;

  function markRendered(page) {
    const now = Math.max(Date.now(), lastUpdated + 1);
    lastUpdated = now;
    document.body.dataset.page = page;
    document.body.dataset.updated = String(now);
  }

  function showError(message) {
    const box = document.getElementById('error');
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    const box = document.getElementById('error');
    if (!box.hidden || box.textContent) {
      box.textContent = '';
      box.hidden = true;
    }
  }

  function setCrumbs(...parts) {
    const nav = document.getElementById('crumbs');
    const items = [];
    parts.forEach((p, i) => {
      if (i) items.push(el('span', { class: 'crumb-sep', 'aria-hidden': 'true' }, '/'));
      items.push(p.href ? el('a', { href: p.href }, p.text) : el('span', { class: 'crumb-current' }, p.text));
    });
    setChildren(nav, ...items);
  }

  /** Everything a page starts (fetches, timers) dies with its context. */
  class PageContext {
    constructor() {
      this.controller = new AbortController();
      this.timers = new Set();
      this.disposed = false;
    }
    get signal() { return this.controller.signal; }
    timeout(fn, ms) {
      const id = setTimeout(() => {
        this.timers.delete(id);
        if (!this.disposed) fn();
      }, ms);
      this.timers.add(id);
      return id;
    }
    clear(id) {
      if (id !== null && id !== undefined) {
        clearTimeout(id);
        this.timers.delete(id);
      }
    }
    dispose() {
      this.disposed = true;
      this.controller.abort();
      for (const id of this.timers) clearTimeout(id);
      this.timers.clear();
    }
  }

  let current = null;

  function parseHash() {
    let h = location.hash.replace(/^#/, '');
    if (!h.startsWith('/')) h = '/' + h;
    const q = h.indexOf('?');
    const path = q >= 0 ? h.slice(0, q) : h;
    const params = new URLSearchParams(q >= 0 ? h.slice(q + 1) : '');
    return { path, params };
  }

  function purgeCharts() {
    if (!window.Plotly) return;
    for (const gd of document.querySelectorAll('#app .js-plotly-plot')) {
      try { window.Plotly.purge(gd); } catch (e) { /* already gone */ }
    }
  }

  function route() {
    if (current) current.dispose();
    const ctx = new PageContext();
    current = ctx;
    purgeCharts();
    clearError();
    delete document.body.dataset.page;
    const { path, params } = parseHash();
    let m;
    if (path === '/' || path === '' || path === '/runs') {
      runsPage(ctx, params);
    } else if ((m = /^\/run\/([^/]*)\/?$/.exec(path))) {
      let id = m[1];
      try { id = decodeURIComponent(id); } catch (e) { /* keep raw */ }
      runPage(ctx, id);
    } else if (path === '/compare' || path === '/compare/') {
      comparePage(ctx, params);
    } else if (path === '/sweep' || path === '/sweep/') {
      sweepPage(ctx, params);
    } else {
      setCrumbs({ text: 'Runs', href: '#/' }, { text: 'Not found' });
      document.title = 'Not found — ml_persistence';
      setChildren(appEl(), el('p', { class: 'empty' }, 'There is no page here. ', el('a', { href: '#/' }, 'Back to all runs')));
      showError('Unknown page: ' + path);
      markRendered('notfound');
    }
  }

  // ---------------------------------------------------------------- shared widgets

  function statusBadge(status, storedStatus, id) {
    const s = status || 'unknown';
    let title = STATUS_HINTS[s] || '';
    if (storedStatus && storedStatus !== s) title += (title ? ' ' : '') + 'Stored status: ' + storedStatus + '.';
    return el('span', {
      id: id || null,
      class: ['status', 'status-' + cssToken(s)],
      title: title || null,
      dataset: { status: s },
    }, s);
  }

  function tagList(tags, onTag) {
    if (!Array.isArray(tags) || !tags.length) return el('span', { class: 'muted' }, '—');
    return el('span', { class: 'tags' }, tags.map((t) => (onTag
      ? el('button', { type: 'button', class: 'tag', title: 'Show only runs tagged ' + t, onclick: () => onTag(t) }, t)
      : el('span', { class: 'tag' }, t))));
  }

  /** A model's aliases ("champion", "production") as badges; a row without the key (an older server) shows a dash. */
  function aliasBadges(aliases) {
    if (!Array.isArray(aliases) || !aliases.length) return el('span', { class: 'muted' }, '—');
    return el('span', { class: 'alias-list' }, aliases.map((a) => el('span', { class: 'alias', title: 'Alias ' + a }, String(a))));
  }

  function numCell(v, raw) {
    return el('td', { class: 'num', title: raw === undefined ? null : formatValue(raw) }, v);
  }

  function emptyNote(text) {
    return el('p', { class: 'empty' }, text);
  }

  function section(id, title, ...content) {
    return el('section', { id, class: 'panel' }, el('h2', null, title), ...content);
  }

  function simpleTable(className, headers, rows) {
    return el('div', { class: 'table-wrap' },
      el('table', { class: ['data', className] },
        el('thead', null, el('tr', null, headers.map((h) => (typeof h === 'string'
          ? el('th', null, h)
          : el('th', { class: h.num ? 'num' : null }, h.text))))),
        el('tbody', null, rows)));
  }

  /** A system metric (CPU, memory, GPU samples: `system/...`): drawn on the System panel against time. */
  function isSystemMetric(m) {
    return !!m && (m.system === true || String(m.name).startsWith('system/'));
  }

  function chooseDefaultAxis(metrics) {
    const counts = { step: 0, episode: 0, time: 0 };
    for (const m of metrics || []) {
      for (const a of Array.isArray(m.axes) ? m.axes : AXES) if (a in counts) counts[a] += 1;
    }
    // Step when any metric has it (episode-only metrics fall back per chart, see axisFor).
    for (const a of AXES) if (counts[a] > 0) return a;
    return 'step';
  }

  /** The axis a metric is drawn against: the chosen one if it has it, else its best alternative. */
  function axisFor(metric, chosen) {
    const axes = metric && Array.isArray(metric.axes) ? metric.axes : null;
    if (!axes || axes.includes(chosen)) return chosen;
    for (const a of AXES) if (axes.includes(a)) return a;
    return chosen;
  }

  function axisSelect(value, onChange) {
    return el('label', { class: 'control' }, 'x axis ',
      el('select', { id: 'x-axis', onchange: (ev) => onChange(ev.target.value) },
        AXES.map((a) => el('option', { value: a, selected: a === value }, AXIS_LABELS[a]))));
  }

  function smoothingControl(value, onInput) {
    const out = el('output', { id: 'smoothing-value', for: 'smoothing' }, value.toFixed(2));
    const input = el('input', {
      id: 'smoothing', type: 'range', min: '0', max: '0.99', step: '0.01', value: String(value),
      oninput: (ev) => {
        const v = Math.min(Math.max(Number(ev.target.value) || 0, 0), 0.99);
        out.textContent = v.toFixed(2);
        onInput(v);
      },
    });
    return el('label', { class: 'control' }, 'smoothing ', input, out);
  }

  function logControl(value, onChange) {
    return el('label', { class: 'control' },
      el('input', { id: 'log-scale', type: 'checkbox', checked: value, onchange: (ev) => onChange(ev.target.checked) }),
      ' log scale');
  }

  /** Coalesce bursts of events (range slider) into one call per frame. */
  function perFrame(fn) {
    let pending = false;
    return () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; fn(); });
    };
  }

  // ---------------------------------------------------------------- chart helpers

  function lineTrace(xs, ys, name, color, extra) {
    const n = xs.length;
    return Object.assign({
      type: n > 5000 ? 'scattergl' : 'scatter',
      mode: n === 1 ? 'markers' : 'lines',
      x: xs,
      y: ys,
      name: escapeForPlotly(name),
      line: { color, width: 1.6 },
      marker: { color, size: 5 },
      connectgaps: false,
    }, extra || {});
  }

  /** Raw + smoothed traces for one series. */
  function seriesTraces(series, name, color, smoothing, extra) {
    const traces = [];
    if (smoothing > 0) {
      traces.push(lineTrace(series.xs, series.ys, name + ' (raw)', color,
        Object.assign({ opacity: 0.25, showlegend: false, hoverinfo: 'skip' }, extra || {})));
      traces.push(lineTrace(series.xs, mlpSmooth(series.ys, smoothing), name, color, extra));
    } else {
      traces.push(lineTrace(series.xs, series.ys, name, color, extra));
    }
    return traces;
  }

  function baseLayout(title, axis, log) {
    return {
      title: { text: escapeForPlotly(title), x: 0.01, xanchor: 'left', font: { size: 13, color: '#1f2937' } },
      autosize: true,
      margin: { l: 58, r: 18, t: 38, b: 42 },
      font: { family: FONT, size: 11, color: '#374151' },
      paper_bgcolor: '#ffffff',
      plot_bgcolor: '#ffffff',
      xaxis: {
        title: { text: AXIS_LABELS[axis] || axis, standoff: 6 },
        type: axis === 'time' ? 'date' : 'linear',
        gridcolor: '#eef0f3', zeroline: false, linecolor: '#d1d5db', automargin: true,
      },
      yaxis: {
        type: log ? 'log' : 'linear',
        gridcolor: '#eef0f3', zeroline: false, linecolor: '#d1d5db', automargin: true,
        exponentformat: 'e',
      },
      showlegend: false,
      hovermode: 'closest',
      hoverlabel: { font: { family: FONT } },
      uirevision: axis + '|' + (log ? 'log' : 'lin'),
    };
  }

  function plotlyMissing(div) {
    setChildren(div, el('p', { class: 'empty' }, 'Charts are unavailable: /static/plotly.min.js did not load.'));
  }

  // ================================================================= RUNS PAGE

  // What selects runs, in a page's URL and in the API's: a filter expression, its order, and the list's controls.
  const SELECTION_KEYS = ['filter', 'order', 'type', 'status', 'tag', 'q'];

  function readSelection(params) {
    const out = {};
    for (const k of SELECTION_KEYS) out[k] = params.get(k) || '';
    return out;
  }

  /** 'k=v&...' for the selection's non-empty keys (the same in the page's hash and the API's query). */
  function selectionQuery(selection) {
    return SELECTION_KEYS.filter((k) => selection[k]).map((k) => k + '=' + encodeURIComponent(selection[k])).join('&');
  }

  /** A filter error from the API (400 with a position) shown in `box`; returns true when it was one. */
  function showFilterError(box, e) {
    const body = e && e.body;
    if (!(e instanceof ApiError) || e.status !== 400 || !body || !('position' in body)) return false;
    box.dataset.position = body.position === null || body.position === undefined ? '' : String(body.position);
    box.dataset.what = body.what === 'order_by' ? 'order' : 'filter';
    setChildren(box,
      el('strong', null, body.what === 'order_by' ? 'The order could not be read:' : 'The filter could not be read:'),
      el('pre', { class: 'filter-message' }, String(body.error || '')));
    box.hidden = false;
    return true;
  }

  function clearFilterError(box) {
    box.hidden = true;
    box.textContent = '';
    delete box.dataset.position;
  }

  const SORTERS = {
    id: (e) => toNumber(e.id),
    name: (e) => e.name,
    status: (e) => e.status,
    experiment_type: (e) => e.experiment_type,
    tags: (e) => (Array.isArray(e.tags) && e.tags.length ? e.tags.join(', ') : null),
    start_time: (e) => e.start_time,
    duration: (e) => effectiveDuration(e),
    num_checkpoints: (e) => toNumber(e.num_checkpoints),
    best_val_metric: (e) => toNumber(e.best_val_metric),
  };
  const RUN_COLUMNS = [
    { key: 'id', text: 'ID', num: true },
    { key: 'name', text: 'Name' },
    { key: 'status', text: 'Status' },
    { key: 'experiment_type', text: 'Type' },
    { key: 'tags', text: 'Tags' },
    { key: 'start_time', text: 'Started' },
    { key: 'duration', text: 'Duration', num: true },
    { key: 'num_checkpoints', text: 'Checkpoints', num: true },
    { key: 'best_val_metric', text: 'Best val', num: true },
  ];

  function isBlank(v) {
    return v === null || v === undefined || v === '' || (typeof v === 'number' && Number.isNaN(v));
  }

  function compareValues(a, b) {
    if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : 0;
    return String(a).localeCompare(String(b), undefined, { numeric: true, sensitivity: 'base' });
  }

  /** A column of the values a filter or order names ("metrics.val_sharpe"): its sort key is 'v:' + that name. */
  const VALUE_SORT = 'v:';

  function sorterFor(key) {
    if (typeof key === 'string' && key.startsWith(VALUE_SORT)) {
      const name = key.slice(VALUE_SORT.length);
      return (e) => {
        const v = e.values && typeof e.values === 'object' ? e.values[name] : null;
        const n = toNumber(v);
        return n === null ? (v === null || v === undefined ? null : formatValue(v)) : n;
      };
    }
    return SORTERS[key] || null;
  }

  function sortRuns(runs, sort) {
    const get = sorterFor(sort.key);
    if (!get) return runs.slice();
    const sign = sort.dir === 'desc' ? -1 : 1;
    return runs.slice().sort((x, y) => {
      const a = get(x);
      const b = get(y);
      const ab = isBlank(a);
      const bb = isBlank(b);
      if (ab || bb) return ab && bb ? 0 : ab ? 1 : -1;   // nulls last, whatever the direction
      return sign * compareValues(a, b) || (toNumber(x.id) - toNumber(y.id));
    });
  }

  function runsPage(ctx, params) {
    document.title = 'Runs — ml_persistence';
    setCrumbs({ text: 'Runs' });
    const filters = readSelection(params);
    const sort = {
      key: sorterFor(params.get('sort')) ? params.get('sort') : null,
      dir: params.get('dir') === 'desc' ? 'desc' : 'asc',
    };
    const checked = new Set();   // run ids ticked for comparison (a fresh Runs page starts empty)
    let data = null;
    let seq = 0;
    let refreshTimer = null;
    let searchTimer = null;
    let filterFailed = false;   // the last answer was a filter error: the list shows why it is empty
    let focusError = false;     // put the caret at the error's position once (after Apply, not on refreshes)

    function rememberInHash() {
      const parts = [];
      const selected = selectionQuery(filters);
      if (selected) parts.push(selected);
      if (sort.key) parts.push('sort=' + encodeURIComponent(sort.key), 'dir=' + sort.dir);
      const hash = '#/' + (parts.length ? '?' + parts.join('&') : '');
      if (location.hash !== hash && !(hash === '#/' && location.hash === '')) {
        history.replaceState(history.state, '', location.pathname + location.search + hash);
      }
    }

    const filterSelect = (id, key, label) => el('label', { class: 'control' }, label + ' ',
      el('select', {
        id,
        onchange: (ev) => { filters[key] = ev.target.value; rememberInHash(); load(); },
      }, el('option', { value: '' }, 'all')));
    const typeLabel = filterSelect('filter-type', 'type', 'Type');
    const statusLabel = filterSelect('filter-status', 'status', 'Status');
    const tagLabel = filterSelect('filter-tag', 'tag', 'Tag');
    const search = el('input', {
      id: 'search', type: 'search', placeholder: 'Name contains…', value: filters.q, autocomplete: 'off',
      'aria-label': 'Filter runs by name',
      oninput: (ev) => {
        ctx.clear(searchTimer);
        searchTimer = ctx.timeout(() => {
          filters.q = ev.target.value;
          rememberInHash();
          load();
        }, 200);
      },
    });
    const filterInput = el('input', {
      id: 'filter', type: 'text', class: 'filter-input', value: filters.filter, autocomplete: 'off', spellcheck: 'false',
      placeholder: 'params.learning_rate < 1e-3 and metrics.val_sharpe > 1.5',
      'aria-label': 'Filter expression', 'aria-describedby': 'filter-error',
    });
    const orderInput = el('input', {
      id: 'order', type: 'text', class: 'order-input', value: filters.order, autocomplete: 'off', spellcheck: 'false',
      placeholder: 'metrics.val_sharpe desc', 'aria-label': 'Order by',
    });
    const filterError = el('div', { id: 'filter-error', class: 'filter-error', role: 'alert', hidden: true });
    const filterForm = el('form', {
      id: 'filter-form', class: 'filter-bar', autocomplete: 'off',
      onsubmit: (ev) => { ev.preventDefault(); applyFilter(filterInput.value, orderInput.value); },
    },
    el('label', { class: 'filter-label', for: 'filter' }, 'Filter'), filterInput,
    el('label', { class: 'filter-label', for: 'order' }, 'Order by'), orderInput,
    el('button', { type: 'submit', id: 'filter-apply', class: 'primary' }, 'Apply'),
    el('button', { type: 'button', id: 'filter-clear', onclick: () => applyFilter('', '') }, 'Clear'));

    function applyFilter(expression, order) {
      filters.filter = expression.trim();
      filters.order = order.trim();
      filterInput.value = filters.filter;
      orderInput.value = filters.order;
      if (filters.order) sort.key = null;   // the order asked for, not a column's
      focusError = true;
      rememberInHash();
      load();
    }

    const sweepButton = el('button', {
      id: 'sweep-button', type: 'button',
      title: 'Hyperparameters against a metric, for the ticked runs (or, with none ticked, every run listed)',
      onclick: () => {
        const ids = [...checked].sort((a, b) => a - b);
        const query = ids.length >= 2 ? 'ids=' + ids.join(',') : selectionQuery(filters);
        location.hash = '#/sweep' + (query ? '?' + query : '');
      },
    }, 'Sweep');

    const compareButton = el('button', {
      id: 'compare-button', type: 'button', class: 'primary', disabled: true,
      onclick: () => {
        const ids = [...checked].sort((a, b) => a - b);
        if (ids.length >= 2) location.hash = '#/compare?ids=' + ids.map((i) => encodeURIComponent(i)).join(',');
      },
    }, 'Compare');
    const count = el('span', { id: 'run-count', class: 'muted' });
    const selectAll = el('input', {
      type: 'checkbox', id: 'select-all', 'aria-label': 'Select all shown runs',
      onchange: (ev) => {
        for (const e of data ? data.experiments : []) {
          if (ev.target.checked) checked.add(Number(e.id)); else checked.delete(Number(e.id));
        }
        renderBody();
      },
    });

    const headerCells = RUN_COLUMNS.map((c) => el('th', {
      dataset: { sort: c.key }, class: ['sortable', c.num ? 'num' : null], tabindex: '0', scope: 'col',
      onclick: () => toggleSort(c.key),
      onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); toggleSort(c.key); } },
    }, c.text, el('span', { class: 'sort-indicator', 'aria-hidden': 'true' })));
    const tbody = el('tbody');
    const headRow = el('tr', null, el('th', { class: 'col-check' }, selectAll), headerCells);
    const table = el('table', { id: 'runs-table', class: 'data runs' }, el('thead', null, headRow), tbody);
    let valueNames = [];   // the params./metrics. values the filter and order name, one column each
    let valueCells = [];

    function sortableHeader(key, text, num, extra) {
      return el('th', Object.assign({
        dataset: { sort: key }, class: ['sortable', num ? 'num' : null], tabindex: '0', scope: 'col',
        onclick: () => toggleSort(key),
        onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); toggleSort(key); } },
      }, extra || {}), text, el('span', { class: 'sort-indicator', 'aria-hidden': 'true' }));
    }

    /** One column per value the filter or order names, after the fixed ones. */
    function syncValueColumns(runs) {
      const names = [];
      for (const e of runs) {
        for (const k of Object.keys(e.values && typeof e.values === 'object' ? e.values : {})) if (!names.includes(k)) names.push(k);
      }
      if (JSON.stringify(names) === JSON.stringify(valueNames)) return;
      for (const th of valueCells) th.remove();
      valueNames = names;
      valueCells = names.map((n) => sortableHeader(VALUE_SORT + n, n, true, { title: 'From the filter or order: ' + n }));
      for (const th of valueCells) headRow.appendChild(th);
      if (sort.key && sort.key.startsWith(VALUE_SORT) && !names.includes(sort.key.slice(VALUE_SORT.length))) sort.key = null;
    }

    setChildren(appEl(),
      el('div', { class: 'page-head' }, el('h1', null, 'Runs'), count),
      filterForm,
      filterError,
      el('div', { class: 'toolbar' }, search, typeLabel, statusLabel, tagLabel,
        el('span', { class: 'spacer' }), sweepButton, compareButton),
      el('div', { class: 'table-wrap' }, table));

    function toggleSort(key) {
      if (sort.key === key) sort.dir = sort.dir === 'asc' ? 'desc' : 'asc';
      else { sort.key = key; sort.dir = 'asc'; }
      rememberInHash();
      renderBody();
      markRendered('runs');
    }

    function setOptions(label, values, selected) {
      const select = label.querySelector('select');
      const list = (Array.isArray(values) ? values : []).filter((v) => v !== null && v !== undefined).map(String);
      if (selected && !list.includes(selected)) list.push(selected);
      const wanted = JSON.stringify(list);
      if (select.dataset.options !== wanted) {
        setChildren(select, el('option', { value: '' }, 'all'), list.map((v) => el('option', { value: v }, v)));
        select.dataset.options = wanted;
      }
      select.value = selected;
    }

    function updateHeaders() {
      for (const th of headerCells.concat(valueCells)) {
        const active = th.dataset.sort === sort.key;
        th.classList.toggle('sorted', active);
        th.setAttribute('aria-sort', active ? (sort.dir === 'asc' ? 'ascending' : 'descending') : 'none');
        th.querySelector('.sort-indicator').textContent = active ? (sort.dir === 'asc' ? '▲' : '▼') : '';
      }
    }

    function updateCompareButton() {
      const n = checked.size;
      compareButton.disabled = n < 2;
      compareButton.textContent = n ? 'Compare (' + n + ')' : 'Compare';
      compareButton.title = n < 2 ? 'Tick two or more runs to compare them' : '';
      sweepButton.textContent = n >= 2 ? 'Sweep (' + n + ')' : 'Sweep';
    }

    function onTag(tag) {
      filters.tag = tag;
      rememberInHash();
      load();
    }

    function renderBody() {
      syncValueColumns(data ? data.experiments : []);
      updateHeaders();
      const runs = sortRuns(data ? data.experiments : [], sort);
      const rows = runs.map((e) => {
        const id = Number(e.id);
        const isChecked = checked.has(id);
        const best = e.best_val_metric;
        const running = e.status === 'running';
        return el('tr', { dataset: { id: e.id, status: e.status }, class: isChecked ? 'selected' : null },
          el('td', { class: 'col-check' }, el('input', {
            type: 'checkbox', class: 'compare-check', dataset: { id: e.id }, checked: isChecked,
            'aria-label': 'Select run ' + e.id + ' for comparison',
            onchange: (ev) => {
              if (ev.target.checked) checked.add(id); else checked.delete(id);
              ev.target.closest('tr').classList.toggle('selected', ev.target.checked);
              updateCompareButton();
              syncSelectAll(runs);
            },
          })),
          el('td', { class: 'num id' }, String(e.id)),
          el('td', { class: 'name' },
            el('a', { class: 'run-link', href: '#/run/' + encodeURIComponent(e.id) }, isBlank(e.name) ? '(unnamed)' : String(e.name)),
            isBlank(e.description) ? null : el('div', { class: 'desc', title: String(e.description) }, String(e.description))),
          el('td', null, statusBadge(e.status, e.stored_status)),
          el('td', null, isBlank(e.experiment_type) ? el('span', { class: 'muted' }, '—') : String(e.experiment_type)),
          el('td', null, tagList(e.tags, onTag)),
          el('td', { class: 'nowrap', title: e.start_time || null }, fmtTime(e.start_time)),
          el('td', { class: ['num', 'nowrap', running ? 'live' : null] }, formatDuration(effectiveDuration(e))),
          numCell(fmtInt(e.num_checkpoints)),
          numCell(fmtNum(best), best === null || best === undefined ? undefined : best),
          valueNames.map((n) => {
            const v = e.values && typeof e.values === 'object' ? e.values[n] : null;
            return v === null || v === undefined ? el('td', { class: 'num missing' }, '—')
              : toNumber(v) !== null ? numCell(fmtNum(v), v) : el('td', { class: 'value' }, formatValue(v));
          }));
      });
      if (!rows.length) {
        const filtered = SELECTION_KEYS.some((k) => k !== 'order' && filters[k]);
        rows.push(el('tr', { class: 'empty-row' }, el('td', { colspan: String(RUN_COLUMNS.length + valueNames.length + 1) },
          filterFailed ? 'No runs listed: the filter above has an error.'
            : filtered ? 'No runs match these filters.' : 'No runs recorded yet.')));
      }
      setChildren(tbody, ...rows);
      const total = data ? data.experiments.length : 0;
      count.textContent = filterFailed ? '' : total === 1 ? '1 run' : total + ' runs';
      updateCompareButton();
      syncSelectAll(runs);
    }

    function syncSelectAll(runs) {
      const n = runs.filter((e) => checked.has(Number(e.id))).length;
      selectAll.checked = runs.length > 0 && n === runs.length;
      selectAll.indeterminate = n > 0 && n < runs.length;
    }

    function schedule() {
      ctx.clear(refreshTimer);
      refreshTimer = ctx.timeout(load, RUNS_REFRESH_MS);
    }

    async function load() {
      const mine = ++seq;
      ctx.clear(refreshTimer);
      const query = selectionQuery(filters);
      try {
        const res = await api('/api/experiments' + (query ? '?' + query : ''), ctx.signal);
        if (ctx.disposed || mine !== seq) return;
        clearError();
        clearFilterError(filterError);
        filterInput.removeAttribute('aria-invalid');
        orderInput.removeAttribute('aria-invalid');
        filterFailed = false;
        focusError = false;
        data = { experiments: Array.isArray(res.experiments) ? res.experiments : [] };
        const visible = new Set(data.experiments.map((e) => Number(e.id)));
        for (const id of [...checked]) if (!visible.has(id)) checked.delete(id);
        setOptions(typeLabel, res.types, filters.type);
        setOptions(statusLabel, res.statuses, filters.status);
        setOptions(tagLabel, res.tags, filters.tag);
        renderBody();
        markRendered('runs');
      } catch (e) {
        if (isAbort(e) || ctx.disposed || mine !== seq) return;
        if (showFilterError(filterError, e)) {
          clearError();
          filterFailed = true;
          const input = e.body.what === 'order_by' ? orderInput : filterInput;
          input.setAttribute('aria-invalid', 'true');
          const at = e.body.position;
          if (focusError && typeof at === 'number') {
            focusError = false;
            input.focus();
            input.setSelectionRange(Math.min(at, input.value.length), Math.min(at + 1, input.value.length));
          }
          data = null;
          checked.clear();
          renderBody();
          markRendered('runs');
          return;
        }
        showError('Could not load the runs: ' + e.message);
        if (!data) renderBody();
        markRendered('runs');
      } finally {
        if (!ctx.disposed && mine === seq) schedule();
      }
    }

    updateHeaders();
    load();
  }

  // ================================================================= RUN PAGE

  async function runPage(ctx, idText) {
    setCrumbs({ text: 'Runs', href: '#/' }, { text: 'Run ' + idText });
    document.title = 'Run ' + idText + ' — ml_persistence';
    if (!/^\d+$/.test(idText)) {
      setChildren(appEl(), emptyNote('No such run.'), el('p', null, el('a', { href: '#/' }, 'Back to all runs')));
      showError('Not a run id: ' + idText);
      markRendered('run');
      return;
    }
    const id = idText;
    const detailUrl = '/api/experiments/' + encodeURIComponent(id);
    setChildren(appEl(), el('p', { class: 'loading' }, 'Loading run ' + id + '…'));

    let detail;
    try {
      detail = await api(detailUrl, ctx.signal);
    } catch (e) {
      if (isAbort(e) || ctx.disposed) return;
      setChildren(appEl(), emptyNote(e.status === 404 ? 'Run ' + id + ' does not exist.' : 'The run could not be loaded.'),
        el('p', null, el('a', { href: '#/' }, 'Back to all runs')));
      showError((e.status === 404 ? 'Run ' + id + ' not found: ' : 'Could not load run ' + id + ': ') + e.message);
      markRendered('run');
      return;
    }
    if (ctx.disposed) return;

    const state = {
      detail,
      x: chooseDefaultAxis((detail.metrics || []).filter((m) => !isSystemMetric(m))),
      userX: false,
      smoothing: 0,
      log: false,
      series: new Map(),   // metric name -> {axis, xs, ys, total, downsampled, sig}
      charts: new Map(),   // metric name -> div.chart
      sectionSigs: new Map(),
      polling: null,
    };

    // ---- static skeleton
    const title = el('h1', { id: 'run-title' });
    const badgeSlot = el('span', { class: 'badge-slot' });
    const liveDot = el('span', { id: 'live-indicator', class: 'live-indicator', hidden: true, title: 'Updating live' }, 'live');
    const idNote = el('span', { class: 'run-id muted' }, '#' + id);
    const description = el('p', { class: 'description' });
    const facts = el('dl', { id: 'run-facts', class: 'facts' });
    const chartsDiv = el('div', { id: 'charts', class: 'charts' });
    const chartsEmpty = emptyNote('No metrics logged yet.');
    const systemCharts = el('div', { id: 'system-charts', class: 'charts system-charts' });
    const systemSection = el('section', { id: 'system', class: 'panel wide system-panel', hidden: true },
      el('div', { class: 'panel-head' }, el('h2', null, 'System'),
        el('span', { class: 'muted' }, 'CPU, memory, disk, network and GPU samples, against time')),
      systemCharts);
    const redrawAll = perFrame(() => { drawAll(); markRendered('run'); });

    const controls = el('div', { class: 'toolbar chart-controls' },
      axisSelect(state.x, async (v) => {
        state.x = v;
        state.userX = true;
        await loadSeries(metricList().filter((m) => !isSystemMetric(m)).map((m) => m.name), true);
        if (!ctx.disposed) markRendered('run');
      }),
      smoothingControl(state.smoothing, (v) => { state.smoothing = v; redrawAll(); }),
      logControl(state.log, (v) => { state.log = v; redrawAll(); }));

    const sections = {
      metricsSummary: section('metric-summary', 'Metrics'),
      repro: section('repro', 'Reproducibility'),
      hyperparameters: section('hyperparameters', 'Hyperparameters'),
      datasets: section('datasets', 'Datasets'),
      models: section('models', 'Models & checkpoints'),
      artifacts: section('artifacts', 'Artifacts'),
      notes: section('notes', 'Notes'),
      metadata: section('metadata', 'Metadata'),
    };

    setChildren(appEl(),
      el('div', { class: 'run-head' }, el('div', { class: 'title-line' }, title, badgeSlot, liveDot, idNote), description),
      facts,
      el('div', { class: 'charts-head' }, el('h2', null, 'Charts'), controls),
      chartsEmpty,
      chartsDiv,
      systemSection,
      el('div', { class: 'panels' },
        sections.hyperparameters, sections.repro, sections.metricsSummary, sections.datasets,
        sections.models, sections.artifacts, sections.notes, sections.metadata));

    function metricList() {
      return Array.isArray(state.detail.metrics) ? state.detail.metrics : [];
    }

    // ---- header, facts, sections
    function renderHead() {
      const exp = state.detail.experiment || {};
      const name = isBlank(exp.name) ? '(unnamed run)' : String(exp.name);
      title.textContent = name;
      document.title = name + ' — ml_persistence';
      setCrumbs({ text: 'Runs', href: '#/' }, { text: name });
      setChildren(badgeSlot, statusBadge(exp.status, exp.stored_status, 'run-status'));
      description.textContent = isBlank(exp.description) ? '' : String(exp.description);
      description.hidden = isBlank(exp.description);
      const fact = (label, value, extra) => [el('div', { class: 'fact' }, el('dt', null, label), el('dd', extra || null, value))];
      setChildren(facts,
        ...fact('Type', isBlank(exp.experiment_type) ? '—' : String(exp.experiment_type)),
        ...fact('Started', fmtTime(exp.start_time), { title: exp.start_time || null }),
        ...fact('Ended', fmtTime(exp.end_time), { title: exp.end_time || null }),
        ...fact('Duration', formatDuration(effectiveDuration(exp)), { class: exp.status === 'running' ? 'live' : null }),
        ...fact('Checkpoints', fmtInt(exp.num_checkpoints)),
        ...fact('Best val metric', fmtNum(exp.best_val_metric)),
        ...(exp.best_test_metric !== undefined ? fact('Best test metric', fmtNum(exp.best_test_metric)) : []),
        ...fact('Tags', tagList(exp.tags)));
    }

    function kvTable(className, pairs) {
      return el('table', { class: ['kv', className] }, el('tbody', null, pairs.map(([k, v]) =>
        el('tr', null, el('th', { scope: 'row' }, k), el('td', null, v)))));
    }

    function textOrDash(v) {
      return isBlank(v) ? el('span', { class: 'muted' }, '—') : formatValue(v);
    }

    function renderSections() {
      const d = state.detail;
      const exp = d.experiment || {};
      const update = (key, sectionEl, data, build) => {
        const sig = JSON.stringify(data === undefined ? null : data);
        if (state.sectionSigs.get(key) === sig) return;
        state.sectionSigs.set(key, sig);
        setChildren(sectionEl, sectionEl.querySelector('h2'), ...[].concat(build()));
      };

      update('metrics', sections.metricsSummary, d.metrics, () => {
        const ms = metricList();
        if (!ms.length) return emptyNote('No metrics logged.');
        return simpleTable('metric-summary-table',
          ['Metric', { text: 'Points', num: true }, { text: 'First', num: true }, { text: 'Last', num: true }, 'Axes'],
          ms.map((m) => el('tr', { dataset: { metric: m.name } },
            el('td', null, String(m.name)), numCell(fmtInt(m.count)), numCell(fmtNum(m.first), m.first),
            numCell(fmtNum(m.last), m.last),
            el('td', { class: 'muted' }, Array.isArray(m.axes) ? m.axes.join(', ') : '—'))));
      });

      const repro = {
        commit: exp.git_commit, branch: exp.git_branch, dirty: exp.git_dirty, python: exp.python_version,
        platform: exp.platform, host: exp.hostname, pid: exp.pid, command: exp.command, seed: exp.random_seed,
      };
      update('repro', sections.repro, repro, () => {
        let dirty = '—';
        if (repro.dirty !== null && repro.dirty !== undefined) {
          const isDirty = repro.dirty === true || repro.dirty === 1 || repro.dirty === '1' || repro.dirty === 'true';
          dirty = el('span', { class: isDirty ? 'flag-warn' : null }, isDirty ? 'yes (uncommitted changes)' : 'no');
        }
        return kvTable('repro-table', [
          ['Git commit', isBlank(repro.commit) ? textOrDash(null) : el('code', null, String(repro.commit))],
          ['Git branch', textOrDash(repro.branch)],
          ['Git dirty', dirty],
          ['Python', textOrDash(repro.python)],
          ['Platform', textOrDash(repro.platform)],
          ['Host', textOrDash(repro.host)],
          ['PID', textOrDash(repro.pid)],
          ['Command', isBlank(repro.command) ? textOrDash(null) : el('code', { class: 'command' }, String(repro.command))],
          ['Random seed', textOrDash(repro.seed)],
        ]);
      });

      update('hyperparameters', sections.hyperparameters, exp.hyperparameters, () => {
        const hp = exp.hyperparameters && typeof exp.hyperparameters === 'object' ? Object.entries(exp.hyperparameters) : [];
        if (!hp.length) return emptyNote('No hyperparameters recorded.');
        return simpleTable('hp-table', ['Name', 'Value'],
          hp.map(([k, v]) => el('tr', { dataset: { param: k } }, el('td', { class: 'param' }, k), el('td', { class: 'value' }, formatValue(v)))));
      });

      update('datasets', sections.datasets, d.datasets, () => {
        const ds = Array.isArray(d.datasets) ? d.datasets : [];
        if (!ds.length) return emptyNote('No datasets linked.');
        return simpleTable('datasets-table',
          ['Name', 'Version', 'Split', 'Usage', { text: 'Samples', num: true }, 'Date range', 'Path'],
          ds.map((x) => el('tr', { dataset: { id: x.id } },
            el('td', null, textOrDash(x.name)), el('td', null, textOrDash(x.version)),
            el('td', null, textOrDash(x.split_type)),
            el('td', null, isBlank(x.usage_type) ? textOrDash(null) : el('span', { class: 'usage' }, String(x.usage_type))),
            numCell(fmtInt(x.num_samples)),
            el('td', { class: 'nowrap' }, isBlank(x.start_date) && isBlank(x.end_date) ? textOrDash(null)
              : fmtTime(x.start_date) + ' → ' + fmtTime(x.end_date)),
            el('td', { class: 'path' }, textOrDash(x.data_path)))));
      });

      update('models', sections.models, [d.models, d.best_model_id], () => {
        const ms = Array.isArray(d.models) ? d.models : [];
        if (!ms.length) return emptyNote('No checkpoints saved.');
        return simpleTable('models-table',
          [{ text: '' }, { text: 'ID', num: true }, 'Name', 'Version', 'Aliases', { text: 'Episode', num: true },
            { text: 'Step', num: true }, { text: 'Train', num: true }, { text: 'Val', num: true },
            { text: 'Test', num: true }, 'Checkpoint', 'Saved'],
          ms.map((m) => {
            const best = d.best_model_id !== null && d.best_model_id !== undefined && Number(m.id) === Number(d.best_model_id);
            return el('tr', { dataset: { id: m.id }, class: best ? 'best' : null },
              el('td', { class: 'star', title: best ? 'Best model' : null }, best ? '★' : ''),
              numCell(fmtInt(m.id)), el('td', null, textOrDash(m.name)), el('td', null, textOrDash(m.version)),
              el('td', { class: 'aliases' }, aliasBadges(m.aliases)),
              numCell(fmtInt(m.episode_num)), numCell(fmtInt(m.global_step)),
              numCell(fmtNum(m.train_metric), m.train_metric), numCell(fmtNum(m.val_metric), m.val_metric),
              numCell(fmtNum(m.test_metric), m.test_metric),
              el('td', { class: 'path' }, textOrDash(m.checkpoint_path)),
              el('td', { class: 'nowrap' }, fmtTime(m.created_at)));
          }));
      });

      update('artifacts', sections.artifacts, d.artifacts, () => {
        const as = Array.isArray(d.artifacts) ? d.artifacts : [];
        if (!as.length) return emptyNote('No artifacts.');
        return el('ul', { class: 'artifact-list' }, as.map((a) => {
          const url = safeUrl(a.url);
          const name = isBlank(a.artifact_name) ? (isBlank(a.artifact_path) ? 'artifact ' + a.id : String(a.artifact_path)) : String(a.artifact_name);
          let body;
          if (url && a.is_image) {
            body = el('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'artifact-image-link', title: 'Open ' + name },
              el('img', { class: 'artifact-preview', src: url, alt: name }));
          } else if (url) {
            body = el('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'artifact-link' }, name);
          } else {
            body = el('span', { class: 'artifact-missing', title: 'Not served: the file is missing or outside the directories this UI serves' }, name);
          }
          const size = toNumber(a.file_size_mb);
          return el('li', { class: 'artifact', dataset: { id: a.id } },
            el('div', { class: 'artifact-head' },
              isBlank(a.artifact_type) ? null : el('span', { class: 'artifact-type' }, String(a.artifact_type)),
              url && a.is_image ? el('span', { class: 'artifact-name' }, name) : body,
              size !== null && Number.isFinite(size) ? el('span', { class: 'muted' }, fmtNum(size) + ' MB') : null),
            url && a.is_image ? body : null,
            isBlank(a.description) ? null : el('div', { class: 'artifact-desc' }, String(a.description)),
            isBlank(a.artifact_path) ? null : el('div', { class: 'path muted' }, String(a.artifact_path)));
        }));
      });

      update('notes', sections.notes, exp.notes, () =>
        (isBlank(exp.notes) ? emptyNote('No notes.') : el('div', { class: 'notes-text' }, String(exp.notes))));

      update('metadata', sections.metadata, exp.metadata, () => {
        if (exp.metadata === null || exp.metadata === undefined || exp.metadata === '') return emptyNote('No metadata.');
        let text;
        if (typeof exp.metadata === 'string') text = exp.metadata;
        else { try { text = JSON.stringify(exp.metadata, null, 2); } catch (e) { text = String(exp.metadata); } }
        return el('pre', { class: 'json' }, text);
      });
    }

    // ---- charts
    function ensureChartDivs() {
      const ms = metricList();
      const system = ms.filter(isSystemMetric);
      chartsEmpty.hidden = ms.length > system.length;
      systemSection.hidden = !system.length;
      for (const m of ms) {
        if (state.charts.has(m.name)) continue;
        const div = el('div', { class: ['chart', isSystemMetric(m) ? 'system-chart' : null], dataset: { metric: m.name } });
        state.charts.set(m.name, div);
        (isSystemMetric(m) ? systemCharts : chartsDiv).appendChild(div);
      }
    }

    /** The axis a chart is drawn against: system samples always against time. */
    function chartAxis(metric) {
      return isSystemMetric(metric) ? 'time' : axisFor(metric, state.x);
    }

    async function loadSeries(names, force) {
      const byName = new Map(metricList().map((m) => [m.name, m]));
      await pool(names, SERIES_CONCURRENCY, async (name) => {
        const metric = byName.get(name);
        const axis = chartAxis(metric);
        const sig = metric ? [metric.count, metric.last, metric.max, metric.min, axis].join('|') : axis;
        const have = state.series.get(name);
        if (!force && have && have.sig === sig && have.axis === axis) return;
        const url = detailUrl + '/metric?name=' + encodeURIComponent(name) + '&x=' + encodeURIComponent(axis) + '&points=' + POINTS;
        try {
          const res = await api(url, ctx.signal);
          if (ctx.disposed) return;
          state.series.set(name, {
            axis, sig,
            xs: Array.isArray(res.xs) ? res.xs : [],
            ys: Array.isArray(res.ys) ? res.ys.map((v) => (typeof v === 'number' ? v : toNumber(v))) : [],
            total: res.total, downsampled: !!res.downsampled, error: null,
          });
        } catch (e) {
          if (isAbort(e) || ctx.disposed) return;
          state.series.set(name, { axis, sig: null, xs: [], ys: [], total: 0, downsampled: false, error: e.message });
        }
        draw(name);
      });
    }

    function draw(name) {
      const div = state.charts.get(name);
      const s = state.series.get(name);
      if (!div || !s || ctx.disposed) return Promise.resolve();
      if (!window.Plotly) { plotlyMissing(div); return Promise.resolve(); }
      const system = isSystemMetric({ name });
      const layout = baseLayout(system ? name.slice('system/'.length) : name, s.axis, state.log);
      const notes = [];
      if (s.error) notes.push('Could not load: ' + s.error);
      if (s.axis !== state.x && !system) notes.push('no ' + state.x + ' values; plotted against ' + s.axis);
      if (s.downsampled) notes.push('downsampled from ' + s.total + ' points');
      if (!s.xs.length && !s.error) {
        layout.annotations = [{ text: 'no data', showarrow: false, xref: 'paper', yref: 'paper', x: 0.5, y: 0.5,
          font: { color: '#9ca3af', size: 13 } }];
      }
      div.dataset.downsampled = s.downsampled ? 'true' : 'false';
      div.dataset.total = String(s.total === undefined || s.total === null ? s.xs.length : s.total);
      div.dataset.axis = s.axis;
      const traces = seriesTraces(s, name, PALETTE[0], state.smoothing);
      const done = window.Plotly.react(div, traces, layout, PLOTLY_CONFIG);
      let note = div.querySelector(':scope > .chart-note');
      if (notes.length) {
        if (!note) { note = el('div', { class: 'chart-note' }); div.appendChild(note); }
        note.textContent = notes.join(' · ');
      } else if (note) {
        note.remove();
      }
      return Promise.resolve(done);
    }

    function drawAll() {
      return Promise.all([...state.charts.keys()].map(draw));
    }

    // ---- live updates
    function detailSignature(d) {
      const exp = Object.assign({}, d.experiment || {});
      delete exp.duration_seconds;
      return JSON.stringify([exp, d.datasets, d.models, d.best_model_id, d.artifacts, d.metrics, d.last_metric_id]);
    }

    function setLive(on) {
      liveDot.hidden = !on;
    }

    function schedulePoll() {
      const running = (state.detail.experiment || {}).status === 'running';
      setLive(running);
      if (running) state.polling = ctx.timeout(poll, pollMs());
    }

    async function poll() {
      let d;
      try {
        d = await api(detailUrl, ctx.signal);
      } catch (e) {
        if (isAbort(e) || ctx.disposed) return;
        showError('Live update failed: ' + e.message);
        state.polling = ctx.timeout(poll, pollMs());
        return;
      }
      if (ctx.disposed) return;
      clearError();
      const previous = state.detail;
      const changed = detailSignature(d) !== detailSignature(previous);
      const metricsChanged = d.last_metric_id !== previous.last_metric_id
        || JSON.stringify(d.metrics) !== JSON.stringify(previous.metrics);
      state.detail = d;
      renderHead();   // always: the running duration moves
      if (changed) renderSections();
      if (metricsChanged) {
        if (!state.userX) {
          const x = chooseDefaultAxis((d.metrics || []).filter((m) => !isSystemMetric(m)));
          if (x !== state.x) {
            state.x = x;
            const sel = document.getElementById('x-axis');
            if (sel) sel.value = x;
          }
        }
        ensureChartDivs();
        await loadSeries(metricList().map((m) => m.name), false);
        if (ctx.disposed) return;
      }
      if (changed || metricsChanged) markRendered('run');
      schedulePoll();
    }

    // ---- first render
    renderHead();
    renderSections();
    ensureChartDivs();
    await loadSeries(metricList().map((m) => m.name), true);
    if (ctx.disposed) return;
    markRendered('run');
    schedulePoll();
  }

  // ================================================================= COMPARE PAGE

  async function comparePage(ctx, params) {
    setCrumbs({ text: 'Runs', href: '#/' }, { text: 'Compare' });
    document.title = 'Compare — ml_persistence';
    const seen = new Set();
    const ids = (params.get('ids') || '').split(',').map((s) => s.trim())
      .filter((s) => /^\d+$/.test(s) && !seen.has(s) && seen.add(s));
    if (!ids.length) {
      setChildren(appEl(), emptyNote('No runs selected.'), el('p', null, el('a', { href: '#/' }, 'Pick runs to compare')));
      showError('Nothing to compare: tick two or more runs on the Runs page.');
      markRendered('compare');
      return;
    }
    setChildren(appEl(), el('p', { class: 'loading' }, 'Loading ' + ids.length + ' runs…'));

    let data;
    const detailsPromise = Promise.all(ids.map((id) =>
      api('/api/experiments/' + encodeURIComponent(id), ctx.signal).catch(() => null)));
    try {
      data = await api('/api/compare?ids=' + ids.map((i) => encodeURIComponent(i)).join(','), ctx.signal);
    } catch (e) {
      if (isAbort(e) || ctx.disposed) return;
      setChildren(appEl(), emptyNote('The comparison could not be loaded.'), el('p', null, el('a', { href: '#/' }, 'Back to all runs')));
      showError('Could not compare runs ' + ids.join(', ') + ': ' + e.message);
      markRendered('compare');
      return;
    }
    const detailsList = await detailsPromise;
    if (ctx.disposed) return;

    const byId = new Map((data.experiments || []).map((e) => [String(e.id), e]));
    const runs = ids.filter((i) => byId.has(i)).map((i) => byId.get(i));
    for (const e of data.experiments || []) if (!runs.includes(e)) runs.push(e);
    const missing = ids.filter((i) => !byId.has(i));
    if (missing.length) showError('Not found: run' + (missing.length > 1 ? 's ' : ' ') + missing.join(', ') + '.');
    const details = new Map();
    ids.forEach((id, i) => { if (detailsList[i]) details.set(id, detailsList[i]); });
    const color = new Map(runs.map((r, i) => [String(r.id), PALETTE[i % PALETTE.length]]));
    const metrics = Array.isArray(data.metrics) ? data.metrics : [];
    const runLabel = (r) => '#' + r.id + ' ' + (isBlank(r.name) ? '(unnamed)' : String(r.name));

    const asked = params.get('metric');
    const state = {
      // The metric in the URL, else the server's default: the one with the most points all these runs share.
      metric: metrics.includes(asked) ? asked : metrics.includes(data.default_metric) ? data.default_metric
        : metrics.length ? metrics[0] : null,
      x: 'step',
      userX: false,
      smoothing: 0,
      log: false,
      series: new Map(),   // run id -> series
    };

    function metricInfo(runId, name) {
      const d = details.get(String(runId));
      if (!d || !Array.isArray(d.metrics)) return undefined;   // unknown
      return d.metrics.find((m) => m.name === name) || null;    // null: the run lacks it
    }

    function defaultAxisFor(name) {
      const infos = runs.map((r) => metricInfo(r.id, name)).filter(Boolean);
      return infos.length ? chooseDefaultAxis(infos) : 'step';
    }

    state.x = state.metric ? defaultAxisFor(state.metric) : 'step';

    // ---- skeleton
    setCrumbs({ text: 'Runs', href: '#/' }, { text: 'Compare ' + runs.map((r) => '#' + r.id).join(', ') });
    const chartDiv = el('div', { id: 'compare-chart', class: 'compare-chart' });
    const chartNote = el('p', { id: 'compare-note', class: 'chart-caption muted' });
    const redraw = perFrame(() => { draw(); markRendered('compare'); });
    const metricSelect = el('select', {
      id: 'compare-metric',
      onchange: async (ev) => {
        state.metric = ev.target.value;
        const hash = '#/compare?ids=' + ids.map((i) => encodeURIComponent(i)).join(',') + '&metric=' + encodeURIComponent(state.metric);
        history.replaceState(history.state, '', location.pathname + location.search + hash);
        if (!state.userX) {
          state.x = defaultAxisFor(state.metric);
          document.getElementById('x-axis').value = state.x;
        }
        await loadAndDraw();
      },
    }, metrics.map((m) => el('option', { value: m, selected: m === state.metric }, m)));
    metricSelect.disabled = !metrics.length;

    const controls = el('div', { class: 'toolbar chart-controls' },
      el('label', { class: 'control' }, 'metric ', metricSelect),
      axisSelect(state.x, async (v) => { state.x = v; state.userX = true; await loadAndDraw(); }),
      smoothingControl(state.smoothing, (v) => { state.smoothing = v; redraw(); }),
      logControl(state.log, (v) => { state.log = v; redraw(); }));

    const runHeader = (r) => el('th', { scope: 'col', dataset: { id: r.id } },
      el('span', { class: 'swatch', 'aria-hidden': 'true', dataset: { color: color.get(String(r.id)) } }),
      el('a', { class: 'run-link', href: '#/run/' + encodeURIComponent(r.id) }, runLabel(r)));

    // summary table
    const summaryRows = [
      ['Status', (r) => statusBadge(r.status, r.stored_status)],
      ['Type', (r) => (isBlank(r.experiment_type) ? '—' : String(r.experiment_type))],
      ['Started', (r) => fmtTime(r.start_time)],
      ['Duration', (r) => formatDuration(effectiveDuration(r))],
      ['Checkpoints', (r) => fmtInt(r.num_checkpoints)],
      ['Best val metric', (r) => fmtNum(r.best_val_metric)],
      ['Best test metric', (r) => fmtNum(r.best_test_metric)],
      ['Tags', (r) => tagList(r.tags)],
    ];
    const summaryTable = el('div', { class: 'table-wrap' }, el('table', { id: 'compare-summary', class: 'data compare' },
      el('thead', null, el('tr', null, el('th', { scope: 'col' }, 'Run'), runs.map(runHeader))),
      el('tbody', null, summaryRows.map(([label, fn]) =>
        el('tr', null, el('th', { scope: 'row' }, label), runs.map((r) => el('td', null, fn(r))))))));

    // hyperparameter table
    const hps = Array.isArray(data.hyperparameters) ? data.hyperparameters : [];
    const nDiffer = hps.filter((h) => h.differs).length;
    const hpTable = el('table', { id: 'compare-hyperparameters', class: 'data compare' },
      el('thead', null, el('tr', null, el('th', { scope: 'col' }, 'Parameter'), runs.map(runHeader))),
      el('tbody', null, hps.length ? hps.map((h) => {
        const values = h.values && typeof h.values === 'object' ? h.values : {};
        return el('tr', { class: h.differs ? 'differs' : null, dataset: { param: h.param_name } },
          el('th', { scope: 'row' }, String(h.param_name),
            h.differs ? el('span', { class: 'differs-marker', title: 'Not the same in all runs' }, 'differs') : null),
          runs.map((r) => {
            const key = String(r.id);
            return Object.prototype.hasOwnProperty.call(values, key)
              ? el('td', { class: 'value' }, formatValue(values[key]))
              : el('td', { class: 'value missing', title: 'Not set in this run' }, '—');
          }));
      }) : el('tr', { class: 'empty-row' }, el('td', { colspan: String(runs.length + 1) }, 'No hyperparameters recorded.'))));
    const onlyDiffers = el('input', {
      type: 'checkbox', id: 'only-differs',
      onchange: (ev) => hpTable.classList.toggle('only-differs', ev.target.checked),
    });

    // metric last values table
    const metricTable = metrics.length > 0 && details.size > 0 ? el('div', { class: 'table-wrap' },
      el('table', { id: 'compare-metrics', class: 'data compare' },
        el('thead', null, el('tr', null, el('th', { scope: 'col' }, 'Metric (last value)'), runs.map(runHeader))),
        el('tbody', null, metrics.map((name) => el('tr', { dataset: { metric: name } },
          el('th', { scope: 'row' }, el('button', {
            type: 'button', class: 'linkish', title: 'Plot ' + name,
            onclick: () => { metricSelect.value = name; metricSelect.dispatchEvent(new Event('change')); },
          }, name)),
          runs.map((r) => {
            const m = metricInfo(r.id, name);
            if (m === undefined) return el('td', { class: 'num muted' }, '?');
            if (m === null) return el('td', { class: 'num missing' }, '—');
            return el('td', { class: 'num', title: m.count + ' points' }, fmtNum(m.last));
          })))))) : null;

    setChildren(appEl(),
      el('div', { class: 'page-head' }, el('h1', null, 'Compare ' + runs.length + ' runs'),
        el('a', { id: 'compare-sweep', href: '#/sweep?ids=' + ids.map((i) => encodeURIComponent(i)).join(',') },
          'sweep view of these runs')),
      el('div', { class: 'charts-head' }, el('h2', null, 'Chart'), controls),
      metrics.length ? null : emptyNote('None of these runs logged metrics.'),
      chartDiv,
      chartNote,
      el('section', { class: 'panel wide', id: 'compare-hp-section' },
        el('div', { class: 'panel-head' }, el('h2', null, 'Hyperparameters'),
          el('span', { class: 'muted' }, nDiffer + ' of ' + hps.length + ' differ'),
          el('label', { class: 'control' }, onlyDiffers, ' only differing')),
        el('div', { class: 'table-wrap' }, hpTable)),
      el('section', { class: 'panel wide' }, el('h2', null, 'Summary'), summaryTable),
      metricTable ? el('section', { class: 'panel wide' }, el('h2', null, 'Metrics'), metricTable) : null);

    // colour swatches via CSSOM (no inline style attributes)
    for (const sw of document.querySelectorAll('#app .swatch')) sw.style.backgroundColor = sw.dataset.color;

    let loadSeq = 0;
    async function loadAndDraw() {
      const mine = ++loadSeq;
      const name = state.metric;
      state.series = new Map();
      if (name === null) { draw(); markRendered('compare'); return; }
      await pool(runs, SERIES_CONCURRENCY, async (r) => {
        const info = metricInfo(r.id, name);
        if (info === null) return;   // this run never logged it
        const axis = axisFor(info, state.x);
        const url = '/api/experiments/' + encodeURIComponent(r.id) + '/metric?name=' + encodeURIComponent(name)
          + '&x=' + encodeURIComponent(axis) + '&points=' + POINTS;
        try {
          const res = await api(url, ctx.signal);
          if (ctx.disposed || mine !== loadSeq) return;
          state.series.set(String(r.id), {
            axis,
            xs: Array.isArray(res.xs) ? res.xs : [],
            ys: Array.isArray(res.ys) ? res.ys.map((v) => (typeof v === 'number' ? v : toNumber(v))) : [],
            total: res.total, downsampled: !!res.downsampled,
          });
        } catch (e) {
          if (isAbort(e) || ctx.disposed || mine !== loadSeq) return;
          state.series.set(String(r.id), { axis, xs: [], ys: [], total: 0, downsampled: false, error: e.message });
        }
      });
      if (ctx.disposed || mine !== loadSeq) return;
      await draw();
      if (!ctx.disposed && mine === loadSeq) markRendered('compare');
    }

    function draw() {
      if (!metrics.length) return Promise.resolve();
      if (!window.Plotly) { plotlyMissing(chartDiv); return Promise.resolve(); }
      const traces = [];
      const notes = [];
      const absent = [];
      let axisUsed = state.x;
      for (const r of runs) {
        const s = state.series.get(String(r.id));
        if (!s) { absent.push('#' + r.id); continue; }
        if (s.error) notes.push('#' + r.id + ': ' + s.error);
        if (s.axis !== state.x) { notes.push('#' + r.id + ' has no ' + state.x + ' values; plotted against ' + s.axis); axisUsed = s.axis; }
        if (s.downsampled) notes.push('#' + r.id + ' downsampled from ' + s.total + ' points');
        const key = String(r.id);
        traces.push(...seriesTraces(s, runLabel(r), color.get(key), state.smoothing, { legendgroup: key }));
      }
      if (absent.length) notes.unshift('not logged by ' + absent.join(', '));
      const layout = baseLayout(state.metric || '', axisUsed, state.log);
      layout.margin = { l: 62, r: 18, t: 42, b: 46 };
      layout.showlegend = true;
      layout.legend = { orientation: 'h', x: 0, xanchor: 'left', y: -0.16, yanchor: 'top' };
      layout.hovermode = 'x';
      layout.uirevision = state.metric + '|' + layout.uirevision;
      chartDiv.dataset.metric = state.metric || '';
      chartNote.textContent = notes.join(' · ');
      chartNote.hidden = !notes.length;
      return Promise.resolve(window.Plotly.react(chartDiv, traces, layout, PLOTLY_CONFIG));
    }

    await loadAndDraw();
  }


  // ================================================================= SWEEP PAGE

  const AGGREGATES = ['last', 'min', 'max', 'first', 'mean'];
  const SWEEP_COLORSCALE = 'Viridis';
  const UNSET = '(unset)';

  /** Distinct values, sorted as numbers when they all are, else as text. */
  function distinctSorted(values) {
    const seen = new Map();
    for (const v of values) seen.set(typeof v === 'number' ? 'n' + v : 's' + formatValue(v), v);
    return [...seen.values()].sort((a, b) => compareValues(typeof a === 'number' ? a : formatValue(a),
      typeof b === 'number' ? b : formatValue(b)));
  }

  /**
   * One hyperparameter as a chart axis over `runs`: numbers as they are (on log10 when all positive and spread over
   * 1.5 decades or more), anything else a category. A run that never set it sits on an "(unset)" tick.
   * Returns {name, kind, log, values (per run, plot units), tickvals, ticktext, text (per run, shown)}.
   * The tick texts are plain text (a parcoords axis writes them with textContent): not escaped for Plotly.
   */
  function parameterAxis(param, runs) {
    const has = (r) => Object.prototype.hasOwnProperty.call(r.params || {}, param.name);
    const raw = runs.map((r) => (has(r) ? r.params[param.name] : undefined));
    const set = raw.filter((v) => v !== undefined);
    const text = raw.map((v) => (v === undefined ? UNSET : formatValue(v)));
    const axis = { name: param.name, kind: param.kind, log: false, text };
    if (param.kind === 'numeric' && set.length) {
      const lo = Math.min(...set);
      const hi = Math.max(...set);
      axis.log = lo > 0 && hi / lo >= Math.pow(10, 1.5);
      const plot = (v) => (axis.log ? Math.log10(v) : v);
      const distinct = distinctSorted(set);
      let unsetAt = null;
      if (set.length < raw.length) {
        const span = (plot(hi) - plot(lo)) || 1;
        unsetAt = plot(lo) - 0.15 * span;   // below every value, on a tick of its own
      }
      axis.values = raw.map((v) => (v === undefined ? unsetAt : plot(v)));
      if (distinct.length <= 12 || axis.log) {
        const ticks = distinct.length <= 12 ? distinct
          : Array.from({ length: Math.floor(Math.log10(hi)) - Math.ceil(Math.log10(lo)) + 1 }, (_, i) => Math.pow(10, Math.ceil(Math.log10(lo)) + i));
        axis.tickvals = ticks.map(plot);
        axis.ticktext = ticks.map(fmtNum);
      }
      if (unsetAt !== null) {
        axis.tickvals = (axis.tickvals || []).concat([unsetAt]);
        axis.ticktext = (axis.ticktext || []).concat([UNSET]);
      }
      axis.range = spanOf(axis.values);
    } else {
      axis.kind = 'categorical';
      const categories = distinctSorted(set).map(formatValue);
      if (set.length < raw.length) categories.push(UNSET);
      const index = new Map(categories.map((c, i) => [c, i]));
      axis.values = text.map((t) => index.get(t));
      axis.tickvals = categories.map((_, i) => i);
      axis.ticktext = categories.map((c) => (c.length > 24 ? c.slice(0, 23) + '…' : c));
      axis.range = [0, Math.max(categories.length - 1, 1)];
    }
    return axis;
  }

  /** [min, max] of finite numbers, or undefined (Plotly's own) when there are none or they are all equal. */
  function spanOf(values) {
    const finite = values.filter((v) => typeof v === 'number' && Number.isFinite(v));
    if (!finite.length) return undefined;
    const lo = Math.min(...finite);
    const hi = Math.max(...finite);
    return lo < hi ? [lo, hi] : undefined;
  }

  async function sweepPage(ctx, params) {
    setCrumbs({ text: 'Runs', href: '#/' }, { text: 'Sweep' });
    document.title = 'Sweep — ml_persistence';
    const selection = readSelection(params);
    const seen = new Set();
    const ids = (params.get('ids') || '').split(',').map((x) => x.trim())
      .filter((x) => /^\d+$/.test(x) && !seen.has(x) && seen.add(x));
    const state = {
      metric: params.get('metric') || '',
      agg: AGGREGATES.includes(params.get('agg')) ? params.get('agg') : 'last',
      x: params.get('x') || '',
      dir: params.get('dir') === 'asc' ? 'asc' : 'desc',
    };
    let data = null;
    let seq = 0;

    function selectionPart() {
      return ids.length ? 'ids=' + ids.join(',') : selectionQuery(selection);
    }

    function rememberInHash() {
      const parts = [selectionPart()];
      if (state.metric) parts.push('metric=' + encodeURIComponent(state.metric));
      if (state.agg !== 'last') parts.push('agg=' + state.agg);
      if (state.x) parts.push('x=' + encodeURIComponent(state.x));
      if (state.dir !== 'desc') parts.push('dir=' + state.dir);
      const hash = '#/sweep?' + parts.filter(Boolean).join('&');
      if (location.hash !== hash) history.replaceState(history.state, '', location.pathname + location.search + hash);
    }

    // ---- skeleton
    const what = ids.length ? 'runs ' + ids.map((i) => '#' + i).join(', ')
      : selection.filter ? 'runs matching ' + selection.filter : 'every run listed';
    const backQuery = ids.length ? '' : selectionQuery(selection);
    const metricSelect = el('select', {
      id: 'sweep-metric',
      onchange: (ev) => { state.metric = ev.target.value; rememberInHash(); load(); },
    });
    const aggSelect = el('select', {
      id: 'sweep-agg',
      onchange: (ev) => { state.agg = ev.target.value; rememberInHash(); load(); },
    }, AGGREGATES.map((a) => el('option', { value: a, selected: a === state.agg }, a)));
    const xSelect = el('select', {
      id: 'sweep-x',
      onchange: (ev) => { state.x = ev.target.value; rememberInHash(); drawScatter(); markRendered('sweep'); },
    });
    const summary = el('p', { id: 'sweep-summary', class: 'muted' });
    const filterError = el('div', { id: 'filter-error', class: 'filter-error', role: 'alert', hidden: true });
    const parcoordsDiv = el('div', { id: 'sweep-parcoords', class: 'sweep-chart parcoords-chart' });
    const scatterDiv = el('div', { id: 'sweep-scatter', class: 'sweep-chart scatter-chart' });
    const chartNote = el('p', { id: 'sweep-note', class: 'chart-caption muted', hidden: true });
    const tableWrap = el('div', { class: 'table-wrap' });

    setChildren(appEl(),
      el('div', { class: 'page-head' }, el('h1', null, 'Sweep'),
        el('span', { class: 'muted sweep-what', title: what }, what),
        el('a', { id: 'sweep-edit', href: '#/' + (backQuery ? '?' + backQuery : '') }, 'change the selection')),
      filterError,
      el('div', { class: 'toolbar chart-controls' },
        el('label', { class: 'control' }, 'metric ', metricSelect),
        el('label', { class: 'control' }, 'aggregate ', aggSelect),
        el('label', { class: 'control' }, 'scatter x ', xSelect)),
      summary,
      el('section', { class: 'panel wide' }, el('h2', null, 'Hyperparameters against the metric'), parcoordsDiv),
      chartNote,
      el('div', { class: 'sweep-lower' },
        el('section', { class: 'panel' }, el('h2', null, 'One hyperparameter'), scatterDiv),
        el('section', { class: 'panel sweep-table-panel' }, el('h2', null, 'Runs'), tableWrap)));

    function metricLabel() {
      return (data && data.metric ? data.metric : 'metric') + ' (' + state.agg + ')';
    }

    function valueOf(r) {
      const v = toNumber(r.value);
      return v === null || Number.isNaN(v) ? null : v;
    }

    /** The runs with a value (drawn), and the axes: the parameters that differ (all of them when none does). */
    function chartData() {
      const runs = data.runs.filter((r) => { const v = valueOf(r); return v !== null && Number.isFinite(v); });
      const differing = data.parameters.filter((p) => p.differs);
      const params = differing.length ? differing : data.parameters;
      return { runs, params };
    }

    function drawParcoords() {
      if (!window.Plotly) { plotlyMissing(parcoordsDiv); return Promise.resolve(); }
      const { runs, params } = chartData();
      const dims = params.map((p) => {
        const axis = parameterAxis(p, runs);
        const dim = { label: escapeForPlotly(p.name + (axis.log ? ' (log)' : '')), values: axis.values, range: axis.range };
        if (axis.tickvals) { dim.tickvals = axis.tickvals; dim.ticktext = axis.ticktext; }
        return dim;
      });
      const values = runs.map(valueOf);
      dims.push({ label: escapeForPlotly(metricLabel()), values, range: spanOf(values) });
      parcoordsDiv.dataset.lines = String(runs.length);
      parcoordsDiv.dataset.axes = JSON.stringify(params.map((p) => p.name));
      const trace = {
        type: 'parcoords',
        line: { color: values, colorscale: SWEEP_COLORSCALE, showscale: true, colorbar: { thickness: 12, x: 1.06, xpad: 0 } },
        dimensions: dims,
        labelfont: { size: 12, color: '#1f2937' },
        tickfont: { size: 10 },
        rangefont: { size: 9, color: '#9ca3af' },
        labelangle: 0,
      };
      const layout = { autosize: true, margin: { l: 70, r: 110, t: 56, b: 24 }, font: { family: FONT, size: 11, color: '#374151' },
        paper_bgcolor: '#ffffff', plot_bgcolor: '#ffffff' };
      if (!runs.length) {
        layout.annotations = [{ text: 'no run has a value of this metric', showarrow: false, xref: 'paper', yref: 'paper',
          x: 0.5, y: 0.5, font: { color: '#9ca3af', size: 13 } }];
      }
      return Promise.resolve(window.Plotly.react(parcoordsDiv, runs.length ? [trace] : [], layout,
        Object.assign({}, PLOTLY_CONFIG, { displayModeBar: false })));
    }

    function drawScatter() {
      if (!window.Plotly) { plotlyMissing(scatterDiv); return Promise.resolve(); }
      const { runs, params } = chartData();
      const param = data.parameters.find((p) => p.name === state.x) || params[0] || null;
      scatterDiv.dataset.param = param ? param.name : '';
      const layout = baseLayout('', 'step', false);
      layout.title = { text: param ? escapeForPlotly(metricLabel() + ' against ' + param.name) : '', x: 0.01, xanchor: 'left',
        font: { size: 13, color: '#1f2937' } };
      layout.margin = { l: 62, r: 18, t: 38, b: 46 };
      layout.yaxis.title = { text: escapeForPlotly(metricLabel()) };
      if (!param) {
        layout.xaxis.title = { text: '' };
        layout.annotations = [{ text: 'no hyperparameters recorded', showarrow: false, xref: 'paper', yref: 'paper',
          x: 0.5, y: 0.5, font: { color: '#9ca3af', size: 13 } }];
        return Promise.resolve(window.Plotly.react(scatterDiv, [], layout, PLOTLY_CONFIG));
      }
      const axis = parameterAxis(param, runs);
      const numeric = axis.kind === 'numeric';
      const xs = runs.map((r, i) => (numeric ? (axis.text[i] === UNSET ? null : r.params[param.name]) : axis.text[i]));
      const shown = runs.map((_, i) => i).filter((i) => xs[i] !== null);
      layout.xaxis = Object.assign(layout.xaxis, {
        title: { text: escapeForPlotly(param.name), standoff: 6 },
        type: numeric ? (axis.log ? 'log' : 'linear') : 'category',
        categoryorder: numeric ? undefined : 'category ascending',
      });
      layout.hovermode = 'closest';
      const values = shown.map((i) => valueOf(runs[i]));
      const trace = {
        type: 'scatter', mode: 'markers',
        x: shown.map((i) => (numeric ? xs[i] : escapeForPlotly(xs[i]))),
        y: values,
        customdata: shown.map((i) => runs[i].id),
        text: shown.map((i) => escapeForPlotly('#' + runs[i].id + ' ' + (isBlank(runs[i].name) ? '(unnamed)' : runs[i].name))),
        hovertemplate: '%{text}<br>' + escapeForPlotly(param.name) + ' = %{x}<br>' + escapeForPlotly(metricLabel())
          + ' = %{y}<extra></extra>',
        marker: { size: 10, color: values, colorscale: SWEEP_COLORSCALE, line: { color: '#ffffff', width: 1 } },
      };
      scatterDiv.dataset.points = String(shown.length);
      const done = window.Plotly.react(scatterDiv, [trace], layout, PLOTLY_CONFIG);
      return Promise.resolve(done).then(() => {
        if (!scatterDiv.dataset.clicks) {
          scatterDiv.dataset.clicks = 'on';
          scatterDiv.on('plotly_click', (ev) => {
            const id = ev && ev.points && ev.points[0] ? ev.points[0].customdata : null;
            if (id !== null && id !== undefined) location.hash = '#/run/' + encodeURIComponent(id);
          });
        }
      });
    }

    function renderTable() {
      const params = chartData().params;
      const sign = state.dir === 'asc' ? 1 : -1;
      const rows = data.runs.slice().sort((a, b) => {
        const x = valueOf(a);
        const y = valueOf(b);
        if (x === null || y === null) return x === null && y === null ? a.id - b.id : x === null ? 1 : -1;   // missing last
        return sign * (x < y ? -1 : x > y ? 1 : 0) || a.id - b.id;
      });
      const arrow = state.dir === 'asc' ? '▲' : '▼';
      const valueHeader = el('th', {
        class: ['num', 'sortable', 'sorted'], tabindex: '0', scope: 'col', id: 'sweep-sort',
        'aria-sort': state.dir === 'asc' ? 'ascending' : 'descending',
        title: 'Sorted by the metric; runs without a value last',
        onclick: flip,
        onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); flip(); } },
      }, metricLabel(), el('span', { class: 'sort-indicator', 'aria-hidden': 'true' }, arrow));
      setChildren(tableWrap, el('table', { id: 'sweep-table', class: 'data sweep' },
        el('thead', null, el('tr', null,
          el('th', { class: 'num', scope: 'col' }, '#'),
          el('th', { scope: 'col' }, 'Run'),
          el('th', { scope: 'col' }, 'Status'),
          params.map((p) => el('th', { scope: 'col', dataset: { param: p.name } }, p.name)),
          valueHeader,
          el('th', { class: 'num', scope: 'col', title: 'Rows of this metric' }, 'Points'))),
        el('tbody', null, rows.length ? rows.map((r, i) => el('tr', { dataset: { id: r.id } },
          numCell(String(i + 1)),
          el('td', { class: 'name' }, el('a', { class: 'run-link', href: '#/run/' + encodeURIComponent(r.id) },
            '#' + r.id + ' ' + (isBlank(r.name) ? '(unnamed)' : String(r.name)))),
          el('td', null, statusBadge(r.status)),
          params.map((p) => (Object.prototype.hasOwnProperty.call(r.params || {}, p.name)
            ? el('td', { class: 'value' }, formatValue(r.params[p.name]))
            : el('td', { class: 'value missing', title: 'Not set in this run' }, '—'))),
          numCell(fmtNum(r.value), r.value),
          numCell(fmtInt(r.count)))) : el('tr', { class: 'empty-row' },
          el('td', { colspan: String(params.length + 5) }, 'No runs selected.')))));
    }

    function flip() {
      state.dir = state.dir === 'asc' ? 'desc' : 'asc';
      rememberInHash();
      renderTable();
      markRendered('sweep');
    }

    function renderControls() {
      const total = data.runs.length;
      setChildren(metricSelect, data.metrics.map((m) => el('option', { value: m.name, selected: m.name === data.metric },
        m.name + (m.runs < total ? ' (' + m.runs + ' of ' + total + ' runs)' : ''))));
      metricSelect.disabled = !data.metrics.length;
      if (data.metric && !data.metrics.some((m) => m.name === data.metric)) {
        metricSelect.appendChild(el('option', { value: data.metric, selected: true }, data.metric + ' (no run has it)'));
      }
      const params = chartData().params;
      const others = data.parameters.filter((p) => !params.includes(p));
      setChildren(xSelect, params.concat(others).map((p) => el('option', { value: p.name }, p.name)));
      // The server suggests the hyperparameter that goes most with the metric.
      if (!data.parameters.some((p) => p.name === state.x)) state.x = data.suggested || (params.length ? params[0].name : '');
      xSelect.value = state.x;
      xSelect.disabled = !data.parameters.length;
    }

    function describe() {
      const total = data.runs.length;
      const parts = [total === 1 ? '1 run' : total + ' runs'];
      if (data.metric) parts.push(data.with_value + ' with ' + metricLabel());
      if (data.truncated) parts.push('only the first ' + total + ' of ' + data.total + ' are shown');
      summary.textContent = parts.join(' · ');
      const notes = [];
      const drawn = chartData().runs.length;
      if (data.metric && drawn < total) notes.push((total - drawn) + ' of the runs have no finite ' + metricLabel() + ' and are not drawn');
      if (Array.isArray(data.missing) && data.missing.length) notes.push('not found: ' + data.missing.map((i) => '#' + i).join(', '));
      chartNote.textContent = notes.join(' · ');
      chartNote.hidden = !notes.length;
    }

    async function load() {
      const mine = ++seq;
      const parts = [selectionPart(), 'agg=' + state.agg];
      if (state.metric) parts.push('metric=' + encodeURIComponent(state.metric));
      try {
        const res = await api('/api/sweep?' + parts.filter(Boolean).join('&'), ctx.signal);
        if (ctx.disposed || mine !== seq) return;
        data = {
          metric: res.metric, runs: Array.isArray(res.runs) ? res.runs : [],
          parameters: Array.isArray(res.parameters) ? res.parameters : [],
          metrics: Array.isArray(res.metrics) ? res.metrics : [], with_value: res.with_value || 0,
          suggested: typeof res.suggested === 'string' ? res.suggested : null,
          total: res.total, truncated: !!res.truncated, missing: res.missing,
        };
        clearError();
        clearFilterError(filterError);
        if (!state.metric && data.metric) state.metric = data.metric;
        rememberInHash();
        renderControls();
        describe();
        renderTable();
        await Promise.all([drawParcoords(), drawScatter()]);
        if (ctx.disposed || mine !== seq) return;
        markRendered('sweep');
      } catch (e) {
        if (isAbort(e) || ctx.disposed || mine !== seq) return;
        if (!showFilterError(filterError, e)) showError('Could not load the sweep: ' + e.message);
        setChildren(tableWrap, emptyNote('No runs to show.'));
        markRendered('sweep');
      }
    }

    await load();
  }

  // ---------------------------------------------------------------- start

  window.mlpUI = { escapeForPlotly, formatDuration, fmtNum, parseTimestamp, safeUrl };
  window.addEventListener('hashchange', route);
  route();
})();
