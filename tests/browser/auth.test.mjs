// Secure by default in the browser: the login link printed by `flightdeck serve` sets the session
// cookie and opens the dashboard, once; `/` without it is the login page (401); the JS client's
// `token` option renews a function token across expiries without losing or repeating an event,
// and reports a string token's expiry clearly; the dashboard says when its session has expired.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  SESSION_COOKIE,
  TRANSPORTS,
  createToken,
  ingest,
  launchBrowser,
  openPage,
  removeDir,
  scratchDir,
  startServer,
  waitEvents,
  waitOpen,
  watchProblems,
} from './harness.mjs';

let dir;
let server;
let browser;

before(async () => {
  dir = scratchDir();
  [server, browser] = await Promise.all([startServer({ dataDir: dir }), launchBrowser()]);
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (dir) await removeDir(dir);
});



test('the printed login link sets the session cookie and opens the dashboard; a second use is refused', async () => {
  const link = server.loginLink;
  assert.match(link, new RegExp(`^${server.url}/login\\?token=`));
  server.loginLink = ''; // used here

  const context = await browser.newContext();
  const page = watchProblems(await context.newPage());
  const landed = await page.goto(link);
  assert.equal(landed.status(), 200);
  assert.equal(new URL(page.url()).pathname, '/', 'redirected to the dashboard');
  const [cookie] = (await context.cookies(server.url)).filter((c) => c.name === SESSION_COOKIE);
  assert.ok(cookie, 'the session cookie is set');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.ok(cookie.expires * 1000 > Date.now() + 11 * 3600_000, 'it lasts about 12 hours');
  // The dashboard connects with it (its stream and stats go with the cookie, same origin).
  await page.waitForFunction(() => window.flightdeckDashboard?.connection === 'open', null, { polling: 50 });
  assert.equal(await page.locator('#session-expired').isVisible(), false);
  const stats = await page.evaluate(async () => (await fetch('/api/stats')).status);
  assert.equal(stats, 200);
  assert.deepEqual(page.problems, []);
  // Reloading keeps the session.
  assert.equal((await page.reload()).status(), 200);
  await context.close();

  // The same link in another browser: refused, no cookie, the dashboard not shown.
  const other = await browser.newContext();
  const second = watchProblems(await other.newPage());
  const refused = await second.goto(link);
  assert.equal(refused.status(), 401);
  const body = JSON.parse(await refused.text());
  assert.equal(body.error.code, 'invalid_token');
  assert.deepEqual(await other.cookies(server.url), []);
  const home = await second.goto(`${server.url}/`);
  assert.equal(home.status(), 401);
  await other.close();
});

test('/ without the session cookie is a login page that says how to get in (401, no script)', async () => {
  const context = await browser.newContext();
  const page = watchProblems(await context.newPage());
  const response = await page.goto(`${server.url}/`);
  assert.equal(response.status(), 401);
  assert.match(response.headers()['content-security-policy'], /script-src 'self'/);
  const text = await page.locator('#login').innerText();
  assert.match(text, /You are not logged in\./);
  assert.match(text, /login link that flightdeck serve printed/);
  assert.match(text, /flightdeck token create --login --site '\*'/);
  // Styled by the public stylesheet, with no script and no CSP violation.
  assert.equal(await page.locator('script').count(), 0);
  const background = await page.evaluate(() => getComputedStyle(document.getElementById('login')).backgroundColor);
  assert.notEqual(background, 'rgba(0, 0, 0, 0)', 'dashboard.css applies');
  assert.deepEqual(page.problems, []);
  // The dashboard's scripts stay public (static files), the data does not.
  assert.equal((await page.request.get(`${server.url}/assets/dashboard/dashboard.js`)).status(), 200);
  await context.close();
});

test('a page without cookie or token gets no events: the client ends unauthorized', async (t) => {
  const page = await openPage(browser, server, { cookie: false });
  for (const transport of TRANSPORTS) {
    await page.evaluate((tr) => window.record(`anon-${tr}`, { types: ['Secret'], transport: tr }), transport);
  }
  await ingest(server.url, { stream: `secret-${Date.now()}`, type: 'Secret', data: {} });
  for (const transport of TRANSPORTS) {
    const name = `anon-${transport}`;
    await page.waitForFunction((n) => window.logs[n].states.includes('unauthorized'), name);
    const log = await page.evaluate((n) => window.logs[n], name);
    assert.equal(log.events.length, 0, `${transport}: no events`);
    assert.equal(log.states.at(-1), 'unauthorized', `${transport}: ${log.states}`);
    assert.equal(log.errors[0]?.code, 'token_required', `${transport}: ${JSON.stringify(log.errors)}`);
  }
  await page.close();
});

for (const transport of TRANSPORTS) {
  describe(`token option over ${transport}`, () => {
    test('a function token whose tokens live 3 s: every event exactly once, in order, across expiries', async (t) => {
      const page = await openPage(browser, server, { cookie: false });
      let issued = 0;
      await page.exposeFunction('newToken', async () => {
        issued += 1;
        return createToken(server, ['--site', '*', '--subscribe', '--ttl', '3s']);
      });
      const type = `Renew_${transport}`;
      await page.evaluate(
        ([tr, ty]) => window.record('renew', { types: [ty], transport: tr, token: () => window.newToken() }),
        [transport, type],
      );
      await waitOpen(page, ['renew']);
      // Events keep coming for more than two token lifetimes (tokens are made in whole seconds,
      // so each lives 2–3 s): at least two expiries happen while they flow.
      const stream = `renew-${transport}-${Date.now()}`;
      const stored = [];
      const until = Date.now() + 8_000;
      for (let n = 0; Date.now() < until; n++) {
        stored.push(...(await ingest(server.url, { stream, type, data: { n } })));
        await sleep(100);
      }
      const log = await waitEvents(page, 'renew', stored.length);
      assert.deepEqual(
        log.events.map((e) => e.id),
        stored.map((e) => e.id),
        'every event exactly once, in log order',
      );
      assert.ok(issued >= 3, `the token function was called again after expiries (${issued} calls)`);
      assert.ok(log.states.filter((s) => s === 'reconnecting').length >= 2, `reconnected with fresh tokens: ${log.states}`);
      assert.ok(!log.states.includes('unauthorized') && !log.states.includes('closed'), `${log.states}`);
      assert.deepEqual(page.problems, []);
      await page.close();
    });

    test('a string token that expires ends the subscription as unauthorized, with the reason', async (t) => {
      const page = await openPage(browser, server, { cookie: false });
      const token = await createToken(server, ['--site', '*', '--subscribe', '--ttl', '2s']);
      const type = `Fixed_${transport}`;
      await page.evaluate(([tr, ty, tk]) => window.record('fixed', { types: [ty], transport: tr, token: tk }), [
        transport,
        type,
        token,
      ]);
      await waitOpen(page, ['fixed']);
      const [first] = await ingest(server.url, { stream: `fixed-${transport}-${Date.now()}`, type, data: {} });
      await waitEvents(page, 'fixed', 1);
      await page.waitForFunction(() => window.logs.fixed.states.includes('unauthorized'), null, { timeout: 15_000 });
      const log = await page.evaluate(() => window.logs.fixed);
      assert.deepEqual(log.events.map((e) => e.id), [first.id]);
      assert.equal(log.states.at(-1), 'unauthorized', `${log.states}`);
      assert.equal(log.errors.length, 1, JSON.stringify(log.errors));
      assert.equal(log.errors[0].code, 'token_expired');
      assert.match(log.errors[0].message, /expired/);
      // It stays ended: nothing more arrives, no reconnection.
      await ingest(server.url, { stream: `fixed-${transport}-${Date.now()}`, type, data: {} });
      await sleep(1000);
      const later = await page.evaluate(() => window.logs.fixed);
      assert.equal(later.events.length, 1);
      assert.equal(later.states.at(-1), 'unauthorized');

      // A token the server never accepted (another secret): refused at once, same report.
      await page.evaluate((tr) => window.record('forged', { transport: tr, token: 'not.a.token' }), transport);
      await page.waitForFunction(() => window.logs.forged.states.includes('unauthorized'));
      const forged = await page.evaluate(() => window.logs.forged);
      assert.equal(forged.errors[0]?.code, 'invalid_token', JSON.stringify(forged.errors));
      await page.close();
    });
  });
}

test('the dashboard says "session expired" when its session ends, instead of reconnecting forever', async (t) => {
  // A session that lasts 3 s: a reading token in the cookie, as /login would set a 12 h one.
  const context = await browser.newContext();
  const token = await createToken(server, ['--site', '*', '--subscribe', '--ttl', '3s']);
  await context.addCookies([{ name: SESSION_COOKIE, value: token, url: server.url, httpOnly: true, sameSite: 'Strict' }]);
  const page = watchProblems(await context.newPage());
  assert.equal((await page.goto(`${server.url}/`)).status(), 200);
  await page.waitForFunction(() => window.flightdeckDashboard?.connection === 'open', null, { polling: 50 });
  await page.locator('#session-expired').waitFor({ state: 'visible', timeout: 15_000 });
  assert.match(await page.locator('#session-expired').innerText(), /Session expired — log in again/);
  assert.equal(await page.locator('#connection').getAttribute('data-state'), 'unauthorized');
  assert.equal(await page.locator('#session-expired a').getAttribute('href'), '/');
  // It stopped: no reconnection attempts afterwards.
  const requests = [];
  page.on('request', (request) => requests.push(request.url()));
  await sleep(3000);
  assert.deepEqual(requests, [], 'no request after the session ended');
  assert.deepEqual(page.problems, []);
  await context.close();
});
