// flightdeck.js in Chromium against the real server: filters on both transports, replay from a
// position, batching (same events, fewer frames, counted on the wire), the client's API contract.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
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

const ids = (events) => events.map((e) => e.id);

for (const transport of TRANSPORTS) {
  describe(`transport ${transport}`, () => {
    test('receives ingested events with filters applied, in order', async () => {
      const page = await openPage(browser, server);
      const run = `${transport}-${Date.now()}`;
      const subscriptions = {
        home: { types: ['PageViewed'], where: { 'data.pageId': 'home' } },
        stream: { stream: `${run}-s1` },
        prefixNumber: { streamPrefix: `${run}-`, where: { 'data.n': 7 } },
        types: { types: ['Click', 'Submit'], streamPrefix: `${run}-` },
        nested: { streamPrefix: `${run}-`, where: { 'data.user.admin': true, 'data.pageId': 'about' } },
      };
      for (const [name, options] of Object.entries(subscriptions)) {
        await page.evaluate(([n, o]) => window.record(n, o), [name, { ...options, transport }]);
      }
      await waitOpen(page, Object.keys(subscriptions));

      const types = ['PageViewed', 'Click', 'Submit', 'Scrolled'];
      const stored = [];
      for (let n = 0; n < 40; n++) {
        const event = {
          stream: `${run}-s${n % 3}`,
          type: types[n % 4],
          data: { pageId: n % 5 === 0 ? 'home' : 'about', n, user: { admin: n % 2 === 0 } },
        };
        const [{ id, position }] = await ingest(server.url, event);
        stored.push({ ...event, id, position });
      }
      const expected = {
        home: stored.filter((e) => e.type === 'PageViewed' && e.data.pageId === 'home'),
        stream: stored.filter((e) => e.stream === `${run}-s1`),
        prefixNumber: stored.filter((e) => e.data.n === 7),
        types: stored.filter((e) => e.type === 'Click' || e.type === 'Submit'),
        nested: stored.filter((e) => e.data.user.admin && e.data.pageId === 'about'),
      };
      // A last event that every subscription matches marks the end of each one's share.
      const marker = { stream: `${run}-s1`, type: 'Click', data: { pageId: 'home', n: 7, user: { admin: true } } };
      const [{ id: markerId }] = await ingest(server.url, [marker]);
      for (const [name, want] of Object.entries(expected)) {
        const matchesMarker = name !== 'home' && name !== 'nested';
        const count = want.length + (matchesMarker ? 1 : 0);
        const log = await waitEvents(page, name, count);
        const got = ids(log.events);
        assert.deepEqual(got.slice(0, want.length), ids(want), `${name}: exactly the matching events, in order`);
        if (matchesMarker) assert.equal(got[want.length], markerId, `${name}: the marker last`);
        assert.ok(want.length > 0, `${name} matched something`);
        assert.deepEqual(log.states, ['connecting', 'open'], `${name} states`);
        assert.deepEqual(log.errors, [], `${name} errors`);
        const event = log.events[0];
        for (const field of ['id', 'position', 'stream', 'version', 'type', 'data', 'metadata', 'timestamp']) {
          assert.ok(field in event, `the envelope has ${field}`);
        }
      }
      // Nothing more arrives for the subscriptions the marker did not match.
      await page.evaluate(() => new Promise((r) => setTimeout(r, 300)));
      const home = await page.evaluate(() => window.logs.home.events.length);
      assert.equal(home, expected.home.length);
      assert.deepEqual(page.problems, []);
      await page.close();
    });

    test('from a position, from the start, and close()', async () => {
      const page = await openPage(browser, server);
      const stream = `${transport}-replay-${Date.now()}`;
      const stored = [];
      for (let n = 0; n < 10; n++) {
        const [event] = await ingest(server.url, { stream, type: 'Step', data: { n } });
        stored.push(event);
      }
      await page.evaluate(
        ([s, from, t]) => {
          window.record('after4', { stream: s, from, transport: t });
          window.record('start', { stream: s, from: 'start', transport: t });
        },
        [stream, stored[4].position, transport],
      );
      let log = await waitEvents(page, 'after4', 5);
      assert.deepEqual(ids(log.events), ids(stored.slice(5)), 'the events after the position');
      log = await waitEvents(page, 'start', 10);
      assert.deepEqual(ids(log.events), ids(stored), 'the whole stream from the start');
      await waitOpen(page, ['after4', 'start']);

      // close(): state closed, nothing delivered afterwards.
      await page.evaluate(() => window.subs.after4.close());
      const [late] = await ingest(server.url, { stream, type: 'Step', data: { n: 10 } });
      log = await waitEvents(page, 'start', 11);
      assert.equal(log.events[10].id, late.id);
      const closed = await page.evaluate(() => window.logs.after4);
      assert.equal(closed.events.length, 5, 'a closed subscription receives nothing');
      assert.deepEqual(closed.states, ['connecting', 'open', 'closed']);
      assert.deepEqual(page.problems, []);
      await page.close();
    });

    test('batching delivers the same events in fewer frames, counted on the wire', async () => {
      const page = await openPage(browser, server);
      const wire = await countFrames(page);
      const stream = `${transport}-batch-${Date.now()}`;
      await page.evaluate(
        ([s, t]) => {
          window.record('single', { stream: s, transport: t });
          window.record('batched', { stream: s, transport: t, batch: { maxEvents: 50, maxDelayMs: 200 } });
        },
        [stream, transport],
      );
      await waitOpen(page, ['single', 'batched']);
      const stored = [];
      // Five atomic appends of 40 events each: 200 events.
      for (let round = 0; round < 5; round++) {
        const events = Array.from({ length: 40 }, (_, i) => ({ stream, type: 'Tick', data: { n: round * 40 + i } }));
        stored.push(...(await ingest(server.url, events)));
      }
      const single = await waitEvents(page, 'single', 200);
      const batched = await waitEvents(page, 'batched', 200);
      assert.deepEqual(ids(single.events), ids(stored));
      assert.deepEqual(ids(batched.events), ids(stored), 'the same events, in the same order');
      assert.equal(single.frames.length, 200, 'unbatched: one frame per event');
      assert.ok(batched.frames.every((n) => n >= 1 && n <= 50), `frames of 1 to 50 events: ${batched.frames}`);
      assert.ok(batched.frames.length < single.frames.length, `fewer frames: ${batched.frames.length}`);
      // The client's onBatch count agrees with what the browser saw on the wire.
      const seen = await wire.counts();
      assert.equal(seen.batched, batched.frames.length, `frames on the wire for the batched subscription`);
      assert.equal(seen.single, single.frames.length, `frames on the wire for the unbatched subscription`);
      console.log(`# ${transport}: 200 events in ${single.frames.length} frames unbatched, ${batched.frames.length} batched`);
      assert.deepEqual(page.problems, []);
      await page.close();
    });
  });
}

test('handler exceptions do not stop a subscription; on(type) sees only its type', async () => {
  const page = await openPage(browser, server);
  const stream = `handlers-${Date.now()}`;
  await page.evaluate(([s, transports]) => {
    window.typed = {};
    for (const t of transports) {
      window.typed[t] = [];
      window.record(t, { stream: s, transport: t });
      window.subs[t]
        .onEvent((event) => {
          throw new Error(`boom ${event.data.n}`);
        })
        .on('B', (event) => window.typed[t].push(event.data.n));
    }
  }, [stream, TRANSPORTS]);
  await waitOpen(page, TRANSPORTS);
  for (let n = 0; n < 6; n++) await ingest(server.url, { stream, type: n % 2 ? 'B' : 'A', data: { n } });
  for (const t of TRANSPORTS) {
    const log = await waitEvents(page, t, 6);
    assert.deepEqual(log.events.map((e) => e.data.n), [0, 1, 2, 3, 4, 5], `${t}: every event despite the throwing handler`);
    assert.equal(log.errors.length, 6, `${t}: each exception reported`);
    assert.equal(log.errors[0].code, 'handler_error');
    assert.match(log.errors[0].message, /boom 0/);
    assert.deepEqual(await page.evaluate((x) => window.typed[x], t), [1, 3, 5], `${t}: on('B')`);
    assert.equal(await page.evaluate((x) => window.subs[x].state, t), 'open');
  }
  await page.close();
});

test('bad arguments throw clear errors', async () => {
  const page = await openPage(browser, server);
  const messages = await page.evaluate(() => {
    const { subscribe, connect } = window.flightdeck;
    const cases = [
      () => subscribe({ type: 'PageViewed' }),
      () => subscribe({ types: 42 }),
      () => subscribe({ types: ['A,B'] }),
      () => subscribe({ where: { pageId: 'home' } }),
      () => subscribe({ where: { 'data.pageId': { nested: 1 } } }),
      () => subscribe({ from: 'yesterday' }),
      () => subscribe({ batch: { maxEvents: 0 } }),
      () => subscribe({ batch: { maxEvents: 10, maxDelayMs: 60000 } }),
      () => subscribe({ transport: 'carrier-pigeon' }),
      () => subscribe({ stream: '' }),
      () => subscribe('PageViewed'),
      () => subscribe().onEvent('not a function'),
      () => connect({ url: 'ftp://example.com' }),
      () => connect({ reconnect: { maxDelayMs: -1 } }),
      () => subscribe({ token: 42 }),
      () => connect({ token: '' }),
    ];
    return cases.map((run) => {
      try {
        run();
        return 'no error';
      } catch (err) {
        return `${err.name}: ${err.message}`;
      }
    });
  });
  const expected = [
    /unknown subscribe\(\) option "type" \(known: types,/,
    /types must be an event type or an array of event types.*got 42/,
    /without commas.*\["A,B"\]/,
    /where key "pageId" must be a path into the event's data like 'data.pageId'/,
    /where\["data.pageId"\] must be a string, number, boolean or null, got \{"nested":1\}/,
    /from must be 'now', 'start' or a position.*got "yesterday"/,
    /batch.maxEvents must be a whole number from 1 to 10000, got 0/,
    /batch.maxDelayMs must be a whole number from 0 to 10000, got 60000/,
    /transport must be 'sse' or 'ws', got "carrier-pigeon"/,
    /stream must be a non-empty string, got ""/,
    /subscribe\(\) takes an options object.*got "PageViewed"/,
    /onEvent\(handler\) needs a function, got "not a function"/,
    /url must be an http\(s\) URL.*ftp:/,
    /reconnect.maxDelayMs must be a number of milliseconds of at least 1, got -1/,
    /subscribe\(\) token must be a token string or a function returning one.*got 42/,
    /connect\(\) token must be a token string or a function returning one.*got ""/,
  ];
  assert.equal(messages.length, expected.length);
  messages.forEach((message, i) => {
    assert.match(message, /^TypeError: flightdeck: /, `case ${i}: ${message}`);
    assert.match(message, expected[i], `case ${i}`);
  });
  await page.close();
});

test('a subscription the server refuses is closed with the server\'s reason', async () => {
  const page = await openPage(browser, server);
  // A base URL where no FlightDeck routes are: the server answers 404.
  await page.evaluate(() => {
    const client = window.flightdeck.connect({ url: `${location.origin}/nowhere/` });
    window.record('refused', { types: ['A'] }, client);
  });
  await page.waitForFunction(() => window.logs.refused.states.includes('closed'));
  const log = await page.evaluate(() => window.logs.refused);
  assert.deepEqual(log.states, ['connecting', 'reconnecting', 'closed']);
  assert.equal(log.errors.length, 1);
  assert.equal(log.errors[0].code, 'http_404');
  assert.match(log.errors[0].message, /refused the subscription \(404\)/);

  if (TRANSPORTS.includes('ws')) {
    // The server allows 100 subscriptions per socket: the 101st on one client is refused, the rest stay.
    await page.evaluate(() => {
      for (let i = 0; i < 101; i++) window.record(`many-${i}`, { types: ['Many'], transport: 'ws' });
    });
    await page.waitForFunction(() => window.logs['many-100'].states.includes('closed'));
    const many = await page.evaluate(() => Object.keys(window.logs).filter((n) => n.startsWith('many-')).map((n) => window.logs[n]));
    const refused = many.filter((l) => l.states.includes('closed'));
    assert.equal(refused.length, 1);
    assert.equal(refused[0].errors[0].code, 'too_many_subscriptions');
    assert.deepEqual(refused[0].states, ['connecting', 'closed']);
    await waitOpen(page, Array.from({ length: 100 }, (_, i) => `many-${i}`));
  }
  await page.close();
});

/**
 * Counts the frames the page receives per subscription, independently of the client: SSE messages
 * through the DevTools protocol (by request, i.e. by subscription URL), WebSocket frames through
 * Playwright (by the `sub` field of each frame). Subscriptions are told apart by the `batch`
 * option: `batched` for frames of a batched subscription, `single` otherwise.
 */
async function countFrames(page) {
  const counts = { single: 0, batched: 0 };
  const batchedRequests = new Set();
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  cdp.on('Network.requestWillBeSent', ({ requestId, request }) => {
    if (request.url.includes('/api/events?') && request.url.includes('batch=')) batchedRequests.add(requestId);
  });
  cdp.on('Network.eventSourceMessageReceived', ({ requestId, eventName }) => {
    // The opening `subscribed` frame (the start position) carries no events.
    if (eventName !== 'message') return;
    counts[batchedRequests.has(requestId) ? 'batched' : 'single'] += 1;
  });
  const batchedSubs = new Set();
  page.on('websocket', (socket) => {
    socket.on('framesent', ({ payload }) => {
      const frame = JSON.parse(payload);
      if (frame.op === 'subscribe' && frame.batch) batchedSubs.add(frame.id);
    });
    socket.on('framereceived', ({ payload }) => {
      const frame = JSON.parse(payload);
      if (frame.op === 'event' || frame.op === 'batch') counts[batchedSubs.has(frame.sub) ? 'batched' : 'single'] += 1;
    });
  });
  return { counts: async () => ({ ...counts }) };
}

test('a page on another origin loads the module and subscribes over WebSocket', { skip: !TRANSPORTS.includes('ws') }, async () => {
  const page = await browser.newPage();
  // Another origin has no session cookie (and the server would refuse it from there): a token.
  const token = await createToken(server, ['--site', '*', '--subscribe', '--ttl', '1h']);
  // about:blank: an origin other than the server's. The module is fetched with CORS.
  await page.setContent(`<script type="module">
    import { subscribe } from '${server.url}/flightdeck.js';
    window.got = [];
    window.sub = subscribe({ transport: 'ws', types: ['CrossOrigin'], token: ${JSON.stringify(token)} })
      .onEvent((event) => window.got.push(event.id));
  </script>`);
  await page.waitForFunction(() => window.sub?.state === 'open');
  const [stored] = await ingest(server.url, { stream: `xo-${Date.now()}`, type: 'CrossOrigin', data: {} });
  await page.waitForFunction(() => window.got.length > 0);
  assert.deepEqual(await page.evaluate(() => window.got), [stored.id]);
  await page.close();
});
