// The p2pshare peer's page: the JSON API for what the person asks, the event stream
// (/api/events) for what happens. No build step, no dependencies. Text from the peer is
// always set with textContent, never parsed as HTML.
'use strict';

const $ = (sel) => document.querySelector(sel);
const state = { results: [], sort: { key: null, dir: 1 }, downloads: new Map(), savedSeen: null };

function human(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function duration(secs) {
  if (secs == null) return '';
  if (secs < 60) return `${secs} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ${secs % 60} s`;
  return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
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

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  };
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    throw new Error('the peer does not answer (is it still running?)');
  }
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON: said below */ }
  if (res.status === 401) throw new Error('not allowed: open the link the peer printed when it started (it carries the token)');
  if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

// ----- search ------------------------------------------------------------------------------

function searchQuery() {
  const parts = [$('#q').value.trim()];
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

async function search(ev) {
  ev.preventDefault();
  showError('');
  const query = searchQuery();
  $('#go').disabled = true;
  $('#summary').textContent = 'searching…';
  try {
    const ans = await api('/api/search', { query });
    state.results = ans.results;
    let text = `${ans.results.length} result${ans.results.length === 1 ? '' : 's'}`;
    if (ans.total > ans.results.length) text += ` (${ans.total_exact ? 'of' : 'at least'} ${ans.total} matches: narrow the search to see others)`;
    if (ans.partial) text += ' — the index stopped early: narrow the search';
    $('#summary').textContent = text;
    renderResults();
  } catch (e) {
    $('#summary').textContent = '';
    showError(`Search failed: ${e.message}`);
  } finally {
    $('#go').disabled = false;
  }
}

function sortBy(key) {
  const s = state.sort;
  s.dir = s.key === key ? -s.dir : (key === 'name' || key === 'kind' ? 1 : -1);
  s.key = key;
  renderResults();
}

function renderResults() {
  const rows = state.results.slice();
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
  const body = $('#results tbody');
  body.replaceChildren(...rows.map((r) => {
    const btn = el('button', { class: 'get small', type: 'button', text: 'Download', title: r.hash });
    btn.dataset.hash = r.hash;
    btn.addEventListener('click', () => download(r, btn));
    return el('tr', {},
      el('td', { class: 'name', text: r.name, title: r.hash }),
      el('td', { class: 'num', text: human(r.size), title: `${r.size} bytes` }),
      el('td', { class: 'num', text: String(r.holders) }),
      el('td', { text: r.kind || '' }),
      el('td', {}, btn));
  }));
}

async function download(r, btn) {
  showError('');
  btn.disabled = true;
  try {
    const clicked = Date.now();
    await api('/api/get', { hash: r.hash });
    // The stream may have told this download's progress, even its end, before this answer.
    const known = state.downloads.get(r.hash);
    if (!known || !(known.seen >= clicked)) {
      state.downloads.set(r.hash, { hash: r.hash, name: r.name, done: 0, total: r.size, rate: 0, eta_secs: null, state: 'queued' });
    }
    renderDownloads();
  } catch (e) {
    showError(`Download of ${r.name} failed: ${e.message}`);
  } finally {
    btn.disabled = false;
  }
}

// ----- downloads, status, files, messages --------------------------------------------------

function renderDownloads() {
  const list = $('#downloads');
  if (state.downloads.size === 0) return;
  list.replaceChildren(...[...state.downloads.values()].reverse().map((d) => {
    const pct = d.total ? Math.floor((d.done / d.total) * 100) : 100;
    let what = `${human(d.done)} of ${human(d.total)} (${pct}%)`;
    if (d.state === 'running' && d.rate) what += ` — ${human(d.rate)}/s, ${duration(d.eta_secs)} left`;
    if (d.state === 'running' && d.sources) what += `, ${d.sources} source${d.sources === 1 ? '' : 's'}`;
    const li = el('li', { class: d.state, id: `dl-${d.hash}` },
      el('div', { class: 'dl-name', text: d.name }),
      el('progress', { max: d.total || 1, value: d.done }),
      el('div', {}, el('span', { class: 'dl-state', text: d.state }), ` · ${what}`));
    if (d.message) li.append(el('div', { class: 'muted', text: d.message }));
    return li;
  }));
}

function onDownload(d) {
  const old = state.downloads.get(d.hash) || {};
  state.downloads.set(d.hash, { ...old, ...d, seen: Date.now() });
  renderDownloads();
  if (d.state === 'failed') showError(`Download of ${d.name} failed: ${d.message || 'no holder delivered it'}`);
  if (d.state === 'saved') loadFiles();
}

function onStatus(s) {
  const pill = $('#conn');
  pill.textContent = s.session === 'ready' ? 'index connected' : `index ${s.session}`;
  pill.className = `pill ${s.session === 'ready' ? 'ok' : 'bad'}`;
  const rows = [
    ['Index', s.index],
    ['Sharing', `${s.shared_files} files, ${human(s.shared_bytes)}`],
    ['File server', `port ${s.listen_port}`],
    ['Uploads', `${s.uploads_active} of ${s.upload_slots} slots, ${s.uploads_queued} waiting, ${s.uploads_done} done (${human(s.upload_bytes)})`],
    ['Downloads', `${s.downloads_saved} saved, ${s.downloads_failed} failed`],
  ];
  $('#status').replaceChildren(...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
  if (s.download) onDownload(s.download);
  if (state.savedSeen !== null && s.shared_files !== state.savedSeen) loadFiles();
  state.savedSeen = s.shared_files;
}

function onLine(line) {
  const log = $('#log');
  log.append(el('li', { class: line.kind, text: line.text }));
  while (log.children.length > 200) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
  if (line.kind === 'error') showError(line.text);
}

async function loadFiles() {
  try {
    const ans = await api('/api/files');
    let text = `${ans.total} file${ans.total === 1 ? '' : 's'}, ${human(ans.total_bytes)}`;
    if (ans.total > ans.files.length) text += ` (the first ${ans.files.length} listed)`;
    $('#files-summary').textContent = text;
    $('#files tbody').replaceChildren(...ans.files.map((f) => el('tr', {},
      el('td', { class: 'name', text: f.name, title: f.hash }),
      el('td', { class: 'num', text: human(f.size), title: `${f.size} bytes` }),
      el('td', { text: f.kind || '' }))));
  } catch (e) {
    showError(`Cannot list the shared files: ${e.message}`);
  }
}

function listen() {
  const es = new EventSource('/api/events');
  const on = (name, f) => es.addEventListener(name, (m) => {
    try { f(JSON.parse(m.data)); } catch (e) { console.error(name, e); }
  });
  on('status', onStatus);
  on('download', onDownload);
  on('line', onLine);
  es.onopen = () => { if ($('#conn').textContent.startsWith('peer')) $('#conn').textContent = 'reconnected'; };
  es.onerror = () => {
    const pill = $('#conn');
    pill.textContent = 'peer unreachable, retrying…';
    pill.className = 'pill bad';
  };
}

document.addEventListener('DOMContentLoaded', () => {
  $('#search').addEventListener('submit', search);
  for (const th of document.querySelectorAll('#results th.sortable')) {
    th.addEventListener('click', () => sortBy(th.dataset.key));
  }
  $('#rescan').addEventListener('click', async () => {
    try { await api('/api/register', {}); } catch (e) { showError(`Rescan failed: ${e.message}`); }
  });
  listen();
  loadFiles();
});
