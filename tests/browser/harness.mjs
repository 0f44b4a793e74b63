// Shared support for the browser tests: the real `flightdeck serve` binary in a scratch data
// directory, Debian's Chromium driven by playwright-core, a test page on the server's origin, and
// ingestion over HTTP with retries.
//
// Servers run with authentication on, as users run them: each prints a one-time login link (kept
// as `server.loginLink`), tokens come from `flightdeck token create` against the same data
// directory (`createToken`), ingestion sends a publish token, and the test page is logged in
// with a reading token in the session cookie.

import { execFile, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BINARY = process.env.FLIGHTDECK_BIN ?? join(ROOT, 'target/debug/flightdeck');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** The dashboard's session cookie (src/http/auth.rs). */
export const SESSION_COOKIE = 'flightdeck_session';

/** Every server started and not yet stopped, killed if the process exits or is stopped early. */
const running = new Set();
/** Browsers and scratch directories, cleaned up if the process is stopped early. */
const browsers = new Set();
const dirs = new Set();
process.on('exit', () => {
  for (const server of running) server.killNow();
});
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, async () => {
    const servers = [...running];
    for (const server of servers) server.killNow();
    const closing = [...browsers].map((browser) => browser.close().catch(() => {}));
    await Promise.race([Promise.all([...closing, ...servers.map((server) => server.exited)]), sleep(5000)]);
    await sleep(500); // the embedded PostgreSQL follows its server down
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
    process.exit(1);
  });
}

/** A scratch directory the `postgres` user can reach (FlightDeck runs PostgreSQL as it under root). */
export function scratchDir() {
  const dir = mkdtempSync(join(tmpdir(), 'flightdeck-browser-'));
  chmodSync(dir, 0o755);
  dirs.add(dir);
  return dir;
}

/** Removes a scratch directory once its embedded PostgreSQL has stopped. */
export async function removeDir(dir) {
  const pidFile = join(dir, 'data/postgres/data/postmaster.pid');
  for (let i = 0; i < 200 && existsSync(pidFile); i++) await sleep(50);
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

/** The environment the binary runs with: the embedded PostgreSQL of the data directory. */
function serverEnv(extra = {}) {
  const env = { ...process.env, FLIGHTDECK_LOG: 'info', NO_COLOR: '1', ...extra };
  delete env.DATABASE_URL;
  delete env.FLIGHTDECK_PG_BIN_DIR;
  delete env.FLIGHTDECK_AUTH_SECRET;
  delete env.FLIGHTDECK_AUTH_SECRET_FILE;
  return env;
}

/** Publish tokens by server URL, sent by `ingest` (a restarted server keeps its URL and secret). */
const publishTokens = new Map();

/**
 * `flightdeck token create` against the data directory of `server` (the same secret file), with
 * `args` (e.g. `['--site', '*', '--subscribe', '--ttl', '3s']`); resolves with what it printed
 * (a token, or with `--login` a login link).
 */
export async function createToken(server, args) {
  const { stdout } = await promisify(execFile)(
    BINARY,
    ['token', 'create', '--data-dir', server.dataDir, ...args],
    { env: serverEnv(), timeout: 60_000 },
  );
  return stdout.trim();
}

/**
 * A login link for `server`: the one it printed at start the first time, then new ones from
 * `flightdeck token create --login` (each works once).
 */
export async function loginLink(server) {
  const printed = server.loginLink;
  if (printed) {
    server.loginLink = '';
    return printed;
  }
  return createToken(server, ['--login', '--site', '*', '--url', server.url]);
}

/**
 * `flightdeck serve` on `port` (0: any free port) with its data in `dataDir`, in a process group of
 * its own. Resolves once it listens and `/readyz` answers 200. Authentication is on unless `auth`
 * is false (`--insecure-no-auth`, for benchmarks only); with it, `server.loginLink` is the
 * one-time link it printed and `ingest` sends a publish token for it.
 */
export async function startServer({ dataDir, port = 0, ready = true, auth = true }) {
  const env = serverEnv({ FLIGHTDECK_ADDR: `127.0.0.1:${port}` });
  const args = ['serve', '--data-dir', join(dataDir, 'data')];
  if (!auth) args.push('--insecure-no-auth');
  const child = spawn(BINARY, args, {
    env,
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const exited = new Promise((resolveExit) => child.on('exit', (code, signal) => resolveExit({ code, signal })));
  const address = new Promise((resolveAddr, reject) => {
    child.on('error', reject);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const found = /listening on http:\/\/(\S+)/.exec(log);
      // With authentication on, the login link follows the address: wait for both.
      if (found && (!auth || /\/login\?token=\S+/.test(log))) resolveAddr(found[1]);
    });
    exited.then(({ code, signal }) => reject(new Error(`serve exited (${code ?? signal}) before listening:\n${log}`)));
  });
  const server = {
    child,
    url: '',
    port: 0,
    /** The data directory (`--data-dir`), for commands that work on the server's database. */
    dataDir: join(dataDir, 'data'),
    /** The one-time dashboard login link the server printed (empty with auth off, or once used by `loginLink`). */
    loginLink: '',
    /** Started with `--insecure-no-auth`. */
    insecure: !auth,
    log: () => log,
    exited,
    killNow() {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    },
    /** Sends `signal` and waits for the exit (SIGKILL to the group after 60 s). */
    async stop(signal = 'SIGTERM') {
      running.delete(server);
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      try {
        process.kill(child.pid, signal);
      } catch {
        // Already gone.
      }
      const timer = setTimeout(() => server.killNow(), 60_000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
  running.add(server);
  try {
    const addr = await withTimeout(address, 60_000, () => `serve did not start listening:\n${log}`);
    server.url = `http://${addr}`;
    server.port = Number(addr.split(':').pop());
    if (auth) {
      server.loginLink = /(http:\/\/\S+\/login\?token=[A-Za-z0-9._-]+)/.exec(log)[1];
      publishTokens.set(server.url, await createToken(server, ['--site', '*', '--publish', '--ttl', '1d']));
    } else {
      publishTokens.delete(server.url);
    }
    if (ready) await waitReady(server);
  } catch (err) {
    server.killNow();
    running.delete(server);
    throw err;
  }
  return server;
}

/** Polls `/readyz` until 200. */
export async function waitReady(server) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      const response = await fetch(`${server.url}/readyz`);
      await response.body?.cancel();
      if (response.status === 200) return;
    } catch {
      // Not accepting yet.
    }
    if (Date.now() > deadline) throw new Error(`never ready:\n${server.log()}`);
    await sleep(50);
  }
}

/** POSTs one event or an array (one stream) and returns the stored `{id, position, ...}` list; throws on any non-2xx. */
export async function ingest(baseUrl, events) {
  const headers = { 'content-type': 'application/json' };
  const token = publishTokens.get(baseUrl);
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${baseUrl}/api/events`, {
    method: 'POST',
    headers,
    body: JSON.stringify(events),
  });
  const body = await response.json().catch(() => null);
  if (response.status !== 200 && response.status !== 201) {
    const error = new Error(`POST /api/events answered ${response.status}: ${JSON.stringify(body)}`);
    error.status = response.status;
    throw error;
  }
  return body.events;
}

/**
 * Like `ingest`, but retries (the events carry ids, so a retry is recognized) while the server is
 * unreachable or answers 5xx, for up to `deadlineMs`.
 */
export async function ingestUntilStored(baseUrl, events, deadlineMs = 120_000) {
  const deadline = Date.now() + deadlineMs;
  for (let attempt = 0; ; attempt++) {
    try {
      return await ingest(baseUrl, events);
    } catch (err) {
      const retryable = err.status === undefined || err.status >= 500;
      if (!retryable || Date.now() > deadline) throw err;
      await sleep(Math.min(50 * 2 ** attempt, 500));
    }
  }
}

/** Debian's Chromium, headless. */
export async function launchBrowser() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: 60_000,
  });
  browsers.add(browser);
  browser.on('disconnected', () => browsers.delete(browser));
  return browser;
}

/**
 * The test page. `record(name, options)` subscribes and keeps what arrives in `window.logs[name]`:
 * events, frames (from onBatch), states and errors.
 */
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>FlightDeck browser test</title></head>
<body>
<script type="module">
  import * as flightdeck from '/flightdeck.js';
  window.flightdeck = flightdeck;
  window.logs = {};
  window.subs = {};
  window.record = (name, options, client = flightdeck) => {
    const log = { events: [], frames: [], states: [], errors: [] };
    window.logs[name] = log;
    const sub = client.subscribe(options)
      .onEvent((event) => log.events.push(event))
      .onBatch((events) => log.frames.push(events.length))
      .onState((state) => log.states.push(state))
      .onError((error) => log.errors.push({ code: error.code, message: error.message }));
    window.subs[name] = sub;
    return sub.state;
  };
  window.pageReady = true;
</script>
</body></html>`;

/**
 * Sets `page`'s default timeout and collects its page errors and console errors in
 * `page.problems`. Network failures (a server being restarted, the favicon the server does not
 * have) are the browser's own reports; anything else logged as an error is a problem.
 */
export function watchProblems(page) {
  page.setDefaultTimeout(60_000);
  page.problems = [];
  page.on('pageerror', (err) => page.problems.push(`page error: ${err.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !/^(Failed to load resource|WebSocket connection to .* failed)/.test(message.text())) {
      page.problems.push(`console: ${message.text()}`);
    }
  });
  return page;
}

/**
 * A page whose origin is `server` (it navigates to `/healthz`, then replaces the document), with
 * the client imported through a plain `<script type="module">` from `/flightdeck.js`. Its browser
 * context holds a reading token in the session cookie (as a dashboard login leaves it), so
 * same-origin subscriptions need no `token` option; `{ cookie: false }` leaves it out.
 */
export async function openPage(browser, server, { cookie = true } = {}) {
  const page = await browser.newPage();
  if (cookie && publishTokens.has(server.url)) {
    const value = await createToken(server, ['--site', '*', '--subscribe', '--ttl', '1d']);
    await page.context().addCookies([{ name: SESSION_COOKIE, value, url: server.url, httpOnly: true, sameSite: 'Strict' }]);
  }
  watchProblems(page);
  await page.goto(`${server.url}/healthz`);
  await page.setContent(PAGE);
  await page.waitForFunction(() => window.pageReady === true);
  return page;
}

/** Waits until every named subscription on the page is open. */
export async function waitOpen(page, names) {
  try {
    await page.waitForFunction((list) => list.every((name) => window.subs[name]?.state === 'open'), names, {
      polling: 50,
    });
  } catch (err) {
    const logs = await page.evaluate((list) => list.map((n) => [n, window.logs[n]?.states, window.logs[n]?.errors]), names);
    throw new Error(`not all open: ${JSON.stringify(logs)}`, { cause: err });
  }
}

/** Waits until `window.logs[name].events` holds at least `count` events; returns the log. */
export async function waitEvents(page, name, count, timeout = 60_000) {
  try {
    await page.waitForFunction(([n, c]) => window.logs[n].events.length >= c, [name, count], { polling: 50, timeout });
  } catch (err) {
    const log = await page.evaluate((n) => window.logs[n], name);
    throw new Error(
      `${name}: ${log.events.length} of ${count} events; states ${log.states.join(' → ')}; errors ${JSON.stringify(log.errors)}`,
      { cause: err },
    );
  }
  return page.evaluate((n) => window.logs[n], name);
}

export async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(typeof what === 'function' ? what() : what)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Transports under test: both, unless FLIGHTDECK_TRANSPORTS=sse (or ws) narrows them. */
export const TRANSPORTS = (process.env.FLIGHTDECK_TRANSPORTS ?? 'sse,ws').split(',').filter(Boolean);
