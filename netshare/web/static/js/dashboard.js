// The operator dashboard (admins): GET /api/stats every 2 s, rates from
// successive snapshots, small line charts over the last minutes.
//
// The answer (netshare/web/metrics.py stats): "services", the runtime's
// snapshot (netshare/service.py Runtime.stats: per listener connections,
// commands, bytes in/out, slow readers dropped; "database"; "history";
// "kdf"), "db_latency" (a histogram of database call durations, seconds,
// when the pool keeps one), "sync_clients" and "time_ms".  Keys this page
// does not know are ignored, and a figure the server does not report is
// shown as "not reported" rather than guessed.

import * as api from './api.js';
import { LineChart } from './chart.js';
import { clear, compactNumber, el, humanBytes, humanRate, pageHeader, setError } from './ui.js';

const PERIOD_MS = 2000;
const WINDOW_MS = 5 * 60 * 1000;

// The listeners in a snapshot: every entry with connection counters.
function services(stats) {
  return Object.keys(stats)
    .filter((k) => stats[k] && typeof stats[k] === 'object' && 'connections' in stats[k] && 'commands' in stats[k])
    .sort();
}

function num(v) {
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

// The snapshot, whichever way it is laid out: {services: {...}, ...} or
// the runtime's stats at the top.
function normalize(raw) {
  const snap = raw.services && typeof raw.services === 'object' ? raw.services : raw;
  return {
    t: num(raw.time_ms ?? raw.time) ?? Date.now(),
    snap,
    sync: raw.sync_clients ?? snap.sync_clients ?? [],
    histogram: raw.db_latency ?? null,
    slowest: slowest(raw) || slowest(snap),
  };
}

// The mean database call latency (ms) since the previous snapshot, from
// the histogram's count and sum (seconds); null when not reported or no
// call was made meanwhile.
function dbLatency(now, prev) {
  const h = now.histogram;
  if (!h || !Array.isArray(h.counts) || num(h.sum) === null) {
    const db = now.snap.database || {};
    for (const k of ['latency_ms', 'avg_latency_ms', 'mean_ms']) if (num(db[k]) !== null) return num(db[k]);
    return null;
  }
  const count = h.counts.reduce((a, b) => a + b, 0);
  const p = prev && prev.histogram;
  const pc = p && Array.isArray(p.counts) ? p.counts.reduce((a, b) => a + b, 0) : 0;
  const calls = count - pc;
  const seconds = h.sum - (p ? p.sum : 0);
  return calls > 0 ? (seconds * 1000) / calls : null;
}

function slowest(stats) {
  for (const k of ['slowest', 'slowest_commands', 'slow_commands']) {
    if (Array.isArray(stats[k])) return stats[k];
  }
  return null;
}

function clientLag(c) {
  return num(c.lag ?? c.pending);
}

export function mount(root, ctx) {
  if (!ctx.admin) {
    root.append(
      pageHeader('Dashboard'),
      el('p', { class: 'notice', role: 'status' }, 'The operator dashboard is for admins.'),
    );
    return null;
  }
  const st = { alive: true, prev: null, timer: null, inFlight: false };
  const fmtRate = (v) => humanRate(v);
  const charts = {
    connections: new LineChart({ title: 'Connections', id: 'chart-connections', windowMs: WINDOW_MS }),
    commands: new LineChart({ title: 'Commands per second', id: 'chart-commands', windowMs: WINDOW_MS }),
    bytes: new LineChart({ title: 'Bytes per second (in + out)', id: 'chart-bytes', windowMs: WINDOW_MS, format: fmtRate }),
    history: new LineChart({ title: 'History backlog (entries waiting)', id: 'chart-history', windowMs: WINDOW_MS }),
    database: new LineChart({ title: 'Database: calls in flight and queued', id: 'chart-database', windowMs: WINDOW_MS }),
    latency: new LineChart({ title: 'Database latency (ms)', id: 'chart-latency', windowMs: WINDOW_MS }),
    lag: new LineChart({ title: 'Sync clients: messages not yet acknowledged', id: 'chart-lag', windowMs: WINDOW_MS }),
  };

  const updated = el('p', { class: 'muted', id: 'stats-updated', role: 'status' }, 'Waiting for the first sample…');
  const error = el('p', { class: 'error', id: 'stats-error', role: 'alert', hidden: true });
  const pause = el('button', { type: 'button', class: 'secondary', id: 'stats-pause', 'aria-pressed': 'false', dataset: { admin: '' } }, 'Pause');
  pause.setAttribute('aria-describedby', 'stats-error');
  pause.addEventListener('click', () => {
    const paused = pause.getAttribute('aria-pressed') !== 'true';
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) poll();
  });

  const totals = el('tbody', { id: 'service-totals' });
  const totalsTable = el(
    'table',
    { class: 'data compact', id: 'services-table' },
    el('caption', {}, 'Listeners'),
    el(
      'thead',
      {},
      el('tr', {}, ['Service', 'Connections', 'Commands', 'In', 'Out', 'Slow readers dropped', 'Refused'].map((h) => el('th', { scope: 'col' }, h))),
    ),
    totals,
  );
  const slowBody = el('tbody', { id: 'slowest-body' });
  const slowSection = el(
    'section',
    { class: 'card', 'aria-labelledby': 'slowest-title' },
    el('h2', { id: 'slowest-title' }, 'Slowest commands'),
    el('div', { class: 'table-wrap' }, el('table', { class: 'data compact' }, el('thead', {}, el('tr', {}, ['Service', 'Command', 'Duration', 'User', 'When'].map((h) => el('th', { scope: 'col' }, h)))), slowBody)),
  );
  const misc = el('dl', { class: 'facts', id: 'stats-facts' });
  const clientsBody = el('tbody', { id: 'lag-body' });

  function fact(label, value) {
    return [el('dt', {}, label), el('dd', {}, value)];
  }

  function sample(raw) {
    const now = normalize(raw);
    const stats = now.snap;
    const t = now.t;
    const prev = st.prev;
    const dt = prev ? (t - prev.t) / 1000 : 0;
    const names = services(stats);
    const conn = {};
    const cmds = {};
    const bytes = {};
    clear(totals);
    for (const name of names) {
      const s = stats[name];
      const p = prev && prev.snap[name];
      conn[name] = num(s.connections);
      cmds[name] = p && dt > 0 ? Math.max(0, (s.commands - p.commands) / dt) : null;
      const io = (x) => (num(x.bytes_in) || 0) + (num(x.bytes_out) || 0);
      bytes[name] = p && dt > 0 ? Math.max(0, (io(s) - io(p)) / dt) : null;
      totals.append(
        el(
          'tr',
          { dataset: { service: name } },
          el('th', { scope: 'row' }, name),
          el('td', { class: 'num' }, compactNumber(s.connections)),
          el('td', { class: 'num' }, compactNumber(s.commands)),
          el('td', { class: 'num' }, humanBytes(s.bytes_in)),
          el('td', { class: 'num' }, humanBytes(s.bytes_out)),
          el('td', { class: `num${s.slow_drops ? ' warn' : ''}` }, compactNumber(s.slow_drops ?? 0)),
          el('td', { class: 'num' }, compactNumber(s.refused ?? 0)),
        ),
      );
    }
    charts.connections.push(t, conn);
    charts.commands.push(t, cmds);
    charts.bytes.push(t, bytes);

    const history = stats.history || {};
    charts.history.push(t, { waiting: num(history.pending) });
    const db = stats.database || {};
    charts.database.push(t, { 'in flight': num(db.active), queued: num(db.queued) });
    const latency = dbLatency(now, prev);
    charts.latency.push(t, { latency });

    const clients = Array.isArray(now.sync) ? now.sync : [];
    const lag = {};
    clear(clientsBody);
    for (const c of clients) {
      lag[c.client] = clientLag(c);
      const online = c.connected ?? c.online;
      clientsBody.append(
        el(
          'tr',
          { dataset: { client: c.client } },
          el('th', { scope: 'row' }, c.client),
          el('td', {}, el('span', { class: online ? 'badge ok' : 'badge' }, online ? 'connected' : 'offline')),
          el('td', { class: 'num' }, c.acked ?? c.acked_seq ?? '–'),
          el('td', { class: `num${clientLag(c) ? ' warn' : ''}` }, clientLag(c) ?? '–'),
        ),
      );
    }
    if (!clients.length) clientsBody.append(el('tr', {}, el('td', { colspan: '4', class: 'empty' }, 'No sync clients.')));
    charts.lag.push(t, lag);

    const drops = names.reduce((n, k) => n + (num(stats[k].slow_drops) || 0), 0);
    const kdf = stats.kdf || {};
    misc.replaceChildren(
      ...fact('Slow readers dropped (all services)', compactNumber(drops)),
      ...fact('History entries waiting', compactNumber(num(history.pending) ?? 0)),
      ...fact('History entries dropped', compactNumber(num(history.dropped) ?? 0)),
      ...fact('Database calls', `${compactNumber(num(db.calls) ?? 0)} (${compactNumber(num(db.failures) ?? 0)} failed, ${compactNumber(num(db.timeouts) ?? 0)} timed out)`),
      ...fact(
        'Database latency (mean, last 2 s)',
        latency === null ? (now.histogram ? 'no calls' : 'not reported') : `${latency.toFixed(2)} ms`,
      ),
      ...fact('Password hashes waiting', compactNumber(num(kdf.pending) ?? 0)),
    );

    const slow = now.slowest;
    slowSection.hidden = !slow;
    if (slow) {
      clear(slowBody);
      for (const c of slow.slice(0, 10)) {
        const ms = num(c.duration_ms ?? c.ms ?? c.duration);
        slowBody.append(
          el(
            'tr',
            {},
            el('td', {}, c.service || '–'),
            el('td', {}, c.verb || c.command || '–'),
            el('td', { class: 'num' }, ms === null ? '–' : `${ms.toFixed(1)} ms`),
            el('td', {}, c.user || '–'),
            el('td', {}, c.ts || c.when || '–'),
          ),
        );
      }
      if (!slow.length) slowBody.append(el('tr', {}, el('td', { colspan: '5', class: 'empty' }, 'None yet.')));
    }
    st.prev = now;
    updated.textContent = `Updated ${new Date().toLocaleTimeString()} · every ${PERIOD_MS / 1000} s`;
    updated.dataset.samples = String(charts.connections.samples);
  }

  async function poll() {
    if (!st.alive || st.inFlight) return;
    clearTimeout(st.timer);
    if (pause.getAttribute('aria-pressed') === 'true') return;
    st.inFlight = true;
    try {
      const stats = await api.get('/api/stats');
      if (!st.alive) return;
      setError(error, '');
      sample(stats);
    } catch (e) {
      if (st.alive) setError(error, e);
    } finally {
      st.inFlight = false;
      if (st.alive) st.timer = setTimeout(poll, PERIOD_MS);
    }
  }

  const onResize = () => {
    for (const c of Object.values(charts)) c.draw();
  };
  window.addEventListener('resize', onResize);

  root.append(
    pageHeader('Dashboard', pause),
    updated,
    error,
    el(
      'div',
      { class: 'charts' },
      charts.connections.node,
      charts.commands.node,
      charts.bytes.node,
      charts.lag.node,
      charts.history.node,
      charts.database.node,
      charts.latency.node,
    ),
    el(
      'section',
      { class: 'card', 'aria-labelledby': 'svc-title' },
      el('h2', { id: 'svc-title' }, 'Services'),
      el('div', { class: 'table-wrap' }, totalsTable),
      misc,
    ),
    el(
      'section',
      { class: 'card', 'aria-labelledby': 'lag-title' },
      el('h2', { id: 'lag-title' }, 'Sync clients'),
      el(
        'div',
        { class: 'table-wrap' },
        el(
          'table',
          { class: 'data compact', id: 'lag-table' },
          el('thead', {}, el('tr', {}, ['Client', 'Connected', 'Acked seq', 'Lag'].map((h) => el('th', { scope: 'col' }, h)))),
          clientsBody,
        ),
      ),
    ),
    slowSection,
  );
  slowSection.hidden = true;
  poll();

  return () => {
    st.alive = false;
    clearTimeout(st.timer);
    window.removeEventListener('resize', onResize);
  };
}
