// The p2pshare peer's page: the JSON API for what the person asks, the event stream
// (/api/events) for what happens; every request carries the token of the printed link. The objects are those `peer --json` prints (README lists
// their fields). No build step, no dependencies. Text from the peer is always set with
// textContent, never parsed as HTML, and names show hidden characters escaped.
'use strict';

const $ = (sel) => document.querySelector(sel);
// How long, and how many, ended downloads stay listed.
const KEEP_ENDED_MS = 10 * 60 * 1000;
const MAX_ENDED = 20;

const state = {
  // The results table: what asked for it (the API path and body, for its next pages), its
  // rows, and the totals of the last page.
  ask: null,
  rows: [],
  next: null,
  total: null,
  totalExact: true,
  partial: false,
  sort: { key: null, dir: 1 },
  // Downloads by hash: the running ones as the status lists them, and the ended ones.
  downloads: new Map(),
  sharedSeen: null,
};

// ----- words for people --------------------------------------------------------------------

function human(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function duration(secs) {
  if (secs == null || !isFinite(secs)) return '';
  secs = Math.ceil(secs);
  if (secs < 60) return `${secs} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ${secs % 60} s`;
  return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
}

const count = (n) => Number(n).toLocaleString('en');
const plural = (n, word) => `${count(n)} ${word}${n === 1 ? '' : 's'}`;

// A name as the console prints it: control and invisible characters escaped (a right-to-left
// override would make `<U+202E>txt.exe` read as `exe.txt`).
function visible(name) {
  return String(name).replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => {
    if (c === '\t') return '\\t';
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    return `\\u{${c.codePointAt(0).toString(16)}}`;
  });
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v; else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function showError(text) {
  const box = $('#error');
  if (!text) { box.hidden = true; box.textContent = ''; return; }
  box.textContent = text;
  box.hidden = false;
}

// ----- the token -----------------------------------------------------------------------------

// The secret every API request carries. The printed link holds it in its fragment
// (`#token=...`), which the browser never sends anywhere; it is kept in sessionStorage (this
// origin's, port included, for this tab) and taken out of the address bar. Never a cookie:
// browsers send a host's cookies to all its ports, so another local server would get it.
const TOKEN_KEY = 'p2pshare_token';

function takeToken() {
  const m = /(?:^|&)token=([0-9a-fA-F]+)/.exec(location.hash.slice(1));
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();
const NO_TOKEN = 'not allowed: open the link the peer printed when it started (it carries the token)';

function authorized(headers = {}) {
  return { ...headers, Authorization: `Bearer ${token}` };
}

async function api(path, body) {
  const opts = body === undefined ? { headers: authorized() } : {
    method: 'POST',
    headers: authorized({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(body),
  };
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    throw new Error('the peer does not answer (is it still running?)');
  }
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON: said below */ }
  if (res.status === 401) throw new Error(NO_TOKEN);
  if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

// ----- search, lookup and their next pages -------------------------------------------------

function searchQuery() {
  const parts = [$('#q').value.trim()];
  if ($('#mode').value === 'lookup') return parts[0];
  const kind = $('#kind').value;
  if (kind) parts.push(`type:${kind}`);
  const ext = $('#ext').value.replace(/[\s.]/g, '');
  if (ext) parts.push(`ext:${ext}`);
  const min = $('#minsize').value.trim(), max = $('#maxsize').value.trim();
  if (min) parts.push(`size>=${min}`);
  if (max) parts.push(`size<=${max}`);
  const holders = $('#holders').value.trim();
  if (holders) parts.push(`holders>=${holders}`);
  return parts.filter(Boolean).join(' ');
}

// The rows of an answer: a search's hits, or a lookup's files (holders counted, listed in
// the row's tooltip).
function rowsOf(ans) {
  if (ans.type === 'search') return ans.hits;
  return ans.files.map((f) => ({
    hash: f.hash, size: f.size, name: f.name, kind: f.kind, holders: f.holder_count,
    holderList: f.holders,
  }));
}

// Asks `path` with `body`; `more`: the next page, added below the rows shown.
async function ask(path, body, more) {
  showError('');
  for (const b of [$('#go'), $('#more')]) b.disabled = true;
  $('#summary').textContent = more ? 'asking for the next page…' : 'asking the index…';
  try {
    const ans = await api(path, more ? { ...body, next: state.next } : body);
    if (!more) { state.rows = []; state.ask = { path, body }; }
    const known = new Set(state.rows.map((r) => r.hash));
    const shownBefore = state.rows.length;
    for (const r of rowsOf(ans)) if (!known.has(r.hash)) state.rows.push(r);
    state.next = ans.next;
    // A search's total counts from the page's cursor on; a lookup's counts all the files.
    state.total = ans.type === 'search' ? shownBefore + ans.total : ans.total;
    state.totalExact = ans.type === 'search' ? ans.total_exact : true;
    state.partial = ans.type === 'search' && ans.partial;
    renderResults();
  } catch (e) {
    if (!more) { state.rows = []; state.next = null; state.total = null; renderResults(); }
    $('#summary').textContent = '';
    showError(`${path.endsWith('search') ? 'Search' : 'Lookup'} failed: ${e.message}`);
  } finally {
    for (const b of [$('#go'), $('#more')]) b.disabled = false;
  }
}

function submit(ev) {
  ev.preventDefault();
  const text = searchQuery();
  if ($('#mode').value === 'lookup') ask('/api/lookup', { target: text }, false);
  else ask('/api/search', { query: text }, false);
}

function sortBy(key) {
  const s = state.sort;
  s.dir = s.key === key ? -s.dir : (key === 'name' || key === 'kind' ? 1 : -1);
  s.key = key;
  renderResults();
}

function summary() {
  const n = state.rows.length;
  if (state.total == null) return '';
  let text;
  if (state.next || state.total > n) {
    const of = `${state.totalExact ? '' : 'at least '}${count(state.total)}`;
    text = `${count(n)} of ${of} ${state.total === 1 ? 'match' : 'matches'}: more shows the next page`;
  } else {
    text = plural(n, 'result');
  }
  if (state.partial) text += ' — the index stopped early (its work budget): there may be matches it did not look at; narrow the search';
  return text;
}

function renderResults() {
  const rows = state.rows.slice();
  const { key, dir } = state.sort;
  if (key) {
    rows.sort((a, b) => {
      const x = a[key] ?? '', y = b[key] ?? '';
      return (typeof x === 'number' ? x - y : String(x).localeCompare(String(y))) * dir;
    });
  }
  for (const th of document.querySelectorAll('#results th.sortable')) {
    th.classList.toggle('sorted-asc', th.dataset.key === key && dir === 1);
    th.classList.toggle('sorted-desc', th.dataset.key === key && dir === -1);
  }
  $('#results tbody').replaceChildren(...rows.map((r) => {
    const btn = el('button', { class: 'get small', type: 'button', text: 'Download', title: r.hash });
    btn.dataset.hash = r.hash;
    btn.addEventListener('click', () => download(r, btn));
    const holders = el('td', { class: 'num', text: count(r.holders) });
    if (r.holderList) holders.title = r.holderList.join('\n');
    return el('tr', {},
      el('td', { class: 'name', text: visible(r.name), title: r.hash }),
      el('td', { class: 'num', text: human(r.size), title: `${count(r.size)} bytes` }),
      holders,
      el('td', { class: 'kind', text: r.kind || '' }),
      el('td', {}, btn));
  }));
  $('#summary').textContent = summary();
  $('#more').hidden = !state.next;
}

// ----- downloads ---------------------------------------------------------------------------

async function download(r, btn) {
  showError('');
  btn.disabled = true;
  try {
    const clicked = Date.now();
    await api('/api/get', { hash: r.hash });
    // Until the status lists it (or its end comes): asked. The stream may have told its
    // start, even its end, before this answer came.
    const d = state.downloads.get(r.hash);
    if (!d || (d.endedAt && d.endedAt < clicked)) {
      state.downloads.set(r.hash, { hash: r.hash, name: r.name, done: 0, total: r.size, state: 'asked' });
    }
    renderDownloads();
  } catch (e) {
    showError(`Download of ${visible(r.name)} failed: ${e.message}`);
  } finally {
    btn.disabled = false;
  }
}

function ended(hash, fields) {
  const d = state.downloads.get(hash) || { hash, name: fields.name || hash, done: 0, total: 0 };
  Object.assign(d, fields, { endedAt: Date.now() });
  state.downloads.set(hash, d);
}

function pruneEnded() {
  const now = Date.now();
  const done = [...state.downloads.values()].filter((d) => d.endedAt);
  done.sort((a, b) => b.endedAt - a.endedAt);
  done.forEach((d, i) => {
    if (i >= MAX_ENDED || now - d.endedAt > KEEP_ENDED_MS) state.downloads.delete(d.hash);
  });
}

function renderDownloads() {
  pruneEnded();
  const list = $('#downloads');
  const all = [...state.downloads.values()];
  const running = all.filter((d) => d.state === 'running').length;
  list.dataset.running = String(running);
  $('#downloads-count').textContent = running ? `${running} running` : '';
  if (all.length === 0) {
    list.replaceChildren(el('li', { class: 'muted empty', text: 'none yet' }));
    return;
  }
  // Running first, then asked, then the ended ones, newest first.
  const rank = { running: 0, asked: 1 };
  all.sort((a, b) => (rank[a.state] ?? 2) - (rank[b.state] ?? 2) || (b.endedAt || 0) - (a.endedAt || 0));
  list.replaceChildren(...all.map((d) => {
    const pct = d.total ? Math.floor((d.done / d.total) * 100) : 100;
    let what = `${human(d.done)} of ${human(d.total)} (${pct}%)`;
    if (d.state === 'running') {
      if (d.rate >= 1) what += ` — ${human(Math.round(d.rate))}/s, ${duration((d.total - d.done) / d.rate)} left`;
      what += `, ${plural(d.sources, 'source')}`;
      if (!d.background) what += ' (the console waits for it)';
    }
    const li = el('li', { class: d.state, id: `dl-${d.hash}` },
      el('div', { class: 'dl-name', text: visible(d.name), title: d.hash }),
      el('progress', { max: d.total || 1, value: d.done }),
      el('div', {}, el('span', { class: 'dl-state', text: d.state }), ` · ${what}`));
    if (d.message) li.append(el('div', { class: 'muted', text: d.message }));
    return li;
  }));
}

// ----- status ------------------------------------------------------------------------------

const LABELS = { index: 'Index', share: 'Sharing', listen_port: 'File server', uploads: 'Uploads' };

function label(key) {
  return LABELS[key] || key.charAt(0).toUpperCase() + key.slice(1).replace(/_/g, ' ');
}

// Any value in words: sizes (fields named bytes or size) in human units.
function words(key, v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'number') return /bytes|size/.test(key) ? human(v) : count(v);
  if (Array.isArray(v)) return v.length ? v.map((x) => words(key, x)).join(', ') : 'none';
  if (typeof v === 'object') {
    return Object.entries(v).map(([k, x]) => `${k.replace(/_/g, ' ')} ${words(k, x)}`).join(', ');
  }
  return String(v);
}

// The known fields in sentences; any other field (a newer peer's) as its name and value.
function statusText(key, s) {
  const v = s[key];
  switch (key) {
    case 'index': {
      const where = v.address;
      switch (v.state) {
        case 'connected': return `connected to ${where}${v.observed ? ` (it sees us as ${v.observed})` : ''}`;
        case 'not_connected_yet': return `not connected yet to ${where}${v.reason ? `: ${v.reason}` : ''}; retrying`;
        case 'disconnected': return `disconnected from ${where}${v.reason ? ` (${v.reason})` : ''}; retrying`;
        case 'refused': return `${where} refused this peer (${v.reason}); restart the peer to retry`;
        default: return `${v.state.replace(/_/g, ' ')} ${where}`;
      }
    }
    case 'share': return `${plural(v.files, 'file')}, ${human(v.bytes)}, from ${v.dir}`;
    case 'listen_port': return `port ${v}`;
    case 'uploads': return `${v.active} of ${v.slots} slots sending, ${v.queued} waiting, ${count(v.done)} range requests answered (${human(v.bytes)} sent)`;
    default: return words(key, v);
  }
}

function onStatus(s) {
  const connected = s.index && s.index.state === 'connected';
  const pill = $('#conn');
  pill.textContent = connected ? 'index connected' : `index ${s.index ? s.index.state.replace(/_/g, ' ') : 'unknown'}`;
  pill.className = `pill ${connected ? 'ok' : 'bad'}`;
  const keys = Object.keys(s).filter((k) => k !== 'type' && k !== 'downloads' && k !== 'text');
  $('#status').replaceChildren(...keys.flatMap((k) => [el('dt', { text: label(k) }), el('dd', { text: statusText(k, s) })]));
  // Every running download, as the status lists it; one no longer listed has ended (its
  // end comes as a line, usually before).
  const running = new Set();
  for (const d of s.downloads || []) {
    running.add(d.hash);
    const old = state.downloads.get(d.hash) || {};
    state.downloads.set(d.hash, { ...old, ...d, state: 'running', message: null, endedAt: null });
  }
  for (const d of state.downloads.values()) {
    if (d.state === 'running' && !running.has(d.hash)) {
      ended(d.hash, { state: 'ended', message: 'no longer running' });
    }
  }
  renderDownloads();
  const shared = s.share ? s.share.files : null;
  if (state.sharedSeen !== null && shared !== state.sharedSeen) loadFiles();
  state.sharedSeen = shared;
}

// ----- what the console says ---------------------------------------------------------------

// Lines that are notes (said on stderr, besides errors and warnings).
const NOTES = new Set(['note', 'hashing', 'index_up', 'index_down', 'trying', 'resuming', 'queued', 'dropped', 'serving', 'metrics']);

function onLine(line) {
  const kind = line.type === 'error' || line.type === 'warning' ? line.type : NOTES.has(line.type) ? 'note' : 'result';
  const log = $('#log');
  log.append(el('li', { class: kind, text: line.text }));
  while (log.children.length > 200) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
  switch (line.type) {
    case 'started':
      if ((state.downloads.get(line.hash) || {}).state !== 'running') {
        state.downloads.set(line.hash, { hash: line.hash, name: line.name, done: 0, total: line.size, state: 'asked' });
        renderDownloads();
      }
      break;
    case 'saved':
      ended(line.hash, { state: 'saved', name: line.path.split('/').pop(), done: line.size, total: line.size, message: `saved as ${line.path}` });
      renderDownloads();
      break;
    case 'already_have':
      ended(line.hash, { state: 'saved', name: line.path.split('/').pop(), done: line.size, total: line.size, message: `already here: ${line.path}` });
      renderDownloads();
      break;
    case 'error':
      if (line.hash) {
        const d = state.downloads.get(line.hash);
        const name = d ? visible(d.name) : line.hash;
        ended(line.hash, { state: 'failed', message: line.message });
        renderDownloads();
        showError(`Download of ${name} failed: ${line.message}`);
      } else {
        showError(line.message);
      }
      break;
    default:
  }
}

// ----- shared files ------------------------------------------------------------------------

async function loadFiles() {
  try {
    const ans = await api('/api/files');
    let text = `${plural(ans.count, 'file')}, ${human(ans.bytes)}`;
    if (ans.count > ans.files.length) text += ` (the first ${count(ans.files.length)} listed)`;
    $('#files-summary').textContent = text;
    $('#files tbody').replaceChildren(...ans.files.map((f) => el('tr', {},
      el('td', { class: 'name', text: visible(f.name), title: f.hash }),
      el('td', { class: 'num', text: human(f.size), title: `${count(f.size)} bytes` }),
      el('td', { class: 'kind', text: f.kind || '' }))));
  } catch (e) {
    showError(`Cannot list the shared files: ${e.message}`);
  }
}

// The event stream (Server-Sent Events), read with fetch so that it carries the token in a
// header, which an EventSource cannot send; when it ends or fails it is opened again.
const RECONNECT_MS = 2000;

function unreachable(text) {
  const pill = $('#conn');
  pill.textContent = text;
  pill.className = 'pill bad';
}

function dispatch(block) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) name = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (data.length === 0) return;
  const handler = { status: onStatus, line: onLine }[name];
  if (!handler) return;
  try { handler(JSON.parse(data.join('\n'))); } catch (e) { console.error(name, e); }
}

async function listen() {
  for (;;) {
    try {
      const res = await fetch('/api/events', { headers: authorized(), cache: 'no-store' });
      if (res.status === 401) { unreachable('no token'); showError(NO_TOKEN); return; }
      if (!res.ok || !res.body) throw new Error(`${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          dispatch(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
      }
    } catch (e) { /* said below */ }
    unreachable('peer unreachable, retrying…');
    await new Promise((r) => setTimeout(r, RECONNECT_MS));
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('#search').addEventListener('submit', submit);
  $('#mode').addEventListener('change', () => {
    const lookup = $('#mode').value === 'lookup';
    $('#filters').hidden = lookup;
    $('#q').placeholder = lookup ? 'a whole file name, or a hash' : 'words of the name';
  });
  $('#more').addEventListener('click', () => {
    if (state.ask && state.next) ask(state.ask.path, state.ask.body, true);
  });
  for (const th of document.querySelectorAll('#results th.sortable')) {
    th.addEventListener('click', () => sortBy(th.dataset.key));
  }
  $('#rescan').addEventListener('click', async () => {
    try { await api('/api/register', {}); } catch (e) { showError(`Rescan failed: ${e.message}`); }
  });
  // Ended downloads leave the list after a while even when nothing else happens.
  setInterval(renderDownloads, 60 * 1000);
  if (!token) {
    unreachable('no token');
    showError(NO_TOKEN);
    return;
  }
  listen();
  loadFiles();
});
