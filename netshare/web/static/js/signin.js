// Sign-in with a netshare account (POST /api/session): the same accounts,
// throttling and lockout as the line ports; the server's refusal is shown
// under the form.

import * as api from './api.js';
import { el, field, pageHeader, setError } from './ui.js';

export function mount(root, ctx) {
  const user = field('Account name', {
    id: 'signin-user',
    name: 'user',
    autocomplete: 'username',
    required: true,
    autocapitalize: 'none',
    spellcheck: 'false',
  });
  const password = field('Password', {
    id: 'signin-password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const submit = el('button', { type: 'submit', id: 'signin-submit' }, 'Sign in');
  const error = el('p', { class: 'error', id: 'signin-error', role: 'alert', hidden: true });
  submit.setAttribute('aria-describedby', 'signin-error');
  const form = el(
    'form',
    { class: 'card signin', id: 'signin-form', novalidate: true },
    user.wrap,
    password.wrap,
    el('div', { class: 'actions' }, submit),
    error,
  );

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    setError(error, '');
    setError(user.error, '');
    setError(password.error, '');
    const name = user.input.value.trim();
    if (!name) {
      setError(user.error, 'enter your account name');
      user.input.focus();
      return;
    }
    if (!password.input.value) {
      setError(password.error, 'enter your password');
      password.input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      const session = await api.signIn(name, password.input.value);
      password.input.value = '';
      ctx.signedIn({ user: session.user || name, role: session.role || 'user' });
    } catch (e) {
      setError(error, e);
      password.input.select();
      password.input.focus();
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
  });

  root.append(
    pageHeader('Sign in'),
    el(
      'p',
      { class: 'muted' },
      'With your netshare account: the same name and password as the netshare client programs.',
    ),
  );
  if (ctx.notice) root.append(el('p', { class: 'notice', role: 'status', id: 'signin-notice' }, ctx.notice));
  root.append(form);
  user.input.focus();
}
