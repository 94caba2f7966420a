/**
 * The Nightfuse console: a live picture of the cluster from the gateway's
 * admin API (one server-sent-event stream), with merge, unmerge and policy
 * actions behind the admin token.
 */
import './style.css';
import { openStream, refused, takeTokenFromFragment, token } from './api.js';
import { $ } from './dom.js';
import { Graph } from './graph.js';
import { pairs, type Snapshot } from './model.js';
import { EventLog, renderEdges, renderMergeForm, renderMerges, renderNodes, wireMergeForm } from './panels.js';
import { PolicyEditor } from './policy.js';

let stream: { close(): void } | undefined;
let graph: Graph | undefined;
let policy: PolicyEditor | undefined;
let log = new EventLog();

function setConn(state: string, text: string): void {
  const c = $('conn');
  c.dataset.state = state;
  c.textContent = text;
}

function banner(text: string): void {
  const b = $('banner');
  b.textContent = text;
  b.hidden = !text;
}

function showLogin(why: string): void {
  stream?.close();
  stream = undefined;
  token.clear();
  $('app').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  banner(why);
  ($('token-input') as HTMLInputElement).focus();
}

function onSnapshot(s: Snapshot): void {
  const p = pairs(s);
  graph!.update(s.functions, p);
  renderEdges(p);
  renderMerges(s.merges);
  renderNodes(s.nodes);
  renderMergeForm(s);
  $('updated').textContent = `updated ${new Date(s.at).toLocaleTimeString()}`;
  policy!.follow(s.policy).catch(() => undefined); // a refusal is handled by refused.handler; the next snapshot retries
}

function connect(): void {
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  banner('');
  graph ??= new Graph($('graph'), $('tooltip'));
  policy ??= new PolicyEditor();
  stream?.close();
  log = new EventLog();
  $('events').replaceChildren();
  stream = openStream({
    snapshot: onSnapshot,
    events: (e) => log.add(e),
    state: (st, detail) => {
      if (st === 'refused') return showLogin(`The admin token was refused (${detail ?? 'HTTP 401'}). Enter the right one.`);
      if (st === 'live') {
        banner('');
        return setConn('live', 'live');
      }
      setConn(st, st === 'connecting' ? 'connecting…' : `reconnecting (${detail ?? ''})`);
      if (st === 'retrying') banner(`Lost the live stream (${detail ?? ''}); reconnecting…`);
    },
  });
}

function boot(): void {
  refused.handler = (status, why) => showLogin(`The admin token was refused (HTTP ${status}): ${why}`);
  takeTokenFromFragment();
  // A console link opened in a tab that already shows the console changes only the fragment.
  window.addEventListener('hashchange', () => {
    if (!/token=/.test(location.hash)) return;
    takeTokenFromFragment();
    if (token.get()) connect();
  });
  wireMergeForm();
  ($('login-form') as HTMLFormElement).addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('token-input') as HTMLInputElement;
    token.set(input.value.trim());
    input.value = '';
    connect();
  });
  $('logout').addEventListener('click', () => showLogin('Signed out: the token is forgotten in this tab.'));
  if (token.get()) connect();
  else showLogin('');
}

boot();
