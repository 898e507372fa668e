// nodepool dashboard: polls the oracle's JSON API and follows its event stream.
'use strict';
(() => {
  const KEY_NAME = 'nodepool_api_key';
  const STATES = ['registered', 'testing', 'ephemeral', 'reserved',
                  'revalidating', 'quarantined', 'retired', 'lost'];
  const COLORS = {
    registered: '#8b95a5', testing: '#4ea1ff', ephemeral: '#3ecf8e', reserved: '#b48cff',
    revalidating: '#f0b429', quarantined: '#ff8a4c', retired: '#6b7280', lost: '#ff5c6c',
  };
  const WINDOW_MS = 5 * 60 * 1000;
  const MAX_POINTS = 300;
  const MAX_EVENTS = 200;
  const REQUEST_TIMEOUT_MS = 8000;
  const STREAM_RETRY_MS = 2000;
  // A stream that says nothing, not even its keep-alive comment, for three of
  // its keep-alive intervals (announced in its first comment; 15 s unless
  // told), is a connection gone half-open: dropped and made again.
  const KEEPALIVE_DEFAULT_MS = 15000;
  const STREAM_IDLE_MIN_MS = 3000;
  let streamIdleMs = 3 * KEEPALIVE_DEFAULT_MS;  // as the last stream announced
  const PANELS = ['status', 'miners', 'sessions', 'members', 'events'];

  const $ = (id) => document.getElementById(id);
  let apiKey = '';
  let gen = 0;            // bumped on every (re)start and on 401; loops of an older generation stop
  let stream = null;      // AbortController of the event stream
  let lastEventId = null;
  let lastStatusAt = 0;
  let prevGrants = null;
  let eventCount = 0;
  let charts = null;
  const rendered = new Set();
  const errors = new Map();

  // ---- small helpers -------------------------------------------------------

  function el(tag, props, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') n.className = v;
      else if (k === 'data') {
        for (const [dk, dv] of Object.entries(v)) if (dv !== undefined && dv !== null) n.dataset[dk] = dv;
      } else n.setAttribute(k, v);
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      n.append(kid instanceof Node ? kid : String(kid));
    }
    return n;
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');
  function clock(ms, withMs) {
    const d = new Date(ms);
    const s = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMs ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
  }
  function ago(ms) {
    if (!ms) return '';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }
  const int = (v) => String(Number.isFinite(Number(v)) ? Math.trunc(Number(v)) : 0);
  const fixed = (v, d) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(d) : '');
  const fmt = (v) => (v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v));
  const badge = (state) => el('span', { class: 'badge', data: { state: state || 'unknown' } }, state || '?');
  function text(id, value) {
    const n = $(id);
    if (n && n.textContent !== value) n.textContent = value;
  }

  // ---- errors and API calls ------------------------------------------------

  function showErrors() {
    const b = $('error');
    b.textContent = [...errors.values()].join(' · ');
    b.hidden = errors.size === 0;
  }
  function setError(src, msg) { errors.set(src, msg); showErrors(); }
  function clearError(src) { if (errors.delete(src)) showErrors(); }

  function headers(extra) {
    const h = Object.assign({}, extra);
    if (apiKey) h.Authorization = `Bearer ${apiKey}`;
    return h;
  }

  // How long the oracle asked a source to wait (429 or 503 with Retry-After,
  // seconds or an HTTP date): its next request waits at least that long.
  const backoff = new Map();
  function retryAfterMs(res) {
    if (res.status !== 429 && res.status !== 503) return 0;
    const v = res.headers.get('Retry-After');
    if (!v) return 0;
    const ms = /^\d+$/.test(v.trim()) ? Number(v) * 1000 : Date.parse(v) - Date.now();
    return Number.isFinite(ms) && ms > 0 ? Math.min(ms, 300000) : 0;
  }

  // Returns the parsed body on success, null otherwise (the error is shown).
  async function api(path, src) {
    const my = gen;
    let res;
    let body = null;
    try {
      res = await fetch(path, {
        headers: headers({ Accept: 'application/json' }),
        cache: 'no-store',
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      if (res.status !== 401) body = await res.json().catch(() => null);
    } catch (e) {
      if (my === gen) setError(src, `${path}: ${e.name === 'TimeoutError' ? 'request timed out' : 'oracle unreachable'}`);
      return null;
    }
    if (my !== gen) return null;
    if (res.status === 401) { unauthorized(); return null; }
    if (!res.ok || !body) {
      const wait = retryAfterMs(res);
      if (wait > 0) backoff.set(src, wait);
      const msg = body && body.error && body.error.message;
      setError(src, `${path}: ${msg || (res.ok ? 'invalid response' : `HTTP ${res.status} ${res.statusText}`.trim())}`);
      return null;
    }
    clearError(src);
    return body;
  }

  function mark(panel) {
    rendered.add(panel);
    if (!document.body.dataset.ready && PANELS.every((p) => rendered.has(p))) document.body.dataset.ready = '1';
  }

  function poll(my, path, src, every, render, delay) {
    const tick = async () => {
      if (my !== gen) return;
      const asked = typeof path === 'function' ? path() : path;
      const data = await api(asked, src);
      if (my !== gen) return;
      // A paged table's answer for a page it no longer shows (the pager
      // moved meanwhile) is dropped: the click asked for the new one.
      if (data && asked === (typeof path === 'function' ? path() : path)) {
        try { render(data); mark(src); } catch (e) { console.error(`rendering ${src} failed`, e); }
      }
      const wait = backoff.get(src) || 0;
      backoff.delete(src);
      setTimeout(tick, Math.max(every, wait));
    };
    const first = backoff.get(src) || 0;   // start()'s own request may have been told to wait
    backoff.delete(src);
    setTimeout(tick, Math.max(delay || 0, first));
  }

  // ---- status, tiles and charts -------------------------------------------

  function renderStatus(s) {
    const nodes = s.nodes || {};
    const by = nodes.by_state || {};
    const sessions = s.sessions || {};
    const tests = s.tests || {};
    const grants = s.grants || {};
    for (const st of STATES) text(`nodes-${st}`, int(by[st]));
    text('nodes-total', int(nodes.total));
    totals.miners = int(nodes.total);
    totals.sessions = String((Number(sessions.queued) || 0) + (Number(sessions.active) || 0));
    text('queue-depth', int(s.queue_depth));
    text('sessions-active', int(sessions.active));
    text('sessions-completed', int(sessions.completed));
    text('sessions-failed', int(sessions.failed));
    text('tests-passed', int(tests.passed));
    text('tests-failed', int(tests.failed));
    text('grants-total', int(grants.total));
    text('grant-latency', grants.total > 0 ? (grants.latency_ms_sum / grants.total).toFixed(1) : '—');

    text('role', (s.oracle && s.oracle.role) || '—');
    text('leader-id', s.leader ? String(s.leader) : '—');
    text('term', int(s.term));
    text('applied-index', int(s.applied_index));
    document.body.dataset.appliedIndex = int(s.applied_index);

    lastStatusAt = Date.now();
    updateLive();
    plot(s, lastStatusAt);
  }

  function updateLive() {
    const fresh = lastStatusAt > 0 && Date.now() - lastStatusAt < 3000;
    $('live').classList.toggle('stale', !fresh);
    text('live-text', lastStatusAt ? `${fresh ? 'live' : 'stale'} · ${clock(lastStatusAt)}` : 'connecting…');
  }

  function makeCharts() {
    if (typeof Chart === 'undefined') {
      setError('chart', 'chart library failed to load');
      return null;
    }
    Chart.defaults.color = '#8a93a1';
    Chart.defaults.borderColor = 'rgba(148, 163, 184, 0.12)';
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    const options = (y) => ({
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      normalized: true,
      interaction: { mode: 'index', intersect: false },
      elements: { point: { radius: 0, hitRadius: 6 }, line: { borderWidth: 1.5, tension: 0 } },
      plugins: {
        legend: { position: 'bottom', labels: { boxWidth: 10, boxHeight: 10 } },
        tooltip: { callbacks: { title: (items) => (items.length ? clock(items[0].parsed.x) : '') } },
      },
      scales: Object.assign({
        x: { type: 'linear', grid: { display: false }, ticks: { maxTicksLimit: 6, callback: (v) => clock(v) } },
      }, y),
    });
    const line = (label, color, extra) =>
      Object.assign({ label, data: [], borderColor: color, backgroundColor: color }, extra);

    const nodes = new Chart($('chart-nodes'), {
      type: 'line',
      data: { datasets: STATES.map((st) => line(st, COLORS[st], { stepped: true })) },
      options: options({ y: { beginAtZero: true, ticks: { precision: 0 } } }),
    });
    const queue = new Chart($('chart-queue'), {
      type: 'line',
      data: {
        datasets: [
          line('queue depth', '#4ea1ff', { yAxisID: 'y', stepped: true }),
          line('grant latency (ms)', '#f0b429', { yAxisID: 'y1', spanGaps: false }),
        ],
      },
      options: options({
        y: { position: 'left', beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: 'queue' } },
        y1: { position: 'right', beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: 'ms' } },
      }),
    });
    return { nodes, queue };
  }

  function trim(points, now) {
    while (points.length > MAX_POINTS || (points.length && points[0].x < now - WINDOW_MS)) points.shift();
  }

  function plot(s, now) {
    // Grant latency over the last poll interval: Δ latency sum / Δ grants, a gap when nothing was granted.
    const g = s.grants || {};
    const cur = { total: Number(g.total) || 0, sum: Number(g.latency_ms_sum) || 0 };
    let latency = null;
    if (prevGrants && cur.total > prevGrants.total) {
      latency = (cur.sum - prevGrants.sum) / (cur.total - prevGrants.total);
      if (!(latency >= 0)) latency = null;
    }
    prevGrants = cur;
    if (!charts) return;

    const by = (s.nodes && s.nodes.by_state) || {};
    for (const ds of charts.nodes.data.datasets) ds.data.push({ x: now, y: Number(by[ds.label]) || 0 });
    const [queue, lat] = charts.queue.data.datasets;
    queue.data.push({ x: now, y: Number(s.queue_depth) || 0 });
    lat.data.push({ x: now, y: latency });
    for (const chart of [charts.nodes, charts.queue]) {
      for (const ds of chart.data.datasets) trim(ds.data, now);
      chart.update('none');
    }
  }

  // ---- tables and lists ----------------------------------------------------

  // The tables show a page of the pool at a time (?rows=N in the page's
  // address, 1..1000, default 200): the oracle reads what a page holds,
  // not the whole pool, every 2 s. A page is named by the id it starts
  // after; `starts` keeps the way back.
  const ROWS = Math.min(1000, Math.max(1, Math.floor(Number(new URLSearchParams(location.search).get('rows'))) || 200));
  const pages = {};
  const totals = {};                               // records in the pool, by table
  for (const t of ['miners', 'sessions']) {
    pages[t] = { starts: [''], more: false, shown: 0 };
    // Where a page ends is known once it arrived: until then, no "next"
    // (a second click would push the same start twice).
    const go = (f) => () => { const p = pages[t]; f(p); p.more = false; p.last = ''; $(`${t}-next`).disabled = true; refresh(t); };
    $(`${t}-first`).addEventListener('click', go((p) => { p.starts = ['']; }));
    $(`${t}-prev`).addEventListener('click', go((p) => { if (p.starts.length > 1) p.starts.pop(); }));
    $(`${t}-next`).addEventListener('click', go((p) => { if (p.more && p.last) p.starts.push(p.last); }));
  }
  const pagePath = (t) => () => {
    const p = pages[t];
    const after = p.starts[p.starts.length - 1];
    return `/api/v1/${t}?limit=${ROWS}` + (after ? `&after_id=${encodeURIComponent(after)}` : '');
  };
  const refreshers = {};
  function refresh(t) { if (refreshers[t]) refreshers[t](); }
  /// After a page arrived: what it shows, where it ends, and the pager.
  function paged(t, d, list, idOf) {
    const p = pages[t];
    p.more = !!d.more;
    p.last = list.length ? idOf(list[list.length - 1]) : '';
    // A page emptied under the reader (its records left): back to the first.
    if (!list.length && p.starts.length > 1) { p.starts = ['']; refresh(t); }
    const first = (p.starts.length - 1) * ROWS;
    const paging = p.starts.length > 1 || p.more;
    // The total from the last status poll (a second old at most).
    const total = totals[t] === undefined ? 'more' : totals[t];
    text(`${t}-count`, paging ? `${first + 1}–${first + list.length} of ${total}` : String(list.length));
    $(`${t}-pager`).hidden = !paging;
    $(`${t}-prev`).disabled = $(`${t}-first`).disabled = p.starts.length <= 1;
    $(`${t}-next`).disabled = !p.more;
  }

  function renderSessions(d) {
    const page = d.sessions || [];
    paged('sessions', d, page, (s) => s.session_id);
    const list = page.slice().sort((a, b) => (a.submitted_at || 0) - (b.submitted_at || 0));
    $('sessions').tBodies[0].replaceChildren(...list.map((s) => {
      const since = s.started_at || s.submitted_at;
      return el('tr', { data: { sessionId: s.session_id, state: s.state } },
        el('td', { class: 'mono' }, s.session_id),
        el('td', null, badge(s.state)),
        el('td', null, s.model || ''),
        el('td', { class: 'num' }, s.redundancy ?? ''),
        el('td', { class: 'mono' }, (s.nodes || []).join(', ')),
        el('td', { class: 'num' }, `${s.tasks_done ?? 0}/${s.max_tasks ?? 0}`),
        el('td', { class: 'num', title: since ? new Date(since).toLocaleString() : null }, ago(since)),
        el('td', { class: 'muted' }, s.client_reference || ''));
    }));
    $('sessions-empty').hidden = list.length > 0;
  }

  function minerRow(m) {
    const t = m.tests || {};
    const passed = Number(t.passed) || 0;
    const failed = Number(t.failed) || 0;
    const rate = passed + failed ? `${Math.round((100 * passed) / (passed + failed))}%` : '—';
    return el('tr', { data: { nodeId: m.node_id, state: m.state }, title: m.reason || null },
      el('td', { class: 'mono' }, m.node_id),
      el('td', null, badge(m.state), m.drained ? el('span', { class: 'flag' }, 'drained') : null),
      el('td', { class: 'num' }, m.level ?? ''),
      el('td', { class: 'num' }, fixed(m.reputation, 2)),
      // 0 is "not measured yet" (no test or task timed), not the fastest.
      el('td', { class: 'num' }, typeof m.latency_ms === 'number' && m.latency_ms > 0 ? `${m.latency_ms.toFixed(1)} ms` : '—'),
      el('td', { class: 'num' }, `${passed} / ${failed} `, el('span', { class: 'muted' }, `(${rate})`)),
      el('td', { class: 'num' }, m.tasks_served ?? 0),
      el('td', { class: 'num' }, m.strikes ?? 0),
      el('td', { class: 'mono' }, m.session_id || ''),
      el('td', { class: 'num', title: m.last_heartbeat ? new Date(m.last_heartbeat).toLocaleString() : null },
        m.last_heartbeat ? `${ago(m.last_heartbeat)} ago` : ''),
      // Heard from by the leader (any message, heartbeats included); a node
      // not connected to it has none.
      el('td', { class: 'num', title: m.last_seen ? new Date(m.last_seen).toLocaleString() : null },
        m.last_seen ? `${ago(m.last_seen)} ago` : '—'));
  }

  function renderMiners(d) {
    const page = d.miners || [];                   // in id order, as paged
    paged('miners', d, page, (m) => m.node_id);
    // Within the page, numbers in ids in their order ("n2" before "n10").
    const list = page.slice()
      .sort((a, b) => String(a.node_id).localeCompare(String(b.node_id), undefined, { numeric: true }));
    $('miners').tBodies[0].replaceChildren(...list.map(minerRow));
    $('miners-empty').hidden = list.length > 0;

    const out = list.filter((m) => m.state === 'quarantined' || m.state === 'retired');
    $('kept-out').replaceChildren(...out.map((m) =>
      el('li', { data: { nodeId: m.node_id, state: m.state } },
        el('span', { class: 'mono' }, m.node_id), badge(m.state),
        el('span', { class: m.reason ? 'reason' : 'reason muted' }, m.reason || 'no reason recorded'))));
    $('kept-out-empty').hidden = out.length > 0;
  }

  function renderMembers(d) {
    const members = d.members || [];
    text('cluster-summary', members.length
      ? `${d.role || '?'} · this oracle #${d.id ?? '?'} · leader #${d.leader_id || '—'} · term ${d.term ?? '—'}`
      : '');
    if (!members.length) {
      $('members').replaceChildren(el('li', { class: 'single' }, 'single oracle'));
      return;
    }
    const known = new Set(['id', 'address', 'http', 'leader']);
    $('members').replaceChildren(...members.map((m) => {
      const leads = 'leader' in m ? Boolean(m.leader) : m.id === d.leader_id;
      const extra = Object.entries(m).filter(([k]) => !known.has(k)).map(([k, v]) => `${k}=${fmt(v)}`).join(' ');
      return el('li', { class: leads ? 'leader' : '', data: { memberId: m.id, leader: leads ? '1' : '0' } },
        el('span', { class: 'mono' }, `#${m.id}`),
        el('span', { class: 'mono' }, m.address || ''),
        m.http ? el('span', { class: 'mono muted' }, `http ${m.http}`) : null,
        leads ? el('span', { class: 'badge', data: { state: 'leader' } }, 'leader') : null,
        m.id === d.id ? el('span', { class: 'flag' }, 'this oracle') : null,
        extra ? el('span', { class: 'muted' }, extra) : null);
    }));
  }

  // ---- events --------------------------------------------------------------

  // One line for any event: the fields we know in a fixed order, then the rest as key=value.
  function describe(e) {
    const used = new Set(['seq', 'time', 'type', 'reason']);
    const has = (k) => e[k] !== undefined && e[k] !== null && e[k] !== '';
    const take = (k) => { used.add(k); return e[k]; };
    const parts = [];
    if (has('node_id')) parts.push(take('node_id'));
    if (has('session_id')) parts.push(take('session_id'));
    if (has('test_id')) parts.push(`test ${take('test_id')}`);
    if (has('from') || has('to')) parts.push(`${take('from') || '?'} → ${take('to') || '?'}`);
    if (Array.isArray(e.nodes)) parts.push(`on ${take('nodes').join(', ') || 'no nodes'}`);
    if (typeof e.passed === 'boolean') parts.push(take('passed') ? 'passed' : 'failed');
    if (has('state')) parts.push(take('state'));
    for (const [k, v] of Object.entries(e)) if (!used.has(k) && has(k)) parts.push(`${k}=${fmt(v)}`);
    if (has('reason')) parts.push(`— ${fmt(e.reason)}`);
    const bad = e.passed === false || ['failed', 'quarantined', 'retired', 'lost'].includes(e.to || e.state);
    return { detail: parts.join(' '), bad };
  }

  function renderEvent(e) {
    if (!e || typeof e !== 'object') e = { type: 'message', value: e };
    const { detail, bad } = describe(e);
    const li = el('li', { class: bad ? 'bad' : null, data: { type: e.type || 'unknown', seq: e.seq } },
      el('time', null, e.time ? clock(e.time, true) : ''),
      el('span', { class: 'type' }, e.type || 'event'),
      el('span', { class: 'detail' }, detail));
    const list = $('events');
    list.prepend(li);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    $('events-empty').hidden = true;
    eventCount += 1;
    document.body.dataset.events = String(eventCount);
  }

  function streamState(s) {
    text('stream-state', s);
    $('stream-state').dataset.state = s;
  }

  function stopStream() {
    if (stream) stream.abort();
    stream = null;
  }

  // EventSource cannot send Authorization, so the stream is read with fetch and parsed here.
  async function openStream(my) {
    if (my !== gen) return;
    const ctl = new AbortController();
    stream = ctl;
    const h = headers({ Accept: 'text/event-stream' });
    if (lastEventId !== null) h['Last-Event-ID'] = String(lastEventId);
    streamState('connecting');
    // Until the stream's first comment says how often it speaks, the default
    // bound: an oracle slow to answer (or a new one) is not cut off early.
    const watch = { heard: Date.now(), idle: Math.max(streamIdleMs, 3 * KEEPALIVE_DEFAULT_MS), silent: false };
    const watchdog = setInterval(() => {
      if (Date.now() - watch.heard > watch.idle) { watch.silent = true; ctl.abort(); }
    }, 500);
    try {
      const res = await fetch('/api/v1/events', { headers: h, cache: 'no-store', signal: ctl.signal });
      watch.heard = Date.now();
      if (my !== gen) return;
      if (res.status === 401) { unauthorized(); return; }
      if (!res.ok || !res.body) {
        const wait = retryAfterMs(res);
        if (wait > 0) backoff.set('events', wait);
        const b = await res.json().catch(() => null);
        setError('events', `/api/v1/events: ${(b && b.error && b.error.message) || `HTTP ${res.status}`}`);
      } else {
        clearError('events');
        streamState('live');
        await readStream(res.body, my, watch);
      }
    } catch (e) {
      if (my !== gen) return;     // aborted by a restart
    } finally {
      clearInterval(watchdog);
    }
    if (my !== gen) return;
    if (watch.silent) setError('events', `/api/v1/events: silent for ${Math.round(watch.idle / 1000)} s; connecting again`);
    streamState('reconnecting');
    const wait = backoff.get('events') || 0;
    backoff.delete('events');
    setTimeout(() => openStream(my), Math.max(STREAM_RETRY_MS, wait));
  }

  async function readStream(body, my, watch) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let data = [];
    let id = null;
    let type = null;
    const dispatch = () => {
      const payload = data.join('\n');
      const frameId = id;
      const frameType = type;
      data = [];
      id = null;
      type = null;
      if (frameId !== null) lastEventId = frameId;
      if (!payload) return;
      let e;
      try { e = JSON.parse(payload); } catch { console.warn('unreadable event', payload); return; }
      if (frameId === null && e && e.seq !== undefined) lastEventId = e.seq;
      // Events were missed (dropped, or the oracle restarted): said in the list.
      if (frameType === 'gap' && e && typeof e === 'object') e = Object.assign({ type: 'gap' }, e);
      renderEvent(e);
    };
    const line = (l) => {
      if (l === '') return dispatch();
      if (l[0] === ':') {                             // comment / keep-alive
        const k = /keep-alive every (\d+) ms/.exec(l);
        if (k) streamIdleMs = watch.idle = Math.max(STREAM_IDLE_MIN_MS, 3 * Number(k[1]));
        return;
      }
      const i = l.indexOf(':');
      const field = i < 0 ? l : l.slice(0, i);
      let value = i < 0 ? '' : l.slice(i + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'id' && !value.includes('\0')) id = value;
      else if (field === 'event') type = value;
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done || my !== gen) break;
      watch.heard = Date.now();
      buf += decoder.decode(value, { stream: true });
      const hold = buf.endsWith('\r') ? '\r' : '';   // a CR may be the first half of CRLF
      const lines = (hold ? buf.slice(0, -1) : buf).split(/\r\n|\r|\n/);
      buf = lines.pop() + hold;
      lines.forEach(line);
    }
  }

  // ---- start, sign-in, sign-out --------------------------------------------

  function unauthorized() {
    gen += 1;
    stopStream();
    errors.clear();
    showErrors();
    $('dashboard').hidden = true;
    $('login').hidden = false;
    $('login-submit').disabled = false;
    const msg = apiKey ? 'That key was not accepted.' : '';
    $('login-error').textContent = msg;
    $('login-error').hidden = !msg;
    $('api-key').focus();
  }

  async function start() {
    gen += 1;
    stopStream();
    backoff.clear();
    const my = gen;
    apiKey = sessionStorage.getItem(KEY_NAME) || '';
    const status = await api('/api/v1/status', 'status');
    if (my !== gen) return;                 // 401: the form is showing
    $('login').hidden = true;
    $('login-submit').disabled = false;
    $('logout').hidden = !apiKey;
    $('dashboard').hidden = false;
    if (!charts) charts = makeCharts();
    if (status) { renderStatus(status); mark('status'); }
    mark('events');                         // the list starts empty and fills from the stream
    poll(my, '/api/v1/status', 'status', 1000, renderStatus, status ? 1000 : 0);
    poll(my, pagePath('miners'), 'miners', 2000, renderMiners);
    poll(my, pagePath('sessions'), 'sessions', 2000, renderSessions);
    // A click on the pager shows its page now, not at the next poll.
    for (const [t, render] of [['miners', renderMiners], ['sessions', renderSessions]])
      refreshers[t] = async () => {
        const asked = pagePath(t)();
        const d = await api(asked, t);
        if (d && my === gen && asked === pagePath(t)()) { render(d); mark(t); }
      };
    poll(my, '/api/v1/members', 'members', 5000, renderMembers);
    openStream(my);
  }

  document.body.dataset.events = '0';
  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const key = $('api-key').value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_NAME, key);
    $('api-key').value = '';
    $('login-submit').disabled = true;
    start();
  });
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_NAME);
    location.reload();
  });
  setInterval(updateLive, 1000);
  start();
})();
