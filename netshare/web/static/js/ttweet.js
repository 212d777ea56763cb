// ttweet: the live timeline (Server-Sent Events from /api/events), compose
// with the line protocol's rules and messages (docs/protocol.md section 3;
// netshare/services/ttweet/rules.py), subscriptions (at most 3), online
// users and a user's tweets.
//
// The checks here only spare a round trip: the server applies the same
// rules to whatever arrives, and its refusal is shown the same way.

import * as api from './api.js';
import {
  clear,
  codePoints,
  el,
  errorAfter,
  field,
  hasUnsafe,
  humanTime,
  pageHeader,
  setError,
  status,
  utf8Length,
} from './ui.js';

// The line protocol's limits and reply texts (rules.py).
export const MAX_MESSAGE = 150;
export const MAX_SUBSCRIPTIONS = 3;
const MESSAGE_FORMAT = 'message format illegal';
const MESSAGE_LENGTH = 'message length illegal';
const HASHTAG_FORMAT = 'hashtag illegal format';
const subRefused = (tag) =>
  `operation failed: sub ${tag} failed, already exists or exceeds 3 limitation`;

const UNIT = /^[A-Za-z0-9]{1,14}$/;
const TAG = /^#[A-Za-z0-9]{1,14}$/;

// The message rule: length first, then emptiness and unsafe characters.
export function checkMessage(text) {
  if (!text) return MESSAGE_FORMAT;
  if (codePoints(text) > MAX_MESSAGE) return MESSAGE_LENGTH;
  if (!text.trim() || /^\s+$/u.test(text)) return MESSAGE_FORMAT;
  if (hasUnsafe(text)) return MESSAGE_FORMAT;
  return '';
}

// "#cs#3251" -> ["#cs", "#3251"]; "" -> []; null for a bad string.
export function parseHashtags(s) {
  if (!s) return [];
  if (s.length > 75 || s[0] !== '#') return null;
  const units = s.slice(1).split('#');
  if (units.length > 5) return null;
  for (const u of units) if (!UNIT.test(u) || u === 'ALL') return null;
  return units.map((u) => `#${u}`);
}

export function mount(root, ctx) {
  const st = { alive: true, tweets: new Map(), subs: [], source: null, lastId: null };

  // -- compose --------------------------------------------------------------
  const message = field(
    'Message',
    { id: 'tweet-message', rows: '3', maxlength: '600', autocomplete: 'off' },
    { textarea: true },
  );
  const counter = el('p', { class: 'counter', id: 'tweet-counter', 'aria-live': 'polite' });
  message.wrap.insertBefore(counter, message.error);
  const tags = field(
    'Hashtags (optional, written together: #cs#3251)',
    { id: 'tweet-tags', autocomplete: 'off', spellcheck: 'false', placeholder: '#cs#3251' },
  );
  const send = el('button', { type: 'submit', id: 'tweet-send' }, 'Tweet');
  const sendError = el('p', { class: 'error', id: 'tweet-error', role: 'alert', hidden: true });
  send.setAttribute('aria-describedby', 'tweet-error');
  const sendInfo = el('p', { class: 'muted', id: 'tweet-sent', role: 'status', hidden: true });
  const form = el(
    'form',
    { id: 'tweet-form', novalidate: true },
    message.wrap,
    tags.wrap,
    el('div', { class: 'actions' }, send),
    sendError,
    sendInfo,
  );

  function updateCounter() {
    const text = message.input.value;
    const n = codePoints(text);
    const bytes = utf8Length(text);
    counter.textContent = `${n} / ${MAX_MESSAGE} characters · ${bytes} bytes UTF-8`;
    counter.classList.toggle('over', n > MAX_MESSAGE);
    counter.dataset.count = String(n);
    counter.dataset.bytes = String(bytes);
  }
  message.input.addEventListener('input', () => {
    updateCounter();
    const text = message.input.value;
    // Live: only the length (an empty box is not an error until sent).
    setError(message.error, text && codePoints(text) > MAX_MESSAGE ? MESSAGE_LENGTH : '');
  });
  tags.input.addEventListener('input', () => setError(tags.error, ''));
  updateCounter();

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    setError(sendError, '');
    const text = message.input.value;
    const bad = checkMessage(text);
    setError(message.error, bad);
    const tagList = parseHashtags(tags.input.value.trim());
    setError(tags.error, tagList === null ? HASHTAG_FORMAT : '');
    if (bad) {
      message.input.focus();
      return;
    }
    if (tagList === null) {
      tags.input.focus();
      return;
    }
    send.disabled = true;
    try {
      const tweet = await api.post('/api/tweets', { message: text, hashtags: tagList });
      message.input.value = '';
      updateCounter();
      status(sendInfo, `Sent${tweet && tweet.id !== undefined ? ` (#${tweet.id})` : ''}.`);
    } catch (e) {
      setError(sendError, e);
    } finally {
      send.disabled = false;
    }
  });

  // -- subscriptions --------------------------------------------------------
  const subList = el('ul', { class: 'chips', id: 'subscriptions' });
  const subInput = field('Hashtag', {
    id: 'subscribe-tag',
    autocomplete: 'off',
    spellcheck: 'false',
    placeholder: '#ALL',
  });
  const subBtn = el('button', { type: 'submit', id: 'subscribe-button' }, 'Subscribe');
  const subForm = el(
    'form',
    { id: 'subscribe-form', class: 'inline-form', novalidate: true },
    subInput.wrap,
    subBtn,
  );
  const subsError = el('p', { class: 'error', id: 'subscriptions-error', role: 'alert', hidden: true });

  function drawSubs() {
    clear(subList);
    for (const tag of st.subs) {
      const b = el('button', { type: 'button', class: 'small secondary', dataset: { tag } }, 'Unsubscribe');
      b.setAttribute('aria-label', `Unsubscribe from ${tag}`);
      b.addEventListener('click', () => unsubscribe(tag, b));
      subList.append(el('li', { class: 'chip' }, el('span', {}, tag), b));
    }
    if (!st.subs.length) subList.append(el('li', { class: 'muted' }, 'No subscriptions: subscribe to #ALL to see every tweet.'));
  }

  async function loadSubs() {
    try {
      st.subs = api.rows(await api.get('/api/subscriptions'));
      drawSubs();
    } catch (e) {
      setError(subsError, e);
    }
  }

  subForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    setError(subInput.error, '');
    let tag = subInput.input.value.trim();
    if (tag && !tag.startsWith('#')) tag = `#${tag}`;
    if (!TAG.test(tag)) {
      setError(subInput.error, HASHTAG_FORMAT);
      subInput.input.focus();
      return;
    }
    if (st.subs.includes(tag) || st.subs.length >= MAX_SUBSCRIPTIONS) {
      setError(subInput.error, subRefused(tag));
      return;
    }
    subBtn.disabled = true;
    try {
      st.subs = api.rows(await api.post('/api/subscriptions', { hashtag: tag }));
      subInput.input.value = '';
      drawSubs();
      // A new subscription: the stream must be open to get its tweets.
      if (!st.source) openStream();
    } catch (e) {
      setError(subInput.error, e);
    } finally {
      subBtn.disabled = false;
    }
  });

  async function unsubscribe(tag, button) {
    const err = errorAfter(button);
    setError(err, '');
    button.disabled = true;
    try {
      st.subs = api.rows(await api.del(`/api/subscriptions/${api.seg(tag)}`));
      drawSubs();
    } catch (e) {
      setError(err, e);
      button.disabled = false;
    }
  }

  // -- the timeline ---------------------------------------------------------
  const live = el('span', { class: 'live', id: 'stream-state', role: 'status' }, 'connecting…');
  const timeline = el('ol', { class: 'tweets', id: 'timeline', 'aria-live': 'polite' });
  const timelineError = el('p', { class: 'error', id: 'timeline-error', role: 'alert', hidden: true });

  function tweetItem(t) {
    const tagsText = Array.isArray(t.hashtags) ? t.hashtags.join('') : t.hashtags || '';
    return el(
      'li',
      { class: 'tweet', dataset: { id: String(t.id) } },
      el(
        'div',
        { class: 'tweet-head' },
        el('strong', { class: 'tweet-user' }, t.user),
        tagsText ? el('span', { class: 'tweet-tags' }, tagsText) : null,
        el('time', { datetime: t.ts || '' }, humanTime(t.ts)),
      ),
      el('p', { class: 'tweet-text' }, t.message),
    );
  }

  function addTweet(t) {
    if (t === null || t === undefined || t.id === undefined) return;
    const id = Number(t.id);
    if (st.tweets.has(id)) return;
    st.tweets.set(id, t);
    if (st.lastId === null || id > st.lastId) st.lastId = id;
    const item = tweetItem(t);
    // Newest first: find the first shown tweet older than this one.
    const later = [...timeline.children].find((li) => Number(li.dataset.id) < id);
    timeline.insertBefore(item, later || null);
    const empty = timeline.querySelector('.empty');
    if (empty) empty.remove();
  }

  async function loadTimeline() {
    setError(timelineError, '');
    try {
      const items = api.rows(await api.get('/api/timeline'));
      if (!st.alive) return;
      for (const t of items) addTweet(t);
      if (!timeline.children.length) {
        timeline.append(el('li', { class: 'empty muted' }, 'Nothing yet: tweets to your subscriptions appear here as they are sent.'));
      }
    } catch (e) {
      setError(timelineError, e);
    }
  }

  function openStream() {
    if (!st.alive || st.source) return;
    // Same origin: the session cookie goes with it.  On a cut the browser
    // reconnects by itself with Last-Event-ID, and the server replays the
    // persisted timeline after it.
    const source = new EventSource('/api/events');
    st.source = source;
    live.textContent = 'connecting…';
    live.dataset.state = 'connecting';
    source.onopen = () => {
      live.textContent = 'live';
      live.dataset.state = 'open';
    };
    const onTweet = (ev) => {
      try {
        addTweet(JSON.parse(ev.data));
      } catch (e) {
        console.error('bad event', e);
      }
    };
    source.addEventListener('tweet', onTweet);
    source.onmessage = onTweet;
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        live.textContent = 'disconnected';
        live.dataset.state = 'closed';
        st.source = null;
        // Refused outright (signed out, or the name is online elsewhere):
        // say why, from the same request made plainly.
        api.get('/api/subscriptions').catch((e) => setError(timelineError, e));
        setTimeout(() => {
          if (st.alive && !st.source) openStream();
        }, 5000);
      } else {
        live.textContent = 'reconnecting…';
        live.dataset.state = 'connecting';
      }
    };
  }

  // -- users ----------------------------------------------------------------
  const userList = el('ul', { class: 'users', id: 'users' });
  const usersError = el('p', { class: 'error', id: 'users-error', role: 'alert', hidden: true });
  const usersRefresh = el('button', { type: 'button', class: 'secondary small', id: 'users-refresh' }, 'Refresh');
  usersRefresh.setAttribute('aria-describedby', 'users-error');
  const who = field('User name', { id: 'user-tweets-name', autocomplete: 'off', spellcheck: 'false' });
  const whoBtn = el('button', { type: 'submit', id: 'user-tweets-button' }, 'Show tweets');
  const whoForm = el('form', { id: 'user-tweets-form', class: 'inline-form', novalidate: true }, who.wrap, whoBtn);
  const userTweets = el('ol', { class: 'tweets', id: 'user-tweets' });
  const userTweetsTitle = el('h3', { id: 'user-tweets-title', hidden: true });

  async function loadUsers() {
    setError(usersError, '');
    try {
      const items = api.rows(await api.get('/api/users'));
      clear(userList);
      for (const u of items) {
        const name = typeof u === 'string' ? u : u.user;
        const b = el('button', { type: 'button', class: 'linklike', dataset: { user: name } }, name);
        b.addEventListener('click', () => {
          who.input.value = name;
          showTweetsOf(name);
        });
        userList.append(el('li', {}, b));
      }
      if (!items.length) userList.append(el('li', { class: 'muted' }, 'Nobody online.'));
    } catch (e) {
      setError(usersError, e);
    }
  }
  usersRefresh.addEventListener('click', loadUsers);

  async function showTweetsOf(name) {
    setError(who.error, '');
    if (!/^[A-Za-z0-9]{1,32}$/.test(name)) {
      setError(who.error, 'username has wrong format');
      return;
    }
    whoBtn.disabled = true;
    try {
      const items = api.rows(await api.get(`/api/users/${api.seg(name)}/tweets`));
      clear(userTweets);
      userTweetsTitle.textContent = `Tweets by ${name} (${items.length})`;
      userTweetsTitle.hidden = false;
      for (const t of [...items].reverse()) userTweets.append(tweetItem(t));
    } catch (e) {
      setError(who.error, e);
    } finally {
      whoBtn.disabled = false;
    }
  }
  whoForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    showTweetsOf(who.input.value.trim());
  });

  root.append(
    pageHeader('ttweet'),
    el(
      'div',
      { class: 'columns' },
      el(
        'div',
        { class: 'col-main' },
        el('section', { class: 'card', 'aria-labelledby': 'compose-title' }, el('h2', { id: 'compose-title' }, 'Compose'), form),
        el(
          'section',
          { class: 'card', 'aria-labelledby': 'timeline-title' },
          el('div', { class: 'card-head' }, el('h2', { id: 'timeline-title' }, 'Timeline'), live),
          timelineError,
          timeline,
        ),
      ),
      el(
        'div',
        { class: 'col-side' },
        el(
          'section',
          { class: 'card', 'aria-labelledby': 'subs-title' },
          el('h2', { id: 'subs-title' }, 'Subscriptions'),
          el('p', { class: 'hint' }, `At most ${MAX_SUBSCRIPTIONS}; #ALL receives every tweet.`),
          subList,
          subsError,
          subForm,
        ),
        el(
          'section',
          { class: 'card', 'aria-labelledby': 'users-title' },
          el('div', { class: 'card-head' }, el('h2', { id: 'users-title' }, 'Online users'), usersRefresh),
          usersError,
          userList,
          whoForm,
          userTweetsTitle,
          userTweets,
        ),
      ),
    ),
  );

  openStream();
  loadSubs();
  loadTimeline();
  loadUsers();
  // Who is online changes without any push: looked at again now and then.
  const usersTimer = setInterval(() => {
    if (document.visibilityState === 'visible') loadUsers();
  }, 15000);

  return () => {
    st.alive = false;
    clearInterval(usersTimer);
    if (st.source) st.source.close();
    st.source = null;
  };
}
