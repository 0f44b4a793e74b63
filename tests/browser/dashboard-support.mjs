// Support for the dashboard tests and the batching benchmark, beside harness.mjs: synthetic
// traffic from `flightdeck demo`, the raw log read back with `flightdeck read`, a tracked website
// on a made-up origin, and the dashboard page with its instrumentation.

import { execFile, spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loginLink, watchProblems } from './harness.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BINARY = process.env.FLIGHTDECK_BIN ?? join(ROOT, 'target/debug/flightdeck');

/** The environment harness.mjs gives `serve`: the embedded PostgreSQL of the data directory. */
function cleanEnv() {
  const env = { ...process.env, NO_COLOR: '1' };
  delete env.DATABASE_URL;
  delete env.FLIGHTDECK_PG_BIN_DIR;
  return env;
}

/** Every demo started and not yet stopped, killed if the process exits early. */
const demos = new Set();
process.on('exit', () => {
  for (const demo of demos) demo.killNow();
});

/**
 * `flightdeck demo` against `server` (its own process group): `rate` events/s over `sites` sites,
 * for `seconds` (default: until stopped). `stop()` ends it (SIGINT, as Ctrl-C) and resolves with
 * its exit; `exited` resolves when it ends by itself.
 */
export function startDemo(server, { rate = 50, sites = 3, seconds } = {}) {
  // The server's data directory: the demo registers its sites in the server's database.
  const args = ['demo', '--url', server.url, '--rate', String(rate), '--sites', String(sites), '--data-dir', server.dataDir];
  if (seconds !== undefined) args.push('--seconds', String(seconds));
  const child = spawn(BINARY, args, { env: cleanEnv(), detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    log += chunk;
    if (log.length > 100_000) log = log.slice(-50_000);
  });
  const exited = new Promise((resolveExit) => child.on('exit', (code, signal) => resolveExit({ code, signal })));
  const demo = {
    child,
    exited,
    log: () => log,
    /** The last progress line: `demo: 12.0 s, 600 events sent (50.1/s), 83 sessions, 0 errors`. */
    progress: () => log.split(/[\r\n]+/).filter((l) => l.startsWith('demo: ')).at(-1)?.trim() ?? '',
    killNow() {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    },
    async stop() {
      demos.delete(demo);
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGINT');
        } catch {
          // Already gone.
        }
      }
      const timer = setTimeout(() => demo.killNow(), 15_000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
  demos.add(demo);
  exited.then(() => demos.delete(demo));
  return demo;
}

/**
 * The whole global log of the server whose data directory is `dataDir`, read with
 * `flightdeck read` (which uses the PostgreSQL that the running server started).
 */
export async function readLog(dataDir) {
  const { stdout } = await promisify(execFile)(BINARY, ['read', '--after', 'start', '--data-dir', join(dataDir, 'data')], {
    env: cleanEnv(),
    maxBuffer: 1 << 30,
    timeout: 120_000,
  });
  return stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line));
}

/** What the projections should say about `events` (the tracker's events in the raw log). */
export function countsOf(events) {
  const tracked = events.filter((e) => e.stream.startsWith('visit-'));
  const tally = (type, key) => {
    const counts = new Map();
    for (const e of tracked) if (e.type === type) counts.set(e.data[key], (counts.get(e.data[key]) ?? 0) + 1);
    return counts;
  };
  const totals = { PageViewed: 0, ElementInteraction: 0, FormSubmitted: 0 };
  for (const e of tracked) if (e.type in totals) totals[e.type] += 1;
  return {
    totals,
    pages: tally('PageViewed', 'path'),
    interactions: tally('ElementInteraction', 'element'),
    forms: tally('FormSubmitted', 'form'),
    sessions: new Set(tracked.map((e) => `${e.data.site}\u0000${e.data.session}`)).size,
    lastPosition: tracked.at(-1)?.position ?? null,
  };
}

// ---------------------------------------------------------------------------------------------
// The tracked website

/**
 * A small single-page app including `<server>/track.js` with `data-site="test-site"`.
 * Instrumented: `window.sent` lists `{id, type, data, at, via}` for every event the tracker sends,
 * with the time it handed the batch to `fetch` or `sendBeacon`; `window.answers` what its `fetch`
 * calls resolved with.
 */
function siteHtml(server) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Home — Test Site</title>
<script>
  // Instrumentation, before the tracker loads: when each event leaves the page.
  window.sent = [];
  window.answers = []; // what the tracker's fetch calls resolved with (or rejected)
  const note = (body, via) => {
    const at = Date.now();
    try {
      for (const e of JSON.parse(body).events) window.sent.push({ id: e.id, type: e.type, data: e.data, at, via });
    } catch {}
  };
  const fetch0 = window.fetch;
  window.fetch = function (url, options) {
    if (!String(url).includes('/api/track')) return fetch0.apply(this, arguments);
    note(options && options.body, 'fetch');
    const answer = fetch0.apply(this, arguments);
    answer.then(
      (r) => window.answers.push({ status: r.status, type: r.type }),
      (err) => window.answers.push({ error: String(err) }),
    );
    return answer;
  };
  const beacon0 = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = (url, body) => {
    if (String(url).includes('/api/track')) note(body, 'beacon');
    return beacon0(url, body);
  };
</script>
<script src="${server.url}/track.js" data-site="test-site" data-flush-ms="50"></script>
</head>
<body>
  <nav><a href="/" data-nav>Home</a> <a href="/pricing" data-nav>Pricing</a> <a href="/about" data-nav>About</a></nav>
  <main><h1 id="heading">Home</h1></main>
  <button id="signup" data-fd-track="signup">Sign up</button>
  <form id="contact" data-fd-form="contact">
    <input name="email" type="email"> <textarea name="message"></textarea>
    <button type="submit">Send</button>
  </form>
  <p id="thanks" hidden>Thanks!</p>
<script>
  // A router, as single-page apps have: links change the route with history.pushState.
  const titles = { '/': 'Home', '/pricing': 'Pricing', '/about': 'About' };
  document.addEventListener('click', (event) => {
    const link = event.target.closest('a[data-nav]');
    if (!link) return;
    event.preventDefault();
    const path = link.getAttribute('href');
    document.title = titles[path] + ' — Test Site';
    document.getElementById('heading').textContent = titles[path];
    history.pushState({}, '', path);
  });
  document.getElementById('contact').addEventListener('submit', (event) => {
    event.preventDefault(); // the app handles the form itself
    document.getElementById('thanks').hidden = false;
  });
</script>
</body></html>`;
}

/**
 * Registers `site` in `server`'s database with `origin` (`flightdeck site add`, attached to the
 * server's embedded PostgreSQL): the tracker accepts a site's events only from its origins. The
 * running server takes it up within a second or two; nothing is sent before the page loads.
 */
export async function registerSite(server, site, origin) {
  await promisify(execFile)(BINARY, ['site', 'add', site, '--origin', origin, '--data-dir', server.dataDir], {
    env: cleanEnv(),
    timeout: 120_000,
  });
}

/**
 * The tracked website: a plain HTTP server of its own on the loopback (another origin than
 * FlightDeck's, so the tracker loads and sends cross-origin, CORS included, as on a customer's
 * site; both on the loopback, as both would be public in production: Chromium refuses a public
 * origin's requests to the loopback). Every path answers with the app. `close()` stops it.
 */
export async function startSite(server) {
  const site = createServer((request, response) => {
    if (request.url === '/favicon.ico') {
      response.writeHead(204).end(); // no icon, and no 404 in the console
      return;
    }
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    response.end(siteHtml(server));
  });
  await new Promise((resolveListen, reject) => {
    site.once('error', reject);
    site.listen(0, '127.0.0.1', resolveListen);
  });
  const url = `http://127.0.0.1:${site.address().port}`;
  // The page's origin is its own URL (no path): registered for data-site="test-site".
  await registerSite(server, 'test-site', url);
  return {
    url,
    close: () =>
      new Promise((resolveClose) => {
        site.close(() => resolveClose());
        site.closeAllConnections();
      }),
    server: site,
  };
}

/** Opens `site` at `path` in a new page; `page.problems` collects page errors and warnings. */
export async function openTrackedSite(browser, site, path = '/') {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  page.problems = [];
  page.on('pageerror', (err) => page.problems.push(`page error: ${err.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') page.problems.push(`console ${m.type()}: ${m.text()}`);
  });
  await page.goto(`${site.url}${path}`);
  await page.waitForFunction(() => typeof window.flightdeck?.session === 'function');
  return page;
}

/** Waits until the tracked page has sent an event matching `predicate(sent)`; returns it. */
export async function waitSent(page, predicate, what) {
  const handle = await page
    .waitForFunction((source) => window.sent.find(new Function(`return ${source}`)()), predicate.toString(), { polling: 20 })
    .catch(async (err) => {
      throw new Error(`${what}: never sent; sent: ${JSON.stringify(await page.evaluate(() => window.sent))}`, { cause: err });
    });
  return handle.jsonValue();
}

// ---------------------------------------------------------------------------------------------
// The dashboard

/**
 * Opens the dashboard (`/` plus `query`) and waits for its subscription to be open. Instrumented:
 * `window.feedSeen` maps each event id to the time (Date.now()) it first appeared in the feed's
 * DOM, and `window.connectionLog` lists every connection indicator change
 * `{state, resume, text, at}`. `page.problems` collects page errors and console errors (a
 * Content Security Policy violation is one). The context logs in first, as a person does: it opens
 * a one-time login link (the one the server printed, then fresh ones), which sets the session
 * cookie and redirects to the dashboard.
 */
export async function openDashboard(browser, server, { query = '', viewport = { width: 1400, height: 1000 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = watchProblems(await context.newPage());
  if (!server.insecure) {
    const landed = await page.goto(await loginLink(server));
    if (landed.status() !== 200 || new URL(landed.url()).pathname !== '/') {
      throw new Error(`the login link led to ${landed.url()} (${landed.status()})`);
    }
  }
  if (query !== '' || server.insecure) await page.goto(`${server.url}/${query}`);
  await page.waitForFunction(
    () => window.flightdeckDashboard?.connection === 'open' && document.getElementById('connection').dataset.state === 'open',
    null,
    { polling: 50 },
  );
  await page.evaluate(() => {
    window.feedSeen = {};
    const feed = document.getElementById('feed');
    new MutationObserver(() => {
      const now = Date.now();
      for (const item of feed.children) if (!(item.dataset.id in window.feedSeen)) window.feedSeen[item.dataset.id] = now;
    }).observe(feed, { childList: true });
    window.connectionLog = [];
    const box = document.getElementById('connection');
    const note = () => {
      const entry = { state: box.dataset.state, resume: box.dataset.resume, text: box.textContent.trim(), at: Date.now() };
      const last = window.connectionLog.at(-1);
      if (!last || last.state !== entry.state || last.text !== entry.text) window.connectionLog.push(entry);
    };
    note();
    new MutationObserver(note).observe(box, { attributes: true, childList: true, subtree: true, characterData: true });
  });
  return page;
}

/** What the dashboard shows: counters, top tables, sessions and the feed, read from the DOM. */
export function readDashboard(page) {
  return page.evaluate(() => {
    const rows = (id) =>
      [...document.querySelectorAll(`#${id} tbody tr:not(.empty)`)].map((tr) => ({
        name: tr.dataset.name,
        count: Number(tr.dataset.count),
      }));
    const counters = {};
    for (const card of document.querySelectorAll('#counters .counter')) counters[card.dataset.type] = Number(card.dataset.count);
    const dashboard = window.flightdeckDashboard;
    return {
      counters,
      pages: rows('top-pages'),
      interactions: rows('top-interactions'),
      forms: rows('top-forms'),
      uniqueSessions: Number(document.getElementById('unique-sessions').textContent),
      activeSessions: Number(document.getElementById('active-sessions').textContent),
      feed: [...document.querySelectorAll('#feed > li')].map((li) => ({
        id: li.dataset.id,
        position: li.dataset.position,
        type: li.dataset.type,
        path: li.dataset.path,
      })),
      // As drawn (the numbers above are read from the page too), not the state, which is
      // updated a frame earlier: the two must describe the same stats frame.
      statsPosition: document.getElementById('counters').dataset.position || null,
      received: dashboard.received,
      frames: dashboard.frames,
      connection: dashboard.connection,
    };
  });
}

/**
 * Asserts with `assert` that a top table (at most `shown` rows) agrees with exact counts: every row
 * has its raw count, rows are in descending order, and nothing left out counts more than the
 * smallest row shown (ties at the cut may go either way).
 */
export function checkTop(assert, what, rows, counts, shown = 8) {
  assert.equal(rows.length, Math.min(shown, counts.size), `${what}: rows shown`);
  for (const { name, count } of rows) assert.equal(count, counts.get(name), `${what}: ${name}`);
  for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].count >= rows[i].count, `${what}: in descending order`);
  const names = new Set(rows.map((r) => r.name));
  const least = rows.at(-1)?.count ?? 0;
  for (const [name, count] of counts) {
    if (!names.has(name)) assert.ok(count <= least, `${what}: ${name} (${count}) left out but counts more than ${least}`);
  }
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
