#!/usr/bin/env node
// Batching in the browser (issue 4): frames/s and client CPU with and without batching at 5,000
// events/s, for a page using flightdeck.js and for the dashboard itself, over SSE and WebSocket.
//
//   (cd tests/browser && npm ci) && cargo build --release
//   FLIGHTDECK_BIN=target/release/flightdeck node scripts/bench-batching.mjs > results.md
//
// Options: --rate N (events/s, default 5000), --seconds N (publishing time per case, default 10),
// --cases a,b (default: all eight: client-sse, client-sse-batched, client-ws, client-ws-batched,
// dashboard-sse, dashboard-sse-batched, dashboard-ws, dashboard-ws-batched), --json FILE (the raw
// results), --driver cdp|playwright (default cdp, see below). FLIGHTDECK_BIN picks the server
// (default target/debug/flightdeck; the release build is what counts), CHROMIUM the browser
// (default /usr/bin/chromium, run with the browser tests' flags).
//
// Drivers: `cdp` starts Chromium itself and speaks the DevTools protocol over a pipe, enabling
// only what it measures with (Runtime, Performance). `playwright` uses the browser tests'
// harness (playwright-core), which enables the Network domain on every page: DevTools then
// reports every SSE message and WebSocket frame to the driver, a per-message cost that a real
// visitor's browser does not pay, so its unbatched figures are pessimistic.
//
// One `flightdeck serve` (embedded PostgreSQL, scratch data directory, 127.0.0.1 only) and one
// headless Chromium serve all cases, one after the other; each case gets a fresh page, its own
// site id (so its own streams), and Node publishes tracker-shaped events (PageViewed,
// ElementInteraction, FormSubmitted on `visit-<site>:<session>` streams, so the projections and
// the dashboard's stats work as under real traffic) with POST /api/events, 50 events per request,
// paced to the rate. Per case it measures, from the first publish until the page has every event:
//   - frames: onBatch calls (one per SSE message or WebSocket frame with new events);
//   - events received, duplicates, missing and out-of-order (every event carries a sequence
//     number; the page marks each in a bitmap), delivery lag (publish → handler, p50/p99);
//   - the renderer's main thread per second: CPU time (CDP Performance.getMetrics TaskDuration and
//     ScriptDuration in thread ticks) and wall-clock busy time (TaskDuration in time ticks: longer
//     when the thread waits for a core); CPU of Chromium's renderer processes (CDP
//     SystemInfo.getProcessInfo) and of the server and its PostgreSQL (/proc); animation frames
//     per second (requestAnimationFrame) and long tasks (> 50 ms).
// Everything it started is stopped on exit, however it exits; the run is bounded in time.

import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { launchBrowser, removeDir, scratchDir, startServer } from '../tests/browser/harness.mjs';
import { launchCdpBrowser } from './cdp-pipe.mjs';

const { values: args } = parseArgs({
  options: {
    rate: { type: 'string', default: '5000' },
    seconds: { type: 'string', default: '10' },
    cases: { type: 'string', default: '' },
    json: { type: 'string' },
    driver: { type: 'string', default: 'cdp' },
  },
});
const RATE = Number(args.rate);
const SECONDS = Number(args.seconds);
const PER_REQUEST = 50;
const SESSIONS = 200;
const BATCH = { maxEvents: 1000, maxDelayMs: 100 };
const ALL_CASES = ['client', 'dashboard'].flatMap((kind) =>
  ['sse', 'ws'].flatMap((transport) => [`${kind}-${transport}`, `${kind}-${transport}-batched`]),
);
const CASES = args.cases ? args.cases.split(',') : ALL_CASES;
for (const name of CASES) if (!ALL_CASES.includes(name)) throw new Error(`unknown case ${name}; known: ${ALL_CASES}`);
if (!(RATE > 0 && SECONDS > 0 && SECONDS <= 120)) throw new Error('--rate must be > 0, --seconds 1 to 120');
if (!['cdp', 'playwright'].includes(args.driver)) throw new Error('--driver is cdp or playwright');

const log = (...parts) => console.error('bench-batching:', ...parts);

// ---------------------------------------------------------------------------------------------
// Publishing

const PATHS = ['/', '/pricing', '/about', '/docs', '/docs/install', '/blog', '/blog/batching', '/contact', '/signup', '/cart'];

function event(site, session, n) {
  const t = Date.now();
  const path = PATHS[n % PATHS.length];
  const roll = n % 20;
  if (roll < 14) return { type: 'PageViewed', data: { site, session, path, title: `Page ${path}`, n, t } };
  if (roll < 19) return { type: 'ElementInteraction', data: { site, session, element: `button-${n % 7}`, action: 'click', path, n, t } };
  return { type: 'FormSubmitted', data: { site, session, form: `form-${n % 3}`, fields: ['email', 'name'], fieldCount: 2, path, n, t } };
}

/**
 * Publishes `total` events for `site` at `rate` events/s (requests of PER_REQUEST events, each to
 * one session's stream, up to 32 in flight). Resolves with the achieved rate.
 */
async function publish(baseUrl, site, total, rate) {
  const started = performance.now();
  let next = 0;
  let inFlight = 0;
  let failures = 0;
  let request = 0;
  const pending = new Set();
  const post = async (from, count) => {
    const session = `s${request++ % SESSIONS}`;
    const body = [];
    for (let n = from; n < from + count; n++) body.push(event(site, session, n));
    for (let body_ = JSON.stringify(body.map((e) => ({ stream: `visit-${site}:${session}`, ...e }))); ; ) {
      const response = await fetch(`${baseUrl}/api/events`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: body_,
      }).catch((err) => ({ status: 0, err }));
      if (response.status === 201) {
        await response.arrayBuffer();
        return;
      }
      failures += 1;
      if (failures > 20) throw new Error(`publishing keeps failing: ${response.status} ${response.err ?? (await response.text())}`);
      await sleep(100);
    }
  };
  while (next < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate) + PER_REQUEST);
    while (next < due && inFlight < 32) {
      const count = Math.min(PER_REQUEST, total - next);
      const sending = post(next, count).finally(() => {
        inFlight -= 1;
        pending.delete(sending);
      });
      pending.add(sending);
      inFlight += 1;
      next += count;
    }
    await sleep(5);
  }
  await Promise.all(pending);
  const seconds = (performance.now() - started) / 1000;
  return { seconds, rate: total / seconds, failures };
}

// ---------------------------------------------------------------------------------------------
// Measuring

/** Installed in every page: animation frames and long tasks, counted from `window.meter.reset()`. */
function installMeter() {
  const meter = { frames: 0, longTasks: 0, longTaskMs: 0 };
  const frame = () => {
    meter.frames += 1;
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      meter.longTasks += 1;
      meter.longTaskMs += entry.duration;
    }
  }).observe({ entryTypes: ['longtask'] });
  meter.reset = () => Object.assign(meter, { frames: 0, longTasks: 0, longTaskMs: 0 });
  window.meter = meter;
}

/** Installed in every page: checks each event of the run once, by its sequence number. */
function installChecker(total) {
  const check = {
    total,
    seen: new Uint8Array(total),
    events: 0,
    unique: 0,
    duplicates: 0,
    outOfOrder: 0,
    foreign: 0,
    frames: 0,
    last: null,
    lags: new Float64Array(total),
    firstAt: 0,
    lastAt: 0,
  };
  check.onBatch = () => {
    check.frames += 1;
  };
  check.onEvent = (event) => {
    const now = Date.now();
    const n = event.data?.n;
    if (!(n >= 0 && n < total)) {
      check.foreign += 1;
      return;
    }
    check.events += 1;
    if (check.seen[n]) check.duplicates += 1;
    else {
      check.seen[n] = 1;
      check.lags[check.unique] = now - event.data.t;
      check.unique += 1;
    }
    if (check.last !== null && event.position <= check.last) check.outOfOrder += 1;
    check.last = event.position;
    if (!check.firstAt) check.firstAt = now;
    check.lastAt = now;
  };
  check.summary = () => {
    const lags = check.lags.slice(0, check.unique).sort();
    const pct = (p) => (lags.length ? lags[Math.min(lags.length - 1, Math.floor((p / 100) * lags.length))] : null);
    return {
      events: check.events,
      unique: check.unique,
      duplicates: check.duplicates,
      missing: total - check.unique,
      outOfOrder: check.outOfOrder,
      foreign: check.foreign,
      frames: check.frames,
      lagP50: pct(50),
      lagP99: pct(99),
      firstAt: check.firstAt,
      lastAt: check.lastAt,
    };
  };
  window.check = check;
}

function procCpuSeconds(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    // utime, stime (fields 14, 15; 12, 13 after the name), in clock ticks (100/s on Linux).
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

/** Cumulative CPU seconds of the server process tree (serve and its PostgreSQL). */
function serverCpuSeconds(server) {
  // PostgreSQL runs under a supervisor in its own process group; count serve and every process
  // whose ancestry leads to it.
  const children = new Map();
  for (const pid of readdirProc()) {
    try {
      const ppid = Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(pid);
    } catch {
      // Gone meanwhile.
    }
  }
  let total = 0;
  const stack = [server.child.pid];
  while (stack.length) {
    const pid = stack.pop();
    const cpu = procCpuSeconds(pid);
    if (Number.isFinite(cpu)) total += cpu;
    stack.push(...(children.get(pid) ?? []));
  }
  return total;
}

function readdirProc() {
  return readdirSync('/proc').filter((name) => /^\d+$/.test(name)).map(Number);
}

/**
 * The browser as the cases use it, over either driver: `open(url)` gives a page with
 * `evaluate(fn, arg)`, `waitFor(fn, arg, timeoutMs)`, `mainThread()` and `close()`;
 * `processCpu()` gives the cumulative CPU seconds of Chromium's renderer, GPU and browser processes.
 */
async function startBrowser(driver) {
  const cpuOf = (processInfo) => {
    const cpu = { renderer: 0, gpu: 0, browser: 0 };
    for (const p of processInfo) {
      if (p.type === 'renderer') cpu.renderer += p.cpuTime;
      else if (p.type === 'GPU') cpu.gpu += p.cpuTime;
      else if (p.type === 'browser') cpu.browser += p.cpuTime;
    }
    return cpu;
  };
  // Two sessions per page: one measures the main thread's CPU time (thread ticks), the other its
  // wall-clock busy time, which is longer when the thread waits for a core.
  const metricsOf = ({ metrics }, wall) => {
    const m = Object.fromEntries(metrics.map(({ name, value }) => [name, value]));
    const w = Object.fromEntries(wall.metrics.map(({ name, value }) => [name, value]));
    return { task: m.TaskDuration, script: m.ScriptDuration, layout: m.LayoutDuration + m.RecalcStyleDuration, taskWall: w.TaskDuration };
  };
  if (driver === 'playwright') {
    const browser = await launchBrowser();
    const browserSession = await browser.newBrowserCDPSession();
    return {
      version: browser.version(),
      async open(url) {
        const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
        page.setDefaultTimeout(60_000);
        await page.goto(url);
        const cdp = await page.context().newCDPSession(page);
        await cdp.send('Performance.enable', { timeDomain: 'threadTicks' });
        const wall = await page.context().newCDPSession(page);
        await wall.send('Performance.enable', { timeDomain: 'timeTicks' });
        return {
          evaluate: (fn, arg) => page.evaluate(fn, arg),
          waitFor: (fn, arg, timeout = 60_000) => page.waitForFunction(fn, arg, { polling: 50, timeout }).then(() => true, () => false),
          mainThread: async () => metricsOf(await cdp.send('Performance.getMetrics'), await wall.send('Performance.getMetrics')),
          close: () => page.context().close(),
        };
      },
      processCpu: async () => cpuOf((await browserSession.send('SystemInfo.getProcessInfo')).processInfo),
      close: () => browser.close(),
    };
  }
  const browser = await launchCdpBrowser();
  return {
    version: browser.version,
    async open(url) {
      const page = await browser.newPage({ width: 1400, height: 1000 });
      await page.navigate(url);
      await page.send('Performance.enable', { timeDomain: 'threadTicks' });
      const wall = await page.session();
      await wall('Performance.enable', { timeDomain: 'timeTicks' });
      return {
        evaluate: (fn, arg) => page.evaluate(fn, arg),
        waitFor: (fn, arg, timeout = 60_000) => page.waitFor(fn, arg, timeout),
        mainThread: async () => metricsOf(await page.send('Performance.getMetrics'), await wall('Performance.getMetrics')),
        close: () => page.close(),
      };
    },
    processCpu: async () => cpuOf((await browser.send('SystemInfo.getProcessInfo')).processInfo),
    close: () => browser.close(),
  };
}

// ---------------------------------------------------------------------------------------------
// One case

async function runCase(name, { browser, server }, runId) {
  const [kind, transport, batched] = name.split('-');
  const batch = batched ? BATCH : undefined;
  const site = `bench-${runId}-${name}`;
  const total = RATE * SECONDS;
  let page;
  if (kind === 'client') {
    // A page on the server's origin that imports the client, as an application would.
    page = await browser.open(`${server.url}/healthz`);
    await page.evaluate(installMeter);
    await page.evaluate(installChecker, total);
    await page.evaluate(
      async ([prefix, t, b]) => {
        const flightdeck = await import('/flightdeck.js');
        const sub = flightdeck.subscribe({ streamPrefix: prefix, transport: t, ...(b ? { batch: b } : {}) });
        sub.onBatch(window.check.onBatch).onEvent(window.check.onEvent);
        window.sub = sub;
      },
      [`visit-${site}:`, transport, batch],
    );
    if (!(await page.waitFor(() => window.sub.state === 'open'))) throw new Error(`${name}: the subscription never opened`);
  } else {
    const query = new URLSearchParams();
    if (transport === 'ws') query.set('transport', 'ws');
    if (!batched) query.set('batch', 'off');
    page = await browser.open(`${server.url}/?${query}`);
    if (!(await page.waitFor(() => window.flightdeckDashboard?.connection === 'open'))) throw new Error(`${name}: the dashboard never connected`);
    await page.evaluate(installMeter);
    await page.evaluate(installChecker, total);
    // The dashboard counts its own frames; the checker only looks at each event (a few μs each).
    await page.evaluate(() => {
      const dashboard = window.flightdeckDashboard;
      window.framesBefore = dashboard.frames;
      window.receivedBefore = dashboard.received;
      dashboard.subscription.onEvent(window.check.onEvent);
    });
  }
  // A moment for the subscription to be registered everywhere, then measure.
  await sleep(500);
  await page.evaluate(() => window.meter.reset());
  const before = {
    wall: performance.now(),
    main: await page.mainThread(),
    cpu: await browser.processCpu(),
    server: serverCpuSeconds(server),
  };
  const published = await publish(server.url, site, total, RATE);
  if (!(await page.waitFor((t) => window.check.unique >= t, total))) log(`${name}: not every event arrived within 60 s`);
  const after = {
    wall: performance.now(),
    main: await page.mainThread(),
    cpu: await browser.processCpu(),
    server: serverCpuSeconds(server),
  };
  await sleep(300); // a late duplicate would show up now
  const check = await page.evaluate(() => window.check.summary());
  const meter = await page.evaluate(() => ({ frames: window.meter.frames, longTasks: window.meter.longTasks, longTaskMs: window.meter.longTaskMs }));
  if (kind === 'dashboard') {
    const d = await page.evaluate(() => ({
      frames: window.flightdeckDashboard.frames - window.framesBefore,
      received: window.flightdeckDashboard.received - window.receivedBefore,
    }));
    check.frames = d.frames;
    check.dashboardReceived = d.received;
  }
  await page.close();
  const seconds = (after.wall - before.wall) / 1000;
  const receiveSeconds = Math.max(0.001, (check.lastAt - check.firstAt) / 1000);
  return {
    name,
    kind,
    transport,
    batched: Boolean(batched),
    total,
    published,
    seconds,
    check,
    framesPerSecond: check.frames / receiveSeconds,
    eventsPerSecond: check.unique / receiveSeconds,
    mainThreadBusy: (after.main.task - before.main.task) / seconds,
    mainThreadWall: (after.main.taskWall - before.main.taskWall) / seconds,
    scriptBusy: (after.main.script - before.main.script) / seconds,
    layoutBusy: (after.main.layout - before.main.layout) / seconds,
    rendererCpu: (after.cpu.renderer - before.cpu.renderer) / seconds,
    gpuCpu: (after.cpu.gpu - before.cpu.gpu) / seconds,
    browserCpu: (after.cpu.browser - before.cpu.browser) / seconds,
    serverCpu: (after.server - before.server) / seconds,
    animationFps: meter.frames / seconds,
    longTasks: meter.longTasks,
    longTaskMs: meter.longTaskMs,
  };
}

// ---------------------------------------------------------------------------------------------
// Main

const pct = (x) => `${Math.round(x * 100)} %`;
const fmt = (x, digits = 0) => (x === null || x === undefined || Number.isNaN(x) ? '–' : x.toLocaleString('en-US', { maximumFractionDigits: digits }));

function table(results) {
  const lines = [
    '| case | batching | published (events/s) | received exactly once | frames/s | events/s | main-thread CPU | of which script | main thread busy (wall) | renderer CPU | animation frames/s | long tasks | lag p50 / p99 (ms) | server CPU |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const r of results) {
    const c = r.check;
    const once =
      c.missing === 0 && c.duplicates === 0 && c.outOfOrder === 0
        ? `yes (${fmt(c.unique)})`
        : `NO: ${c.missing} missing, ${c.duplicates} dup, ${c.outOfOrder} out of order`;
    lines.push(
      `| ${r.kind} ${r.transport.toUpperCase()} | ${r.batched ? `${BATCH.maxEvents} / ${BATCH.maxDelayMs} ms` : 'none'} | ${fmt(r.published.rate)} | ${once} | ${fmt(r.framesPerSecond)} | ${fmt(r.eventsPerSecond)} | ${pct(r.mainThreadBusy)} | ${pct(r.scriptBusy)} | ${pct(r.mainThreadWall)} | ${pct(r.rendererCpu)} | ${fmt(r.animationFps)} | ${r.longTasks} (${fmt(r.longTaskMs)} ms) | ${fmt(c.lagP50)} / ${fmt(c.lagP99)} | ${pct(r.serverCpu)} |`,
    );
  }
  return lines.join('\n');
}

const dir = scratchDir();
let server;
let browser;
const stopAll = async () => {
  await browser?.close().catch(() => {});
  await server?.stop('SIGTERM');
  await removeDir(dir);
};
process.on('SIGINT', () => {
  stopAll().finally(() => process.exit(130));
});

try {
  const load = [loadavg()];
  // A benchmark of delivery and rendering, not of tokens: authentication off (`--insecure-no-auth`).
  [server, browser] = await Promise.all([startServer({ dataDir: dir, auth: false }), startBrowser(args.driver)]);
  const runId = Date.now().toString(36);
  log(`server ${server.url} (${process.env.FLIGHTDECK_BIN ?? 'target/debug/flightdeck'}), ${RATE} events/s for ${SECONDS} s per case`);
  // Warm-up: the first page load and the first appends of a fresh database are slower.
  await publish(server.url, `bench-${runId}-warmup`, Math.min(RATE, 5000), RATE);
  const results = [];
  for (const name of CASES) {
    const result = await runCase(name, { browser, server }, runId);
    results.push(result);
    log(
      `${name}: published ${fmt(result.published.rate)}/s; ${result.check.unique}/${result.total} once, ${result.check.duplicates} dup; ` +
        `${fmt(result.framesPerSecond)} frames/s; main thread ${pct(result.mainThreadBusy)}; renderer ${pct(result.rendererCpu)}; ` +
        `${fmt(result.animationFps)} fps; lag p50 ${result.check.lagP50} ms`,
    );
  }
  load.push(loadavg());
  const version = browser.version;
  const facts = [
    `- ${new Date().toISOString()}; ${RATE} events/s for ${SECONDS} s per case; server ${process.env.FLIGHTDECK_BIN ?? 'target/debug/flightdeck'}; Chromium ${version} (${args.driver} driver); Node ${process.version}`,
    `- load average before: ${load[0].map((x) => x.toFixed(2)).join(' ')}; after: ${load[1].map((x) => x.toFixed(2)).join(' ')}`,
  ];
  console.log(`${facts.join('\n')}\n\n${table(results)}`);
  if (args.json) writeFileSync(args.json, JSON.stringify({ rate: RATE, seconds: SECONDS, load, results }, null, 2));
  const broken = results.filter((r) => r.check.missing || r.check.duplicates || r.check.outOfOrder);
  if (broken.length) {
    log(`NOT exactly once: ${broken.map((r) => r.name).join(', ')}`);
    process.exitCode = 1;
  }
} catch (err) {
  log(err.stack ?? String(err));
  process.exitCode = 1;
} finally {
  await stopAll();
}
