// The server is stopped and started again (same port, same data) while events keep being ingested:
// the page's subscriptions reconnect by themselves and end with every event exactly once, in order.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test } from 'node:test';
import {
  TRANSPORTS,
  ingestUntilStored,
  launchBrowser,
  openPage,
  removeDir,
  scratchDir,
  startServer,
  waitEvents,
  waitOpen,
} from './harness.mjs';

const TOTAL = 240;
/** How the server goes down, once each: an orderly stop, then a crash. */
const STOPS = ['SIGTERM', 'SIGKILL'];

let dir;
let server;
let browser;

after(async () => {
  await browser?.close();
  await server?.stop('SIGKILL');
  if (dir) await removeDir(dir);
});

test('the server restarts mid-stream: the page resumes and has every event exactly once, in order', async () => {
  dir = scratchDir();
  [server, browser] = await Promise.all([startServer({ dataDir: dir }), launchBrowser()]);
  const base = server.url; // the same after each restart: same port
  const page = await openPage(browser, server);
  const subscribeFrames = [];
  page.on('websocket', (socket) =>
    socket.on('framesent', ({ payload }) => {
      const frame = JSON.parse(payload);
      if (frame.op === 'subscribe') subscribeFrames.push(frame);
    }),
  );
  const run = `restart-${Date.now()}`;
  const names = [];
  for (const transport of TRANSPORTS) {
    for (const batch of [undefined, { maxEvents: 20, maxDelayMs: 50 }]) {
      const name = `${transport}${batch ? '-batched' : ''}`;
      names.push(name);
      await page.evaluate(([n, o]) => window.record(n, o), [name, { streamPrefix: `${run}-`, transport, batch }]);
    }
  }
  // Subscriptions whose first event comes only after the first restart: each must resume from
  // where the server said it started (SSE's opening frame, WebSocket's `subscribed`), not from "now"
  // again (which would skip the events stored before it reconnected).
  const quietNames = TRANSPORTS.map((t) => `${t}-quiet`);
  const isQuiet = (name) => quietNames.includes(name);
  const sseQuietUrls = [];
  page.on('request', (request) => {
    if (request.url().includes('/api/events?') && request.url().includes('data.phase')) sseQuietUrls.push(request.url());
  });
  for (const transport of TRANSPORTS) {
    const options = { streamPrefix: `${run}-`, where: { 'data.phase': 'late' }, transport };
    await page.evaluate(([n, o]) => window.record(n, o), [`${transport}-quiet`, options]);
    names.push(`${transport}-quiet`);
  }
  await waitOpen(page, names);

  // A writer that keeps ingesting, one event at a time, riding out the outages (ids make retries safe).
  const stored = [];
  let phase = 'early';
  const writer = (async () => {
    for (let n = 0; n < TOTAL; n++) {
      const event = { id: randomUUID(), stream: `${run}-${n % 4}`, type: 'Tick', data: { n, phase } };
      const [result] = await ingestUntilStored(base, event);
      assert.equal(result.id, event.id);
      stored.push({ ...result, phase: event.data.phase });
      await sleep(5);
    }
  })();

  for (const [i, signal] of STOPS.entries()) {
    const at = Math.round((TOTAL * (i + 1)) / (STOPS.length + 1));
    while (stored.length < at) await sleep(10);
    // Every subscription is receiving: the stop happens mid-stream.
    for (const name of names.filter((n) => !isQuiet(n) || i > 0)) await waitEvents(page, name, 1);
    const stopped = await server.stop(signal);
    assert.ok(signal === 'SIGKILL' || stopped.code === 0, `serve stops cleanly on ${signal}: ${JSON.stringify(stopped)}`);
    phase = 'late';
    server = await startServer({ dataDir: dir, port: server.port, ready: false });
  }
  await writer;
  assert.equal(stored.length, TOTAL);

  for (const name of names) {
    const want = isQuiet(name) ? stored.filter((e) => e.phase === 'late') : stored;
    await waitEvents(page, name, want.length, 120_000);
    // Give a duplicate the chance to show up.
    await sleep(200);
    const log = await page.evaluate((n) => window.logs[n], name);
    assert.equal(log.events.length, want.length, `${name}: no duplicates`);
    assert.deepEqual(
      log.events.map((e) => e.id),
      want.map((e) => e.id),
      `${name}: every event exactly once, in log order`,
    );
    assert.deepEqual(log.errors, [], `${name}: no errors`);
    assert.equal(log.states[0], 'connecting');
    assert.equal(log.states.at(-1), 'open', `${name}: open again`);
    const reconnects = log.states.filter((s) => s === 'reconnecting').length;
    assert.equal(reconnects, STOPS.length, `${name}: reconnected once per restart: ${log.states.join(' → ')}`);
  }
  if (TRANSPORTS.includes('ws')) {
    // The quiet subscription was subscribed three times; each resubscription named a position.
    const mine = subscribeFrames.filter((f) => f.where?.['data.phase'] === 'late');
    assert.equal(mine.length, STOPS.length + 1);
    assert.equal(mine[0].from, 'now');
    for (const frame of mine.slice(1)) assert.match(frame.from, /^[0-9a-f]{32}$/, 'resumed from a position');
  }
  if (TRANSPORTS.includes('sse')) {
    // Likewise over SSE: the first request asked for "now", every reconnection for a position
    // (attempts while the server was down included).
    const froms = sseQuietUrls.map((url) => new URL(url).searchParams.get('from'));
    assert.ok(froms.length >= STOPS.length + 1, froms.join(' '));
    assert.equal(froms[0], 'now');
    for (const from of froms.slice(1)) assert.match(from, /^[0-9a-f]{32}$/, 'resumed from a position');
  }
  assert.deepEqual(page.problems, []);
});
