// Files: the listing (sortable, filterable), uploads by button or drag and
// drop with progress and cancel, downloads (protected ones ask for the
// file password), delete with confirmation, the hidden files, the quota.
//
// Every decision is the server's (docs/protocol.md section 2): who may see
// a hidden file, who may delete, the quota; this page only shows the
// answers, each next to the control that asked.

import * as api from './api.js';
import {
  clear,
  confirmDialog,
  el,
  errorAfter,
  field,
  humanBytes,
  humanDuration,
  humanRate,
  humanTime,
  labelCells,
  openDialog,
  pageHeader,
  setError,
  status,
} from './ui.js';

const COLUMNS = [
  { key: 'name', label: 'Name', type: 'text' },
  { key: 'size', label: 'Size', type: 'number' },
  { key: 'owner', label: 'Owner', type: 'text' },
  { key: 'created', label: 'Uploaded', type: 'time' },
  { key: 'visibility', label: 'Visibility', type: 'text' },
  { key: 'protected', label: 'Protected', type: 'bool' },
];

const collator = new Intl.Collator(undefined, { sensitivity: 'base', numeric: true });

function compare(a, b, col) {
  const x = a[col.key];
  const y = b[col.key];
  if (col.type === 'number') return (Number(x) || 0) - (Number(y) || 0);
  if (col.type === 'bool') return (x ? 1 : 0) - (y ? 1 : 0);
  if (col.type === 'time') return String(x || '').localeCompare(String(y || ''));
  return collator.compare(String(x ?? ''), String(y ?? ''));
}

export function mount(root, ctx) {
  const st = {
    view: 'public',
    files: [],
    sort: { key: 'name', dir: 1 },
    filter: '',
    uploads: new Set(),
    alive: true,
  };

  // -- quota ----------------------------------------------------------------
  const quotaText = el('span', { id: 'quota-text' }, 'Quota: …');
  const quotaMeter = el('meter', { id: 'quota-meter', min: '0', max: '1', value: '0', hidden: true });
  const quota = el('div', { class: 'quota', id: 'quota' }, quotaMeter, quotaText);

  async function loadQuota() {
    try {
      const q = await api.get('/api/quota');
      const parts = [`${humanBytes(q.bytes)} in ${q.files} file${q.files === 1 ? '' : 's'}`];
      if (q.quota !== null && q.quota !== undefined) {
        parts[0] += ` of ${humanBytes(q.quota)}`;
        quotaMeter.max = q.quota || 1;
        quotaMeter.value = Math.min(q.bytes, q.quota);
        quotaMeter.high = q.quota * 0.9;
        quotaMeter.hidden = false;
      } else {
        parts[0] += ' (no quota)';
        quotaMeter.hidden = true;
      }
      if (q.max_file_size) parts.push(`largest upload ${humanBytes(q.max_file_size)}`);
      quotaText.textContent = `Your files: ${parts.join(' · ')}`;
    } catch (e) {
      quotaText.textContent = `Quota unavailable: ${e.message}`;
    }
  }

  // -- uploads --------------------------------------------------------------
  const picker = el('input', {
    type: 'file',
    multiple: true,
    id: 'upload-input',
    class: 'visually-hidden',
    tabindex: '-1',
    'aria-hidden': 'true',
  });
  const chooseBtn = el('button', { type: 'button', id: 'upload-button' }, 'Upload files…');
  const hidden = el('input', { type: 'checkbox', id: 'upload-hidden' });
  const replace = el('input', { type: 'checkbox', id: 'upload-replace' });
  const protect = field('File password (optional: protects the file)', {
    id: 'upload-password',
    type: 'password',
    autocomplete: 'off',
  });
  const uploadError = el('p', { class: 'error', id: 'upload-error', role: 'alert', hidden: true });
  chooseBtn.setAttribute('aria-describedby', 'upload-error');
  const uploadList = el('ul', { class: 'uploads', id: 'uploads', 'aria-live': 'polite' });
  // A form (never submitted) so the password field is in one.
  const drop = el(
    'form',
    { class: 'dropzone', id: 'dropzone', 'aria-label': 'Upload files', novalidate: true },
    el('p', {}, 'Drop files here, or ', chooseBtn, picker),
    el(
      'div',
      { class: 'options' },
      el('label', { class: 'check' }, hidden, ' Hidden (unlisted)'),
      el('label', { class: 'check' }, replace, ' Replace a file of mine with the same name'),
      protect.wrap,
    ),
    uploadError,
  );

  drop.addEventListener('submit', (ev) => ev.preventDefault());
  chooseBtn.addEventListener('click', () => picker.click());
  picker.addEventListener('change', () => {
    startUploads([...picker.files]);
    picker.value = '';
  });
  const over = (ev) => {
    if (!ev.dataTransfer || ![...ev.dataTransfer.types].includes('Files')) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = 'copy';
    drop.classList.add('over');
  };
  drop.addEventListener('dragenter', over);
  drop.addEventListener('dragover', over);
  drop.addEventListener('dragleave', (ev) => {
    if (!drop.contains(ev.relatedTarget)) drop.classList.remove('over');
  });
  drop.addEventListener('drop', (ev) => {
    ev.preventDefault();
    drop.classList.remove('over');
    startUploads([...(ev.dataTransfer ? ev.dataTransfer.files : [])]);
  });
  // A file dropped anywhere else must not replace the page with itself.
  const stray = (ev) => {
    if (ev.dataTransfer && [...ev.dataTransfer.types].includes('Files')) ev.preventDefault();
  };
  window.addEventListener('dragover', stray);
  window.addEventListener('drop', stray);

  function startUploads(list) {
    setError(uploadError, '');
    if (!list.length) return;
    const opts = {
      hidden: hidden.checked,
      replace: replace.checked,
      password: protect.input.value || null,
    };
    for (const file of list) startUpload(file, opts);
  }

  function startUpload(file, opts) {
    const bar = el('progress', { max: String(file.size || 1), value: '0' });
    const info = el('span', { class: 'progress-text' }, 'starting…');
    const cancel = el('button', { type: 'button', class: 'secondary small' }, 'Cancel');
    const err = el('p', { class: 'error', role: 'alert', hidden: true });
    const item = el(
      'li',
      { class: 'upload', dataset: { name: file.name } },
      el('div', { class: 'upload-head' }, el('strong', {}, file.name), cancel),
      bar,
      info,
      err,
    );
    bar.setAttribute('aria-label', `Upload of ${file.name}`);
    uploadList.prepend(item);
    const samples = [[performance.now(), 0]];
    const job = api.upload(file.name, file, {
      ...opts,
      onProgress(loaded, total) {
        const now = performance.now();
        samples.push([now, loaded]);
        while (samples.length > 2 && now - samples[0][0] > 3000) samples.shift();
        const [t0, b0] = samples[0];
        const rate = now > t0 ? ((loaded - b0) * 1000) / (now - t0) : 0;
        bar.max = total || 1;
        bar.value = loaded;
        const left = rate > 0 ? humanDuration((total - loaded) / rate) : '–';
        info.textContent =
          `${humanBytes(loaded)} of ${humanBytes(total)} · ${humanRate(rate)} · ` + `${left} left`;
        item.dataset.loaded = String(loaded);
      },
    });
    st.uploads.add(job);
    cancel.addEventListener('click', () => job.abort());
    job.promise
      .then((meta) => {
        bar.value = bar.max;
        item.classList.add('done');
        item.dataset.state = 'done';
        info.textContent = `stored: ${humanBytes(meta && meta.size !== undefined ? meta.size : file.size)}`;
        cancel.textContent = 'Dismiss';
        cancel.addEventListener('click', () => item.remove(), { once: true });
        if (st.alive) {
          loadFiles();
          loadQuota();
        }
      })
      .catch((e) => {
        item.classList.add('failed');
        item.dataset.state = e.cancelled ? 'cancelled' : 'failed';
        info.textContent = e.cancelled ? 'cancelled' : 'failed';
        if (!e.cancelled) setError(err, e);
        cancel.textContent = 'Dismiss';
        cancel.addEventListener('click', () => item.remove(), { once: true });
      })
      .finally(() => st.uploads.delete(job));
  }

  // -- the listing ----------------------------------------------------------
  const views = [
    ['public', 'Public files'],
    ['mine', 'My files'],
    ['hidden', ctx.admin ? 'All hidden files' : 'My hidden files'],
  ];
  const viewButtons = views.map(([value, label]) => {
    const b = el(
      'button',
      {
        type: 'button',
        class: 'tab',
        id: `view-${value}`,
        'aria-pressed': String(value === st.view),
        dataset: value === 'hidden' && ctx.admin ? { admin: '' } : {},
      },
      label,
    );
    b.addEventListener('click', () => {
      st.view = value;
      for (const o of viewButtons) o.setAttribute('aria-pressed', String(o === b));
      loadFiles();
    });
    return b;
  });
  const filter = field('Filter by name or owner', {
    id: 'files-filter',
    type: 'search',
    autocomplete: 'off',
  });
  filter.input.addEventListener('input', () => {
    st.filter = filter.input.value.trim().toLowerCase();
    draw();
  });
  const refresh = el('button', { type: 'button', class: 'secondary', id: 'files-refresh' }, 'Refresh');
  refresh.addEventListener('click', () => {
    loadFiles();
    loadQuota();
  });
  const listError = el('p', { class: 'error', id: 'files-error', role: 'alert', hidden: true });
  const count = el('p', { class: 'muted', id: 'files-count', role: 'status' });
  const headRow = el('tr');
  const body = el('tbody', { id: 'files-body' });
  const table = el(
    'table',
    { class: 'data stack', id: 'files-table' },
    el('caption', { class: 'visually-hidden' }, 'Files'),
    el('thead', {}, headRow),
    body,
  );
  for (const col of COLUMNS) {
    const btn = el('button', { type: 'button', class: 'sort', dataset: { sort: col.key } }, col.label);
    const th = el('th', { scope: 'col', dataset: { key: col.key } }, btn);
    btn.addEventListener('click', () => {
      st.sort = { key: col.key, dir: st.sort.key === col.key ? -st.sort.dir : 1 };
      draw();
    });
    headRow.append(th);
  }
  headRow.append(el('th', { scope: 'col' }, el('span', {}, 'Actions')));

  async function loadFiles() {
    setError(listError, '');
    refresh.disabled = true;
    try {
      const which = st.view === 'public' ? '' : st.view;
      const res = await api.get(`/api/files${api.query({ which })}`);
      if (!st.alive) return;
      st.files = api.rows(res, 'files');
      st.loading = false;
      draw();
    } catch (e) {
      setError(listError, e);
    } finally {
      refresh.disabled = false;
    }
  }

  function draw() {
    for (const th of headRow.querySelectorAll('th[data-key]')) {
      const on = th.dataset.key === st.sort.key;
      th.setAttribute('aria-sort', on ? (st.sort.dir > 0 ? 'ascending' : 'descending') : 'none');
    }
    const col = COLUMNS.find((c) => c.key === st.sort.key);
    let rows = st.files;
    if (st.filter) {
      rows = rows.filter(
        (f) =>
          String(f.name).toLowerCase().includes(st.filter) ||
          String(f.owner || '').toLowerCase().includes(st.filter),
      );
    }
    rows = [...rows].sort((a, b) => compare(a, b, col) * st.sort.dir || collator.compare(a.name, b.name));
    clear(body);
    for (const f of rows) body.append(row(f));
    if (!rows.length) {
      body.append(
        el(
          'tr',
          {},
          el('td', { colspan: String(COLUMNS.length + 1), class: 'empty' }, st.loading ? 'Loading…' : 'No files.'),
        ),
      );
    }
    labelCells(table);
    status(
      count,
      st.filter
        ? `${rows.length} of ${st.files.length} files match`
        : `${st.files.length} file${st.files.length === 1 ? '' : 's'}`,
    );
  }

  function row(f) {
    const download = el(
      'button',
      { type: 'button', class: 'small', dataset: { action: 'download' } },
      'Download',
    );
    download.setAttribute('aria-label', `Download ${f.name}`);
    download.addEventListener('click', () => downloadFile(f, download));
    const actions = el('td', { class: 'actions-cell' }, download);
    const mine = f.owner === ctx.user;
    if (mine || ctx.admin) {
      const del = el(
        'button',
        {
          type: 'button',
          class: 'small danger',
          dataset: mine ? { action: 'delete' } : { action: 'delete', admin: '' },
        },
        'Delete',
      );
      del.setAttribute('aria-label', `Delete ${f.name}`);
      del.addEventListener('click', () => deleteFile(f, del));
      actions.append(' ', del);
    }
    return el(
      'tr',
      { dataset: { name: f.name } },
      el('th', { scope: 'row', class: 'name' }, f.name),
      el('td', { class: 'num', title: `${f.size} bytes` }, humanBytes(f.size)),
      el('td', {}, f.owner || '–'),
      el('td', {}, el('time', { datetime: f.created || '' }, humanTime(f.created))),
      el('td', {}, f.visibility || 'public'),
      el('td', {}, f.protected ? el('span', { class: 'badge' }, 'protected') : 'no'),
      actions,
    );
  }

  async function downloadFile(f, button) {
    const err = errorAfter(button);
    setError(err, '');
    if (f.protected) {
      const pw = field('File password', {
        id: 'download-password',
        type: 'password',
        autocomplete: 'off',
        required: true,
      });
      await openDialog({
        title: `Download ${f.name}`,
        body: [el('p', {}, 'This file is protected: give its password.'), pw.wrap],
        ok: 'Download',
        onOk: async () => {
          setError(pw.error, '');
          if (!pw.input.value) {
            setError(pw.error, 'enter the file password');
            throw new Error('the file password is needed');
          }
          try {
            await api.downloadWithPassword(f.name, pw.input.value);
          } catch (e) {
            setError(pw.error, e);
            pw.input.select();
            throw e;
          }
          return true;
        },
      });
      return;
    }
    // Ask first (HEAD) so a refusal shows here; then the browser downloads
    // the file itself, streaming it to disk.
    button.disabled = true;
    try {
      await api.request('HEAD', `/api/files/${api.seg(f.name)}`, { accept: '*/*' });
      const a = el('a', { href: `/api/files/${api.seg(f.name)}`, download: f.name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (e) {
      setError(err, e);
    } finally {
      button.disabled = false;
    }
  }

  async function deleteFile(f, button) {
    const err = errorAfter(button);
    setError(err, '');
    const ok = await confirmDialog(
      `Delete ${f.name}?`,
      `“${f.name}” (${humanBytes(f.size)}, owner ${f.owner}) will be deleted for everyone.`,
      'Delete',
    );
    if (!ok) return;
    button.disabled = true;
    try {
      await api.del(`/api/files/${api.seg(f.name)}`);
      st.files = st.files.filter((x) => x.name !== f.name);
      draw();
      loadQuota();
    } catch (e) {
      setError(err, e);
      button.disabled = false;
    }
  }

  root.append(
    pageHeader('Files', quota),
    el('section', { class: 'card', 'aria-labelledby': 'upload-title' }, el('h2', { id: 'upload-title' }, 'Upload'), drop, uploadList),
    el(
      'section',
      { class: 'card', 'aria-labelledby': 'list-title' },
      el('h2', { id: 'list-title' }, 'Files'),
      el('div', { class: 'toolbar' }, el('div', { class: 'tabs', role: 'group', 'aria-label': 'Which files' }, viewButtons), filter.wrap, refresh),
      listError,
      count,
      el('div', { class: 'table-wrap' }, table),
    ),
  );
  st.loading = true;
  draw();
  loadQuota();
  loadFiles();

  return () => {
    st.alive = false;
    window.removeEventListener('dragover', stray);
    window.removeEventListener('drop', stray);
    // Uploads in flight go on (their requests are the browser's); their
    // items simply leave the page.
  };
}
