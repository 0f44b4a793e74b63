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
  const run = `restart-${Date.now()}`;
  const names = [];
  for (const transport of TRANSPORTS) {
    for (const batch of [undefined, { maxEvents: 20, maxDelayMs: 50 }]) {
      const name = `${transport}${batch ? '-batched' : ''}`;
      names.push(name);
      await page.evaluate(([n, o]) => window.record(n, o), [name, { streamPrefix: `${run}-`, transport, batch }]);
    }
  }
  await waitOpen(page, names);

  // A writer that keeps ingesting, one event at a time, riding out the outages (ids make retries safe).
  const stored = [];
  const writer = (async () => {
    for (let n = 0; n < TOTAL; n++) {
      const event = { id: randomUUID(), stream: `${run}-${n % 4}`, type: 'Tick', data: { n } };
      const [result] = await ingestUntilStored(base, event);
      assert.equal(result.id, event.id);
      stored.push(result);
      await sleep(5);
    }
  })();

  for (const [i, signal] of STOPS.entries()) {
    const at = Math.round((TOTAL * (i + 1)) / (STOPS.length + 1));
    while (stored.length < at) await sleep(10);
    // The page is receiving: the stop happens mid-stream.
    await waitEvents(page, names[0], Math.min(at, 20) - 5);
    const stopped = await server.stop(signal);
    assert.ok(signal === 'SIGKILL' || stopped.code === 0, `serve stops cleanly on ${signal}: ${JSON.stringify(stopped)}`);
    server = await startServer({ dataDir: dir, port: server.port, ready: false });
  }
  await writer;
  assert.equal(stored.length, TOTAL);

  for (const name of names) {
    const log = await waitEvents(page, name, TOTAL, 120_000);
    // Give a duplicate the chance to show up.
    await sleep(200);
    const final = await page.evaluate((n) => window.logs[n], name);
    assert.equal(final.events.length, TOTAL, `${name}: no duplicates`);
    assert.deepEqual(
      final.events.map((e) => e.id),
      stored.map((e) => e.id),
      `${name}: every event exactly once, in log order`,
    );
    assert.deepEqual(final.errors, [], `${name}: no errors`);
    assert.equal(final.states[0], 'connecting');
    assert.equal(final.states.at(-1), 'open', `${name}: open again`);
    const reconnects = final.states.filter((s) => s === 'reconnecting').length;
    assert.equal(reconnects, STOPS.length, `${name}: reconnected once per restart: ${final.states.join(' → ')}`);
    assert.ok(log.events.length >= TOTAL);
  }
  assert.deepEqual(page.problems, []);
});
