// Lepus console: the core. DOM helpers, the API client (basic auth, the
// API's own error words), the router, paginated tables, charts, dialogs.
// Pages live in pages.js. No framework: each page builds its DOM once and
// refreshes its live parts on a timer, so forms keep what the user typed.

export const state = {
  user: null, // {name, tags}
  refreshMs: Number(localStorage.getItem('lepus.refresh') || 5000),
  vhost: localStorage.getItem('lepus.vhost') || '', // '' = all
  timers: [],
  page: null,
};

// ----- DOM -----

/** h('div.cls#id', {attr}, child, ...): an element. Children may be
 *  strings, numbers, nodes, arrays, null/false (skipped). */
export function h(spec, attrs, ...children) {
  const m = spec.match(/^([a-z0-9]+)?((?:[.#][\w-]+)*)$/i);
  const el = document.createElement((m && m[1]) || 'div');
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === '.') el.classList.add(part.slice(1));
      else el.id = part.slice(1);
    }
  }
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ----- formatting -----

export function fmtNum(n) {
  if (n === null || n === undefined || n === '') return '';
  if (typeof n !== 'number') return String(n);
  return n.toLocaleString('en-US', { maximumFractionDigits: 1 });
}

export function fmtRate(d) {
  const r = d && typeof d.rate === 'number' ? d.rate : null;
  return r === null ? '' : fmtNum(r) + '/s';
}

export function fmtBytes(b) {
  if (typeof b !== 'number') return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + ' ' + u[i];
}

export function fmtDuration(ms) {
  if (typeof ms !== 'number') return '';
  const s = Math.floor(Math.abs(ms) / 1000);
  const sign = ms < 0 ? '-' : '';
  if (s < 60) return sign + (Math.abs(ms) < 10000 ? (Math.abs(ms) / 1000).toFixed(1) : s) + 's';
  const m = Math.floor(s / 60), hr = Math.floor(m / 60), d = Math.floor(hr / 24);
  if (d) return `${sign}${d}d ${hr % 24}h`;
  if (hr) return `${sign}${hr}h ${m % 60}m`;
  return `${sign}${m}m ${s % 60}s`;
}

export function fmtTime(ms) {
  if (typeof ms !== 'number') return '';
  return new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC');
}

export const enc = encodeURIComponent;

// ----- the API -----

export class ApiError extends Error {
  constructor(status, error, reason) {
    super(reason || error || `HTTP ${status}`);
    this.status = status;
    this.error = error;
    this.reason = reason;
  }
}

function credentials() {
  return sessionStorage.getItem('lepus.auth');
}

/** Call the API. Answers the parsed JSON (or null for an empty answer);
 *  throws ApiError with the API's own `error` and `reason`. */
export async function api(method, path, body, extraHeaders) {
  const headers = { 'X-Requested-With': 'XMLHttpRequest', ...(extraHeaders || {}) };
  const auth = credentials();
  if (auth) headers.Authorization = 'Basic ' + auth;
  let payload;
  if (body !== undefined && body !== null) {
    headers['Content-Type'] = 'application/json';
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body: payload, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', 'The broker did not answer: ' + e.message);
  }
  const text = await r.text();
  let json = null;
  if (text) {
    try { json = JSON.parse(text); } catch (_) { json = text; }
  }
  if (!r.ok) {
    const err = json && typeof json === 'object' ? json : {};
    const e = new ApiError(r.status, err.error || r.statusText, err.reason || (typeof json === 'string' ? json : ''));
    if (r.status === 401 && state.user && path === '/api/whoami') logout();
    throw e;
  }
  return json;
}

export const get = (p) => api('GET', p);

// ----- messages to the user -----

export function errorText(e) {
  if (e instanceof ApiError) return e.reason || e.error;
  return String(e && e.message ? e.message : e);
}

/** A flash message at the top of the page; errors stay until dismissed. */
export function flash(text, kind = 'ok') {
  const box = document.getElementById('flash');
  const item = h('div.flash-item.' + kind, { role: kind === 'error' ? 'alert' : 'status', 'data-t': Date.now() },
    h('span.flash-text', text),
    h('button.flash-close', { title: 'Dismiss', onclick: () => item.remove() }, '×'));
  box.append(item);
  if (kind !== 'error') setTimeout(() => item.remove(), 4000);
}

export function flashError(e) {
  flash(errorText(e), 'error');
}

/** An in-page confirmation dialog; resolves true on confirm. */
export function confirmBox(text, okLabel = 'Yes') {
  return new Promise((resolve) => {
    const close = (v) => { back.remove(); resolve(v); };
    const back = h('div.modal-back',
      h('div.modal#confirm-dialog', { role: 'dialog' },
        h('p', text),
        h('div.modal-buttons',
          h('button.danger#confirm-yes', { onclick: () => close(true) }, okLabel),
          h('button#confirm-no', { onclick: () => close(false) }, 'Cancel'))));
    document.body.append(back);
  });
}

/** A button that runs an async action, shows its error as the API words it. */
export function action(label, fn, attrs = {}) {
  const b = h('button', { ...attrs, onclick: async (ev) => {
    ev.preventDefault();
    b.disabled = true;
    try { await fn(); } catch (e) { flashError(e); } finally { b.disabled = false; }
  } }, label);
  return b;
}

// ----- permissions -----

export const hasTag = (t) => !!state.user && state.user.tags.includes(t);
export const isAdmin = () => hasTag('administrator');
export const isMonitor = () => isAdmin() || hasTag('monitoring');

// ----- timers -----

/** Run fn now and every refresh period while this page is shown. */
export function every(fn) {
  let busy = false;
  const tick = async () => {
    if (busy) return; // a slow answer: skip a tick rather than pile up
    busy = true;
    try { await fn(); } catch (e) { /* shown by fn's own error slot */ } finally { busy = false; }
  };
  tick();
  const id = setInterval(tick, state.refreshMs);
  state.timers.push(id);
  return tick;
}

export function stopTimers() {
  for (const id of state.timers) clearInterval(id);
  state.timers = [];
}

// ----- key/value tables -----

export function kvTable(obj, opts = {}) {
  const rows = Object.entries(obj || {}).filter(([, v]) => v !== undefined);
  if (!rows.length) return h('p.muted', opts.empty || 'None');
  return h('table.kv', h('tbody', rows.map(([k, v]) => h('tr', h('th', k), h('td', valueCell(v))))));
}

export function valueCell(v) {
  if (v instanceof Node) return v;
  if (v === null) return h('span.muted', 'null');
  if (Array.isArray(v)) return v.length ? h('div', v.map((x) => h('div', valueCell(x)))) : h('span.muted', '[]');
  if (typeof v === 'object') return kvTable(v, { empty: '{}' });
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  return String(v);
}

// ----- paginated tables over the API's paging -----

/**
 * A table whose rows come a page at a time from the API:
 *   path:      a list path that paginates (/api/queues, /api/connections, ...)
 *   columns:   [{title, key (for sorting, dotted), cell(row) -> node|string, num}]
 *   fetchCols: the fields to ask for (columns=), keeps answers small at 10,000 rows
 * Sorting, filtering and paging happen in the broker (sort=, name=, page=).
 */
export function pagedTable(opts) {
  const st = {
    page: 1,
    pageSize: Number(localStorage.getItem('lepus.pageSize') || 100),
    sort: opts.sort || 'name',
    reverse: !!opts.reverse,
    name: '',
    regex: false,
  };
  const errSlot = h('div.table-error');
  const info = h('span.pager-info');
  const tbody = h('tbody');
  const filter = h('input.filter', { type: 'search', placeholder: 'Filter by name', 'aria-label': 'Filter',
    oninput: debounce(() => { st.name = filter.value; st.page = 1; reload(); }, 300) });
  const regex = h('input', { type: 'checkbox', onchange: () => { st.regex = regex.checked; st.page = 1; reload(); } });
  const pageSel = h('select.page-size', { onchange: () => {
    st.pageSize = Number(pageSel.value); localStorage.setItem('lepus.pageSize', pageSel.value); st.page = 1; reload();
  } }, [20, 50, 100, 500].map((n) => h('option', { value: n, selected: n === st.pageSize }, String(n))));
  const prev = h('button.prev', { onclick: () => { if (st.page > 1) { st.page--; reload(); } } }, '‹ Prev');
  const next = h('button.next', { onclick: () => { st.page++; reload(); } }, 'Next ›');
  const heads = opts.columns.map((c) => {
    const th = h('th' + (c.num ? '.num' : ''), c.title);
    if (c.key) {
      th.classList.add('sortable');
      th.addEventListener('click', () => {
        if (st.sort === c.key) st.reverse = !st.reverse;
        else { st.sort = c.key; st.reverse = !!c.num; }
        reload();
      });
    }
    c.th = th;
    return th;
  });
  const table = h('table.list' + (opts.id ? '#' + opts.id : ''), h('thead', h('tr', heads)), tbody);
  const el = h('div.paged',
    h('div.table-tools', filter, h('label.regex', regex, ' regex'),
      h('span.spacer'), info, prev, next, h('label', ' page size ', pageSel)),
    errSlot, h('div.table-wrap', table));

  async function reload() {
    const q = new URLSearchParams({ page: st.page, page_size: st.pageSize, sort: st.sort,
      sort_reverse: st.reverse, name: st.name, use_regex: st.regex });
    if (opts.fetchCols) q.set('columns', opts.fetchCols.join(','));
    const path = typeof opts.path === 'function' ? opts.path() : opts.path;
    let r;
    try {
      r = await get(path + '?' + q);
    } catch (e) {
      if (e.status === 400 && e.error === 'page_out_of_range' && st.page > 1) {
        st.page = 1;
        return reload();
      }
      clear(errSlot, h('div.error', errorText(e)));
      throw e;
    }
    clear(errSlot);
    for (const c of opts.columns) {
      if (!c.th) continue;
      c.th.classList.toggle('sorted', c.key === st.sort);
      c.th.classList.toggle('reverse', c.key === st.sort && st.reverse);
    }
    const items = r.items || [];
    clear(tbody, items.length ? items.map((row) => h('tr', opts.columns.map((c) =>
      h('td' + (c.num ? '.num' : ''), c.cell(row))))) :
      h('tr', h('td.muted', { colspan: opts.columns.length }, st.name ? 'Nothing matches the filter' : (opts.empty || 'None'))));
    info.textContent = `${fmtNum(r.filtered_count)} of ${fmtNum(r.total_count)} · page ${r.page} of ${Math.max(1, r.page_count)}`;
    prev.disabled = r.page <= 1;
    next.disabled = r.page >= r.page_count;
    if (opts.onData) opts.onData(r);
  }
  return { el, reload };
}

export function debounce(fn, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

/** A plain table of rows already fetched. */
export function listTable(columns, rows, empty = 'None', id) {
  return h('table.list' + (id ? '#' + id : ''),
    h('thead', h('tr', columns.map((c) => h('th' + (c.num ? '.num' : ''), c.title)))),
    h('tbody', rows.length ? rows.map((r) => h('tr', columns.map((c) => h('td' + (c.num ? '.num' : ''), c.cell(r))))) :
      h('tr', h('td.muted', { colspan: columns.length }, empty))));
}

// ----- charts (uPlot) -----

const COLORS = ['#2f6fde', '#d9822b', '#2e9e5b', '#b83280', '#6b46c1', '#c53030'];

/** A time-series chart kept in the page; push(values) adds a point now and
 *  drops points older than `keepMs` (10 minutes). */
export function liveChart(title, names, opts = {}) {
  const keepMs = opts.keepMs || 10 * 60 * 1000;
  const data = [[], ...names.map(() => [])];
  const box = h('div.chart', { 'data-chart': opts.id || title });
  const wrap = h('div.chart-box', h('h4', title), box);
  let plot = null;
  const make = () => {
    const width = Math.max(280, (box.clientWidth || 480) - 4);
    plot = new uPlot({
      width, height: opts.height || 180,
      series: [{}, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2,
        value: (u, v) => (v === null || v === undefined ? '–' : fmtNum(v) + (opts.unit || '')) }))],
      axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => fmtNum(v)) }],
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    }, data, box);
  };
  const push = (values) => {
    data[0].push(Date.now() / 1000);
    values.forEach((v, i) => data[i + 1].push(typeof v === 'number' ? v : null));
    const cutoff = Date.now() / 1000 - keepMs / 1000;
    while (data[0].length && data[0][0] < cutoff) data.forEach((s) => s.shift());
    if (!plot && box.isConnected) make();
    if (plot) plot.setData(data);
  };
  const chart = { el: wrap, push, data, title };
  if (opts.id) charts[opts.id] = chart;
  return chart;
}

/** The live charts, by id: the tests (and the curious) read their points. */
export const charts = {};
// Script errors the pages did not handle, kept for the browser test (which
// expects none) and for anyone looking in the developer tools.
window.lepusConsole = { charts, state, errors: [] };
window.addEventListener('error', (e) => window.lepusConsole.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => window.lepusConsole.errors.push(String(e.reason)));

// ----- the router -----

const routes = [];

/** route('queue/:vhost/:name', render): render(main, params). */
export function route(pattern, render, opts = {}) {
  const parts = pattern.split('/').filter(Boolean);
  routes.push({ parts, render, ...opts });
}

export function go(hash) {
  location.hash = hash;
}

export const link = (hash, text) => h('a', { href: '#/' + hash }, text);

function match(path) {
  const segs = path.split('/').filter(Boolean);
  for (const r of routes) {
    if (r.parts.length !== segs.length) continue;
    const params = {};
    let ok = true;
    r.parts.forEach((p, i) => {
      if (p[0] === ':') params[p.slice(1)] = decodeURIComponent(segs[i]);
      else if (p !== segs[i]) ok = false;
    });
    if (ok) return { r, params };
  }
  return null;
}

export async function render() {
  stopTimers();
  // A new page: the last page's confirmations go, its errors stay.
  // (one said just before this navigation, as "deleted", stays).
  document.querySelectorAll('#flash .flash-item:not(.error)').forEach((el) => {
    if (Date.now() - Number(el.dataset.t) > 1500) el.remove();
  });
  for (const k of Object.keys(charts)) delete charts[k];
  const main = document.getElementById('main');
  if (!state.user) return showLogin();
  const path = location.hash.replace(/^#\/?/, '');
  const m = match(path) || match('');
  document.querySelectorAll('#nav a').forEach((a) => {
    const top = a.getAttribute('data-section');
    a.classList.toggle('active', m.r.section === top);
  });
  clear(main);
  state.page = m.r.section;
  try {
    await m.r.render(main, m.params);
  } catch (e) {
    main.append(h('div.error.page-error', errorText(e)));
  }
}

// ----- login -----

export function logout() {
  sessionStorage.removeItem('lepus.auth');
  state.user = null;
  stopTimers();
  document.body.classList.remove('logged-in');
  render();
}

function showLogin() {
  document.body.classList.remove('logged-in');
  const main = document.getElementById('main');
  const user = h('input#login-user', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input#login-password', { name: 'password', type: 'password', autocomplete: 'current-password' });
  const err = h('div#login-error.error', { hidden: true });
  const form = h('form#login-form.login', {
    onsubmit: async (ev) => {
      ev.preventDefault();
      err.hidden = true;
      const ok = await login(user.value, pass.value).catch((e) => {
        err.textContent = errorText(e);
        err.hidden = false;
        return false;
      });
      if (ok) render();
    },
  },
  h('h2', 'Log in'),
  h('label', 'Username', user),
  h('label', 'Password', pass),
  err,
  h('button#login-submit', { type: 'submit' }, 'Log in'));
  clear(main, form);
}

/** Check the credentials with /api/whoami; keep them for this tab only. */
export async function login(user, password) {
  const token = btoa(unescape(encodeURIComponent(`${user}:${password}`)));
  sessionStorage.setItem('lepus.auth', token);
  try {
    state.user = await get('/api/whoami');
  } catch (e) {
    sessionStorage.removeItem('lepus.auth');
    state.user = null;
    throw e;
  }
  afterLogin();
  return true;
}

function afterLogin() {
  document.body.classList.add('logged-in');
  document.getElementById('who').textContent = `${state.user.name} (${state.user.tags.join(', ') || 'no tags'})`;
  document.querySelectorAll('[data-needs]').forEach((el) => {
    el.hidden = !el.getAttribute('data-needs').split(',').some((t) => hasTag(t));
  });
  fillVhosts();
}

async function fillVhosts() {
  const sel = document.getElementById('vhost-select');
  try {
    const vs = await get('/api/vhosts?columns=name');
    clear(sel, h('option', { value: '' }, 'All vhosts'),
      vs.map((v) => h('option', { value: v.name, selected: v.name === state.vhost }, v.name)));
    if (state.vhost && !vs.some((v) => v.name === state.vhost)) state.vhost = '';
  } catch (_) { /* the pages show their own errors */ }
}

export function refreshVhosts() { fillVhosts(); }

export async function start() {
  const sel = document.getElementById('refresh-select');
  for (const o of sel.options) o.selected = Number(o.value) === state.refreshMs;
  sel.addEventListener('change', () => {
    state.refreshMs = Number(sel.value);
    localStorage.setItem('lepus.refresh', sel.value);
    render();
  });
  document.getElementById('vhost-select').addEventListener('change', (ev) => {
    state.vhost = ev.target.value;
    localStorage.setItem('lepus.vhost', state.vhost);
    render();
  });
  document.getElementById('logout').addEventListener('click', (ev) => { ev.preventDefault(); logout(); });
  window.addEventListener('hashchange', render);
  if (credentials()) {
    try {
      state.user = await get('/api/whoami');
      afterLogin();
    } catch (_) {
      sessionStorage.removeItem('lepus.auth');
    }
  }
  render();
}
