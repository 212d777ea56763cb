// Small DOM helpers shared by the pages: building elements (text is always
// set as text, never parsed as HTML), errors shown next to their control,
// the confirmation/password dialog, and number formatting.

// el('button', {type: 'button', class: 'x', onclick: fn}, 'text', child...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      node.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      node.className = v;
    } else if (k === 'dataset') {
      Object.assign(node.dataset, v);
    } else if (k === 'text') {
      node.textContent = v;
    } else if (k in node && typeof v !== 'string') {
      node[k] = v;
    } else {
      node.setAttribute(k, v === true ? '' : v);
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

let uid = 0;
export function newId(prefix = 'f') {
  uid += 1;
  return `${prefix}-${uid}`;
}

// A labelled input with its own error line below it.
// Returns {wrap, input, error}; setError/clearError work on it.
export function field(label, attrs = {}, opts = {}) {
  const id = attrs.id || newId('in');
  const errId = `${id}-error`;
  const tag = opts.textarea ? 'textarea' : opts.select ? 'select' : 'input';
  const input = el(tag, { ...attrs, id, 'aria-describedby': errId });
  if (opts.select) {
    for (const [value, text] of opts.select) input.append(el('option', { value }, text));
  }
  const error = el('p', { class: 'error', id: errId, role: 'alert', hidden: true });
  const wrap = el(
    'div',
    { class: `field${opts.inline ? ' inline' : ''}` },
    el('label', { for: id }, label),
    input,
    opts.hint ? el('p', { class: 'hint' }, opts.hint) : null,
    error,
  );
  return { wrap, input, error };
}

// The server's text (or a local check's) under the control that caused it.
export function setError(errorNode, err) {
  if (!errorNode) return;
  const text = typeof err === 'string' ? err : err && err.message ? err.message : String(err);
  errorNode.textContent = text;
  errorNode.hidden = !text;
  const control = errorNode.id ? document.querySelector(`[aria-describedby~="${errorNode.id}"]`) : null;
  if (control) control.setAttribute('aria-invalid', text ? 'true' : 'false');
}

export function clearError(errorNode) {
  setError(errorNode, '');
}

// An error line placed right after a control that has no field of its own
// (a row's Delete button): created on first use.
export function errorAfter(control) {
  let node = control.nextElementSibling;
  if (!node || !node.classList.contains('error')) {
    node = el('p', { class: 'error', id: newId('err'), role: 'alert', hidden: true });
    control.after(node);
    const described = control.getAttribute('aria-describedby');
    control.setAttribute('aria-describedby', described ? `${described} ${node.id}` : node.id);
  }
  return node;
}

export function status(node, text) {
  node.textContent = text || '';
  node.hidden = !text;
}

// -- the dialog ---------------------------------------------------------------

const dialog = () => document.getElementById('dialog');

// Shows the page's one <dialog>: title, body nodes, OK label.  onOk runs on
// submit; it may throw (or reject) to keep the dialog open with the error
// shown in it.  Resolves to onOk's value, or null when cancelled.
export function openDialog({ title, body = [], ok = 'OK', danger = false, onOk = () => true }) {
  const d = dialog();
  const form = document.getElementById('dialog-form');
  const okBtn = document.getElementById('dialog-ok');
  const cancel = document.getElementById('dialog-cancel');
  const error = document.getElementById('dialog-error');
  document.getElementById('dialog-title').textContent = title;
  clear(document.getElementById('dialog-body')).append(...body);
  okBtn.textContent = ok;
  okBtn.classList.toggle('danger', danger);
  setError(error, '');
  const opener = document.activeElement;
  return new Promise((resolve) => {
    let busy = false;
    const finish = (value) => {
      form.removeEventListener('submit', submit);
      cancel.removeEventListener('click', onCancel);
      d.removeEventListener('cancel', onCancel);
      if (d.open) d.close();
      if (opener && opener.isConnected && opener.focus) opener.focus();
      resolve(value);
    };
    const submit = async (ev) => {
      ev.preventDefault();
      if (busy) return;
      busy = true;
      okBtn.disabled = true;
      try {
        const value = await onOk();
        finish(value === undefined ? true : value);
      } catch (e) {
        setError(error, e);
      } finally {
        busy = false;
        okBtn.disabled = false;
      }
    };
    const onCancel = (ev) => {
      if (ev) ev.preventDefault();
      finish(null);
    };
    form.addEventListener('submit', submit);
    cancel.addEventListener('click', onCancel);
    d.addEventListener('cancel', onCancel);
    d.showModal();
    const first = d.querySelector('#dialog-body input, #dialog-body select, #dialog-body textarea');
    (first || okBtn).focus();
  });
}

export function confirmDialog(title, text, ok = 'Confirm', danger = true) {
  return openDialog({ title, body: [el('p', {}, text)], ok, danger });
}

// -- formatting -------------------------------------------------------------

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function humanBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '–';
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  if (i === 0) return `${v} B`;
  return `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${UNITS[i]}`;
}

export function humanRate(bytesPerSecond) {
  return `${humanBytes(Math.round(bytesPerSecond))}/s`;
}

export function humanDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '–';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function humanTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
  });
}

export function compactNumber(n) {
  if (!Number.isFinite(n)) return '–';
  const a = Math.abs(n);
  if (a >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${(n / 1e3).toFixed(0)}k`;
  if (a >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  if (a >= 10 || n === Math.round(n)) return String(Math.round(n));
  return n.toFixed(2);
}

// The characters netshare never stores (netshare/text.py UNSAFE): controls,
// line/paragraph separators, bidi formatting, lone surrogates.
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?:[^\ud800-\udbff]|^)[\udc00-\udfff]/;

export function hasUnsafe(text) {
  return UNSAFE.test(text);
}

export function codePoints(text) {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

export function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

// A page heading plus a region holding the page (h1 focusable for routing).
export function pageHeader(title, ...extra) {
  return el('div', { class: 'page-head' }, el('h1', { tabindex: '-1' }, title), ...extra);
}

// Each body cell gets its column's heading as data-label: at phone width
// the stylesheet shows a table row as a card of "label: value" lines.
export function labelCells(table) {
  const heads = [...table.querySelectorAll('thead th')].map((th) => th.textContent.trim());
  for (const tr of table.tBodies[0].rows) {
    [...tr.cells].forEach((cell, i) => {
      if (!cell.hasAttribute('colspan') && heads[i]) cell.dataset.label = heads[i];
    });
  }
}
