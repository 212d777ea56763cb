// The single page: the session, the header, and hash routing to one page
// module at a time (#/files, #/ttweet, #/personnel, #/dashboard, #/signin).
//
// A page module exports mount(root, ctx) and may return a function that
// unmounts it (closing its event stream, stopping its timers).  ctx holds
// the session ({user, role}) and ctx.admin; admin controls are built only
// when ctx.admin is true (the server refuses them anyway).

import * as api from './api.js';
import * as dashboard from './dashboard.js';
import * as files from './files.js';
import * as personnel from './personnel.js';
import * as signin from './signin.js';
import * as ttweet from './ttweet.js';
import { clear, el, status } from './ui.js';

const PAGES = { files, ttweet, personnel, dashboard, signin };
const TITLES = {
  files: 'Files',
  ttweet: 'ttweet',
  personnel: 'Personnel',
  dashboard: 'Dashboard',
  signin: 'Sign in',
};
const DEFAULT = 'files';

const state = { session: null, unmount: null, page: null, notice: '', renders: 0 };

function route() {
  const m = /^#\/([a-z]+)/.exec(window.location.hash || '');
  const name = m ? m[1] : '';
  return Object.hasOwn(PAGES, name) ? name : '';
}

function go(name) {
  if (window.location.hash !== `#/${name}`) window.location.hash = `#/${name}`;
  else render();
}

function ctx() {
  const s = state.session;
  return {
    session: s,
    user: s ? s.user : null,
    admin: !!s && s.role === 'admin',
    go,
    signedIn,
    notice: state.notice,
  };
}

function updateHeader() {
  const s = state.session;
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  nav.hidden = !s;
  who.hidden = !s;
  // The dashboard's link exists only for an admin (not merely hidden).
  const dash = document.getElementById('nav-dashboard');
  if (s && s.role === 'admin' && !dash) {
    document
      .getElementById('nav-list')
      .append(
        el(
          'li',
          { id: 'nav-dashboard' },
          el('a', { href: '#/dashboard', dataset: { route: 'dashboard', admin: '' } }, 'Dashboard'),
        ),
      );
  } else if (!(s && s.role === 'admin') && dash) {
    dash.remove();
  }
  if (s) {
    document.getElementById('who-name').textContent = s.user;
    document.getElementById('who-role').textContent = s.role;
  }
  const page = state.page;
  for (const a of nav.querySelectorAll('a[data-route]')) {
    if (a.dataset.route === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function banner(text) {
  status(document.getElementById('banner'), text);
}

async function render() {
  let name = route();
  if (!state.session) name = 'signin';
  else if (!name || name === 'signin') {
    go(DEFAULT);
    return;
  }
  if (state.unmount) {
    try {
      state.unmount();
    } catch (e) {
      console.error(e);
    }
    state.unmount = null;
  }
  const main = document.getElementById('main');
  const moveFocus = state.page !== null && state.page !== name;
  state.page = name;
  updateHeader();
  document.title = `${TITLES[name]} · netshare`;
  clear(main);
  const root = el('section', { class: `page page-${name}`, dataset: { page: name } });
  main.append(root);
  state.renders += 1;
  const mine = state.renders;
  try {
    const unmount = (await PAGES[name].mount(root, ctx())) || null;
    // Another route was rendered while this page was loading: drop it.
    if (mine !== state.renders) {
      if (unmount) unmount();
      return;
    }
    state.unmount = unmount;
  } catch (e) {
    if (mine !== state.renders) return;
    root.append(el('p', { class: 'error', role: 'alert' }, e.message || String(e)));
  }
  state.notice = '';
  if (moveFocus) {
    const h = root.querySelector('h1');
    if (h) h.focus();
  }
}

function signedIn(session) {
  state.session = session;
  banner('');
  const wanted = route();
  go(wanted && wanted !== 'signin' ? wanted : DEFAULT);
}

async function signOut() {
  const btn = document.getElementById('signout');
  btn.disabled = true;
  try {
    await api.signOut();
  } catch (e) {
    if (e.status !== 401) {
      banner(`Sign-out failed: ${e.message}`);
      btn.disabled = false;
      return;
    }
  }
  btn.disabled = false;
  state.session = null;
  state.notice = 'Signed out.';
  go('signin');
}

async function start() {
  document.getElementById('signout').addEventListener('click', signOut);
  api.onSessionLost(() => {
    if (!state.session) return;
    state.session = null;
    api.setCsrf(null);
    state.notice = 'Your session has ended; sign in again.';
    render();
  });
  window.addEventListener('hashchange', render);
  try {
    state.session = await api.currentSession();
  } catch (e) {
    banner(`The server cannot be reached: ${e.message}`);
  }
  render();
}

start();
