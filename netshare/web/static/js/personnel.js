// Personnel: search and page through people; for admins, add, edit and
// delete with the server's field rules (netshare/services/personnel/
// rules.py, docs/protocol.md section 4), the sync clients and the seven
// actions of the operator console (netshare/clients/personnel.py MENU),
// asking before anything that reaches every client or deletes.
//
// A non-admin gets the directory view (ssn masked, no salary) and none of
// the admin controls: they are not built at all (the server refuses them
// anyway, 403).

import * as api from './api.js';
import {
  clear,
  codePoints,
  confirmDialog,
  el,
  errorAfter,
  field,
  hasUnsafe,
  humanTime,
  labelCells,
  openDialog,
  pageHeader,
  setError,
  status,
} from './ui.js';

const FIELDS = ['name', 'surname', 'job', 'salary'];
const LIMITS = { name: 255, surname: 255, job: 255, salary: 32 };
const REQUIRED = ['name', 'surname'];
const LABELS = { ssn: 'SSN', name: 'Name', surname: 'Surname', job: 'Job', salary: 'Salary' };
const SSN = /^[A-Za-z0-9-]{1,32}$/;
const CLIENT = /^[A-Za-z0-9]{1,32}$/;

// The server's texts (rules.py), so a refusal reads the same either way.
export function checkSsn(ssn) {
  return SSN.test(ssn) ? '' : "invalid ssn: 1-32 letters, digits or '-'";
}

export function checkField(name, value) {
  if (codePoints(value) > LIMITS[name]) return `${name} too long (at most ${LIMITS[name]} characters)`;
  if (hasUnsafe(value)) return `${name} contains a control character`;
  if (REQUIRED.includes(name) && !value.trim()) return `${name} may not be empty`;
  return '';
}

export function checkClient(name) {
  return name === '*' || CLIENT.test(name) ? '' : 'invalid client name: 1-32 letters or digits, or *';
}

// The console menu (netshare/clients/personnel.py): choice, label, verb,
// whether it needs an ssn and a client, and the confirmation it asks.
const ACTIONS = [
  { n: 0, label: 'Show personnel, clients and messages' },
  { n: 1, label: 'Send one person to one client', verb: 'send', ssn: true, client: true },
  { n: 2, label: 'Send one person to all clients', verb: 'send', ssn: true, all: true },
  { n: 3, label: 'Send all personnel to all clients', verb: 'send', all: true, bulk: true },
  { n: 4, label: 'Delete one person from one client', verb: 'remove', ssn: true, client: true, del: true },
  { n: 5, label: 'Delete one person from all clients', verb: 'remove', ssn: true, all: true, del: true },
  { n: 6, label: 'Delete all personnel from all clients', verb: 'remove', all: true, bulk: true, del: true },
];

export function mount(root, ctx) {
  const st = { alive: true, q: '', limit: 20, offset: 0, people: [], clients: [], timer: null };

  // -- search ---------------------------------------------------------------
  const q = field('Search name, surname, job' + (ctx.admin ? ' or ssn' : ''), {
    id: 'people-q',
    type: 'search',
    autocomplete: 'off',
  });
  const size = field(
    'Per page',
    { id: 'people-limit' },
    {
      select: [
        ['10', '10'],
        ['20', '20'],
        ['50', '50'],
        ['100', '100'],
      ],
    },
  );
  size.input.value = String(st.limit);
  const searchBtn = el('button', { type: 'submit', id: 'people-search' }, 'Search');
  const searchForm = el(
    'form',
    { class: 'toolbar', id: 'people-form', role: 'search', novalidate: true },
    q.wrap,
    size.wrap,
    searchBtn,
  );
  const listError = el('p', { class: 'error', id: 'people-error', role: 'alert', hidden: true });
  searchBtn.setAttribute('aria-describedby', 'people-error');
  const range = el('p', { class: 'muted', id: 'people-range', role: 'status' });
  const prev = el('button', { type: 'button', class: 'secondary', id: 'people-prev' }, '← Previous');
  const next = el('button', { type: 'button', class: 'secondary', id: 'people-next' }, 'Next →');
  const pager = el('nav', { class: 'pager', 'aria-label': 'Pages' }, prev, range, next);

  const cols = ['ssn', 'name', 'surname', 'job', 'salary', 'updated'];
  const body = el('tbody', { id: 'people-body' });
  const table = el(
    'table',
    { class: 'data stack', id: 'people-table' },
    el('caption', { class: 'visually-hidden' }, 'People'),
    el(
      'thead',
      {},
      el(
        'tr',
        {},
        cols.map((c) => el('th', { scope: 'col' }, c === 'updated' ? 'Updated' : LABELS[c])),
        ctx.admin ? el('th', { scope: 'col' }, 'Actions') : null,
      ),
    ),
    body,
  );

  searchForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    st.q = q.input.value;
    st.limit = Number(size.input.value) || 20;
    st.offset = 0;
    loadPeople();
  });
  size.input.addEventListener('change', () => {
    st.limit = Number(size.input.value) || 20;
    st.offset = 0;
    loadPeople();
  });
  prev.addEventListener('click', () => {
    st.offset = Math.max(0, st.offset - st.limit);
    loadPeople();
  });
  next.addEventListener('click', () => {
    st.offset += st.limit;
    loadPeople();
  });

  async function loadPeople() {
    setError(listError, '');
    searchBtn.disabled = true;
    try {
      const res = await api.get(
        `/api/people${api.query({ q: st.q, limit: st.limit, offset: st.offset || '' })}`,
      );
      if (!st.alive) return;
      st.people = api.rows(res, 'people');
      drawPeople();
    } catch (e) {
      setError(listError, e);
    } finally {
      searchBtn.disabled = false;
    }
  }

  function drawPeople() {
    clear(body);
    for (const p of st.people) {
      const cells = cols.map((c) => {
        if (c === 'ssn') return el('th', { scope: 'row' }, p.ssn);
        if (c === 'updated') return el('td', {}, el('time', { datetime: p.updated || '' }, humanTime(p.updated)));
        const v = p[c];
        return el('td', { class: c === 'salary' ? 'num' : '' }, v === null || v === undefined || v === '' ? '–' : v);
      });
      const tr = el('tr', { dataset: { ssn: p.ssn } }, cells);
      if (ctx.admin) {
        const edit = el('button', { type: 'button', class: 'small', dataset: { action: 'edit', admin: '' } }, 'Edit');
        edit.setAttribute('aria-label', `Edit ${p.ssn}`);
        edit.addEventListener('click', () => editPerson(p, edit));
        const del = el('button', { type: 'button', class: 'small danger', dataset: { action: 'delete', admin: '' } }, 'Delete');
        del.setAttribute('aria-label', `Delete ${p.ssn}`);
        del.addEventListener('click', () => deletePerson(p, del));
        tr.append(el('td', { class: 'actions-cell' }, edit, ' ', del));
      }
      body.append(tr);
    }
    if (!st.people.length) {
      body.append(
        el(
          'tr',
          {},
          el('td', { colspan: String(cols.length + (ctx.admin ? 1 : 0)), class: 'empty' }, st.offset ? 'No more people.' : 'No people found.'),
        ),
      );
    }
    labelCells(table);
    const first = st.people.length ? st.offset + 1 : st.offset;
    status(range, `Showing ${first}–${st.offset + st.people.length}`);
    prev.disabled = st.offset === 0;
    next.disabled = st.people.length < st.limit;
  }

  // -- add / edit / delete (admin) --------------------------------------------

  // The person form, in the dialog: {nodes, read()} where read() returns
  // the fields or throws after showing each error next to its input.
  function personForm(p) {
    const inputs = {};
    const nodes = [];
    if (!p) {
      inputs.ssn = field(LABELS.ssn, { id: 'person-ssn', autocomplete: 'off', required: true, maxlength: '32' }, { hint: '1-32 letters, digits or -' });
      nodes.push(inputs.ssn.wrap);
    } else {
      nodes.push(el('p', {}, 'SSN: ', el('strong', {}, p.ssn)));
    }
    for (const f of FIELDS) {
      inputs[f] = field(LABELS[f], {
        id: `person-${f}`,
        autocomplete: 'off',
        required: REQUIRED.includes(f),
        value: p && p[f] !== null && p[f] !== undefined ? String(p[f]) : '',
      });
      inputs[f].input.addEventListener('input', () => setError(inputs[f].error, checkField(f, inputs[f].input.value)));
      nodes.push(inputs[f].wrap);
    }
    const read = () => {
      let bad = null;
      const out = {};
      if (inputs.ssn) {
        const e = checkSsn(inputs.ssn.input.value);
        setError(inputs.ssn.error, e);
        if (e) bad = bad || inputs.ssn.input;
        out.ssn = inputs.ssn.input.value;
      }
      for (const f of FIELDS) {
        const v = inputs[f].input.value;
        const e = checkField(f, v);
        setError(inputs[f].error, e);
        if (e) bad = bad || inputs[f].input;
        out[f] = v;
      }
      if (bad) {
        bad.focus();
        throw new Error('correct the fields marked above');
      }
      return out;
    };
    // A server refusal naming a field goes under that field.
    const place = (e) => {
      const m = /^(?:invalid )?(ssn|name|surname|job|salary)\b/.exec(e.message || '');
      const target = m && inputs[m[1]];
      if (target) setError(target.error, e);
      return !!target;
    };
    return { nodes, read, place, inputs };
  }

  async function addPerson(button) {
    const form = personForm(null);
    const added = await openDialog({
      title: 'Add a person',
      body: form.nodes,
      ok: 'Add',
      onOk: async () => {
        const fields = form.read();
        try {
          return await api.post('/api/people', fields);
        } catch (e) {
          form.place(e);
          throw e;
        }
      },
    });
    if (added) {
      status(personInfo, `Added ${added.ssn || ''}.`);
      loadPeople();
    }
    button.focus();
  }

  async function editPerson(p, button) {
    const form = personForm(p);
    const saved = await openDialog({
      title: `Edit ${p.ssn}`,
      body: form.nodes,
      ok: 'Save',
      onOk: async () => {
        const fields = form.read();
        const changed = {};
        for (const f of FIELDS) if ((p[f] ?? '') !== fields[f]) changed[f] = fields[f];
        if (!Object.keys(changed).length) throw new Error('nothing to update');
        try {
          return await api.put(`/api/people/${api.seg(p.ssn)}`, changed);
        } catch (e) {
          form.place(e);
          throw e;
        }
      },
    });
    if (saved) {
      status(personInfo, `Saved ${p.ssn}. Sync clients get it when it is sent to them (below).`);
      ssnInput.input.value = p.ssn;
      loadPeople();
    }
  }

  async function deletePerson(p, button) {
    const err = errorAfter(button);
    setError(err, '');
    const ok = await confirmDialog(
      `Delete ${p.ssn}?`,
      `${p.name} ${p.surname} (${p.ssn}) will be deleted from the server's database. ` +
        'Sync clients keep their copy until a delete is sent to them.',
      'Delete',
    );
    if (!ok) return;
    button.disabled = true;
    try {
      await api.del(`/api/people/${api.seg(p.ssn)}`);
      status(personInfo, `Deleted ${p.ssn}.`);
      loadPeople();
    } catch (e) {
      setError(err, e);
      button.disabled = false;
    }
  }

  const personInfo = el('p', { class: 'muted', id: 'person-info', role: 'status', hidden: true });
  const addBtn = ctx.admin
    ? el('button', { type: 'button', id: 'person-add', dataset: { admin: '' } }, 'Add a person')
    : null;
  if (addBtn) addBtn.addEventListener('click', () => addPerson(addBtn));

  // -- sync clients and operator actions (admin) -------------------------------
  const clientsBody = el('tbody', { id: 'clients-body' });
  const clientsError = el('p', { class: 'error', id: 'clients-error', role: 'alert', hidden: true });
  const clientsTable = el(
    'table',
    { class: 'data stack', id: 'clients-table' },
    el('caption', { class: 'visually-hidden' }, 'Sync clients'),
    el(
      'thead',
      {},
      el(
        'tr',
        {},
        ['Client', 'Connected', 'Acknowledged seq', 'Pending (lag)', 'Last seen'].map((h) => el('th', { scope: 'col' }, h)),
      ),
    ),
    clientsBody,
  );
  const clientList = el('datalist', { id: 'client-names' });
  const ssnList = el('datalist', { id: 'ssn-values' });

  async function loadClients() {
    try {
      const res = await api.get('/api/sync-clients');
      if (!st.alive) return;
      st.clients = api.rows(res, 'clients');
      setError(clientsError, '');
      drawClients();
    } catch (e) {
      setError(clientsError, e);
    }
  }

  function drawClients() {
    clear(clientsBody);
    clear(clientList);
    for (const c of st.clients) {
      const online = c.online ?? c.connected;
      const pending = c.pending ?? c.lag;
      clientsBody.append(
        el(
          'tr',
          { dataset: { client: c.client } },
          el('th', { scope: 'row' }, c.client),
          el('td', {}, el('span', { class: online ? 'badge ok' : 'badge' }, online ? 'connected' : 'offline')),
          el('td', { class: 'num' }, c.acked ?? '–'),
          el('td', { class: `num${pending ? ' warn' : ''}` }, pending ?? '–'),
          el('td', {}, humanTime(c.last_seen)),
        ),
      );
      clientList.append(el('option', { value: c.client }));
    }
    if (!st.clients.length) {
      clientsBody.append(el('tr', {}, el('td', { colspan: '5', class: 'empty' }, 'No sync clients yet.')));
    }
    labelCells(clientsTable);
    clear(ssnList);
    for (const p of st.people) if (p.ssn) ssnList.append(el('option', { value: p.ssn }));
  }

  const ssnInput = field('SSN', { id: 'op-ssn', autocomplete: 'off', list: 'ssn-values' });
  const clientInput = field('Client', { id: 'op-client', autocomplete: 'off', list: 'client-names' });
  const opInfo = el('p', { class: 'muted', id: 'op-result', role: 'status', hidden: true });
  const opButtons = ACTIONS.map((a) => {
    const b = el(
      'button',
      {
        type: 'button',
        class: a.del ? 'danger' : a.n === 0 ? 'secondary' : '',
        id: `op-${a.n}`,
        dataset: { admin: '', choice: String(a.n) },
      },
      `${a.n} · ${a.label}`,
    );
    b.addEventListener('click', () => runAction(a, b));
    return b;
  });

  async function runAction(a, button) {
    const err = errorAfter(button.parentElement);
    setError(err, '');
    setError(ssnInput.error, '');
    setError(clientInput.error, '');
    status(opInfo, '');
    if (a.n === 0) {
      await Promise.all([loadPeople(), loadClients()]);
      status(opInfo, 'Personnel and clients refreshed.');
      return;
    }
    const ssn = a.ssn ? ssnInput.input.value.trim() : '*';
    const client = a.client ? clientInput.input.value.trim() : '*';
    if (a.ssn) {
      const e = ssn ? checkSsn(ssn) : 'enter an ssn';
      if (e) {
        setError(ssnInput.error, e);
        ssnInput.input.focus();
        return;
      }
    }
    if (a.client) {
      const e = client ? checkClient(client) : 'enter a client name';
      if (e) {
        setError(clientInput.error, e);
        clientInput.input.focus();
        return;
      }
    }
    if (a.bulk || a.all || a.del) {
      const what = a.label.replace(/^\w/, (c) => c.toLowerCase());
      const detail = `${a.verb === 'send' ? 'Send' : 'Delete'} ${ssn === '*' ? 'ALL personnel' : ssn} ${
        a.verb === 'send' ? 'to' : 'from'
      } ${client === '*' ? 'ALL clients' : client}?`;
      const ok = await confirmDialog(`Confirm: ${what}`, detail, a.del ? 'Delete' : 'Send', a.del || a.bulk);
      if (!ok) {
        status(opInfo, 'Not confirmed: nothing sent.');
        return;
      }
    }
    for (const b of opButtons) b.disabled = true;
    try {
      const res = await api.post(`/api/sync-clients/${a.verb}`, { client, id: ssn });
      const n = res && res.queued !== undefined ? res.queued : '?';
      status(opInfo, `Queued ${n} message${n === 1 ? '' : 's'}.`);
      loadClients();
    } catch (e) {
      const m = /ssn|client/.exec(e.message || '');
      const target = m ? (m[0] === 'ssn' ? ssnInput : clientInput) : null;
      if (target && (a.ssn || a.client)) setError(target.error, e);
      else setError(err, e);
    } finally {
      for (const b of opButtons) b.disabled = false;
    }
  }

  const refreshClients = el('button', { type: 'button', class: 'secondary small', id: 'clients-refresh', dataset: { admin: '' } }, 'Refresh');
  refreshClients.addEventListener('click', loadClients);

  root.append(
    pageHeader('Personnel', addBtn),
    personInfo,
    el(
      'section',
      { class: 'card', 'aria-labelledby': 'people-title' },
      el('h2', { id: 'people-title' }, 'People'),
      searchForm,
      listError,
      el('div', { class: 'table-wrap' }, table),
      pager,
    ),
  );
  if (ctx.admin) {
    root.append(
      el(
        'section',
        { class: 'card', 'aria-labelledby': 'clients-title', id: 'sync-clients', dataset: { admin: '' } },
        el('div', { class: 'card-head' }, el('h2', { id: 'clients-title' }, 'Sync clients'), refreshClients),
        clientsError,
        el('div', { class: 'table-wrap' }, clientsTable),
      ),
      el(
        'section',
        { class: 'card', 'aria-labelledby': 'ops-title', id: 'operator', dataset: { admin: '' } },
        el('h2', { id: 'ops-title' }, 'Operator actions'),
        el('p', { class: 'hint' }, 'The console menu: send or delete one person or all personnel, to one client or all of them. Anything reaching every client, and every delete, is confirmed first.'),
        el('div', { class: 'op-fields' }, ssnInput.wrap, clientInput.wrap),
        el('div', { class: 'op-buttons' }, opButtons),
        opInfo,
        clientList,
        ssnList,
      ),
    );
  }

  loadPeople().then(() => ctx.admin && drawClients());
  if (ctx.admin) {
    loadClients();
    st.timer = setInterval(() => {
      if (document.visibilityState === 'visible') loadClients();
    }, 3000);
  }
  return () => {
    st.alive = false;
    if (st.timer) clearInterval(st.timer);
  };
}
