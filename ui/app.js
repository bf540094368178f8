// dicom-gw console: the shell (session, API calls, navigation, theme). The screens are in
// views.js. No library, no build step: this file is served as written.

const TOKEN_KEY = 'dicom-gw.token';
const THEME_KEY = 'dicom-gw.theme';
export const ROLES = ['viewer', 'operator', 'admin'];

/** The session: the bearer token (sessionStorage: gone with the tab) and who it belongs to. */
export const session = { token: sessionStorage.getItem(TOKEN_KEY), me: null };

/** An API error answer ({"error": {"code", "message"}}). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the API with the session's token. `path` below /api/v1 unless it starts with '/'.
 * A 401 ends the session and shows the login page.
 */
export async function api(method, path, body, opts = {}) {
  const token = session.token;
  // After a logout, calls still pending in a view stop here instead of asking again.
  if (!token && !opts.login) throw new ApiError(401, 'unauthorized', 'not logged in');
  const headers = {};
  if (token) headers.Authorization = 'Bearer ' + token;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const url = path.startsWith('/') ? path : '/api/v1/' + path;
  const r = await fetch(url, init);
  if (r.status === 401 && !opts.login) {
    // Only the first call to see the session end logs out (the others were in flight).
    if (session.token === token) logout('Your session has ended. Please log in again.');
    throw new ApiError(401, 'unauthorized', 'session ended');
  }
  if (opts.raw) {
    if (!r.ok) throw new ApiError(r.status, 'http', r.statusText);
    return r;
  }
  let j = null;
  try { j = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok && !opts.acceptStatus?.includes(r.status)) {
    throw new ApiError(r.status, j?.error?.code ?? 'http', j?.error?.message ?? r.statusText);
  }
  return j;
}

/** Whether the signed-in user has at least `role`. */
export function can(role) {
  return !!session.me && ROLES.indexOf(session.me.role) >= ROLES.indexOf(role);
}

/**
 * Builds an element: h('td', {class: 'num', onclick: f}, 'text', child, ...). Strings become
 * text nodes (never HTML); null and false children are skipped; arrays are flattened.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  const add = (c) => {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) c.forEach(add);
    else el.append(c instanceof Node ? c : String(c));
  };
  children.forEach(add);
  return el;
}

/** Shows a message at the top of the page (errors stay until the next one). */
export function flash(message, isError = false) {
  const box = document.getElementById('flash');
  box.replaceChildren(h('div', { class: isError ? 'error' : '' }, message));
  if (!isError) setTimeout(() => { if (box.textContent === message) box.replaceChildren(); }, 5000);
}

/** Runs an action, reporting its failure instead of throwing. */
export async function attempt(what, f) {
  try {
    return await f();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return undefined;
    flash(`${what}: ${e.message}`, true);
    return undefined;
  }
}

// ---- theme ----

function applyTheme(t) {
  if (t === 'auto') document.documentElement.removeAttribute('data-theme');
  else document.documentElement.setAttribute('data-theme', t);
  document.getElementById('theme').textContent = 'Theme: ' + t;
}

function cycleTheme() {
  const order = ['auto', 'light', 'dark'];
  const cur = localStorage.getItem(THEME_KEY) || 'auto';
  const next = order[(order.indexOf(cur) + 1) % order.length];
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
}

// ---- session ----

let cleanup = null;

function stopView() {
  if (cleanup) { try { cleanup(); } catch (_) { /* ignore */ } }
  cleanup = null;
}

export function logout(message) {
  session.token = null;
  session.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopView();
  showLogin(message);
}

async function startSession(token) {
  session.token = token;
  const me = await api('GET', 'auth/me', undefined, { login: true });
  session.me = me;
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById('flash').replaceChildren();
  if (!location.hash || location.hash === '#/login') location.hash = '#/dashboard';
  else route();
}

function showLogin(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('whoami').textContent = '';
  const main = document.getElementById('main');
  const err = h('p', { class: 'bad', id: 'login-error', role: 'alert' }, message || '');
  const user = h('input', { name: 'username', id: 'username', autocomplete: 'username', required: true });
  const pass = h('input', { name: 'password', id: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const token = h('input', { name: 'token', id: 'token', autocomplete: 'off', placeholder: 'dgw_…' });
  const fail = (e) => { err.textContent = e.status === 401 ? 'Wrong name or password (or token).' : e.message; };
  main.replaceChildren(h('section', { class: 'login card' },
    h('h1', {}, 'Log in to dicom-gw'),
    h('form', { id: 'login-form', onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      try {
        const r = await api('POST', 'auth/login', { name: user.value, password: pass.value }, { login: true });
        pass.value = '';
        await startSession(r.token);
      } catch (e) { fail(e); }
    } },
    h('label', { for: 'username' }, 'User name', user),
    h('label', { for: 'password' }, 'Password', pass),
    h('button', { type: 'submit', id: 'login-submit' }, 'Log in')),
    h('hr', {}),
    h('form', { id: 'token-form', onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      try { await startSession(token.value.trim()); } catch (e) { session.token = null; fail(e); }
    } },
    h('label', { for: 'token' }, 'Or paste an API token', token),
    h('button', { type: 'submit', class: 'secondary' }, 'Use token')),
    err));
  user.focus();
}

// ---- navigation ----

async function route() {
  if (!session.me) return;
  stopView();
  const name = (location.hash.replace(/^#\//, '').split('/')[0]) || 'dashboard';
  const nav = document.getElementById('nav');
  nav.hidden = false;
  for (const a of nav.querySelectorAll('a')) {
    const min = a.dataset.minRole;
    a.hidden = !!min && !can(min);
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.getElementById('logout').hidden = false;
  document.getElementById('whoami').textContent = `${session.me.name} (${session.me.role})`;
  const views = await import('./views.js?v=__V__');
  const view = views.VIEWS[name] || views.VIEWS.dashboard;
  const main = document.getElementById('main');
  main.replaceChildren();
  main.dataset.view = name;
  document.title = `dicom-gw · ${name}`;
  try {
    cleanup = (await view(main)) || null;
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) flash(`${name}: ${e.message}`, true);
  }
}

function init() {
  applyTheme(localStorage.getItem(THEME_KEY) || 'auto');
  document.getElementById('theme').addEventListener('click', cycleTheme);
  document.getElementById('logout').addEventListener('click', () => logout('Logged out.'));
  window.addEventListener('hashchange', route);
  if (session.token) startSession(session.token).catch(() => logout());
  else showLogin();
}

init();
