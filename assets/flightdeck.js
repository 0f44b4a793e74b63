/**
 * flightdeck.js: the browser client for FlightDeck's real-time event stream.
 *
 * An ES module with no dependencies and no build step. The FlightDeck server serves it at
 * `/flightdeck.js`:
 *
 * ```html
 * <script type="module">
 *   import { subscribe } from '/flightdeck.js';
 *   const sub = subscribe({ types: ['PageViewed'], where: { 'data.pageId': 'home' } });
 *   sub.onEvent((event) => console.log(event.type, event.data));
 * </script>
 * ```
 *
 * Guarantees: a subscription reconnects by itself (capped exponential backoff with jitter) and
 * resumes after the last position it handed out, on both transports; no handler ever receives an
 * event at or before a position already handed out, so nothing is delivered twice and the order is
 * the server's log order. A handler that throws is reported and does not stop the subscription.
 *
 * Tokens: a page on the server's own origin after a dashboard login needs nothing (the session
 * cookie goes with every request). Anywhere else, pass `token`: a string, or a function returning
 * one (or a Promise of one). It is sent as `access_token` in the stream's URL (the only place
 * EventSource and WebSocket can carry it; the server logs no URLs). When the server ends a stream
 * because its token expired, or refuses one with 401, a function is called again and the
 * subscription resumes where it was with the new token; a string token cannot be renewed, so the
 * subscription ends in the state `unauthorized` with a {@link FlightDeckError} to `onError`.
 *
 * @module flightdeck
 */

/**
 * An event as FlightDeck stores and delivers it.
 * @typedef {object} FlightDeckEvent
 * @property {string} id UUID of the event.
 * @property {string} position Position in the global log: 32 lowercase hex characters whose string
 *   order is the log order.
 * @property {string} stream The stream the event belongs to.
 * @property {number} version The event's version in its stream (1, 2, ...).
 * @property {string} type The event type.
 * @property {*} data The event's data (any JSON).
 * @property {object} metadata The event's metadata (a JSON object).
 * @property {string} timestamp When it was stored (RFC 3339, UTC).
 */

/**
 * What to subscribe to and how.
 * @typedef {object} SubscribeOptions
 * @property {string|string[]} [types] Only these event types (default: all).
 * @property {string|string[]} [sites] Only events of these sites (default: all), each 1 to 64 of
 *   `A-Z a-z 0-9 _ -`.
 * @property {string} [stream] Only this stream.
 * @property {string} [streamPrefix] Only streams whose name starts with this.
 * @property {Object<string, string|number|boolean|null>} [where] Equality tests on the event's
 *   data, all of which must hold, e.g. `{ 'data.pageId': 'home', 'data.user.id': 7 }`.
 * @property {'now'|'start'|string} [from] Where to start: `'now'` (default, only new events),
 *   `'start'` (the whole log first), or a position (the events after it).
 * @property {{maxEvents: number, maxDelayMs?: number}} [batch] Let the server group up to
 *   `maxEvents` events (1 to 10000) into one frame, waiting up to `maxDelayMs` (0 to 10000) to fill
 *   it. Handlers still receive events one by one; `onBatch` handlers receive each frame's events.
 * @property {'sse'|'ws'} [transport] Server-Sent Events (default) or WebSocket.
 * @property {ReconnectOptions} [reconnect] Backoff between reconnection attempts.
 * @property {TokenOption} [token] The token to subscribe with (default: the client's, see
 *   {@link connect}; without any, the browser's session cookie, which only the server's own origin
 *   has).
 */

/**
 * A token (`flightdeck token create --site S --subscribe`), or a function that returns one or a
 * Promise of one: called on first use, and again whenever the server says the token expired or
 * refuses it, so the application can fetch a fresh one from its own backend.
 * @typedef {string|(() => string|Promise<string>)} TokenOption
 */

/**
 * Backoff between reconnection attempts: the n-th consecutive failed attempt waits a random time
 * between half and all of `min(maxDelayMs, initialDelayMs * 2^n)`.
 * @typedef {object} ReconnectOptions
 * @property {number} [initialDelayMs] First delay (default 500).
 * @property {number} [maxDelayMs] Cap (default 15000).
 */

/**
 * A subscription's life: `connecting` (first attempt), `open` (the server accepted it and
 * delivers), `reconnecting` (the connection was lost; it will resume by itself), `closed` (after
 * `close()`, or after the server refused the subscription itself), `unauthorized` (the token is
 * missing, invalid or expired and cannot be renewed: a string token, or no token and no valid
 * session cookie; like `closed`, nothing more happens; `onError` got the server's reason, code
 * `token_expired`, `token_required` or `invalid_token`).
 * @typedef {'connecting'|'open'|'reconnecting'|'closed'|'unauthorized'} SubscriptionState
 */

/** The transports `subscribe` accepts. */
export const TRANSPORTS = Object.freeze(['sse', 'ws']);

/** The states a subscription goes through, see {@link SubscriptionState}. */
export const STATES = Object.freeze(['connecting', 'open', 'reconnecting', 'closed', 'unauthorized']);

const DEFAULT_RECONNECT = Object.freeze({ initialDelayMs: 500, maxDelayMs: 15000 });
const POSITION = /^[0-9a-f]{32}$/;
/** A site id: the server's rule (`src/store/event.rs`). */
const SITE = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_BATCH_EVENTS = 10000;
const MAX_BATCH_DELAY_MS = 10000;
/** WebSocket keep-alive: a ping this often, and a connection with no answer for twice as long is dropped. */
const PING_INTERVAL_MS = 20000;
const OPTION_NAMES = ['types', 'sites', 'stream', 'streamPrefix', 'where', 'from', 'batch', 'transport', 'reconnect', 'token'];
const CONNECT_OPTION_NAMES = ['url', 'reconnect', 'token'];
/** HTTP statuses that say the request itself is wrong (retrying it unchanged cannot help). */
const isRefusal = (status) => status >= 400 && status < 500 && status !== 408 && status !== 429;

/**
 * An error the server reported for a subscription (a refused filter, say), or a failure while
 * handling an event. Handed to `onError` handlers.
 */
export class FlightDeckError extends Error {
  /**
   * @param {string} code Machine-readable code: the server's (`invalid_filter`, `token_expired`,
   *   `token_required`, `invalid_token`, ...), or `handler_error` for an exception thrown by a
   *   handler, `bad_frame` for a frame that is not a FlightDeck event, `token_error` for a token
   *   function that threw or returned no string (the subscription retries it with backoff).
   * @param {string} message What happened.
   * @param {{cause?: *}} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = 'FlightDeckError';
    /** @type {string} */
    this.code = code;
  }
}

/**
 * A connection to one FlightDeck server. `subscribe` from this module uses one for the server the
 * module was loaded from; create others with {@link connect}. WebSocket subscriptions of one
 * client share a single socket.
 */
export class FlightDeck {
  /**
   * @param {{url?: string|URL, reconnect?: ReconnectOptions, token?: TokenOption}} [options] `url`:
   *   the server's base URL (default: where this module was loaded from, e.g.
   *   `http://host:8080/`); `reconnect`: default backoff for this client's subscriptions; `token`:
   *   default token for them.
   */
  constructor(options = {}) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError(`flightdeck: connect() takes an options object like {url: 'http://host:8080'}, got ${describe(options)}`);
    }
    for (const key of Object.keys(options)) {
      if (!CONNECT_OPTION_NAMES.includes(key)) {
        throw new TypeError(`flightdeck: unknown connect() option ${JSON.stringify(key)} (known: ${CONNECT_OPTION_NAMES.join(', ')})`);
      }
    }
    /** The server's base URL, ending in `/`. */
    this.baseUrl = baseUrl(options.url);
    this._reconnect = checkReconnect(options.reconnect, DEFAULT_RECONNECT, 'connect()');
    this._token = checkToken(options.token, 'connect()');
    /** WebSocket connections, one per token (subscriptions with the same token share a socket).
     * @type {Map<*, WsConnection>} */
    this._ws = new Map();
  }

  /**
   * Starts a subscription. Handlers added right after this call see every event and state change
   * (connecting starts on the next microtask).
   * @param {SubscribeOptions} [options]
   * @returns {Subscription}
   * @throws {TypeError} for an unknown option or a value of the wrong kind, naming it.
   */
  subscribe(options = {}) {
    const checked = checkOptions(options, this._reconnect, this._token);
    return new Subscription(this, checked);
  }

  /**
   * @param {TokenOption|undefined} token
   * @returns {WsConnection} the WebSocket connection shared by subscriptions with this token,
   *   created on first use.
   */
  _wsConnection(token) {
    let connection = this._ws.get(token);
    if (!connection) {
      connection = new WsConnection(this.baseUrl, token === undefined ? null : new TokenSource(token), () => {
        if (this._ws.get(token) === connection) this._ws.delete(token);
      });
      this._ws.set(token, connection);
    }
    return connection;
  }
}

/**
 * A client for a FlightDeck server other than the one this module was loaded from, or with a
 * default token for all its subscriptions.
 * @param {{url?: string|URL, reconnect?: ReconnectOptions, token?: TokenOption}} [options]
 * @returns {FlightDeck}
 */
export function connect(options) {
  return new FlightDeck(options);
}

/** @type {FlightDeck|null} */
let defaultClient = null;

/**
 * Subscribes to the server this module was loaded from (`/flightdeck.js` of a FlightDeck server).
 * @param {SubscribeOptions} [options]
 * @returns {Subscription}
 */
export function subscribe(options) {
  if (!defaultClient) {
    defaultClient = new FlightDeck();
  }
  return defaultClient.subscribe(options);
}

/**
 * A live subscription. Register handlers with `on`, `onEvent`, `onBatch`, `onState`, `onError`
 * (each returns the subscription, so calls chain); stop it with `close()`.
 */
export class Subscription {
  /**
   * @param {FlightDeck} client
   * @param {ReturnType<typeof checkOptions>} options
   */
  constructor(client, options) {
    this._client = client;
    this._options = options;
    /** @type {SubscriptionState} */
    this._state = 'connecting';
    /** The position everything up to which is handled: the last event handed out, or where the
     * server said the subscription started. Resumes go after it; events at or before it are dropped.
     * @type {string|null} */
    this._last = null;
    this._byType = new Map();
    this._eventHandlers = [];
    this._batchHandlers = [];
    this._stateHandlers = [];
    this._errorHandlers = [];
    this._transport = null;
    queueMicrotask(() => {
      if (this._state === 'closed') return;
      this._emitState('connecting');
      this._transport =
        options.transport === 'ws'
          ? new WsTransport(this, client._wsConnection(options.token))
          : new SseTransport(this, client.baseUrl, options.token === undefined ? null : new TokenSource(options.token));
    });
  }

  /** @returns {SubscriptionState} the current state. */
  get state() {
    return this._state;
  }

  /**
   * @returns {string|null} the position this subscription resumes after: the last event handed to
   *   handlers, or where the server started it (WebSocket), or null before either.
   */
  get lastPosition() {
    return this._last;
  }

  /** @returns {'sse'|'ws'} the transport in use. */
  get transport() {
    return this._options.transport;
  }

  /**
   * Calls `handler(event)` for each event of type `type`.
   * @param {string} type
   * @param {(event: FlightDeckEvent) => void} handler
   * @returns {this}
   */
  on(type, handler) {
    if (typeof type !== 'string' || type === '') {
      throw new TypeError(`flightdeck: on(type, handler) needs an event type string, got ${describe(type)}`);
    }
    checkHandler(handler, 'on(type, handler)');
    let list = this._byType.get(type);
    if (!list) this._byType.set(type, (list = []));
    list.push(handler);
    return this;
  }

  /**
   * Calls `handler(event)` for every event, in log order, each exactly once.
   * @param {(event: FlightDeckEvent) => void} handler
   * @returns {this}
   */
  onEvent(handler) {
    this._eventHandlers.push(checkHandler(handler, 'onEvent(handler)'));
    return this;
  }

  /**
   * Calls `handler(events)` once per frame received, with its new events (a one-element array per
   * event when not batching; up to `batch.maxEvents` when batching). Runs before the event handlers.
   * @param {(events: FlightDeckEvent[]) => void} handler
   * @returns {this}
   */
  onBatch(handler) {
    this._batchHandlers.push(checkHandler(handler, 'onBatch(handler)'));
    return this;
  }

  /**
   * Calls `handler(state)` on every state change.
   * @param {(state: SubscriptionState) => void} handler
   * @returns {this}
   */
  onState(handler) {
    this._stateHandlers.push(checkHandler(handler, 'onState(handler)'));
    return this;
  }

  /**
   * Calls `handler(error)` with a {@link FlightDeckError} when the server refuses the subscription
   * (it is then closed), a handler throws, or a frame cannot be read. Without error handlers these
   * go to `console.error`.
   * @param {(error: FlightDeckError) => void} handler
   * @returns {this}
   */
  onError(handler) {
    this._errorHandlers.push(checkHandler(handler, 'onError(handler)'));
    return this;
  }

  /** Stops the subscription for good: no handler is called afterwards. Safe to call twice. */
  close() {
    if (this._state === 'closed') return;
    if (this._transport) this._transport.close();
    this._emitState('closed');
  }

  /** Whether the subscription has ended (closed, or unauthorized for good). */
  get _ended() {
    return this._state === 'closed' || this._state === 'unauthorized';
  }

  // ---- called by transports ----

  /** Where the next connection starts: after the last event handed out, or the requested start. */
  _resumeFrom() {
    return this._last ?? this._options.from;
  }

  /** Hands new events to the handlers, dropping anything at or before the last position handed out. */
  _deliver(events) {
    if (this._ended) return;
    const fresh = [];
    for (const event of events) {
      if (!event || typeof event !== 'object' || typeof event.position !== 'string' || !POSITION.test(event.position)) {
        this._error(new FlightDeckError('bad_frame', `flightdeck: ignoring a frame that is not an event: ${preview(event)}`));
        continue;
      }
      if (this._last !== null && event.position <= this._last) continue;
      this._last = event.position;
      fresh.push(event);
    }
    if (fresh.length === 0) return;
    for (const handler of this._batchHandlers) {
      if (this._ended) return;
      this._call(handler, fresh, 'onBatch');
    }
    for (const event of fresh) {
      for (const handler of this._byType.get(event.type) ?? []) {
        if (this._ended) return;
        this._call(handler, event, `on(${JSON.stringify(event.type)})`);
      }
      for (const handler of this._eventHandlers) {
        if (this._ended) return;
        this._call(handler, event, 'onEvent');
      }
    }
  }

  /**
   * The connection is up and the server accepted the subscription, starting after `position` if
   * it said so (then a resume before any event arrives starts there, not at "now").
   */
  _opened(position) {
    if (typeof position === 'string' && POSITION.test(position) && (this._last === null || position > this._last)) {
      this._last = position;
    }
    if (!this._ended && this._state !== 'open') this._emitState('open');
  }

  /** The connection was lost; the transport will try again. */
  _lost() {
    if (this._state === 'open' || this._state === 'connecting') this._emitState('reconnecting');
  }

  /** The server refused the subscription itself: retrying cannot help. */
  _refused(error) {
    if (this._ended) return;
    this._error(error);
    this.close();
  }

  /**
   * The token is missing, invalid or expired, and cannot be renewed (a string token, or none):
   * reports why and ends in the state `unauthorized`. The transport has already stopped.
   */
  _unauthorized(error) {
    if (this._ended) return;
    this._error(error);
    if (this._transport) this._transport.close();
    this._emitState('unauthorized');
  }

  _emitState(state) {
    if (this._state === state && state !== 'connecting') return;
    this._state = state;
    for (const handler of this._stateHandlers) this._call(handler, state, 'onState');
  }

  _call(handler, value, name) {
    try {
      handler(value);
    } catch (cause) {
      this._error(new FlightDeckError('handler_error', `flightdeck: an ${name} handler threw: ${cause}`, { cause }));
    }
  }

  _error(error) {
    if (this._errorHandlers.length === 0) {
      console.error(error);
      return;
    }
    for (const handler of this._errorHandlers) {
      try {
        handler(error);
      } catch (cause) {
        console.error('flightdeck: an onError handler threw', cause, 'while reporting', error);
      }
    }
  }
}

/** Capped exponential backoff with jitter ("equal jitter": half fixed, half random). */
class Backoff {
  constructor({ initialDelayMs, maxDelayMs }) {
    this.initial = initialDelayMs;
    this.max = maxDelayMs;
    this.failures = 0;
  }

  /** The delay before the next attempt; each call counts one more failure. */
  next() {
    const ceiling = Math.min(this.max, this.initial * 2 ** Math.min(this.failures, 30));
    this.failures += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  reset() {
    this.failures = 0;
  }
}

/**
 * A subscription's token: a fixed string, or a function asked for a fresh one when the server
 * says the current one is no longer good. Concurrent refreshes share one call.
 */
class TokenSource {
  /** @param {TokenOption} token */
  constructor(token) {
    this.token = token;
    /** @type {string|null} the token in use (null: ask the function before the next connection) */
    this.value = typeof token === 'string' ? token : null;
    this.pending = null;
  }

  /** Whether a new token can be had (a function) or not (a string). */
  get renewable() {
    return typeof this.token === 'function';
  }

  /** @returns {Promise<string>} the token to connect with. */
  get() {
    if (this.value !== null) return Promise.resolve(this.value);
    if (!this.pending) {
      this.pending = Promise.resolve()
        .then(() => this.token())
        .then((value) => {
          if (typeof value !== 'string' || value === '') {
            throw new FlightDeckError(
              'token_error',
              `flightdeck: the token function must return a token string (or a Promise of one), got ${describe(value)}`,
            );
          }
          this.value = value;
          return value;
        })
        .catch((cause) => {
          throw cause instanceof FlightDeckError
            ? cause
            : new FlightDeckError('token_error', `flightdeck: the token function failed: ${cause}`, { cause });
        })
        .finally(() => {
          this.pending = null;
        });
    }
    return this.pending;
  }

  /** The current token is no good: a function will be asked again on the next `get()`. */
  invalidate() {
    if (this.renewable) this.value = null;
  }
}

/** A FlightDeckError from the server's answer or frame: `{"error": {code, message}}` or `{code, message}`. */
function serverError(text, fallbackCode, what) {
  let code = fallbackCode;
  let message = String(text ?? '').slice(0, 500);
  try {
    const body = JSON.parse(text);
    const error = body?.error ?? body;
    code = typeof error?.code === 'string' ? error.code : code;
    message = typeof error?.message === 'string' ? error.message : message;
  } catch {
    // Not FlightDeck's JSON: keep the text.
  }
  return new FlightDeckError(code, `flightdeck: ${what}: ${message}`);
}

/**
 * Server-Sent Events. EventSource's own reconnection is not used: it retries at a fixed interval
 * with no jitter, and gives up for good on any non-200 answer (such as the 503 of a server still
 * starting). Instead every failure closes the EventSource and a new one opens after a backoff, with
 * `from=<last position>`: what `Last-Event-ID` would have said. EventSource hides the status of a
 * refused request, so a connection that never opened is asked again with `fetch` to read it.
 */
class SseTransport {
  /**
   * @param {Subscription} sub
   * @param {string} base
   * @param {TokenSource|null} tokens the subscription's token (null: the session cookie, if any)
   */
  constructor(sub, base, tokens) {
    this.sub = sub;
    this.base = base;
    this.tokens = tokens;
    this.backoff = new Backoff(sub._options.reconnect);
    this.source = null;
    this.timer = null;
    this.probe = null;
    this.closed = false;
    this.open();
  }

  url(token) {
    const o = this.sub._options;
    const query = new URLSearchParams();
    if (o.types.length) query.set('types', o.types.join(','));
    if (o.sites.length) query.set('site', o.sites.join(','));
    if (o.stream !== undefined) query.set('stream', o.stream);
    if (o.streamPrefix !== undefined) query.set('streamPrefix', o.streamPrefix);
    for (const [path, value] of Object.entries(o.where)) query.append('where', `${path}:${JSON.stringify(value)}`);
    query.set('from', this.sub._resumeFrom());
    if (o.batch) query.set('batch', `${o.batch.maxEvents},${o.batch.maxDelayMs}`);
    if (token !== null) query.set('access_token', token);
    return `${this.base}api/events?${query}`;
  }

  /** Connects: at once without a token, else once the token is known. */
  open() {
    if (this.closed) return;
    if (!this.tokens) {
      this.connect(null);
      return;
    }
    this.tokens.get().then(
      (token) => {
        if (!this.closed && !this.source && !this.timer) this.connect(token);
      },
      (error) => {
        // The application's token function failed (its backend unreachable, say): try again later.
        if (this.closed) return;
        this.sub._error(error);
        this.sub._lost();
        this.retry();
      },
    );
  }

  connect(token) {
    const url = this.url(token);
    const source = new EventSource(url);
    let opened = false;
    this.source = source;
    source.onopen = () => {
      if (this.source !== source) return;
      opened = true;
      this.backoff.reset();
      this.sub._opened();
    };
    // The server's first frame says where the stream starts: a reconnect before any event then
    // resumes there, not at a later "now" that would skip what was stored in between.
    source.addEventListener('subscribed', (message) => {
      if (this.source !== source) return;
      try {
        this.sub._opened(JSON.parse(message.data).position);
      } catch {
        // An older server without a start position: resume from the last event, as before.
      }
    });
    // The token expired: the server's last frame on this stream.
    source.addEventListener('token-expired', (message) => {
      if (this.source !== source) return;
      source.close();
      this.source = null;
      this.unauthorized(serverError(message.data, 'token_expired', 'the token expired'), true);
    });
    source.onmessage = (message) => {
      if (this.source !== source) return;
      let payload;
      try {
        payload = JSON.parse(message.data);
      } catch (cause) {
        this.sub._error(new FlightDeckError('bad_frame', `flightdeck: a frame is not JSON: ${preview(message.data)}`, { cause }));
        return;
      }
      this.sub._deliver(Array.isArray(payload) ? payload : [payload]);
    };
    source.onerror = () => {
      if (this.source !== source) return;
      source.close();
      this.source = null;
      this.sub._lost();
      if (opened) {
        // The stream ended (server shutdown, or this subscriber fell behind): resume.
        this.retry();
      } else {
        // Never opened: learn whether the server refused the request itself (4xx), which no retry fixes.
        this.check(url);
      }
    };
  }

  /**
   * The token is not (or no longer) good. A function token is asked for a new one and the
   * subscription resumes, at once after an expiry in mid-stream, after the backoff after a refusal
   * (so a function that keeps returning bad tokens does not spin); otherwise it ends.
   */
  unauthorized(error, expired) {
    if (this.closed) return;
    if (this.tokens?.renewable) {
      this.tokens.invalidate();
      this.sub._lost();
      if (expired) this.open();
      else this.retry();
      return;
    }
    this.close();
    this.sub._unauthorized(error);
  }

  retry() {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.open();
    }, this.backoff.next());
  }

  /** Asks the URL once more with fetch to read the status EventSource hides; 4xx: refused for good. */
  check(url) {
    const abort = new AbortController();
    this.probe = abort;
    const done = () => {
      if (this.probe === abort) this.probe = null;
    };
    fetch(url, { signal: abort.signal, headers: { accept: 'text/event-stream' }, cache: 'no-store' })
      .then(async (response) => {
        if (isRefusal(response.status)) {
          const text = await response.text().catch(() => '');
          done();
          if (this.closed) return;
          const refusal = `the server refused the subscription (${response.status})`;
          if (response.status === 401) {
            this.unauthorized(serverError(text, 'token_required', refusal), false);
          } else {
            this.sub._refused(serverError(text, `http_${response.status}`, refusal));
          }
          return;
        }
        abort.abort();
        done();
        this.retry();
      })
      .catch(() => {
        // Unreachable, or aborted by close(): retry unless closed.
        done();
        this.retry();
      });
  }

  close() {
    this.closed = true;
    if (this.source) this.source.close();
    this.source = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.probe) this.probe.abort();
    this.probe = null;
  }
}

/** One WebSocket subscription on the client's shared connection. */
class WsTransport {
  /**
   * @param {Subscription} sub
   * @param {WsConnection} connection
   */
  constructor(sub, connection) {
    this.sub = sub;
    this.connection = connection;
    /** The subscription's id on the socket, set by `connection.add`. */
    this.id = '';
    connection.add(this);
  }

  /** The subscribe request, resuming after the last event handed out. */
  request() {
    const o = this.sub._options;
    const request = { op: 'subscribe', id: this.id };
    if (o.types.length) request.types = o.types;
    if (o.sites.length) request.sites = o.sites;
    if (o.stream !== undefined) request.stream = o.stream;
    if (o.streamPrefix !== undefined) request.streamPrefix = o.streamPrefix;
    if (Object.keys(o.where).length) request.where = o.where;
    request.from = this.sub._resumeFrom();
    if (o.batch) request.batch = o.batch;
    return request;
  }

  close() {
    this.connection.remove(this);
  }
}

/**
 * The WebSocket shared by a client's `ws` subscriptions with the same token: opened with the
 * first, closed with the last. When it drops, it reconnects with backoff and subscribes everything
 * again, each from its own last position. A ping every 20 s detects dead connections. The server
 * closes it with code 4401 when its token expires; a refused handshake (401) shows in the browser
 * only as a failed connection, so one that never opened is asked again with `fetch` (readable on
 * the server's own origin; elsewhere CORS hides the answer and the connection just retries).
 */
class WsConnection {
  /**
   * @param {string} base
   * @param {TokenSource|null} tokens the connection's token (null: the session cookie, if any)
   * @param {() => void} onEmpty called when the last subscription leaves
   */
  constructor(base, tokens, onEmpty) {
    const url = new URL('ws/events', base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    this.url = url.href;
    this.tokens = tokens;
    /** Waiting for the token before connecting. */
    this.opening = false;
    this.probe = null;
    this.onEmpty = onEmpty;
    /** @type {Map<string, WsTransport>} */
    this.subs = new Map();
    this.counter = 0;
    this.socket = null;
    this.ready = false;
    this.timer = null;
    this.pinger = null;
    this.backoff = null;
  }

  /** Adds a subscription, giving it its id; subscribes at once if the socket is open. */
  add(transport) {
    const id = `s${++this.counter}`;
    transport.id = id;
    this.subs.set(id, transport);
    // The first subscription's backoff settings apply to the socket.
    if (!this.backoff) this.backoff = new Backoff(transport.sub._options.reconnect);
    if (this.ready) this.send(transport.request());
    else if (!this.socket && !this.timer && !this.opening) this.open();
  }

  remove(transport) {
    if (!this.subs.delete(transport.id)) return;
    if (this.ready) this.send({ op: 'unsubscribe', id: transport.id });
    if (this.subs.size === 0) this.shutdown();
  }

  send(message) {
    try {
      this.socket.send(JSON.stringify(message));
    } catch {
      // The socket is closing; onclose resubscribes.
    }
  }

  /** Connects: at once without a token, else once the token is known. */
  open() {
    if (!this.tokens) {
      this.connect(null);
      return;
    }
    this.opening = true;
    this.tokens.get().then(
      (token) => {
        this.opening = false;
        if (this.subs.size > 0 && !this.socket && !this.timer) this.connect(token);
      },
      (error) => {
        // The application's token function failed: report it and try again later.
        this.opening = false;
        if (this.subs.size === 0) return;
        this.broadcastError(error);
        this.retry();
      },
    );
  }

  /** The socket's URL, with the token (the only way a browser's WebSocket can carry one). */
  urlWith(token) {
    if (token === null) return this.url;
    const url = new URL(this.url);
    url.searchParams.set('access_token', token);
    return url.href;
  }

  connect(token) {
    const url = this.urlWith(token);
    const socket = new WebSocket(url);
    this.socket = socket;
    let alive = true;
    let opened = false;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      opened = true;
      this.ready = true;
      for (const transport of this.subs.values()) this.send(transport.request());
      this.pinger = setInterval(() => {
        if (!alive) {
          // No answer to the last ping: the connection is dead even if the browser has not noticed.
          socket.close(4000, 'no pong');
          this.lost(socket);
          return;
        }
        alive = false;
        this.send({ op: 'ping' });
      }, PING_INTERVAL_MS);
    };
    socket.onmessage = (message) => {
      if (this.socket !== socket) return;
      alive = true;
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        this.broadcastError(new FlightDeckError('bad_frame', `flightdeck: a WebSocket frame is not JSON: ${preview(message.data)}`));
        return;
      }
      this.handle(frame);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      if (event.code === 4401) {
        this.lost(socket, false);
        this.unauthorized(
          new FlightDeckError('token_expired', `flightdeck: the token expired: ${event.reason || 'closed with code 4401'}`),
          true,
        );
      } else if (!opened) {
        this.lost(socket, false);
        this.check(url);
      } else {
        this.lost(socket);
      }
    };
    // An error is always followed by close.
    socket.onerror = () => {};
  }

  handle(frame) {
    const sub = (id) => this.subs.get(id)?.sub;
    switch (frame?.op) {
      case 'subscribed':
        sub(frame.id)?._opened(frame.position);
        this.backoff.reset();
        break;
      case 'event':
        sub(frame.sub)?._deliver([frame.event]);
        break;
      case 'batch':
        if (Array.isArray(frame.events)) sub(frame.sub)?._deliver(frame.events);
        break;
      case 'error': {
        const error = new FlightDeckError(
          String(frame.code ?? 'error'),
          `flightdeck: the server refused the subscription: ${frame.message ?? JSON.stringify(frame)}`,
        );
        if (frame.id === undefined) {
          // About no subscription in particular (a frame the server could not read).
          this.broadcastError(error);
          break;
        }
        const target = this.subs.get(frame.id);
        // An error about a subscription already closed here concerns no one.
        if (!target) break;
        // Refused for good: drop it here without an unsubscribe the server has nothing for.
        this.subs.delete(frame.id);
        target.sub._refused(error);
        if (this.subs.size === 0) this.shutdown();
        break;
      }
      case 'pong':
      case 'unsubscribed':
        break;
      default:
        this.broadcastError(new FlightDeckError('bad_frame', `flightdeck: unexpected WebSocket frame: ${preview(frame)}`));
    }
  }

  broadcastError(error) {
    for (const transport of this.subs.values()) transport.sub._error(error);
  }

  /**
   * The socket closed (server shutdown, too slow, network): reconnect after a backoff (unless
   * `reconnect` is false: the caller decides).
   */
  lost(socket, reconnect = true) {
    if (this.socket !== socket) return;
    this.socket = null;
    this.ready = false;
    clearInterval(this.pinger);
    this.pinger = null;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    if (this.subs.size === 0) return;
    for (const transport of this.subs.values()) transport.sub._lost();
    if (reconnect) this.retry();
  }

  retry() {
    if (this.timer || this.subs.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.subs.size > 0) this.open();
    }, this.backoff.next());
  }

  /**
   * The token is not (or no longer) good. A function token is asked for a new one and every
   * subscription resumes from its own last position: at once after an expiry, after the backoff
   * after a refusal. Otherwise every subscription on this socket ends `unauthorized`.
   */
  unauthorized(error, expired) {
    if (this.subs.size === 0) return;
    if (this.tokens?.renewable) {
      this.tokens.invalidate();
      if (expired) this.open();
      else this.retry();
      return;
    }
    const subs = [...this.subs.values()];
    this.subs.clear();
    this.shutdown();
    for (const transport of subs) transport.sub._unauthorized(error);
  }

  /** A connection that never opened: reads the handshake's status with fetch; 401 is about the token. */
  check(url) {
    const abort = new AbortController();
    this.probe = abort;
    const done = () => {
      if (this.probe === abort) this.probe = null;
    };
    const http = new URL(url);
    http.protocol = http.protocol === 'wss:' ? 'https:' : 'http:';
    fetch(http.href, { signal: abort.signal, cache: 'no-store' })
      .then(async (response) => {
        const text = response.status === 401 ? await response.text().catch(() => '') : '';
        if (response.status !== 401) abort.abort();
        done();
        if (response.status === 401) {
          this.unauthorized(serverError(text, 'token_required', 'the server refused the connection (401)'), false);
        } else {
          this.retry();
        }
      })
      .catch(() => {
        // Unreachable, another origin's answer hidden by CORS, or aborted by shutdown().
        done();
        this.retry();
      });
  }

  shutdown() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.probe) this.probe.abort();
    this.probe = null;
    clearInterval(this.pinger);
    this.pinger = null;
    const socket = this.socket;
    this.socket = null;
    this.ready = false;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close(1000, 'no subscriptions');
    }
    this.backoff = null;
    this.onEmpty();
  }
}

// ---- argument checks ----

function checkOptions(options, defaultReconnect, defaultToken) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`flightdeck: subscribe() takes an options object like {types: ['PageViewed']}, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!OPTION_NAMES.includes(key)) {
      throw new TypeError(`flightdeck: unknown subscribe() option ${JSON.stringify(key)} (known: ${OPTION_NAMES.join(', ')})`);
    }
  }
  let types = options.types ?? [];
  if (typeof types === 'string') types = [types];
  if (!Array.isArray(types) || types.some((t) => typeof t !== 'string' || t.trim() === '' || t.includes(','))) {
    throw new TypeError(
      `flightdeck: types must be an event type or an array of event types (non-empty strings without commas), got ${describe(options.types)}`,
    );
  }
  let sites = options.sites ?? [];
  if (typeof sites === 'string') sites = [sites];
  if (!Array.isArray(sites) || sites.some((s) => typeof s !== 'string' || !SITE.test(s))) {
    throw new TypeError(
      `flightdeck: sites must be a site id or an array of them (1 to 64 of A-Z, a-z, 0-9, _ and -), got ${describe(options.sites)}`,
    );
  }
  for (const name of ['stream', 'streamPrefix']) {
    const value = options[name];
    if (value !== undefined && (typeof value !== 'string' || value === '')) {
      throw new TypeError(`flightdeck: ${name} must be a non-empty string, got ${describe(value)}`);
    }
  }
  const where = options.where ?? {};
  if (typeof where !== 'object' || Array.isArray(where)) {
    throw new TypeError(`flightdeck: where must be an object like {'data.pageId': 'home'}, got ${describe(where)}`);
  }
  for (const [path, value] of Object.entries(where)) {
    const keys = path.split('.');
    if (keys[0] !== 'data' || keys.length < 2 || keys.some((k) => k === '') || /[:=]/.test(path)) {
      throw new TypeError(
        `flightdeck: where key ${JSON.stringify(path)} must be a path into the event's data like 'data.pageId' (no ':' or '=')`,
      );
    }
    const kind = value === null ? 'null' : typeof value;
    if (!['string', 'number', 'boolean', 'null'].includes(kind) || (kind === 'number' && !Number.isFinite(value))) {
      throw new TypeError(
        `flightdeck: where[${JSON.stringify(path)}] must be a string, number, boolean or null, got ${describe(value)}`,
      );
    }
  }
  const from = options.from ?? 'now';
  if (typeof from !== 'string' || !(from === 'now' || from === 'start' || POSITION.test(from))) {
    throw new TypeError(
      `flightdeck: from must be 'now', 'start' or a position (32 lowercase hex characters, an event's position), got ${describe(options.from)}`,
    );
  }
  let batch = null;
  if (options.batch !== undefined && options.batch !== null) {
    const b = options.batch;
    if (typeof b !== 'object' || Array.isArray(b) || Object.keys(b).some((k) => k !== 'maxEvents' && k !== 'maxDelayMs')) {
      throw new TypeError(`flightdeck: batch must be {maxEvents, maxDelayMs}, got ${describe(b)}`);
    }
    const maxDelayMs = b.maxDelayMs ?? 0;
    if (!Number.isInteger(b.maxEvents) || b.maxEvents < 1 || b.maxEvents > MAX_BATCH_EVENTS) {
      throw new TypeError(`flightdeck: batch.maxEvents must be a whole number from 1 to ${MAX_BATCH_EVENTS}, got ${describe(b.maxEvents)}`);
    }
    if (!Number.isInteger(maxDelayMs) || maxDelayMs < 0 || maxDelayMs > MAX_BATCH_DELAY_MS) {
      throw new TypeError(`flightdeck: batch.maxDelayMs must be a whole number from 0 to ${MAX_BATCH_DELAY_MS}, got ${describe(b.maxDelayMs)}`);
    }
    batch = { maxEvents: b.maxEvents, maxDelayMs };
  }
  const transport = options.transport ?? 'sse';
  if (!TRANSPORTS.includes(transport)) {
    throw new TypeError(`flightdeck: transport must be 'sse' or 'ws', got ${describe(options.transport)}`);
  }
  if (transport === 'sse' && typeof EventSource !== 'function') {
    throw new TypeError("flightdeck: this environment has no EventSource; use transport: 'ws'");
  }
  if (transport === 'ws' && typeof WebSocket !== 'function') {
    throw new TypeError("flightdeck: this environment has no WebSocket; use transport: 'sse'");
  }
  return {
    types: types.map((t) => t.trim()),
    sites: [...sites],
    stream: options.stream,
    streamPrefix: options.streamPrefix,
    where: { ...where },
    from,
    batch,
    transport,
    reconnect: checkReconnect(options.reconnect, defaultReconnect, 'subscribe()'),
    token: options.token === undefined ? defaultToken : checkToken(options.token, 'subscribe()'),
  };
}

function checkToken(token, where) {
  if (token === undefined || typeof token === 'function' || (typeof token === 'string' && token.trim() !== '')) {
    return typeof token === 'string' ? token.trim() : token;
  }
  throw new TypeError(
    `flightdeck: ${where} token must be a token string or a function returning one (or a Promise of one), got ${describe(token)}`,
  );
}

function checkReconnect(value, defaults, where) {
  if (value === undefined || value === null) return defaults;
  if (typeof value !== 'object' || Object.keys(value).some((k) => k !== 'initialDelayMs' && k !== 'maxDelayMs')) {
    throw new TypeError(`flightdeck: ${where} reconnect must be {initialDelayMs, maxDelayMs}, got ${describe(value)}`);
  }
  const out = { ...defaults, ...value };
  for (const key of ['initialDelayMs', 'maxDelayMs']) {
    if (typeof out[key] !== 'number' || !Number.isFinite(out[key]) || out[key] < 1) {
      throw new TypeError(`flightdeck: reconnect.${key} must be a number of milliseconds of at least 1, got ${describe(out[key])}`);
    }
  }
  if (out.maxDelayMs < out.initialDelayMs) {
    throw new TypeError(`flightdeck: reconnect.maxDelayMs (${out.maxDelayMs}) is below initialDelayMs (${out.initialDelayMs})`);
  }
  return out;
}

function checkHandler(handler, name) {
  if (typeof handler !== 'function') {
    throw new TypeError(`flightdeck: ${name} needs a function, got ${describe(handler)}`);
  }
  return handler;
}

function baseUrl(url) {
  let base;
  try {
    // Default: the directory this module was served from, i.e. the FlightDeck server (or where an
    // application mounted its routes).
    base = new URL(url ?? '.', url === undefined ? import.meta.url : globalThis.location?.href);
  } catch {
    throw new TypeError(`flightdeck: url must be an http(s) URL like 'http://localhost:8080', got ${describe(url)}`);
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new TypeError(`flightdeck: url must be an http(s) URL like 'http://localhost:8080', got ${describe(url ?? base.href)}`);
  }
  base.search = '';
  base.hash = '';
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  return base.href;
}

function describe(value) {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return 'a function';
  if (value === undefined) return 'undefined';
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function preview(value) {
  const text = typeof value === 'string' ? value : describe(value);
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}
