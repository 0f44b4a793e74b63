// The live dashboard at `/` in Chromium, fed by the tracker on a (made-up, cross-origin) website
// and by `flightdeck demo`: events show in the feed within a second, its numbers equal counts
// computed from the raw log, the filters narrow the feed, and a server restart under traffic is
// ridden out without counting anything twice. Also saves the dashboard's screenshot
// (UPDATE_SCREENSHOT=1 writes docs/dashboard.png; otherwise a file in the temp directory).

import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { createToken, launchBrowser, removeDir, scratchDir, startServer } from './harness.mjs';
import {
  checkTop,
  countsOf,
  median,
  openDashboard,
  openTrackedSite,
  startSite,
  readDashboard,
  readLog,
  startDemo,
  waitSent,
} from './dashboard-support.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const SCREENSHOT = process.env.UPDATE_SCREENSHOT === '1' ? join(ROOT, 'docs/dashboard.png') : join(tmpdir(), 'flightdeck-dashboard.png');

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** Polls `check()` (async, returning a truthy value when done) every 50 ms until `timeoutMs`. */
async function eventually(check, timeoutMs, describeFailure) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(await describeFailure());
    await sleep(50);
  }
}

/**
 * Waits until the dashboard's numbers include every tracker event of the raw log, then checks
 * them against counts computed from the log: counters, the three top tables, sessions.
 */
async function checkNumbersAgainstLog(dashboard, dataDir) {
  const log = await readLog(dataDir);
  const want = countsOf(log);
  const shown = await eventually(
    async () => {
      const now = await readDashboard(dashboard);
      return now.statsPosition === want.lastPosition && now;
    },
    30_000,
    async () => `the dashboard's stats never reached ${want.lastPosition}: ${JSON.stringify(await readDashboard(dashboard))}`,
  );
  const total = want.totals.PageViewed + want.totals.ElementInteraction + want.totals.FormSubmitted;
  assert.deepEqual(
    shown.counters,
    { total, ...want.totals },
    'the counters equal the number of events of each type in the raw log',
  );
  checkTop(assert, 'top pages', shown.pages, want.pages);
  checkTop(assert, 'top interactions', shown.interactions, want.interactions);
  checkTop(assert, 'form submissions', shown.forms, want.forms);
  assert.equal(shown.uniqueSessions, want.sessions, 'unique sessions');
  assert.equal(shown.activeSessions, want.sessions, 'active sessions (every session is recent)');
  return { log, want, shown };
}

describe('the tracker on a website and the dashboard', () => {
  let dir;
  let server;
  let dashboard;
  let website;
  let site;

  before(async () => {
    dir = scratchDir();
    server = await startServer({ dataDir: dir });
    website = await startSite(server);
    dashboard = await openDashboard(browser, server);
  });
  after(async () => {
    await site?.context().close();
    await website?.close();
    await dashboard?.context().close();
    await server?.stop('SIGKILL');
    if (dir) await removeDir(dir);
  });

  test('a page view, an SPA navigation, a click and a form submission show in the feed within a second', async () => {
    site = await openTrackedSite(browser, website);
    assert.notEqual(new URL(website.url).origin, new URL(server.url).origin, 'the site is another origin');
    const secret = { email: `secret-${Date.now()}@example.com`, message: 'my secret message' };
    const steps = [
      ['page view on load', () => {}, (e) => e.type === 'PageViewed' && e.data.path === '/'],
      ['SPA navigation', () => site.click('a[href="/pricing"]'), (e) => e.type === 'PageViewed' && e.data.path === '/pricing'],
      ['tracked click', () => site.click('#signup'), (e) => e.type === 'ElementInteraction' && e.data.element === 'signup'],
      [
        'form submission',
        async () => {
          await site.fill('input[name=email]', secret.email);
          await site.fill('textarea[name=message]', secret.message);
          await site.click('#contact button[type=submit]');
        },
        (e) => e.type === 'FormSubmitted' && e.data.form === 'contact',
      ],
    ];
    const latencies = [];
    const events = [];
    for (const [what, act, predicate] of steps) {
      await act();
      const sent = await waitSent(site, predicate, what);
      const shownAt = await eventually(
        () => dashboard.evaluate((id) => window.feedSeen[id], sent.id),
        30_000,
        async () => `${what}: ${sent.id} never showed in the feed: ${JSON.stringify(await readDashboard(dashboard))}`,
      );
      latencies.push(shownAt - sent.at);
      events.push({ what, ...sent });
    }
    const report = steps.map(([what], i) => `${what} ${latencies[i]} ms`).join(', ');
    console.log(`tracker → dashboard feed: ${report}; median ${median(latencies)} ms`);
    // The requirement. On the shared two-core machine one event may be late; the median
    // of the four may not.
    assert.ok(median(latencies) < 1000, `median latency under a second: ${report}`);

    // The three types are in the feed, with the details of each event.
    const shown = await readDashboard(dashboard);
    for (const { what, id, type } of events) {
      assert.ok(shown.feed.some((item) => item.id === id && item.type === type), `${what} in the feed`);
    }
    assert.deepEqual(new Set(shown.feed.map((i) => i.type)), new Set(['PageViewed', 'ElementInteraction', 'FormSubmitted']));

    // Sent cross-origin, accepted, readable by the page (CORS).
    const answers = await site.evaluate(() => window.answers);
    assert.ok(answers.length >= 3, `the tracker's fetch calls were answered: ${JSON.stringify(answers)}`);
    // `cors` with the status readable: the server's Access-Control-Allow-Origin let the page read it.
    for (const answer of answers) assert.deepEqual(answer, { status: 202, type: 'cors' });
    const via = events.map((e) => e.via);
    assert.deepEqual(via, ['fetch', 'fetch', 'fetch', 'beacon'], 'a form submission is sent with sendBeacon');
    assert.deepEqual(site.problems, [], 'the tracked page reported nothing');

    // The stored form submission has the field names, never the values; nor does the feed.
    const session = await site.evaluate(() => window.flightdeck.session());
    const stream = `visit-test-site:${session}`;
    const reader = await createToken(server, ['--site', '*', '--subscribe', '--ttl', '10m']);
    const stored = await (
      await fetch(`${server.url}/api/streams/${encodeURIComponent(stream)}`, { headers: { authorization: `Bearer ${reader}` } })
    ).json();
    assert.deepEqual(
      stored.events.map((e) => [e.type, e.data.path]),
      [['PageViewed', '/'], ['PageViewed', '/pricing'], ['ElementInteraction', '/pricing'], ['FormSubmitted', '/pricing']],
    );
    const form = stored.events.find((e) => e.type === 'FormSubmitted');
    assert.deepEqual(form.data.fields, ['email', 'message']);
    assert.equal(form.data.fieldCount, 2);
    const text = JSON.stringify(stored);
    assert.ok(!text.includes(secret.email) && !text.includes(secret.message), `no field values stored: ${text}`);
    await dashboard.click(`#feed > li[data-id="${form.id}"]`);
    const details = await dashboard.textContent(`#feed > li[data-id="${form.id}"] pre`);
    assert.match(details, /"fields": \[\s*"email",\s*"message"\s*\]/, 'the feed shows the event details');
    assert.ok(!details.includes(secret.email) && !details.includes(secret.message));

    // The counters follow (the projections, pushed by /api/stats/stream).
    const counted = await eventually(
      async () => {
        const { counters } = await readDashboard(dashboard);
        return counters.PageViewed === 2 && counters.ElementInteraction === 1 && counters.FormSubmitted === 1 && counters;
      },
      30_000,
      async () => `counters: ${JSON.stringify((await readDashboard(dashboard)).counters)}`,
    );
    assert.equal(counted.total, 4);
    // Not a requirement (the stats stream pushes at most every 500 ms), but worth knowing.
    console.log(`form submission sent → counters include it: ${Date.now() - events.at(-1).at} ms or less`);
    assert.deepEqual(dashboard.problems, [], 'the dashboard reported nothing (no CSP violation either)');
  });

  test('the filters narrow the feed to one event type and one page', async () => {
    await dashboard.selectOption('#filter-type', 'PageViewed');
    await dashboard.fill('#filter-page', '/pricing');
    await dashboard.click('#filters button[type=submit]');
    await dashboard.waitForFunction(() => window.flightdeckDashboard.connection === 'open' && location.search !== '');
    assert.equal(new URL(dashboard.url()).search, '?type=PageViewed&page=%2Fpricing');
    // What was in the feed is narrowed, without a reload: the one page view of /pricing. (The feed
    // is redrawn at most every few hundred milliseconds, so wait for the redraw, not a fixed time.)
    let shown = await eventually(
      async () => {
        const now = await readDashboard(dashboard);
        return now.feed.length === 1 && now;
      },
      5_000,
      async () => `the feed was not narrowed: ${JSON.stringify((await readDashboard(dashboard)).feed)}`,
    );
    assert.deepEqual(
      shown.feed.map((i) => [i.type, i.path]),
      [['PageViewed', '/pricing']],
    );

    // New traffic of every kind, on other pages too; only page views of /pricing may show.
    const demo = startDemo(server, { rate: 100, seconds: 2 });
    await site.click('a[href="/about"]');
    await site.click('#signup');
    await site.click('a[href="/pricing"]');
    await site.click('#signup');
    const pricing = await waitSent(site, (e) => e.type === 'PageViewed' && e.data.path === '/pricing' && e.data.referrer.endsWith('/about'), 'second /pricing view');
    const clicked = await waitSent(site, (e) => e.type === 'ElementInteraction' && e.data.path === '/pricing' && e.data.element === 'signup', 'click');
    await eventually(
      () => dashboard.evaluate((id) => id in window.feedSeen, pricing.id),
      30_000,
      async () => `the new /pricing view never showed: ${JSON.stringify(await readDashboard(dashboard))}`,
    );
    await demo.exited;
    await sleep(500); // the chance for anything else to show up
    shown = await readDashboard(dashboard);
    assert.ok(shown.feed.length >= 2);
    for (const item of shown.feed) assert.deepEqual([item.type, item.path], ['PageViewed', '/pricing']);
    assert.ok(!shown.feed.some((i) => i.id === clicked.id));
    const kept = await dashboard.evaluate(() => window.flightdeckDashboard.feed.map((e) => [e.type, e.data.path]));
    assert.ok(kept.every(([type, path]) => type === 'PageViewed' && path === '/pricing'));

    // Back to everything.
    await dashboard.selectOption('#filter-type', '');
    await dashboard.fill('#filter-page', '');
    await dashboard.click('#filters button[type=submit]');
    await dashboard.waitForFunction(() => window.flightdeckDashboard.connection === 'open' && location.search === '');
    assert.deepEqual(dashboard.problems, []);
  });

  test("the dashboard's numbers equal counts computed from the raw log", async () => {
    const demo = startDemo(server, { rate: 300, sites: 4, seconds: 3 });
    const exit = await demo.exited;
    assert.equal(exit.code, 0, demo.log());
    const { log, want } = await checkNumbersAgainstLog(dashboard, dir);
    assert.ok(want.totals.PageViewed > 50 && want.totals.ElementInteraction > 0 && want.totals.FormSubmitted > 0, JSON.stringify(want.totals));
    assert.ok(want.pages.size > 8, 'more pages than the table shows');
    console.log(`raw log: ${log.length} events; ${JSON.stringify(want.totals)}, ${want.sessions} sessions`);
    assert.deepEqual(dashboard.problems, []);
  });
});

describe('the dashboard under demo traffic', () => {
  let dir;
  let server;
  let demo;
  let dashboard;

  before(async () => {
    dir = scratchDir();
    server = await startServer({ dataDir: dir });
  });
  after(async () => {
    await demo?.stop();
    await dashboard?.context().close();
    await server?.stop('SIGKILL');
    if (dir) await removeDir(dir);
  });

  test('a screenshot of the dashboard', async () => {
    dashboard = await openDashboard(browser, server);
    await sleep(300);
    demo = startDemo(server, { rate: 120, sites: 3 });
    // Long enough for the chart to show a stretch of traffic.
    await sleep(Number(process.env.SCREENSHOT_AFTER_MS ?? 18_000));
    const shown = await readDashboard(dashboard);
    assert.equal(shown.connection, 'open');
    assert.ok(shown.counters.total > 0 && shown.pages.length > 0 && shown.feed.length > 0, JSON.stringify(shown));
    await dashboard.screenshot({ path: SCREENSHOT, fullPage: true });
    assert.ok(statSync(SCREENSHOT).size > 20_000, 'a real picture');
    console.log(`screenshot: ${SCREENSHOT} (${demo.progress()})`);
  });

  test('the server restarts under traffic: the dashboard reconnects by itself and counts nothing twice', async () => {
    assert.ok(dashboard && demo, 'runs after the screenshot, under its traffic');
    const before = await readDashboard(dashboard);
    assert.ok(before.received > 0);
    const stopped = await server.stop('SIGTERM');
    assert.equal(stopped.code, 0, 'serve stops cleanly on SIGTERM');
    // Down: the indicator says so, and where it will resume.
    const down = await eventually(
      () => dashboard.evaluate(() => window.connectionLog.find((c) => c.state === 'reconnecting')),
      30_000,
      async () => `never reconnecting: ${JSON.stringify(await dashboard.evaluate(() => window.connectionLog))}`,
    );
    const lastPosition = await dashboard.evaluate(() => window.flightdeckDashboard.lastPosition);
    assert.equal(down.resume, lastPosition, 'it resumes after the last event it showed');
    assert.match(down.text, new RegExp(`reconnecting — resumes after …${lastPosition.replace(/^0+/, '').slice(-12)}`));

    server = await startServer({ dataDir: dir, port: server.port, ready: false });
    await eventually(
      () => dashboard.evaluate(() => window.connectionLog.at(-1).state === 'open' && window.connectionLog.length > 2),
      60_000,
      async () => `not live again: ${JSON.stringify(await dashboard.evaluate(() => window.connectionLog))}`,
    );
    const states = await dashboard.evaluate(() => window.connectionLog.map((c) => c.state));
    console.log(`connection: ${states.join(' → ')}`);
    assert.deepEqual(states.filter((state, i) => state !== states[i - 1]), ['open', 'reconnecting', 'open'], 'live, reconnecting, live again');
    // Traffic goes on after the restart and reaches the page.
    await eventually(
      async () => (await readDashboard(dashboard)).received > before.received + 100,
      30_000,
      async () => `no events after the restart: ${demo.progress()}`,
    );
    const exit = await demo.stop();
    assert.ok(exit.code === 0 || exit.signal === 'SIGINT', `demo: ${JSON.stringify(exit)}`);
    demo = null;

    const { log } = await checkNumbersAgainstLog(dashboard, dir);
    // The page subscribed before the first event: it received every event exactly once.
    const shown = await eventually(
      async () => {
        const now = await readDashboard(dashboard);
        return now.received >= log.length && now;
      },
      30_000,
      async () => `received ${(await readDashboard(dashboard)).received} of ${log.length}`,
    );
    await sleep(300);
    assert.equal((await readDashboard(dashboard)).received, log.length, 'every event of the log received once');
    const positions = shown.feed.map((i) => i.position);
    assert.equal(new Set(positions).size, positions.length, 'no duplicate positions in the feed');
    assert.deepEqual(positions, [...positions].sort().reverse(), 'the feed is in log order, newest first');
    const feedState = await dashboard.evaluate(() => window.flightdeckDashboard.feed.map((e) => e.position));
    assert.equal(new Set(feedState).size, feedState.length, 'no duplicates in the kept feed');
    console.log(`after the restart: ${log.length} events in the log, all received once`);
    assert.deepEqual(dashboard.problems, []);
  });
});
