// The HTTP API, as the pages call it.
//
// The session is the HttpOnly cookie the server sets on sign-in; this
// script never sees it.  What it keeps (in memory only, never in storage)
// is the CSRF token from the sign-in answer or GET /api/session, sent as
// X-CSRF-Token on every request that changes something.
//
// Every failure is an ApiError carrying the server's {"code", "error"}
// body, so the page can show the server's own words next to the control
// that sent the request.

let csrf = null;
const listeners = new Set();

export function setCsrf(value) {
  csrf = value || null;
}

// Called with the error whenever the server says the session is gone
// (401): the app then shows the sign-in page.
export function onSessionLost(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export class ApiError extends Error {
  constructor(status, code, text) {
    super(text);
    this.status = status;
    this.code = code;
  }
}

const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

async function errorOf(resp) {
  let code = null;
  let text = '';
  try {
    const body = await resp.json();
    code = body.code ?? null;
    text = body.error || '';
  } catch {
    text = '';
  }
  if (!text) {
    text = `${resp.status} ${resp.statusText || 'error'}`.trim();
  }
  const retry = resp.headers.get('Retry-After');
  const err = new ApiError(resp.status, code, text);
  if (retry) err.retryAfter = Number(retry);
  return err;
}

// A 401 may be the session's end, or a refusal of this request alone (a
// wrong file password is a 401 too): the session is asked for again, and
// only if that is refused as well is it gone.
let checking = null;

function lost(err, path) {
  if (err.status !== 401 || path === '/api/session' || checking) return;
  checking = fetch('/api/session', { credentials: 'same-origin', cache: 'no-store' })
    .then((resp) => {
      if (resp.status === 401) for (const fn of listeners) fn(err);
    })
    .catch(() => {})
    .finally(() => {
      checking = null;
    });
}

// One request: JSON in (opts.json) and out; opts.raw returns the Response.
export async function request(method, path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  let body = opts.body;
  if (opts.json !== undefined) {
    headers.set('Content-Type', 'application/json');
    body = JSON.stringify(opts.json);
  }
  if (UNSAFE.has(method) && csrf) headers.set('X-CSRF-Token', csrf);
  headers.set('Accept', opts.accept || 'application/json');
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body,
      credentials: 'same-origin',
      cache: 'no-store',
      signal: opts.signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, null, 'the server cannot be reached');
  }
  if (!resp.ok) {
    const err = await errorOf(resp);
    lost(err, path);
    throw err;
  }
  if (opts.raw) return resp;
  if (resp.status === 204 || method === 'HEAD') return null;
  const type = resp.headers.get('Content-Type') || '';
  if (type.includes('json')) return resp.json();
  return resp.text();
}

export const get = (path, opts) => request('GET', path, opts);
export const post = (path, json, opts = {}) => request('POST', path, { ...opts, json });
export const put = (path, json, opts = {}) => request('PUT', path, { ...opts, json });
export const del = (path, opts) => request('DELETE', path, opts);

// A path segment (file names, ssns, user names, hashtags).
export function seg(value) {
  return encodeURIComponent(value);
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

// A listing's rows, whether the server answers a bare array or an object
// holding one (e.g. {"files": [...]}).
export function rows(body, ...keys) {
  if (Array.isArray(body)) return body;
  if (body && typeof body === 'object') {
    for (const k of [...keys, 'items', 'results', 'data']) {
      if (Array.isArray(body[k])) return body[k];
    }
  }
  return [];
}

// -- the session ------------------------------------------------------------

export async function signIn(user, password) {
  const s = await request('POST', '/api/session', { json: { user, password } });
  setCsrf(s.csrf);
  return s;
}

export async function currentSession() {
  try {
    const s = await request('GET', '/api/session');
    setCsrf(s.csrf);
    return s;
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

export async function signOut() {
  try {
    await request('DELETE', '/api/session');
  } finally {
    setCsrf(null);
  }
}

// A header value holding any text: its UTF-8 bytes, one per character
// (headers carry bytes; fetch and XMLHttpRequest refuse characters above
// U+00FF), so a file password is sent as the UTF-8 the line port gets.
export function headerText(text) {
  let out = '';
  for (const b of new TextEncoder().encode(text)) out += String.fromCharCode(b);
  return out;
}

// -- uploads ----------------------------------------------------------------

// PUT /api/files/{name} with the file as the body, through XMLHttpRequest
// for its upload progress events.  Returns {promise, abort}; onProgress
// gets (bytesSent, total).
export function upload(name, file, opts = {}) {
  const xhr = new XMLHttpRequest();
  const params = {};
  if (opts.hidden) params.visibility = 'hidden';
  if (opts.replace) params.replace = 'yes';
  const promise = new Promise((resolve, reject) => {
    xhr.open('PUT', `/api/files/${seg(name)}${query(params)}`);
    xhr.withCredentials = true;
    if (csrf) xhr.setRequestHeader('X-CSRF-Token', csrf);
    if (opts.password) xhr.setRequestHeader('X-File-Password', headerText(opts.password));
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.onprogress = (ev) => {
      if (opts.onProgress) opts.onProgress(ev.loaded, ev.lengthComputable ? ev.total : file.size);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText || 'null');
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
        return;
      }
      const text = (body && body.error) || `${xhr.status} ${xhr.statusText}`.trim();
      const err = new ApiError(xhr.status, body ? body.code : null, text);
      lost(err, '');
      reject(err);
    };
    xhr.onerror = () => reject(new ApiError(0, null, 'the upload failed: connection lost'));
    xhr.onabort = () => {
      const err = new ApiError(0, null, 'upload cancelled');
      err.cancelled = true;
      reject(err);
    };
    xhr.send(file);
  });
  return { promise, abort: () => xhr.abort() };
}

// -- downloads --------------------------------------------------------------

// A protected file: fetched with its password in X-File-Password, then
// saved from memory under its own name.
export async function downloadWithPassword(name, password) {
  const resp = await request('GET', `/api/files/${seg(name)}`, {
    headers: { 'X-File-Password': headerText(password) },
    accept: '*/*',
    raw: true,
  });
  const blob = await resp.blob();
  saveBlob(blob, name);
  return blob.size;
}

export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
