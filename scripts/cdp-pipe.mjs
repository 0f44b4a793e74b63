// A minimal Chromium driver for benchmarks: Debian's Chromium, headless, with the browser tests'
// flags, driven over the DevTools protocol on a pipe (--remote-debugging-pipe: NUL-separated JSON
// on file descriptors 3 and 4). Unlike playwright-core it enables no domain by itself, so the
// page pays for nothing but what the benchmark measures with (no per-message Network events).

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

export async function launchCdpBrowser() {
  const profile = mkdtempSync(join(tmpdir(), 'flightdeck-cdp-'));
  const child = spawn(
    CHROMIUM,
    [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--remote-debugging-pipe',
      `--user-data-dir=${profile}`,
      '--no-first-run',
      '--no-default-browser-check',
      'about:blank',
    ],
    { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'pipe', 'pipe'] },
  );
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const killNow = () => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  process.on('exit', killNow);
  const [toBrowser, fromBrowser] = [child.stdio[3], child.stdio[4]];
  let nextId = 1;
  const pending = new Map();
  let buffer = '';
  fromBrowser.setEncoding('utf8');
  fromBrowser.on('data', (chunk) => {
    buffer += chunk;
    for (let end = buffer.indexOf('\0'); end >= 0; end = buffer.indexOf('\0')) {
      const message = JSON.parse(buffer.slice(0, end));
      buffer = buffer.slice(end + 1);
      const waiter = message.id !== undefined && pending.get(message.id);
      if (!waiter) continue; // an event: none is subscribed to
      pending.delete(message.id);
      if (message.error) waiter.reject(new Error(`${waiter.method}: ${message.error.message}`));
      else waiter.resolve(message.result);
    }
  });
  exited.then(() => {
    for (const waiter of pending.values()) waiter.reject(new Error('Chromium exited'));
    pending.clear();
  });

  /** Sends a command (to a page when `sessionId` is given) and resolves with its result. */
  const send = (method, params = {}, sessionId) =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject, method });
      toBrowser.write(`${JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) })}\0`);
    });

  const { product } = await send('Browser.getVersion');

  return {
    version: product,
    send,
    /** A new tab with the given viewport. */
    async newPage({ width, height }) {
      const { targetId } = await send('Target.createTarget', { url: 'about:blank' });
      const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true });
      const page = {
        send: (method, params) => send(method, params, sessionId),
        /** Runs `fn(arg)` in the page (awaiting a promise) and returns its JSON value. */
        async evaluate(fn, arg) {
          const expression = `(${fn})(${arg === undefined ? '' : JSON.stringify(arg)})`;
          const { result, exceptionDetails } = await page.send('Runtime.evaluate', {
            expression,
            awaitPromise: true,
            returnByValue: true,
          });
          if (exceptionDetails) {
            throw new Error(`in the page: ${exceptionDetails.exception?.description ?? exceptionDetails.text}`);
          }
          return result.value;
        },
        /** Polls `fn(arg)` until truthy (true) or `timeoutMs` passes (false). */
        async waitFor(fn, arg, timeoutMs = 60_000) {
          const deadline = Date.now() + timeoutMs;
          for (;;) {
            try {
              if (await page.evaluate(fn, arg)) return true;
            } catch {
              // Navigating: the context is being replaced.
            }
            if (Date.now() > deadline) return false;
            await sleep(50);
          }
        },
        async navigate(url) {
          await page.send('Page.navigate', { url });
          const loaded = await page.waitFor((u) => location.href === u && document.readyState === 'complete', url);
          if (!loaded) throw new Error(`${url} did not load`);
        },
        /** Another DevTools session on the same page (its domains are enabled separately). */
        async session() {
          const other = await send('Target.attachToTarget', { targetId, flatten: true });
          return (method, params) => send(method, params, other.sessionId);
        },
        close: () => send('Target.closeTarget', { targetId }),
      };
      await page.send('Emulation.setDeviceMetricsOverride', { width, height, deviceScaleFactor: 1, mobile: false });
      return page;
    },
    /** Closes Chromium (killing it after 10 s) and removes its profile. */
    async close() {
      send('Browser.close').catch(() => {});
      const timer = setTimeout(killNow, 10_000);
      await exited;
      clearTimeout(timer);
      process.off('exit', killNow);
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
